#pragma once
// moe_sim's memory backends: where the synthetic weights live, how routing is recorded, and
// how weights move (host memory + MPI, or device memory + NCCL).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "eplb/runtime/engine.hpp"

namespace eplb::sim {

struct TensorSpec {
  std::string name;
  std::size_t bytes;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  /// The weights' registry (memory owned by the backend).
  virtual runtime::WeightRegistry registry() = 0;
  /// Writes every local slot's pattern for `placement`.
  virtual void fill(const algo::Placement& placement, int rank) = 0;
  /// Checks every local slot; the problems found (empty = every byte right).
  virtual std::vector<std::string> verify(const algo::Placement& placement, int rank) = 0;
  /// Empty = the engine's default (MPI host transport).
  virtual runtime::TransportFactory transport() = 0;
  /// Connects device load window / maps to the engine (after it is constructed).
  virtual void attach(runtime::Engine& engine) = 0;
  /// Router output of one layer for the current pass.
  virtual void record(runtime::Engine& engine, int layer, std::span<const std::int32_t> topk_ids) = 0;
};

std::unique_ptr<Backend> make_host_backend(const algo::Topology& t, const std::vector<TensorSpec>& specs);
/// CUDA devices visible to this process (0 without CUDA support or without a device).
int cuda_devices();
/// Throws std::invalid_argument when this build has no CUDA/NCCL or no device is visible.
/// skip_negative_ids: RuntimeConfig::skip_negative_ids, for the device load window.
std::unique_ptr<Backend> make_cuda_backend(const algo::Topology& t, const std::vector<TensorSpec>& specs,
                                           int window_passes, int rank, bool skip_negative_ids);

}  // namespace eplb::sim
