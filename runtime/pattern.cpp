#include "eplb/runtime/pattern.hpp"

#include <cstring>
#include <stdexcept>

namespace eplb::runtime {
namespace {

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t seed_of(int layer, int expert, int tensor) {
  return splitmix((static_cast<std::uint64_t>(layer) << 42) ^
                  (static_cast<std::uint64_t>(expert) << 16) ^ static_cast<std::uint64_t>(tensor));
}

/// The word at 8-byte index i: depends on the ids and the offset, so a slot shifted or
/// swapped within a tensor is caught too.
std::uint64_t word(std::uint64_t seed, std::size_t i) { return splitmix(seed + i); }

}  // namespace

void fill_pattern(std::byte* dst, std::size_t bytes, int layer, int expert, int tensor) {
  const std::uint64_t s = seed_of(layer, expert, tensor);
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const std::uint64_t w = word(s, i / 8);
    std::memcpy(dst + i, &w, 8);
  }
  if (i < bytes) {
    const std::uint64_t w = word(s, i / 8);
    std::memcpy(dst + i, &w, bytes - i);
  }
}

long long check_pattern(const std::byte* src, std::size_t bytes, int layer, int expert, int tensor) {
  const std::uint64_t s = seed_of(layer, expert, tensor);
  for (std::size_t i = 0; i < bytes; i += 8) {
    const std::uint64_t w = word(s, i / 8);
    const std::size_t n = std::min<std::size_t>(8, bytes - i);
    if (std::memcmp(src + i, &w, n) != 0) {
      for (std::size_t j = 0; j < n; ++j)
        if (src[i + j] != reinterpret_cast<const std::byte*>(&w)[j])
          return static_cast<long long>(i + j);
    }
  }
  return -1;
}

void check_slots_fit(const WeightRegistry& weights, const algo::Placement& placement, int rank, const char* what) {
  const int k = weights.slots_per_rank();
  if (placement.num_layers() != weights.num_layers() || rank < 0 ||
      (static_cast<long long>(rank) + 1) * k > placement.num_slots())
    throw std::invalid_argument(std::string(what) + ": a placement of " + std::to_string(placement.num_layers()) +
                                " layers x " + std::to_string(placement.num_slots()) + " slots has no slots " +
                                std::to_string(static_cast<long long>(rank) * k) + ".." +
                                std::to_string((static_cast<long long>(rank) + 1) * k - 1) + " for rank " +
                                std::to_string(rank) + " of a registry of " + std::to_string(weights.num_layers()) +
                                " layers x " + std::to_string(k) + " slots per rank");
}

std::string describe_bad_slot(int layer, int slot, const std::string& tensor, long long byte, int expert) {
  return "layer " + std::to_string(layer) + " slot " + std::to_string(slot) + " tensor '" + tensor +
         "': byte " + std::to_string(byte) + " differs from expert " + std::to_string(expert) + "'s pattern";
}

void fill_slots(const WeightRegistry& weights, const algo::Placement& placement, int rank) {
  check_slots_fit(weights, placement, rank, "fill_slots");
  const int k = weights.slots_per_rank();
  for (int l = 0; l < weights.num_layers(); ++l) {
    const auto tensors = weights.tensors(l);
    for (int i = 0; i < k; ++i) {
      const int e = placement.phy2log(l)[rank * k + i];
      for (std::size_t t = 0; t < tensors.size(); ++t)
        fill_pattern(tensors[t].slot(i), tensors[t].bytes_per_slot, l, e, static_cast<int>(t));
    }
  }
}

std::vector<std::string> verify_slots(const WeightRegistry& weights,
                                      const algo::Placement& placement, int rank) {
  check_slots_fit(weights, placement, rank, "verify_slots");
  std::vector<std::string> bad;
  const int k = weights.slots_per_rank();
  for (int l = 0; l < weights.num_layers(); ++l) {
    const auto tensors = weights.tensors(l);
    for (int i = 0; i < k; ++i) {
      const int e = placement.phy2log(l)[rank * k + i];
      for (std::size_t t = 0; t < tensors.size(); ++t) {
        const long long at = check_pattern(tensors[t].slot(i), tensors[t].bytes_per_slot, l, e,
                                           static_cast<int>(t));
        if (at >= 0) bad.push_back(describe_bad_slot(l, rank * k + i, tensors[t].name, at, e));
      }
    }
  }
  return bad;
}

}  // namespace eplb::runtime
