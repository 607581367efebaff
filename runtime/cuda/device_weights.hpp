#pragma once
/// \file Synthetic expert weights in device memory for demos, tests and benchmarks: one
/// cudaMalloc per (layer, tensor) holding this rank's slots, filled with and checked against
/// runtime/pattern.hpp's patterns through one page-locked staging buffer of at most
/// kStagingBytes (whole slots; one slot when a slot is larger), so host memory stays bounded
/// whatever the model's size.
#include <string>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/comm/cuda.hpp"
#include "eplb/runtime/weights.hpp"

namespace eplb::runtime::cuda {

struct TensorSpec {
  std::string name;
  std::size_t bytes_per_slot;
};

class DeviceWeightSet {
 public:
  DeviceWeightSet(int num_layers, int slots_per_rank, const std::vector<TensorSpec>& tensors);
  /// A registry over the device buffers (borrowed: this object must outlive its users).
  WeightRegistry registry() const;
  /// Writes every local slot's pattern for `placement` (synchronous). Throws
  /// std::invalid_argument when the placement has no slots for `rank` in this set's shape.
  void fill(const algo::Placement& placement, int rank);
  /// Copies every tensor back and checks every slot; returns the problems (empty = all good).
  /// Copies on the legacy default stream, which does not wait for non-blocking streams: call
  /// it after the migration's streams are done (Engine::rebalance returns after
  /// Transport::synchronize; moe_sim also synchronizes its stream first).
  std::vector<std::string> verify(const algo::Placement& placement, int rank) const;
  std::size_t bytes_per_expert() const;

  /// The staging buffer's bound (64 MiB); a slot larger than that is staged whole.
  static constexpr std::size_t kStagingBytes = std::size_t{64} << 20;

 private:
  /// Calls f(layer, tensor, first slot, slots, staging) for each chunk of whole slots, after
  /// (download) or before (upload) the copy between the device tensor and the staging buffer.
  template <class F>
  void for_each_chunk(bool download, const char* what, F&& f) const;

  int layers_, k_;
  std::vector<TensorSpec> specs_;
  std::vector<comm::DeviceBuffer> buffers_;  // [layer][tensor]
  comm::PinnedBuffer staging_;
};

}  // namespace eplb::runtime::cuda
