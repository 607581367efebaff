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
