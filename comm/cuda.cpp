#include "eplb/comm/cuda.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "eplb/comm/transport.hpp"  // seconds_from_env

namespace eplb::comm {

void check_cuda(int rc, const char* call, const char* file, int line) {
  if (rc == cudaSuccess) return;
  const auto err = static_cast<cudaError_t>(rc);
  throw CudaError(detail::format_failure(detail::world_rank_or_minus_one(), call,
                                         std::string(cudaGetErrorName(err)) + ": " +
                                             cudaGetErrorString(err),
                                         file, line));
}

double cuda_timeout_seconds() {
  // Read at every wait (a program may change it), parsed, and a bad value reported, only when
  // it changed.
  static std::mutex m;
  static std::optional<std::string> last;
  static double value = 120.0;
  const char* v = std::getenv("EPLB_CUDA_TIMEOUT_S");
  const std::string now = v ? v : "";
  const std::lock_guard<std::mutex> lock(m);
  if (!last || *last != now) {
    value = seconds_from_env("EPLB_CUDA_TIMEOUT_S", 120.0);
    last = now;
  }
  return value;
}

int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int cuda_sm_count() {
  int device = 0, sms = 0;
  EPLB_CUDA_CHECK(cudaGetDevice(&device));
  EPLB_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

int select_device_for_rank(int world_rank) {
  const int n = cuda_device_count();
  if (n == 0) throw CudaError("no CUDA device visible to rank " + std::to_string(world_rank));
  int local = world_rank;
  if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) local = std::atoi(v);
  const int dev = local % n;
  EPLB_CUDA_CHECK(cudaSetDevice(dev));
  return dev;
}

CudaStream::CudaStream() { EPLB_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
CudaStream::CudaStream(int priority) {
  EPLB_CUDA_CHECK(cudaStreamCreateWithPriority(&s_, cudaStreamNonBlocking, priority));
}
std::pair<int, int> cuda_stream_priorities() {
  int least = 0, greatest = 0;
  EPLB_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  return {least, greatest};
}
CudaStream::~CudaStream() {
  if (s_ && cudaStreamDestroy(s_) != cudaSuccess) detail::log_error("cudaStreamDestroy failed");
}
CudaStream& CudaStream::operator=(CudaStream&& o) noexcept {
  if (this != &o) {
    if (s_) (void)cudaStreamDestroy(s_);
    s_ = std::exchange(o.s_, nullptr);
  }
  return *this;
}
void CudaStream::synchronize(const char* what, double timeout_s) const { wait_stream(s_, what, timeout_s); }

CudaEvent::CudaEvent(bool timing) {
  EPLB_CUDA_CHECK(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
}
CudaEvent::~CudaEvent() {
  if (e_ && cudaEventDestroy(e_) != cudaSuccess) detail::log_error("cudaEventDestroy failed");
}
CudaEvent& CudaEvent::operator=(CudaEvent&& o) noexcept {
  if (this != &o) {
    if (e_) (void)cudaEventDestroy(e_);
    e_ = std::exchange(o.e_, nullptr);
  }
  return *this;
}
void CudaEvent::record(cuda_stream s) const { EPLB_CUDA_CHECK(cudaEventRecord(e_, s)); }
void CudaEvent::wait(const char* what, double timeout_s) const {
  // Polls instead of cudaEventSynchronize, which has no bound. The first polls only yield (a
  // sleep lasts at least Linux's timer slack, ~50 us), so a short wait ends within a few
  // microseconds of the work; then the pause grows to 200 us, so a long one costs little CPU.
  const auto t0 = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(5);
  for (int poll = 0;; ++poll) {
    const cudaError_t q = cudaEventQuery(e_);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady)
      throw CudaError(detail::format_failure(detail::world_rank_or_minus_one(), what,
                                             std::string(cudaGetErrorName(q)) + ": " +
                                                 cudaGetErrorString(q),
                                             __FILE__, __LINE__));
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s) {
      char bound[32];
      std::snprintf(bound, sizeof bound, "%g", timeout_s);
      throw CudaError(detail::format_failure(
          detail::world_rank_or_minus_one(), what,
          std::string("did not complete within ") + bound +
              " s: work queued before it on the stream does not end (a kernel, or a collective "
              "whose peer failed); the stream is unusable, end the job (EPLB_CUDA_TIMEOUT_S sets "
              "the bound)",
          __FILE__, __LINE__));
    }
    if (poll < 200) {
      std::this_thread::yield();
      continue;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(2 * pause, std::chrono::microseconds(200));
  }
}
void wait_stream(cuda_stream s, const char* what, double timeout_s) {
  CudaEvent done(false);
  done.record(s);
  done.wait(what, timeout_s);
}
float CudaEvent::elapsed_ms(const CudaEvent& a, const CudaEvent& b) {
  float ms = 0;
  EPLB_CUDA_CHECK(cudaEventElapsedTime(&ms, a.e_, b.e_));
  return ms;
}

void* memory::DeviceAlloc::allocate(std::size_t bytes) {
  void* p = nullptr;
  EPLB_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}
void memory::DeviceAlloc::release(void* p) noexcept {
  if (p && cudaFree(p) != cudaSuccess) eplb::detail::log_error("cudaFree failed");
}
void* memory::PinnedAlloc::allocate(std::size_t bytes) {
  void* p = nullptr;
  EPLB_CUDA_CHECK(cudaMallocHost(&p, bytes));
  return p;
}
void memory::PinnedAlloc::release(void* p) noexcept {
  if (p && cudaFreeHost(p) != cudaSuccess) eplb::detail::log_error("cudaFreeHost failed");
}

void copy_async(void* dst, const void* src, std::size_t bytes, cuda_stream s) {
  if (bytes) EPLB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
}
void copy_batch_async(void* const* dsts, const void* const* srcs, const std::size_t* sizes,
                      std::size_t n, cuda_stream s) {
  if (n == 0) return;
#if CUDART_VERSION >= 12080
  // cudaMemcpyBatchAsync rejects zero-byte copies: leave them out.
  if (std::find(sizes, sizes + n, std::size_t{0}) != sizes + n) {
    thread_local std::vector<void*> d;
    thread_local std::vector<const void*> f;
    thread_local std::vector<std::size_t> z;
    d.clear();
    f.clear();
    z.clear();
    for (std::size_t i = 0; i < n; ++i)
      if (sizes[i]) {
        d.push_back(dsts[i]);
        f.push_back(srcs[i]);
        z.push_back(sizes[i]);
      }
    if (!z.empty()) copy_batch_async(d.data(), f.data(), z.data(), z.size(), s);
    return;
  }
  // It also rejects the legacy default stream and cannot be captured into a CUDA
  // graph: one cudaMemcpyAsync per copy there.
  bool batch = s != nullptr && s != cudaStreamLegacy;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (batch) EPLB_CUDA_CHECK(cudaStreamIsCapturing(s, &capture));
  if (!batch || capture != cudaStreamCaptureStatusNone) {
    for (std::size_t i = 0; i < n; ++i) copy_async(dsts[i], srcs[i], sizes[i], s);
    return;
  }
  cudaMemcpyAttributes attr{};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
  std::size_t first = 0;
#if CUDART_VERSION >= 13000
  EPLB_CUDA_CHECK(cudaMemcpyBatchAsync(dsts, srcs, sizes, n, &attr, &first, 1, s));
#else
  std::size_t fail = 0;
  EPLB_CUDA_CHECK(cudaMemcpyBatchAsync(const_cast<void**>(dsts), const_cast<void**>(srcs),
                                       const_cast<std::size_t*>(sizes), n, &attr, &first, 1,
                                       &fail, s));
#endif
#else
  for (std::size_t i = 0; i < n; ++i) copy_async(dsts[i], srcs[i], sizes[i], s);
#endif
}
void memset_async(void* dst, int value, std::size_t bytes, cuda_stream s) {
  if (bytes) EPLB_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, s));
}

}  // namespace eplb::comm
