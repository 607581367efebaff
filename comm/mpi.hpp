#pragma once
/// \file MPI: an owning communicator handle, checked calls, and the host collectives of the
/// rebalance loop. Every function taking an MpiComm is collective over it unless noted.
#include <mpi.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "eplb/algo/load.hpp"
#include "eplb/comm/error.hpp"

#define EPLB_MPI_CHECK(call) ::eplb::comm::check_mpi((call), #call, __FILE__, __LINE__)

namespace eplb::comm {

/// Throws MpiError "[rank r] <call> failed: <MPI's error string> (file:line)" unless rc is
/// MPI_SUCCESS.
void check_mpi(int rc, const char* call, const char* file, int line);

/// A duplicate of the caller's communicator with MPI_ERRORS_RETURN set, freed on
/// destruction. Move-only. The library talks only on its own duplicate, so its messages
/// never match the application's.
class MpiComm {
 public:
  MpiComm() = default;
  /// Collective over `parent` (MPI_Comm_dup).
  explicit MpiComm(MPI_Comm parent);
  ~MpiComm();
  MpiComm(MpiComm&& other) noexcept;
  MpiComm& operator=(MpiComm&& other) noexcept;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  void reset() noexcept;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 0;
};

/// The largest count eplb sums over ranks and passes (algo::kMaxCount, 2^62).
inline constexpr std::int64_t kMaxCount = algo::kMaxCount;

/// out[i] = sum over ranks of in[i], for counts in [0, kMaxCount + 1]: a sum past kMaxCount
/// reads kMaxCount + 1 instead of wrapping (a user-defined MPI operation; host memory only).
/// in and out may be the same span. std::invalid_argument for a value outside that range
/// (on this rank only: check before calling when ranks may differ).
void allreduce_sum(const MpiComm& comm, std::span<const std::int64_t> in,
                   std::span<std::int64_t> out);

/// Error agreement. Every rank passes its local error (nullopt when fine); every rank
/// returns the error of the lowest failing rank, prefixed with "[rank r] ", or nullopt when
/// all are fine. Costs one small allreduce, plus one broadcast when some rank failed.
std::optional<std::string> agree_on_error(const MpiComm& comm,
                                          const std::optional<std::string>& local_error);

/// Runs f() on this rank; an exception becomes `prefix` + its text in `error` (any exception:
/// user code may throw anything), for the ranks to agree on (throw_if_any_failed) instead of
/// leaving the others in a collective.
/// If building the text itself runs out of memory, `error` is "out of memory" (short enough
/// for the string's inline storage: no allocation), so that capture never throws.
template <class F>
void capture(std::optional<std::string>& error, const char* prefix, F&& f) {
  auto set = [&](const char* what) {
    try {
      error = prefix + std::string(what);
    } catch (...) {
      error.emplace("out of memory");
    }
  };
  try {
    f();
  } catch (const std::exception& e) {
    set(e.what());
  } catch (...) {
    set("an exception not derived from std::exception");
  }
}

/// agree_on_error, then throws E(message) on every rank if any rank failed.
template <class E = InvalidInput>
void throw_if_any_failed(const MpiComm& comm, const std::optional<std::string>& local_error) {
  if (auto e = agree_on_error(comm, local_error)) throw E(*e);
}

/// One named value that must be identical on every rank (e.g. num_slots, a hash of the
/// policy name).
/// Views, not strings: a list of fields built at the call ({{"name", value}, ...}) allocates
/// nothing, so that no rank can run out of memory before the collective while the others
/// wait in it. The texts must outlive the call.
struct ConfigField {
  std::string_view name;
  std::uint64_t value;
  /// How this rank's value reads, when `value` is a hash or bit pattern (a policy name, a
  /// double); empty: `value` itself is shown.
  std::string_view shown = {};
};

/// Compares the fields across ranks (two allreduces). On any difference every rank throws
/// InvalidInput naming each differing field with its smallest and largest value (or, for a
/// field with `shown`, up to four distinct texts (cut to 255 characters), each with the first
/// rank that has it: one more allgather, on this error path only); Error on every rank when a
/// rank cannot allocate its buffers (InvalidInput without the texts when fields differ and
/// the buffer for their texts cannot be allocated). All ranks must pass the same number of fields in
/// the same order (the count is checked first).
void check_config_agreement(const MpiComm& comm, std::span<const ConfigField> fields);
inline void check_config_agreement(const MpiComm& comm, std::initializer_list<ConfigField> fields) {
  check_config_agreement(comm, std::span<const ConfigField>(fields.begin(), fields.size()));
}

/// Whether MPI accepts device pointers: compiled against an MPI that declares CUDA support
/// (Open MPI's MPIX_CUDA_AWARE_SUPPORT) and MPIX_Query_cuda_support() says so at run time.
/// Never throws; false when unknown.
bool mpi_cuda_aware() noexcept;

/// FNV-1a 64 of bytes, chained from `seed`.
std::uint64_t fnv1a(const void* data, std::size_t bytes,
                    std::uint64_t seed = 14695981039346656037ull);

}  // namespace eplb::comm
