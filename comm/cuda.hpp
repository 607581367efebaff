#pragma once
/// \file CUDA runtime handles (RAII, move-only) and the checked-call helper. Includes no CUDA
/// header: streams and events are forward-declared, so this compiles in pure C++ TUs.
#include <cstddef>
#include <utility>

#include "eplb/comm/error.hpp"

struct CUstream_st;
struct CUevent_st;

#define EPLB_CUDA_CHECK(call) ::eplb::comm::check_cuda((call), #call, __FILE__, __LINE__)

namespace eplb::comm {

using cuda_stream = CUstream_st*;
using cuda_event = CUevent_st*;

/// Throws CudaError "[rank r] <call> failed: <cudaGetErrorString> (file:line)" unless rc == 0.
void check_cuda(int rc, const char* call, const char* file, int line);

/// Seconds a rank waits for work queued on a CUDA stream outside NCCL (the load window's
/// copies, map uploads) before giving up (EPLB_CUDA_TIMEOUT_S, default 120;
/// docs/ENVIRONMENT.md).
double cuda_timeout_seconds();

/// Waits for the work queued on `s` so far (an event recorded there, CudaEvent::wait): bounded
/// by timeout_s; throws CudaError naming `what`.
void wait_stream(cuda_stream s, const char* what, double timeout_s = cuda_timeout_seconds());

/// Number of CUDA devices visible to this process; 0 when there is no driver or device
/// (never throws).
int cuda_device_count() noexcept;

/// Streaming multiprocessors of the current device.
int cuda_sm_count();

/// The current device's stream priorities {least, greatest} (e.g. {0, -5}).
std::pair<int, int> cuda_stream_priorities();

/// A device for this rank: local rank (OMPI_COMM_WORLD_LOCAL_RANK, else world rank) modulo
/// the device count. Calls cudaSetDevice and returns the device.
int select_device_for_rank(int world_rank);

class CudaStream {
 public:
  CudaStream();  ///< non-blocking stream on the current device
  /// Non-blocking stream with a scheduling priority (lower numbers run first; the device's
  /// range is given by cuda_stream_priorities()).
  explicit CudaStream(int priority);
  ~CudaStream();
  CudaStream(CudaStream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  CudaStream& operator=(CudaStream&& o) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cuda_stream get() const { return s_; }
  /// Waits for the work queued on the stream so far, for at most timeout_s seconds (polling;
  /// cudaStreamSynchronize has no bound). Throws CudaError naming `what` on a CUDA error or
  /// on the timeout; after a timeout the stream is unusable (see CudaEvent::wait).
  void synchronize(const char* what = "CudaStream::synchronize", double timeout_s = cuda_timeout_seconds()) const;

 private:
  cuda_stream s_ = nullptr;
};

class CudaEvent {
 public:
  explicit CudaEvent(bool timing = true);
  ~CudaEvent();
  CudaEvent(CudaEvent&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& o) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cuda_event get() const { return e_; }
  void record(cuda_stream s) const;
  /// wait(what, timeout_s): bounded, unlike cudaEventSynchronize.
  void synchronize(const char* what = "CudaEvent::synchronize", double timeout_s = cuda_timeout_seconds()) const {
    wait(what, timeout_s);
  }
  /// Waits for the work recorded before the event, polling, for at most timeout_s seconds.
  /// Throws CudaError naming `what` on a CUDA error, or when the work has not completed in
  /// time: then the work stays queued (something before it on the stream does not end: a
  /// kernel, or a collective whose peer failed) and the stream is unusable; end the job.
  void wait(const char* what, double timeout_s = cuda_timeout_seconds()) const;
  /// Milliseconds between two recorded, completed events.
  static float elapsed_ms(const CudaEvent& start, const CudaEvent& stop);

 private:
  cuda_event e_ = nullptr;
};

namespace memory {
struct DeviceAlloc {  // cudaMalloc / cudaFree
  static void* allocate(std::size_t bytes);
  static void release(void* p) noexcept;
};
struct PinnedAlloc {  // cudaMallocHost / cudaFreeHost
  static void* allocate(std::size_t bytes);
  static void release(void* p) noexcept;
};
}  // namespace memory

/// Owning CUDA memory of one kind (device or page-locked host), move-only.
template <class Alloc>
class CudaMemory {
 public:
  CudaMemory() = default;
  explicit CudaMemory(std::size_t bytes) : p_(bytes ? Alloc::allocate(bytes) : nullptr), n_(bytes) {}
  ~CudaMemory() { Alloc::release(p_); }
  CudaMemory(CudaMemory&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  CudaMemory& operator=(CudaMemory&& o) noexcept {
    if (this != &o) {
      Alloc::release(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;
  void* get() const { return p_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  std::size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
};

using DeviceBuffer = CudaMemory<memory::DeviceAlloc>;  ///< cudaMalloc / cudaFree
using PinnedBuffer = CudaMemory<memory::PinnedAlloc>;  ///< cudaMallocHost / cudaFreeHost

/// Stream-ordered copies (any direction: unified addressing).
void copy_async(void* dst, const void* src, std::size_t bytes, cuda_stream s);
void memset_async(void* dst, int value, std::size_t bytes, cuda_stream s);
/// n independent stream-ordered copies (dsts[i] <- srcs[i], sizes[i] bytes) in any order
/// among themselves: one cudaMemcpyBatchAsync where the runtime has it (CUDA >= 12.8; the
/// per-call host cost of thousands of cudaMemcpyAsync is what it saves), else a loop; also a
/// loop on the legacy default stream and on a capturing stream, which cudaMemcpyBatchAsync
/// rejects. Zero-byte entries are allowed (left out).
void copy_batch_async(void* const* dsts, const void* const* srcs, const std::size_t* sizes,
                      std::size_t n, cuda_stream s);

}  // namespace eplb::comm
