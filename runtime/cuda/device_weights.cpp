#include "eplb/runtime/cuda/device_weights.hpp"

#include "eplb/runtime/pattern.hpp"

namespace eplb::runtime::cuda {

DeviceWeightSet::DeviceWeightSet(int num_layers, int slots_per_rank,
                                 const std::vector<TensorSpec>& tensors)
    : layers_(num_layers), k_(slots_per_rank), specs_(tensors) {
  for (int l = 0; l < layers_; ++l)
    for (const auto& s : specs_) buffers_.emplace_back(s.bytes_per_slot * k_);
}

WeightRegistry DeviceWeightSet::registry() const {
  WeightRegistry r(layers_, k_);
  for (int l = 0; l < layers_; ++l)
    for (std::size_t t = 0; t < specs_.size(); ++t)
      r.add(l, specs_[t].name, buffers_[l * specs_.size() + t].get(), specs_[t].bytes_per_slot);
  return r;
}

std::size_t DeviceWeightSet::bytes_per_expert() const {
  std::size_t b = 0;
  for (const auto& s : specs_) b += s.bytes_per_slot;
  return b;
}

void DeviceWeightSet::fill(const algo::Placement& placement, int rank) {
  std::vector<std::byte> host;
  for (int l = 0; l < layers_; ++l)
    for (std::size_t t = 0; t < specs_.size(); ++t) {
      const std::size_t b = specs_[t].bytes_per_slot;
      host.resize(b * k_);
      for (int i = 0; i < k_; ++i)
        fill_pattern(host.data() + i * b, b, l, placement.phy2log(l)[rank * k_ + i], static_cast<int>(t));
      comm::copy_async(buffers_[l * specs_.size() + t].get(), host.data(), host.size(), nullptr);
      comm::wait_stream(nullptr, "DeviceWeightSet::fill");
    }
}

std::vector<std::string> DeviceWeightSet::verify(const algo::Placement& placement, int rank) const {
  std::vector<std::vector<std::byte>> host;
  WeightRegistry r(layers_, k_);
  for (int l = 0; l < layers_; ++l)
    for (std::size_t t = 0; t < specs_.size(); ++t) {
      auto& h = host.emplace_back(specs_[t].bytes_per_slot * k_);
      comm::copy_async(h.data(), buffers_[l * specs_.size() + t].get(), h.size(), nullptr);
      r.add(l, specs_[t].name, h.data(), specs_[t].bytes_per_slot);
    }
  comm::wait_stream(nullptr, "DeviceWeightSet::verify");
  return verify_slots(r, placement, rank);
}

}  // namespace eplb::runtime::cuda
