#include "eplb/runtime/cuda/kernels.hpp"

#include <cuda_runtime.h>


namespace eplb::runtime::cuda {
namespace {

constexpr int kThreads = 256;
// Experts counted in a shared-memory histogram per block when E is at most this.
constexpr int kSmemExperts = 8192;

template <class Id, bool kSmem>
__global__ void route_and_count_kernel(const Id* __restrict__ ids, long long n,
                                       const int* __restrict__ log2phy,
                                       const int* __restrict__ logcnt, int E, int X,
                                       int local_begin, int local_end, int* __restrict__ slots,
                                       unsigned long long* __restrict__ counts,
                                       unsigned long long* __restrict__ errors,
                                       bool skip_negative) {
  extern __shared__ unsigned int hist[];
  if (kSmem) {
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
    __syncthreads();
  }
  unsigned int bad = 0;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const long long e = static_cast<long long>(ids[i]);
    if (e < 0 || e >= E) {
      bad += !(skip_negative && e < 0);
      if (slots) slots[i] = -1;
      continue;
    }
    if (slots) {
      const int* reps = log2phy + e * X;
      const int cnt = logcnt[e];
      int slot = reps[i % cnt];
      if (local_begin < local_end)
        for (int r = 0; r < cnt; ++r) {
          const int s = reps[r];
          if (s >= local_begin && s < local_end) {
            slot = s;
            break;
          }
        }
      slots[i] = slot;
    }
    if (kSmem) atomicAdd(&hist[e], 1u);
    else atomicAdd(&counts[e], 1ull);
  }
  if (bad) atomicAdd(errors, static_cast<unsigned long long>(bad));
  if (kSmem) {
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x)
      if (hist[e]) atomicAdd(&counts[e], static_cast<unsigned long long>(hist[e]));
  }
}

__global__ void window_sum_kernel(const unsigned long long* __restrict__ ring, int window,
                                  long long n, long long* __restrict__ out) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    unsigned long long s = 0;
    for (int w = 0; w < window; ++w) s += ring[w * n + i];
    out[i] = static_cast<long long>(s);
  }
}

template <class Id>
int launch_typed(const Id* ids, long long n, const DeviceLayerMaps& m, int lb, int le, int* slots,
                  unsigned long long* counts, unsigned long long* errors, cudaStream_t s,
                  bool skip_negative) {
  if (n <= 0) return cudaSuccess;
  long long blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 1024) blocks = 1024;
  // A shared-memory histogram pays off once there are several ids per expert and block;
  // small (decode) batches go straight to global atomics.
  if (m.num_logical <= kSmemExperts && n > 4096) {
    route_and_count_kernel<Id, true><<<static_cast<int>(blocks), kThreads,
                                       m.num_logical * sizeof(unsigned int), s>>>(
        ids, n, m.log2phy, m.logcnt, m.num_logical, m.max_replicas, lb, le, slots, counts, errors,
        skip_negative);
  } else {
    route_and_count_kernel<Id, false><<<static_cast<int>(blocks), kThreads, 0, s>>>(
        ids, n, m.log2phy, m.logcnt, m.num_logical, m.max_replicas, lb, le, slots, counts, errors,
        skip_negative);
  }
  return cudaGetLastError();
}

constexpr int kCopyOpsPerLaunch = 1024;  // 24 KiB of parameters (limit: 32 KiB, CUDA >= 12.1)

struct CopyList {
  CopySpec op[kCopyOpsPerLaunch];
  int n;
};

/// Every block takes part in every copy: thread t of the grid moves elements t, t + stride,
/// ... of each op in turn (4 in flight per thread), with the widest access both pointers
/// allow; a size that is not a multiple of that width copies its last bytes one by one
/// (a bf16 tensor of 2 mod 16 bytes keeps 16-byte accesses for its body).
template <class T>
__device__ void copy_strided(char* dst, const char* src, unsigned long long bytes,
                             unsigned long long first, unsigned long long stride) {
  T* d = reinterpret_cast<T*>(dst);
  const T* s = reinterpret_cast<const T*>(src);
  const unsigned long long n = bytes / sizeof(T);
  unsigned long long i = first;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const T a = s[i], b = s[i + stride], c = s[i + 2 * stride], e = s[i + 3 * stride];
    d[i] = a;
    d[i + stride] = b;
    d[i + 2 * stride] = c;
    d[i + 3 * stride] = e;
  }
  for (; i < n; i += stride) d[i] = s[i];
}

template <int Threads>
__global__ void __launch_bounds__(Threads) copy_batch_kernel(const __grid_constant__ CopyList list) {
  const unsigned long long first = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x;
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  for (int k = 0; k < list.n; ++k) {
    char* dst = static_cast<char*>(list.op[k].dst);
    const char* src = static_cast<const char*>(list.op[k].src);
    const unsigned long long bytes = list.op[k].bytes;
    const unsigned long long align =
        reinterpret_cast<unsigned long long>(dst) | reinterpret_cast<unsigned long long>(src);
    unsigned long long body = 0;
    if ((align & 15) == 0) {
      body = bytes & ~15ull;
      copy_strided<int4>(dst, src, body, first, stride);
    } else if ((align & 3) == 0) {
      body = bytes & ~3ull;
      copy_strided<int>(dst, src, body, first, stride);
    }
    if (body < bytes) copy_strided<char>(dst + body, src + body, bytes - body, first, stride);
  }
}

}  // namespace

int launch_copy_batch(const CopySpec* ops, unsigned long long n, int blocks, int threads,
                      CUstream_st* stream) {
  if (blocks < 1) blocks = 1;
  if (threads != 256 && threads != 512) threads = 1024;
  CopyList list;
  for (unsigned long long i = 0; i < n; i += kCopyOpsPerLaunch) {
    const unsigned long long m = n - i < kCopyOpsPerLaunch ? n - i : kCopyOpsPerLaunch;
    for (unsigned long long j = 0; j < m; ++j) list.op[j] = ops[i + j];
    list.n = static_cast<int>(m);
    if (threads == 256)
      copy_batch_kernel<256><<<blocks, 256, 0, stream>>>(list);
    else if (threads == 512)
      copy_batch_kernel<512><<<blocks, 512, 0, stream>>>(list);
    else
      copy_batch_kernel<1024><<<blocks, 1024, 0, stream>>>(list);
    const cudaError_t rc = cudaGetLastError();
    if (rc != cudaSuccess) return rc;
  }
  return cudaSuccess;
}

int launch_route_and_count(const void* ids, bool ids_are_int64, long long n,
                            const DeviceLayerMaps& maps, int local_begin, int local_end,
                            int* slots_out, unsigned long long* counts,
                            unsigned long long* errors, CUstream_st* stream, bool skip_negative_ids) {
  if (ids_are_int64)
    return launch_typed(static_cast<const long long*>(ids), n, maps, local_begin, local_end, slots_out,
                 counts, errors, stream, skip_negative_ids);
  return launch_typed(static_cast<const int*>(ids), n, maps, local_begin, local_end, slots_out, counts,
                 errors, stream, skip_negative_ids);
}

int launch_window_sum(const unsigned long long* ring, int window, long long n, long long* out,
                      CUstream_st* stream) {
  if (n <= 0) return cudaSuccess;
  long long blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 4096) blocks = 4096;
  window_sum_kernel<<<static_cast<int>(blocks), kThreads, 0, stream>>>(ring, window, n, out);
  return cudaGetLastError();
}

}  // namespace eplb::runtime::cuda
