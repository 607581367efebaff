#pragma once
// The GPU tests' engine: device weights (filled for the contiguous placement), NCCL on the
// caller's stream, a device load window and device maps attached; route() runs the routing
// kernel for one layer's ids into the window.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "eplb/comm/cuda.hpp"
#include "eplb/comm/nccl.hpp"
#include "eplb/runtime/cuda/device_state.hpp"
#include "eplb/runtime/cuda/device_weights.hpp"
#include "eplb/runtime/cuda/kernels.hpp"
#include "eplb/runtime/cuda/transport.hpp"
#include "eplb/runtime/engine.hpp"

// Skips unless there is one CUDA device per rank: the same answer on every rank (same host), so
// every rank skips alike.
#define SKIP_WITHOUT_GPUS(P)                                                              \
  if (eplb::comm::cuda_device_count() < (P))                                              \
  GTEST_SKIP() << "needs " << (P) << " CUDA devices (one per rank), found "              \
               << eplb::comm::cuda_device_count()

namespace eplb::test {

struct DeviceEngine {
  eplb::comm::cuda_stream stream;
  eplb::runtime::cuda::DeviceWeightSet weights;
  eplb::algo::Placement initial;
  eplb::runtime::Engine engine;
  eplb::runtime::cuda::DeviceLoadWindow window;
  eplb::runtime::cuda::DeviceMaps maps;

  DeviceEngine(const eplb::runtime::RuntimeConfig& cfg, const std::vector<eplb::runtime::cuda::TensorSpec>& tensors,
               eplb::comm::cuda_stream s, int rank)
      : stream(s),
        weights(cfg.topology.num_layers, cfg.topology.slots_per_rank(), tensors),
        initial(filled(weights, cfg.topology, rank)),
        engine(MPI_COMM_WORLD, cfg, weights.registry(), initial,
               [s](const eplb::comm::MpiComm& c) { return eplb::runtime::cuda::make_nccl_transport(c, s); }),
        window(cfg.topology.num_layers, cfg.topology.num_logical, cfg.window_passes, s),
        maps(cfg.topology, initial, s) {
    engine.set_load_source(&window);
    engine.set_map_listener(&maps);
  }

  /// Routes one layer's ids (host; 64-bit when `wide`) through the current maps into the
  /// window, synchronously (so `ids` may be reused).
  template <class Id>
  void route(int layer, const std::vector<Id>& ids, eplb::comm::DeviceBuffer& d_ids) {
    eplb::comm::copy_async(d_ids.get(), ids.data(), ids.size() * sizeof(Id), stream);
    EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_route_and_count(
        d_ids.get(), sizeof(Id) == 8, static_cast<int>(ids.size()), maps.layer(layer), 0, 0, nullptr,
        window.counts(layer), window.errors(), stream));
    eplb::comm::wait_stream(stream, "routing");
  }

 private:
  static eplb::algo::Placement filled(eplb::runtime::cuda::DeviceWeightSet& w, const eplb::algo::Topology& t,
                                      int rank) {
    auto p = eplb::algo::Placement::contiguous(t);
    w.fill(p, rank);
    return p;
  }
};

}  // namespace eplb::test
