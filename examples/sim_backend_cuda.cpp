// moe_sim's CUDA backend: device weights, the routing kernel into the device window, device
// maps switched per layer, NCCL migration. Built only with CUDA and NCCL.
#include "eplb/comm/nccl.hpp"
#include "eplb/runtime/cuda/transport.hpp"
#include "eplb/runtime/cuda/device_state.hpp"
#include "eplb/runtime/cuda/device_weights.hpp"
#include "sim_backend.hpp"

namespace eplb::sim {
namespace {

std::vector<runtime::cuda::TensorSpec> to_device_specs(const std::vector<TensorSpec>& specs) {
  std::vector<runtime::cuda::TensorSpec> out;
  for (const auto& s : specs) out.push_back({s.name, s.bytes});
  return out;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(const algo::Topology& t, const std::vector<TensorSpec>& specs, int window, int rank,
              bool skip_negative_ids)
      : device_(comm::select_device_for_rank(rank)),
        topo_(t),
        weights_(t.num_layers, t.slots_per_rank(), to_device_specs(specs)),
        window_(t.num_layers, t.num_logical, window, stream_.get(), skip_negative_ids) {}
  const char* name() const override { return "cuda (device memory, NCCL transport)"; }
  runtime::WeightRegistry registry() override { return weights_.registry(); }
  void fill(const algo::Placement& p, int rank) override {
    weights_.fill(p, rank);
    maps_ = std::make_unique<runtime::cuda::DeviceMaps>(topo_, p, stream_.get());
  }
  std::vector<std::string> verify(const algo::Placement& p, int rank) override {
    stream_.synchronize();
    return weights_.verify(p, rank);
  }
  runtime::TransportFactory transport() override {
    return [this](const comm::MpiComm& c) { return runtime::cuda::make_nccl_transport(c, stream_.get()); };
  }
  void attach(runtime::Engine& engine) override {
    engine.set_load_source(&window_);
    engine.set_map_listener(maps_.get());
    rank_ = engine.comm().rank();
  }
  void record(runtime::Engine&, int layer, std::span<const std::int32_t> ids) override {
    const std::size_t bytes = ids.size_bytes();
    if (ids_.size() < bytes) {
      ids_ = comm::DeviceBuffer(bytes);
      slots_ = comm::DeviceBuffer(ids.size() * sizeof(int));
    }
    stream_.synchronize();  // the previous layer's upload is done before the host reuses ids
    comm::copy_async(ids_.get(), ids.data(), bytes, stream_.get());
    const int k = topo_.slots_per_rank();
    window_.route_and_count(layer, ids_.get(), false, static_cast<long long>(ids.size()),
                            maps_->layer(layer), rank_ * k, (rank_ + 1) * k, slots_.as<int>());
  }

 private:
  int device_;
  algo::Topology topo_;
  comm::CudaStream stream_;
  runtime::cuda::DeviceWeightSet weights_;
  runtime::cuda::DeviceLoadWindow window_;
  std::unique_ptr<runtime::cuda::DeviceMaps> maps_;
  comm::DeviceBuffer ids_, slots_;
  int rank_ = 0;
};

}  // namespace

int cuda_devices() { return comm::cuda_device_count(); }

std::unique_ptr<Backend> make_cuda_backend(const algo::Topology& t, const std::vector<TensorSpec>& specs,
                                           int window_passes, int rank, bool skip_negative_ids) {
  if (comm::cuda_device_count() == 0)
    throw std::invalid_argument("--device cuda: no CUDA device is visible to rank " + std::to_string(rank));
  return std::make_unique<CudaBackend>(t, specs, window_passes, rank, skip_negative_ids);
}

}  // namespace eplb::sim
