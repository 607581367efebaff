#pragma once
/// \file Launchers of eplb's CUDA kernels. Each returns the cudaError_t of the launch as an
/// int (0 = success): callers wrap them in EPLB_CUDA_CHECK. Includes no CUDA header (streams forward-declared);
/// the kernels live in kernels.cu. Host references: runtime/routing.hpp.
#include <cstdint>

struct CUstream_st;

namespace eplb::runtime::cuda {

/// Device view of one layer's maps (see runtime::LayerMaps).
struct DeviceLayerMaps {
  const int* log2phy = nullptr;  ///< [E][X] device
  const int* logcnt = nullptr;   ///< [E] device
  int num_logical = 0;
  int max_replicas = 0;
};

/// One kernel: for each of the n entries of topk_ids (int32 or int64, device), writes the
/// physical slot to slots_out (device, may be null) exactly as route_and_count_host does
/// (position % count, or the first replica in [local_begin, local_end) when non-empty), and
/// adds 1 to counts[e] (device, [E] uint64). Out-of-range ids add 1 to *errors (device) and
/// get slot -1; with skip_negative_ids, negative ids (no expert selected: DeepEP's -1, padded
/// tokens) get slot -1 and are not errors (pass RuntimeConfig::skip_negative_ids).
/// Stream-ordered; no host synchronisation.
int launch_route_and_count(const void* topk_ids, bool ids_are_int64, long long n,
                            const DeviceLayerMaps& maps, int local_begin, int local_end,
                            int* slots_out, unsigned long long* counts,
                            unsigned long long* errors, CUstream_st* stream,
                            bool skip_negative_ids = false);

/// One device-to-device copy of launch_copy_batch.
struct CopySpec {
  void* dst;
  const void* src;
  unsigned long long bytes;
};

/// Copies ops[0..n) (device memory, independent: no op reads or writes another's
/// destination) with kernels of at most `blocks` thread blocks of `threads` (256, 512 or
/// 1024; others mean 1024) each, so that the copies leave the rest of the GPU to work that
/// runs beside them (NCCL transfers). 16-byte
/// accesses where dst, src and size allow, bytes otherwise. One launch per 1024 ops (the
/// descriptors travel as kernel parameters: no device memory, no host synchronisation).
int launch_copy_batch(const CopySpec* ops, unsigned long long n, int blocks, int threads,
                      CUstream_st* stream);

/// out[i] = sum over w < window of ring[w * n + i], for i < n (device arrays).
int launch_window_sum(const unsigned long long* ring, int window, long long n,
                       long long* out, CUstream_st* stream);

}  // namespace eplb::runtime::cuda
