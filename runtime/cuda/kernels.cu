#include "runtime/cuda/kernels.hpp"

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
                                       unsigned long long* __restrict__ errors) {
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
      ++bad;
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
                  unsigned long long* counts, unsigned long long* errors, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  long long blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 1024) blocks = 1024;
  // A shared-memory histogram pays off once there are several ids per expert and block;
  // small (decode) batches go straight to global atomics.
  if (m.num_logical <= kSmemExperts && n > 4096) {
    route_and_count_kernel<Id, true><<<static_cast<int>(blocks), kThreads,
                                       m.num_logical * sizeof(unsigned int), s>>>(
        ids, n, m.log2phy, m.logcnt, m.num_logical, m.max_replicas, lb, le, slots, counts, errors);
  } else {
    route_and_count_kernel<Id, false><<<static_cast<int>(blocks), kThreads, 0, s>>>(
        ids, n, m.log2phy, m.logcnt, m.num_logical, m.max_replicas, lb, le, slots, counts, errors);
  }
  return cudaGetLastError();
}

}  // namespace

int launch_route_and_count(const void* ids, bool ids_are_int64, long long n,
                            const DeviceLayerMaps& maps, int local_begin, int local_end,
                            int* slots_out, unsigned long long* counts,
                            unsigned long long* errors, CUstream_st* stream) {
  if (ids_are_int64)
    return launch_typed(static_cast<const long long*>(ids), n, maps, local_begin, local_end, slots_out,
                 counts, errors, stream);
  return launch_typed(static_cast<const int*>(ids), n, maps, local_begin, local_end, slots_out, counts,
                 errors, stream);
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
