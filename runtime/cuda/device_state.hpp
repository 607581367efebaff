#pragma once
/// \file GPU-resident engine state: the load window [W][L][E] and the routing maps. No CUDA
/// header needed; both work on one stream (the engine's / the model's).
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "algo/placement.hpp"
#include "comm/cuda.hpp"
#include "runtime/cuda/kernels.hpp"
#include "runtime/hooks.hpp"

namespace eplb::runtime::cuda {

/// The device load window: W passes of [L][E] uint64 counters that the routing kernel adds
/// to, plus a device error counter for out-of-range ids. At a rebalance, collect() reduces
/// over W on the device, then makes exactly one device->host copy (counts and error counter
/// together) into pinned memory, and waits for it.
class DeviceLoadWindow final : public LoadSource {
 public:
  DeviceLoadWindow(int num_layers, int num_logical, int window_passes, comm::cuda_stream stream);

  /// Counters of `layer` in the current pass (device, [E]).
  unsigned long long* counts(int layer) const;
  unsigned long long* errors() const { return errors_.as<unsigned long long>(); }
  comm::cuda_stream stream() const { return stream_; }

  std::optional<std::string> collect(std::span<std::int64_t> out) override;
  void end_pass() override;
  int window_passes() const override { return window_; }
  std::int64_t* reduce_on_device(std::optional<std::string>& error) override;
  void download_reduced(std::span<std::int64_t> out) override;

  /// Checkpoints: the whole ring [W][L][E] and cursor, copied to the host or replaced
  /// (synchronous on the window's stream).
  bool has_ring() const override { return true; }
  void download_ring(std::span<std::int64_t> ring, int& cursor) const override;
  void upload_ring(std::span<const std::int64_t> ring, int cursor) override;

 private:
  int layers_, logical_, window_, cursor_ = 0;
  comm::cuda_stream stream_;
  comm::DeviceBuffer ring_, errors_, sum_;
  comm::PinnedBuffer host_;
};

/// Routing maps on the device: log2phy [L][E][Xcap] (Xcap = R - E + 1, the most replicas any
/// placement can give one expert) and logcnt [L][E]. A MapListener for the engine: the maps
/// of layer l are switched on the stream right after layer l's weights are in place.
class DeviceMaps final : public MapListener {
 public:
  /// Uploads `initial` (synchronously).
  DeviceMaps(const algo::Topology& topo, const algo::Placement& initial, comm::cuda_stream stream);

  DeviceLayerMaps layer(int l) const;
  void prepare(const algo::Placement& next) override;
  void commit_layer(int layer) override;
  /// Every layer from `placement`, synchronously (after Engine::restore).
  void reset(const algo::Placement& placement) override;

 private:
  /// Writes `p` into the pinned mirror. `full`: every entry (-1 fill first); else only each
  /// row's entries that can differ: the new replicas, and -1 over the old ones past the new
  /// count (the mirror's rows are -1 past their count, an invariant both ways keep).
  void stage(const algo::Placement& p, bool full);
  int layers_, logical_, xcap_;
  comm::cuda_stream stream_;
  comm::DeviceBuffer log2phy_, logcnt_;
  comm::PinnedBuffer host_log2phy_, host_logcnt_;
};

}  // namespace eplb::runtime::cuda
