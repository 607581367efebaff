#pragma once
/// \file NCCL: a communicator bootstrapped over MPI, and the device weight transport.
/// Includes no CUDA or NCCL header.
#include <optional>
#include <string>
#include <vector>

#include "eplb/comm/cuda.hpp"
#include "eplb/comm/mpi.hpp"
#include "eplb/comm/transport.hpp"

struct ncclComm;

#define EPLB_NCCL_CHECK(call) ::eplb::comm::check_nccl((call), #call, __FILE__, __LINE__, nullptr)

namespace eplb::comm {

/// Throws NcclError "[rank r] <call> failed: <ncclGetErrorString>: <ncclGetLastError> (file:line)"
/// unless rc is ncclSuccess (or ncclInProgress, which callers poll).
void check_nccl(int rc, const char* call, const char* file, int line, ncclComm* comm);

/// Seconds a rank waits for NCCL work before aborting the communicator
/// (EPLB_NCCL_TIMEOUT_S, default 120; docs/ENVIRONMENT.md).
double nccl_timeout_seconds();

/// A non-blocking NCCL communicator over the ranks of an MPI communicator. Rank 0 creates the
/// unique id and broadcasts it over MPI. Every wait is bounded: on timeout or asynchronous
/// error the communicator is aborted (this rank returns; peers blocked on it leave through
/// their own bounded waits) and NcclError is thrown. Destroyed with ncclCommDestroy, or ncclCommAbort after a failure. Move-only.
class NcclComm {
 public:
  /// Collective over `mpi`; uses the current CUDA device. `setup_error`: a failure of this
  /// rank's set-up before the call (a CUDA error), agreed on in the first collective step so
  /// that every rank throws it (NcclError) instead of some entering the NCCL set-up alone.
  explicit NcclComm(const MpiComm& mpi, double timeout_s = nccl_timeout_seconds(),
                    std::optional<std::string> setup_error = std::nullopt);
  ~NcclComm();
  NcclComm(NcclComm&& o) noexcept;
  NcclComm& operator=(NcclComm&& o) noexcept;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  ncclComm* get() const { return comm_; }
  double timeout_s() const { return timeout_s_; }
  /// Polls until the last operation is no longer in progress; throws (after aborting) on
  /// error or timeout. `what` names the operation in messages.
  void wait_ready(const char* what);
  /// Waits for `stream` with the same bound, checking the communicator for async errors.
  void wait_stream(cuda_stream stream, const char* what);
  /// Waits for a recorded `event` with the same bound.
  void wait_event(cuda_event event, const char* what);
  void abort() noexcept;

 private:
  template <class Done>
  void poll(const char* what, Done done);
  /// A cudaEventQuery / cudaStreamQuery result: true when complete, false when not yet; an
  /// error aborts the communicator and throws CudaError.
  bool completed(int query_result);
  ncclComm* comm_ = nullptr;
  bool failed_ = false;
  double timeout_s_ = 120;
  int rank_ = 0;
};

/// Device-memory transport: the sends and receives of a batch go into one NCCL group on the
/// given stream (the transfer lane); copies are cudaMemcpyAsync on that stream or on the
/// transport's second stream (the copy lane), ordered across lanes by CUDA events, so
/// packing and unpacking overlap transfers without host synchronisation. The host waits at
/// synchronize() and, every kIssueAhead stream operations, for the work queued before the
/// previous throttle point (issued()); each wait is bounded by EPLB_NCCL_TIMEOUT_S.
class NcclTransport final : public Transport {
 public:
  /// Runs independent device copies on a stream (cudaError_t as int). The runtime supplies a
  /// kernel (runtime/cuda/transport.hpp) that uses few SMs, so copies overlap transfers.
  using CopyBatchFn = int (*)(std::span<const CopyOp> ops, cuda_stream stream);

  /// Collective over `mpi` (creates the NCCL communicator); `mpi` is borrowed and must
  /// outlive the transport. `stream` is borrowed: the engine's stream, on which routing reads
  /// the maps. copy_all() uses `copy_batch` when given, else cudaMemcpyBatchAsync.
  /// `setup_error`: a failure of the caller's rank-local set-up, thrown on every rank (as
  /// is one of this constructor's own rank-local steps) before any rank starts NCCL.
  NcclTransport(const MpiComm& mpi, cuda_stream stream, CopyBatchFn copy_batch = nullptr,
                std::optional<std::string> setup_error = std::nullopt);
  std::string_view name() const override { return "nccl"; }
  MemorySpace memory_space() const override { return MemorySpace::device; }
  void begin_batch() override;
  void send(const std::byte* buf, std::size_t bytes, int peer) override;
  void recv(std::byte* buf, std::size_t bytes, int peer) override;
  void end_batch() override;
  using Transport::copy;
  void copy(std::byte* dst, const std::byte* src, std::size_t bytes, Lane lane) override;
  void copy_all(std::span<const CopyOp> ops, Lane lane) override;
  Mark mark(Lane lane) override;
  double elapsed_ms(Mark from, Mark to) override;
  void wait(Lane lane, Mark m) override;
  void synchronize() override;
  /// Creates the events of `marks` marks and sizes copy_all()'s argument arrays, so that
  /// issuing a migration allocates nothing in eplb (NCCL and CUDA may still allocate inside).
  void reserve(std::size_t messages, std::size_t copies, std::size_t marks) override;
  Buffer allocate(std::size_t bytes) override;
  /// Exchanges `bytes` with every peer in one group and waits (bounded). NCCL sets up its
  /// point-to-point connections lazily, at the first send/recv with each peer (about a
  /// second at 4 ranks on the H200 machine); calling this at start-up moves that cost out of
  /// the first migration. Collective over the communicator; the ranks agree on the buffers'
  /// allocation before the exchange (a failure throws on every rank, naming the rank).
  void connect_peers(std::size_t bytes = std::size_t{1} << 20);
  cuda_stream stream() const { return stream_; }
  NcclComm& comm() { return comm_; }

 private:
  cuda_stream lane_stream(Lane lane) const {
    return lane == Lane::transfer ? stream_ : copy_stream_->get();
  }

  // Rank-local set-up first; its failure travels into comm_'s first agreement.
  std::optional<std::string> setup_error_;
  std::optional<CudaStream> copy_stream_;  ///< engaged once the constructor returned
  NcclComm comm_;
  const MpiComm* mpi_;
  cuda_stream stream_;
  CopyBatchFn copy_batch_ = nullptr;
  int rank_ = 0, size_ = 1;
  std::vector<CudaEvent> events_;  ///< marks; reused after synchronize()
  std::vector<void*> dsts_;  ///< copy_all() argument arrays (reused)
  std::vector<const void*> srcs_;
  std::vector<std::size_t> sizes_;
  int next_event_ = 0;
  bool in_group_ = false;
  /// Bounded issue-ahead: stream operations issued since the last throttle point, and the
  /// events recorded there (transfer, copy). A CUDA stream queues about a thousand operations;
  /// past that the next launch blocks the host, where no timeout runs. Without a bound, a rank
  /// whose peer stopped posting (it failed host-side) could queue until it blocks inside a
  /// launch and never reach synchronize()'s bounded wait: every rank would hang.
  static constexpr std::size_t kIssueAhead = 128;
  std::size_t issued_ = 0;
  std::optional<CudaEvent> throttle_[2];
  /// Counts `n` stream operations; every kIssueAhead of them (outside a group) waits, bounded
  /// like synchronize(), for the operations issued before the previous throttle point.
  void issued(std::size_t n);
  /// check_nccl for a call inside a batch; on failure first closes the open group and aborts
  /// this rank's communicator (its later calls fail at once; peers waiting on this batch
  /// are released by their own bounded wait, EPLB_NCCL_TIMEOUT_S).
  void check_in_batch(int rc, const char* call, int line);
};

}  // namespace eplb::comm
