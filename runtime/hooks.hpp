#pragma once
/// \file Extension points of the engine for other memory spaces (the CUDA backend).
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "algo/placement.hpp"

namespace eplb::runtime {

/// Where this rank's load comes from at a rebalance (default: the engine's host window).
class LoadSource {
 public:
  virtual ~LoadSource() = default;
  /// out[L][E] = this rank's counts over the window. Returns the first input error recorded
  /// since the last call (the engine then stops the rebalance on every rank).
  virtual std::optional<std::string> collect(std::span<std::int64_t> out) = 0;
  /// Closes the current pass (called by Engine::step on every pass).
  virtual void end_pass() = 0;

  /// Optional device path (RuntimeConfig::device_allreduce with a CUDA-aware MPI): reduce
  /// the window into a device buffer of [L][E] int64 and return it (and the first input
  /// error, as collect() does); nullptr = not supported (the host path is used).
  virtual std::int64_t* reduce_on_device(std::optional<std::string>& /*error*/) { return nullptr; }
  /// After the allreduce on that buffer: one device->host copy of the result into out.
  virtual void download_reduced(std::span<std::int64_t> /*out*/) {}
};

/// Receives the placement maps as the migration makes them true, layer by layer.
class MapListener {
 public:
  virtual ~MapListener() = default;
  /// Before any weight of `next` moves (host side; may stage the new maps).
  virtual void prepare(const algo::Placement& next) = 0;
  /// After layer `layer`'s weights are in place (device transports: stream-ordered after
  /// them), switch that layer's maps.
  virtual void commit_layer(int layer) = 0;
};

}  // namespace eplb::runtime
