#include "eplb/comm/nccl.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

namespace eplb::comm {

void check_nccl(int rc, const char* call, const char* file, int line, ncclComm* comm) {
  if (rc == ncclSuccess || rc == ncclInProgress) return;
  std::string msg = ncclGetErrorString(static_cast<ncclResult_t>(rc));
  const char* last = ncclGetLastError(comm);
  if (last && *last) msg += std::string(": ") + last;
  throw NcclError(detail::format_failure(detail::world_rank_or_minus_one(), call, msg, file, line));
}

double nccl_timeout_seconds() { return seconds_from_env("EPLB_NCCL_TIMEOUT_S", 120.0); }

NcclComm::NcclComm(const MpiComm& mpi, double timeout_s, std::optional<std::string> setup_error)
    : timeout_s_(timeout_s), rank_(mpi.rank()) {
  ncclUniqueId id;
  std::optional<std::string> err = std::move(setup_error);
  if (mpi.rank() == 0 && !err) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) err = std::string("ncclGetUniqueId failed: ") + ncclGetErrorString(rc);
  }
  throw_if_any_failed<NcclError>(mpi, err);
  EPLB_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi.get()));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t rc = ncclCommInitRankConfig(&comm_, mpi.size(), id, mpi.rank(), &config);
  try {
    check_nccl(rc, "ncclCommInitRankConfig", __FILE__, __LINE__, comm_);
    wait_ready("ncclCommInitRankConfig");
  } catch (const std::exception& e) {
    err = e.what();
  }
  try {
    throw_if_any_failed<NcclError>(mpi, err);
  } catch (...) {
    abort();  // the destructor will not run: release a communicator this rank did create
    throw;
  }
}

NcclComm::~NcclComm() {
  if (!comm_) return;
  if (failed_) {
    (void)ncclCommAbort(comm_);
    return;
  }
  // A non-blocking destroy may return ncclInProgress: poll (bounded) before giving up.
  ncclResult_t rc = ncclCommFinalize(comm_);
  const auto t0 = std::chrono::steady_clock::now();
  ncclResult_t state = rc;
  while (state == ncclInProgress &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < timeout_s_) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
    (void)ncclCommGetAsyncError(comm_, &state);
  }
  if (state != ncclSuccess) {
    detail::log_error("ncclCommFinalize did not complete; aborting the communicator");
    (void)ncclCommAbort(comm_);
  } else if (ncclCommDestroy(comm_) != ncclSuccess) {
    detail::log_error("ncclCommDestroy failed");
  }
}

NcclComm::NcclComm(NcclComm&& o) noexcept
    : comm_(std::exchange(o.comm_, nullptr)), failed_(o.failed_), timeout_s_(o.timeout_s_), rank_(o.rank_) {}

NcclComm& NcclComm::operator=(NcclComm&& o) noexcept {
  if (this != &o) {
    this->~NcclComm();
    comm_ = std::exchange(o.comm_, nullptr);
    failed_ = o.failed_;
    timeout_s_ = o.timeout_s_;
    rank_ = o.rank_;
  }
  return *this;
}

void NcclComm::abort() noexcept {
  if (comm_ && !failed_) {
    failed_ = true;
    (void)ncclCommAbort(comm_);
    comm_ = nullptr;
  }
}

/// Polls `done` until it returns true; aborts the communicator and throws NcclError on an
/// asynchronous NCCL error or after the timeout, so that no rank waits forever on a peer.
template <class Done>
void NcclComm::poll(const char* what, Done done) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    if (done()) return;
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm_, &state);
    if (rc != ncclSuccess) state = rc;
    if (state != ncclSuccess && state != ncclInProgress) {
      const std::string msg = std::string(what) + " failed: " + ncclGetErrorString(state) +
                              ": " + ncclGetLastError(comm_);
      abort();
      throw NcclError("[rank " + std::to_string(rank_) + "] " + msg);
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s_) {
      abort();
      throw NcclError("[rank " + std::to_string(rank_) + "] " + what + " did not complete within " +
                      std::to_string(timeout_s_) + " s (a peer failed or hangs); the NCCL "
                      "communicator was aborted");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclComm::wait_ready(const char* what) {
  poll(what, [&] {
    ncclResult_t state = ncclInProgress;
    return ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclSuccess;
  });
}

bool NcclComm::completed(int query_result) {
  const auto q = static_cast<cudaError_t>(query_result);
  if (q != cudaSuccess && q != cudaErrorNotReady) {
    abort();
    EPLB_CUDA_CHECK(q);
  }
  return q == cudaSuccess;
}

void NcclComm::wait_event(cuda_event event, const char* what) {
  poll(what, [&] { return completed(cudaEventQuery(event)); });
}

void NcclComm::wait_stream(cuda_stream stream, const char* what) {
  poll(what, [&] { return completed(cudaStreamQuery(stream)); });
}

namespace {
/// The copy lane's stream, or nullopt with the reason in `error` (rank-local set-up).
std::optional<CudaStream> make_copy_stream(std::optional<std::string>& error) {
  if (error) return std::nullopt;
  try {
    return CudaStream();
  } catch (const std::exception& e) {
    error = std::string("creating the copy stream failed: ") + e.what();
    return std::nullopt;
  }
}
}  // namespace

NcclTransport::NcclTransport(const MpiComm& mpi, cuda_stream stream, CopyBatchFn copy_batch,
                             std::optional<std::string> setup_error)
    : setup_error_(std::move(setup_error)),
      copy_stream_(make_copy_stream(setup_error_)),
      comm_(mpi, nccl_timeout_seconds(), setup_error_),
      mpi_(&mpi),
      stream_(stream),
      copy_batch_(copy_batch),
      rank_(mpi.rank()),
      size_(mpi.size()) {}

void NcclTransport::begin_batch() {
  EPLB_NCCL_CHECK(ncclGroupStart());
  in_group_ = true;
}

void NcclTransport::check_in_batch(int rc, const char* call, int line) {
  if (rc == ncclSuccess || rc == ncclInProgress) return;
  try {
    check_nccl(rc, call, __FILE__, line, comm_.get());  // the message, while the comm exists
  } catch (...) {
    if (in_group_) {
      in_group_ = false;
      (void)ncclGroupEnd();
    }
    comm_.abort();
    throw;
  }
}

void NcclTransport::send(const std::byte* buf, std::size_t bytes, int peer) {
  check_in_batch(ncclSend(buf, bytes, ncclUint8, peer, comm_.get(), stream_), "ncclSend", __LINE__);
}

void NcclTransport::recv(std::byte* buf, std::size_t bytes, int peer) {
  check_in_batch(ncclRecv(buf, bytes, ncclUint8, peer, comm_.get(), stream_), "ncclRecv", __LINE__);
}

void NcclTransport::end_batch() {
  in_group_ = false;
  const ncclResult_t rc = ncclGroupEnd();
  check_in_batch(rc, "ncclGroupEnd", __LINE__);
  if (rc == ncclInProgress) comm_.wait_ready("ncclGroupEnd");
  issued(2);  // the group's kernel, and NCCL's own bookkeeping on the stream
}

void NcclTransport::issued(std::size_t n) {
  issued_ += n;
  if (issued_ < kIssueAhead || in_group_) return;  // never wait with a group open
  issued_ = 0;
  if (throttle_[0] && throttle_[1]) {  // the previous point's work is done before more is queued
    comm_.wait_event(throttle_[0]->get(), "migration (transfers queued ahead)");
    comm_.wait_event(throttle_[1]->get(), "migration (copies queued ahead)");
  } else {  // the first point (or the second event's creation failed last time: both anew)
    throttle_[0].emplace(false);
    throttle_[1].emplace(false);
  }
  throttle_[0]->record(stream_);
  throttle_[1]->record(copy_stream_->get());
}

void NcclTransport::copy(std::byte* dst, const std::byte* src, std::size_t bytes, Lane lane) {
  copy_async(dst, src, bytes, lane_stream(lane));
  issued(1);
}

void NcclTransport::copy_all(std::span<const CopyOp> ops, Lane lane) {
  if (copy_batch_) {
    EPLB_CUDA_CHECK(copy_batch_(ops, lane_stream(lane)));
    // An upper bound on its launches: the batched-copy kernel takes up to 1024 ops per launch
    // (runtime/cuda/kernels.cu), and counting more than were issued only waits earlier.
    issued(1 + ops.size() / kIssueAhead);
    return;
  }
  // In chunks, each counted: where the batch call is not available it is one copy per op.
  for (std::size_t at = 0; at < ops.size(); at += kIssueAhead) {
    dsts_.clear();
    srcs_.clear();
    sizes_.clear();
    for (const auto& op : ops.subspan(at, std::min(kIssueAhead, ops.size() - at))) {
      if (!op.bytes) continue;
      dsts_.push_back(op.dst);
      srcs_.push_back(op.src);
      sizes_.push_back(op.bytes);
    }
    copy_batch_async(dsts_.data(), srcs_.data(), sizes_.data(), dsts_.size(), lane_stream(lane));
    issued(dsts_.size());
  }
}

void NcclTransport::reserve(std::size_t /*messages*/, std::size_t copies, std::size_t marks) {
  const std::size_t args = std::min(copies, kIssueAhead);  // copy_all() passes at most this many at once
  dsts_.reserve(args);
  srcs_.reserve(args);
  sizes_.reserve(args);
  events_.reserve(marks);
  while (events_.size() < marks) events_.emplace_back(migration_tracing());
}

Transport::Mark NcclTransport::mark(Lane lane) {
  // Timing-capable events only when tracing reads them (cheaper to wait on otherwise).
  if (next_event_ == static_cast<int>(events_.size())) events_.emplace_back(migration_tracing());
  events_[static_cast<std::size_t>(next_event_)].record(lane_stream(lane));
  issued(1);
  return next_event_++;
}

void NcclTransport::wait(Lane lane, Mark m) {
  EPLB_CUDA_CHECK(cudaStreamWaitEvent(lane_stream(lane), events_.at(static_cast<std::size_t>(m)).get(), 0));
  issued(1);
}

double NcclTransport::elapsed_ms(Mark from, Mark to) {
  if (!migration_tracing()) return -1;
  return CudaEvent::elapsed_ms(events_.at(static_cast<std::size_t>(from)),
                               events_.at(static_cast<std::size_t>(to)));
}

void NcclTransport::synchronize() {
  comm_.wait_stream(copy_stream_->get(), "migration (copies)");
  comm_.wait_stream(stream_, "migration");
  next_event_ = 0;  // every recorded mark has completed: the events can be reused
}

void NcclTransport::connect_peers(std::size_t bytes) {
  const int P = size_, me = rank_;
  if (P < 2) return;
  // Allocated and agreed on before the exchange: a rank out of memory must not leave the
  // others to time out in the group (and report the timeout instead of the cause).
  Buffer send{nullptr, [](std::byte*) {}}, recv{nullptr, [](std::byte*) {}};
  std::optional<std::string> err;
  try {
    send = allocate(bytes);
    recv = allocate(bytes * static_cast<std::size_t>(P));
    EPLB_CUDA_CHECK(cudaMemsetAsync(send.get(), 0, bytes, stream_));
  } catch (const std::exception& e) {
    err = std::string("connect_peers: ") + e.what();
  }
  throw_if_any_failed<CudaError>(*mpi_, err);
  begin_batch();
  for (int p = 0; p < P; ++p) {
    if (p == me) continue;
    this->send(send.get(), bytes, p);
    this->recv(recv.get() + static_cast<std::size_t>(p) * bytes, bytes, p);
  }
  end_batch();
  synchronize();
}

Buffer NcclTransport::allocate(std::size_t bytes) {
  void* p = nullptr;
  EPLB_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 256));
  return Buffer(static_cast<std::byte*>(p), [](std::byte* q) {
    if (cudaFree(q) != cudaSuccess) detail::log_error("cudaFree (staging) failed");
  });
}

}  // namespace eplb::comm
