#pragma once
/// \file Synthetic expert weights in device memory for demos, tests and benchmarks: one
/// cudaMalloc per (layer, tensor) holding this rank's slots, filled with and checked against
/// runtime/pattern.hpp's patterns (through host copies).
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
  /// Writes every local slot's pattern for `placement` (synchronous).
  void fill(const algo::Placement& placement, int rank);
  /// Copies every tensor back and checks every slot; returns the problems (empty = all good).
  /// Copies on the legacy default stream, which does not wait for non-blocking streams: call
  /// it after the migration's streams are done (Engine::rebalance returns after
  /// Transport::synchronize; moe_sim also synchronizes its stream first).
  std::vector<std::string> verify(const algo::Placement& placement, int rank) const;
  std::size_t bytes_per_expert() const;

 private:
  int layers_, k_;
  std::vector<TensorSpec> specs_;
  std::vector<comm::DeviceBuffer> buffers_;  // [layer][tensor]
};

}  // namespace eplb::runtime::cuda
