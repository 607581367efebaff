#include "eplb/runtime/weights.hpp"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace eplb::runtime {

WeightRegistry::WeightRegistry(int num_layers, int slots_per_rank)
    : slots_per_rank_(slots_per_rank), layers_(static_cast<std::size_t>(std::max(num_layers, 0))) {
  if (num_layers < 1 || slots_per_rank < 1)
    throw std::invalid_argument("WeightRegistry: num_layers and slots_per_rank must be >= 1");
}

void WeightRegistry::add(int layer, std::string name, void* base, std::size_t bytes_per_slot,
                         std::size_t stride) {
  if (layer < 0 || layer >= num_layers())
    throw std::invalid_argument("WeightRegistry::add: layer " + std::to_string(layer) +
                                " outside [0, " + std::to_string(num_layers()) + ")");
  if (!base) throw std::invalid_argument("WeightRegistry::add: tensor '" + name + "' has a null base");
  if (bytes_per_slot == 0)
    throw std::invalid_argument("WeightRegistry::add: tensor '" + name + "' has 0 bytes per slot");
  if (stride == 0) stride = bytes_per_slot;
  if (stride < bytes_per_slot)
    throw std::invalid_argument("WeightRegistry::add: tensor '" + name +
                                "' has stride < bytes_per_slot");
  // The tensor's last byte, (k - 1) * stride + bytes_per_slot past base, must be addressable: a
  // negative size cast to size_t (or a huge stride) would wrap, and the overlap check in
  // validate() could not see it.
  std::size_t span = 0;
  const auto b = reinterpret_cast<std::uintptr_t>(base);
  std::uintptr_t end = 0;
  if (__builtin_mul_overflow(static_cast<std::size_t>(slots_per_rank_ - 1), stride, &span) ||
      __builtin_add_overflow(span, bytes_per_slot, &span) || __builtin_add_overflow(b, span, &end))
    throw std::invalid_argument("WeightRegistry::add: tensor '" + name + "' (" + std::to_string(bytes_per_slot) +
                                " bytes per slot, stride " + std::to_string(stride) + ", " +
                                std::to_string(slots_per_rank_) +
                                " slots) would end past the end of the address space");
  layers_[layer].push_back({std::move(name), static_cast<std::byte*>(base), bytes_per_slot, stride});
}

std::span<const TensorView> WeightRegistry::tensors(int layer) const {
  check_layer(layer);
  return layers_[static_cast<std::size_t>(layer)];
}

void WeightRegistry::check_layer(int layer) const {
  if (layer < 0 || layer >= num_layers())
    throw std::invalid_argument("weight registry: layer " + std::to_string(layer) + " outside [0, " +
                                std::to_string(num_layers()) + ")");
}

std::size_t WeightRegistry::bytes_per_expert(int layer) const {
  check_layer(layer);
  std::size_t b = 0;
  for (const auto& t : layers_[layer]) b += t.bytes_per_slot;
  return b;
}

std::size_t WeightRegistry::max_bytes_per_expert() const {
  std::size_t b = 0;
  for (int l = 0; l < num_layers(); ++l) b = std::max(b, bytes_per_expert(l));
  return b;
}

void WeightRegistry::validate() const {
  for (int l = 0; l < num_layers(); ++l)
    if (layers_[l].empty())
      throw std::invalid_argument("WeightRegistry: layer " + std::to_string(l) +
                                  " has no registered tensor");
  // No byte may belong to two slots (of one tensor, of two tensors or of two layers): a
  // migration writing one would corrupt the other. Interleaved tensors (strides) are fine.
  struct Span {
    std::uintptr_t begin, end;
    int layer, slot;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (int l = 0; l < num_layers(); ++l)
    for (const auto& t : layers_[l])
      for (int i = 0; i < slots_per_rank_; ++i) {
        const auto b = reinterpret_cast<std::uintptr_t>(t.base) + static_cast<std::uintptr_t>(i) * t.stride;
        spans.push_back({b, b + t.bytes_per_slot, l, i, &t.name});
      }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (std::size_t j = 1; j < spans.size(); ++j)
    if (spans[j].begin < spans[j - 1].end) {
      auto where = [](const Span& s) {
        return "layer " + std::to_string(s.layer) + " tensor '" + *s.name + "' slot " + std::to_string(s.slot);
      };
      throw std::invalid_argument("WeightRegistry: the bytes of " + where(spans[j - 1]) + " and " +
                                  where(spans[j]) + " overlap (each slot needs memory of its own)");
    }
}

std::uint64_t WeightRegistry::layout_hash() const {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  };
  mix(layers_.size());
  mix(static_cast<std::uint64_t>(slots_per_rank_));
  for (const auto& l : layers_) {
    mix(l.size());
    for (const auto& t : l) mix(t.bytes_per_slot);
  }
  return h;
}

}  // namespace eplb::runtime
