#include "eplb/comm/mpi.hpp"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI extensions: MPIX_Query_cuda_support
#endif

namespace eplb::comm {

void check_mpi(int rc, const char* call, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof text, "error %d", rc);
  throw MpiError(detail::format_failure(detail::world_rank_or_minus_one(), call, text, file, line));
}

MpiComm::MpiComm(MPI_Comm parent) {
  EPLB_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
  try {
    EPLB_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    EPLB_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    EPLB_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  } catch (...) {
    reset();
    throw;
  }
}

MpiComm::~MpiComm() { reset(); }

MpiComm::MpiComm(MpiComm&& other) noexcept
    : comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      rank_(other.rank_),
      size_(other.size_) {}

MpiComm& MpiComm::operator=(MpiComm&& other) noexcept {
  if (this != &other) {
    reset();
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    rank_ = other.rank_;
    size_ = other.size_;
  }
  return *this;
}

void MpiComm::reset() noexcept {
  if (comm_ == MPI_COMM_NULL) return;
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin && MPI_Comm_free(&comm_) != MPI_SUCCESS)
    detail::log_error("MPI_Comm_free failed in ~MpiComm");
  comm_ = MPI_COMM_NULL;
}

namespace {
/// inout[i] += in[i], saturating at kMaxCount + 1 (both in [0, kMaxCount + 1]: no overflow).
void saturating_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const std::int64_t*>(in);
  auto* b = static_cast<std::int64_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = algo::saturating_count_sum(b[i], a[i]);
}
}  // namespace

void allreduce_sum(const MpiComm& comm, std::span<const std::int64_t> in,
                   std::span<std::int64_t> out) {
  if (in.size() != out.size())
    throw std::invalid_argument("allreduce_sum: in and out differ in size");
  if (in.size() > static_cast<std::size_t>(INT_MAX))
    throw std::invalid_argument("allreduce_sum: more than INT_MAX elements");
  for (const std::int64_t v : in)
    if (v < 0 || v > kMaxCount + 1)
      throw std::invalid_argument("allreduce_sum: count " + std::to_string(v) + " outside [0, 2^62 + 1]");
  MPI_Op op = MPI_OP_NULL;
  EPLB_MPI_CHECK(MPI_Op_create(&saturating_sum, 1, &op));
  const void* src = in.data() == out.data() ? MPI_IN_PLACE : in.data();
  const int rc = MPI_Allreduce(src, out.data(), static_cast<int>(out.size()), MPI_INT64_T, op, comm.get());
  MPI_Op_free(&op);
  if (rc != MPI_SUCCESS) check_mpi(rc, "MPI_Allreduce(saturating sum)", __FILE__, __LINE__);
}

std::optional<std::string> agree_on_error(const MpiComm& comm,
                                          const std::optional<std::string>& local_error) {
  int mine = local_error ? comm.rank() : INT_MAX;
  int first = INT_MAX;
  EPLB_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm.get()));
  if (first == INT_MAX) return std::nullopt;
  char text[1024] = {};
  if (comm.rank() == first)
    std::snprintf(text, sizeof text, "[rank %d] %s", first, local_error->c_str());
  EPLB_MPI_CHECK(MPI_Bcast(text, sizeof text, MPI_CHAR, first, comm.get()));
  text[sizeof text - 1] = '\0';
  return std::string(text);
}

void check_config_agreement(const MpiComm& comm, std::span<const ConfigField> fields) {
  // The values' buffer is allocated before the first collective, and a failure is part of
  // that first reduction (the texts' buffer, on the error path only, has an agreement of its
  // own): no rank leaves while the others wait in a later collective.
  constexpr int kText = 256;
  std::vector<std::uint64_t> v;
  bool allocated = true;
  try {
    v.resize(2 * fields.size());
  } catch (const std::bad_alloc&) {
    allocated = false;
  }
  // Field count first, so that the reductions below have matching sizes on every rank; and
  // whether every rank has its buffers (MIN of 1 or 0).
  std::uint64_t n[3] = {fields.size(), ~static_cast<std::uint64_t>(fields.size()), allocated ? 1u : 0u};
  EPLB_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, n, 3, MPI_UINT64_T, MPI_MIN, comm.get()));
  if (n[2] == 0) throw Error("comparing the configuration across ranks: a rank ran out of memory");
  if (n[0] != ~n[1])
    throw InvalidInput("configuration differs between ranks: ranks describe " +
                       std::to_string(n[0]) + " to " + std::to_string(~n[1]) +
                       " configuration fields (different eplb versions?)");
  // One reduction gives min(v) and min(~v) = ~max(v) for every field.
  for (std::size_t i = 0; i < fields.size(); ++i) {
    v[2 * i] = fields[i].value;
    v[2 * i + 1] = ~fields[i].value;
  }
  EPLB_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_UINT64_T,
                               MPI_MIN, comm.get()));
  // Every rank is at the same differing fields (the reduction decided). On this error path
  // only: the buffer for the texts of those with `shown` (agreed), their allgathers (no
  // allocation between the collectives), then the message.
  auto differs = [&](std::size_t i) { return v[2 * i] != ~v[2 * i + 1]; };
  auto named = [&](std::size_t i) { return differs(i) && !fields[i].shown.empty(); };  // texts gathered
  std::size_t shown = 0;
  for (std::size_t i = 0; i < fields.size(); ++i) shown += named(i) ? 1 : 0;
  const std::size_t per_field = static_cast<std::size_t>(comm.size()) * kText;
  std::vector<char> texts;  // [differing shown field][rank][kText]
  if (shown) {
    int ok = 1;
    try {
      texts.resize(shown * per_field);
    } catch (const std::bad_alloc&) {
      ok = 0;
    }
    EPLB_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm.get()));
    if (!ok) throw InvalidInput("configuration differs between ranks (out of memory while naming the fields)");
  }
  std::size_t at = 0;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (!named(i)) continue;
    char* all = texts.data() + at++ * per_field;
    char mine[kText] = {};
    std::snprintf(mine, sizeof mine, "%.*s", static_cast<int>(std::min<std::size_t>(fields[i].shown.size(), kText - 1)),
                  fields[i].shown.data());
    EPLB_MPI_CHECK(MPI_Allgather(mine, kText, MPI_CHAR, all, kText, MPI_CHAR, comm.get()));
  }
  std::string diff;
  at = 0;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (!differs(i)) continue;
    const std::uint64_t lo = v[2 * i], hi = ~v[2 * i + 1];
    const char* all = named(i) ? texts.data() + at++ * per_field : nullptr;
    diff += diff.empty() ? "" : ", ";
    diff += fields[i].name;
    if (!all) {
      diff += " (min " + std::to_string(lo) + ", max " + std::to_string(hi) + ")";
      continue;
    }
    // Each distinct text with the first rank that has it.
    std::vector<std::string> seen;
    std::string list;
    for (int r = 0; r < comm.size(); ++r) {
      const char* t = all + static_cast<std::size_t>(r) * kText;
      std::string s(t, strnlen(t, kText));
      if (std::find(seen.begin(), seen.end(), s) != seen.end()) continue;
      seen.push_back(s);
      if (seen.size() <= 4) list += (list.empty() ? "" : ", ") + s + " on rank " + std::to_string(r);
    }
    if (seen.size() > 4) list += ", and " + std::to_string(seen.size() - 4) + " more";
    diff += " (" + list + ")";
  }
  if (!diff.empty())
    throw InvalidInput("configuration differs between ranks: " + diff);
}

bool mpi_cuda_aware() noexcept {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

std::uint64_t fnv1a(const void* data, std::size_t bytes, std::uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t h = seed;
  for (std::size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace eplb::comm
