#pragma once
/// \file GPU-resident engine state: the load window [W][L][E] and the routing maps. No CUDA
/// header needed; both work on one stream (the engine's / the model's).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/comm/cuda.hpp"
#include "eplb/runtime/cuda/kernels.hpp"
#include "eplb/runtime/hooks.hpp"

namespace eplb::runtime::cuda {

/// The device load window: W passes of [L][E] uint64 counters that the routing kernel adds
/// to, plus a device error counter for out-of-range ids. At a rebalance, collect() reduces
/// over W on the device, then makes exactly one device->host copy (counts and error counter
/// together) into pinned memory, and waits for it.
class DeviceLoadWindow final : public LoadSource {
 public:
  /// skip_negative_ids: as RuntimeConfig::skip_negative_ids (the engine checks that they agree).
  DeviceLoadWindow(int num_layers, int num_logical, int window_passes, comm::cuda_stream stream,
                   bool skip_negative_ids = false);

  /// launch_route_and_count on the window's stream, into the current pass's counters of
  /// `layer` and the window's error counter, with the window's skip_negative_ids: the
  /// routing kernel without the arguments that are easy to get wrong. Throws
  /// std::invalid_argument (a layer outside [0, L), maps of another expert count) or CudaError.
  void route_and_count(int layer, const void* topk_ids, bool ids_are_int64, long long n,
                       const DeviceLayerMaps& maps, int local_begin, int local_end,
                       int* slots_out) const;
  std::optional<bool> skips_negative_ids() const override { return skip_negative_; }

  /// Counters of `layer` in the current pass (device, [E]).
  unsigned long long* counts(int layer) const;
  unsigned long long* errors() const { return errors_.as<unsigned long long>(); }
  comm::cuda_stream stream() const { return stream_; }

  std::optional<std::string> collect(std::span<std::int64_t> out) override;
  void end_pass() override;
  int window_passes() const override { return window_; }
  std::optional<std::pair<int, int>> layers_and_experts() const override {
    return std::pair{layers_, logical_};
  }
  std::int64_t* reduce_on_device(std::optional<std::string>& error) override;
  void download_reduced(std::span<std::int64_t> out) override;

  /// Checkpoints: the whole ring [W][L][E] and cursor, copied to the host or replaced
  /// (synchronous on the window's stream).
  bool has_ring() const override { return true; }
  void download_ring(std::span<std::int64_t> ring, int& cursor) const override;
  void upload_ring(std::span<const std::int64_t> ring, int cursor) override;

 private:
  void reset_errors();  ///< queues the error counter's reset (after its count reached the host)

  int layers_, logical_, window_, cursor_ = 0;
  comm::cuda_stream stream_;
  bool skip_negative_;
  comm::DeviceBuffer ring_, errors_, sum_;
  comm::PinnedBuffer host_;
};

/// Routing maps on the device: per layer, log2phy [E][X] and logcnt [E], where X is the
/// max_replicas() of the placement the layer was last switched to (each layer's region holds
/// up to Xcap = R - E + 1 per expert, the most replicas any placement can give one; layer(l)
/// reports the layer's current X as its row stride). A MapListener for the engine: the maps
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
  /// Copies `p`'s log2phy ([E][X] per layer, X = p.max_replicas()) and logcnt into the
  /// pinned mirror, each layer at the start of its region: L*E*X entries, not L*E*Xcap.
  void stage(const algo::Placement& p);
  /// Throws std::invalid_argument (named `what`) unless `p` has the maps' L, E and R.
  void check_shape(const algo::Placement& p, const char* what) const;
  int layers_, logical_, xcap_;
  int staged_x_ = 0;         ///< row stride of the mirror's content
  /// A wait in reset() timed out: copies out of the pinned mirror may still be queued, so
  /// prepare() drains the stream (bounded) before it rewrites the mirror.
  bool stuck_ = false;
  std::vector<int> stride_;  ///< [L]: row stride of each layer's content on the device
  comm::cuda_stream stream_;
  comm::DeviceBuffer log2phy_, logcnt_;
  comm::PinnedBuffer host_log2phy_, host_logcnt_;
};

}  // namespace eplb::runtime::cuda
