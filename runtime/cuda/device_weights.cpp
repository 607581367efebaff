#include "eplb/runtime/cuda/device_weights.hpp"

#include <algorithm>

#include "eplb/runtime/pattern.hpp"

namespace eplb::runtime::cuda {

namespace {
/// Slots per chunk: as many whole slots as fit in the staging bound, at least one.
int slots_per_chunk(std::size_t bytes_per_slot, int k) {
  const std::size_t fit = DeviceWeightSet::kStagingBytes / std::max<std::size_t>(bytes_per_slot, 1);
  return static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(fit, static_cast<std::size_t>(std::max(k, 1)))));
}
}  // namespace

DeviceWeightSet::DeviceWeightSet(int num_layers, int slots_per_rank,
                                 const std::vector<TensorSpec>& tensors)
    : layers_(num_layers), k_(slots_per_rank), specs_(tensors) {
  for (int l = 0; l < layers_; ++l)
    for (const auto& s : specs_) buffers_.emplace_back(s.bytes_per_slot * k_);
  std::size_t chunk = 0;  // the largest chunk of whole slots any tensor copies at once
  for (const auto& s : specs_)
    chunk = std::max(chunk, s.bytes_per_slot * static_cast<std::size_t>(slots_per_chunk(s.bytes_per_slot, k_)));
  staging_ = comm::PinnedBuffer(chunk);
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

template <class F>
void DeviceWeightSet::for_each_chunk(bool download, const char* what, F&& f) const {
  for (int l = 0; l < layers_; ++l)
    for (std::size_t t = 0; t < specs_.size(); ++t) {
      const std::size_t b = specs_[t].bytes_per_slot;
      const int per = slots_per_chunk(b, k_);
      auto* dev = static_cast<std::byte*>(buffers_[l * specs_.size() + t].get());
      auto* host = staging_.as<std::byte>();
      for (int first = 0; first < k_; first += per) {
        const int n = std::min(per, k_ - first);
        const std::size_t off = static_cast<std::size_t>(first) * b, bytes = static_cast<std::size_t>(n) * b;
        if (!download) f(l, static_cast<int>(t), first, n, host);
        comm::copy_async(download ? host : dev + off, download ? dev + off : host, bytes, nullptr);
        comm::wait_stream(nullptr, what);
        if (download) f(l, static_cast<int>(t), first, n, host);
      }
    }
}

void DeviceWeightSet::fill(const algo::Placement& placement, int rank) {
  check_slots_fit(registry(), placement, rank, "DeviceWeightSet::fill");
  for_each_chunk(false, "DeviceWeightSet::fill", [&](int l, int t, int first, int n, std::byte* host) {
    const std::size_t b = specs_[static_cast<std::size_t>(t)].bytes_per_slot;
    for (int i = 0; i < n; ++i)
      fill_pattern(host + static_cast<std::size_t>(i) * b, b, l, placement.phy2log(l)[rank * k_ + first + i], t);
  });
}

std::vector<std::string> DeviceWeightSet::verify(const algo::Placement& placement, int rank) const {
  check_slots_fit(registry(), placement, rank, "DeviceWeightSet::verify");
  std::vector<std::string> bad;
  for_each_chunk(true, "DeviceWeightSet::verify", [&](int l, int t, int first, int n, const std::byte* host) {
    const TensorSpec& spec = specs_[static_cast<std::size_t>(t)];
    for (int i = 0; i < n; ++i) {
      const int slot = rank * k_ + first + i, e = placement.phy2log(l)[slot];
      const long long at = check_pattern(host + static_cast<std::size_t>(i) * spec.bytes_per_slot,
                                         spec.bytes_per_slot, l, e, t);
      if (at >= 0) bad.push_back(describe_bad_slot(l, slot, spec.name, at, e));
    }
  });
  return bad;
}

}  // namespace eplb::runtime::cuda
