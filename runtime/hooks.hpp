#pragma once
/// \file Extension points of the engine for other memory spaces (the CUDA backend).
#include <cstdint>
#include <optional>
#include <utility>
#include <span>
#include <string>

#include "eplb/algo/placement.hpp"

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
  /// Passes in this source's window (0: not known). When known, the engine checks it against
  /// RuntimeConfig::window_passes at every rebalance and restore: a window of another length
  /// would plan from other passes than the ranks agreed on.
  virtual int window_passes() const { return 0; }
  /// Whether this source skips negative router ids (nullopt: not known). When known, the
  /// engine checks it against RuntimeConfig::skip_negative_ids at every rebalance.
  virtual std::optional<bool> skips_negative_ids() const { return std::nullopt; }
  /// The layers and experts this source counts (nullopt: not known). When known, the engine
  /// checks them against the topology at every rebalance and every restore that brings a
  /// window, before any collective
  /// touches the source's buffers (reduce_on_device hands MPI a device buffer of that shape).
  virtual std::optional<std::pair<int, int>> layers_and_experts() const { return std::nullopt; }

  /// Optional device path (RuntimeConfig::device_allreduce with a CUDA-aware MPI): reduce
  /// the window into a device buffer of [L][E] int64 and return it (and the first input
  /// error, as collect() does); nullptr = not supported (the host path is used).
  virtual std::int64_t* reduce_on_device(std::optional<std::string>& /*error*/) { return nullptr; }
  /// After the allreduce on that buffer: one device->host copy of the result into out.
  virtual void download_reduced(std::span<std::int64_t> /*out*/) {}

  /// Checkpoints (runtime/engine_checkpoint.hpp): whether this source keeps a ring of W
  /// passes of [L][E] counts that download_ring() and upload_ring() copy. A source without
  /// one cannot be checkpointed with its window: Engine::window_ring() and Engine::restore()
  /// then fail with InvalidInput instead of saving or restoring the (unused) host window.
  virtual bool has_ring() const { return false; }
  /// This rank's ring [W][L][E] (oldest pass anywhere; `cursor` = the current pass), copied
  /// to the host. Only called when has_ring().
  virtual void download_ring(std::span<std::int64_t> /*ring*/, int& /*cursor*/) const {}
  /// Replaces the ring and the current pass (resume; values checked by the engine: the
  /// shape of the host window, counts >= 0, cursor in [0, W)). Only called when has_ring().
  virtual void upload_ring(std::span<const std::int64_t> /*ring*/, int /*cursor*/) {}
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
  /// After Engine::restore replaced the placement (a resume, a placement-only file): every
  /// layer's maps at once, before the next forward pass uses them. Default: prepare, then
  /// commit_layer for every layer (as ordered as commit_layer is; DeviceMaps overrides it
  /// with a synchronous upload).
  virtual void reset(const algo::Placement& placement) {
    prepare(placement);
    for (int l = 0; l < placement.num_layers(); ++l) commit_layer(l);
  }
};

}  // namespace eplb::runtime
