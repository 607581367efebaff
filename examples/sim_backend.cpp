#include "sim_backend.hpp"

#include "eplb/config.hpp"
#include "eplb/runtime/pattern.hpp"

namespace eplb::sim {
namespace {

class HostBackend final : public Backend {
 public:
  HostBackend(const algo::Topology& t, const std::vector<TensorSpec>& specs)
      : registry_(t.num_layers, t.slots_per_rank()) {
    const int k = t.slots_per_rank();
    for (int l = 0; l < t.num_layers; ++l)
      for (const auto& s : specs) {
        storage_.emplace_back(s.bytes * k);
        registry_.add(l, s.name, storage_.back().data(), s.bytes);
      }
  }
  const char* name() const override { return "cpu (host memory, MPI transport)"; }
  runtime::WeightRegistry registry() override { return registry_; }
  void fill(const algo::Placement& p, int rank) override { runtime::fill_slots(registry_, p, rank); }
  std::vector<std::string> verify(const algo::Placement& p, int rank) override {
    return runtime::verify_slots(registry_, p, rank);
  }
  runtime::TransportFactory transport() override { return {}; }
  void attach(runtime::Engine&) override {}
  void record(runtime::Engine& engine, int layer, std::span<const std::int32_t> ids) override {
    engine.window().record(layer, ids);
  }

 private:
  std::vector<std::vector<std::byte>> storage_;
  runtime::WeightRegistry registry_;
};

}  // namespace

std::unique_ptr<Backend> make_host_backend(const algo::Topology& t, const std::vector<TensorSpec>& specs) {
  return std::make_unique<HostBackend>(t, specs);
}

#if !EPLB_HAVE_NCCL
int cuda_devices() { return 0; }
std::unique_ptr<Backend> make_cuda_backend(const algo::Topology&, const std::vector<TensorSpec>&, int, int, bool) {
  throw std::invalid_argument("--device cuda: this build of eplb has no CUDA/NCCL support");
}
#endif

}  // namespace eplb::sim
