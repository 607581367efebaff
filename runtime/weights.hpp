#pragma once
/// \file The weight registry: where an engine keeps the expert weights of its local slots.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace eplb::runtime {

/// One tensor of one layer holding this rank's k = R/P local slots: slot i's bytes are
/// [base + i*stride, base + i*stride + bytes_per_slot). The memory belongs to the caller (the
/// inference engine: host memory with the MPI transport, device memory with NCCL), must stay
/// valid while the eplb Engine lives, and must not be shared by two registered tensors; eplb
/// never allocates or frees it.
struct TensorView {
  std::string name;
  std::byte* base = nullptr;
  std::size_t bytes_per_slot = 0;
  std::size_t stride = 0;  ///< >= bytes_per_slot

  std::byte* slot(int local) const { return base + static_cast<std::size_t>(local) * stride; }
};

/// Per layer, the tensors whose slots move together when an expert moves (e.g. w13, w2,
/// scales). Layers may differ. Every rank must register the same layout (checked at start).
class WeightRegistry {
 public:
  WeightRegistry(int num_layers, int slots_per_rank);

  /// Registers a tensor of `layer`. stride 0 means bytes_per_slot (dense). Throws
  /// std::invalid_argument on a null base, zero size, stride < bytes_per_slot or a bad layer.
  void add(int layer, std::string name, void* base, std::size_t bytes_per_slot,
           std::size_t stride = 0);

  int num_layers() const { return static_cast<int>(layers_.size()); }
  int slots_per_rank() const { return slots_per_rank_; }
  /// Throws std::invalid_argument for a layer outside [0, num_layers()).
  std::span<const TensorView> tensors(int layer) const;
  /// Bytes of one expert of `layer`, all tensors together.
  std::size_t bytes_per_expert(int layer) const;  ///< throws as tensors() does
  std::size_t max_bytes_per_expert() const;
  /// Throws std::invalid_argument if some layer has no tensor or two slots share a byte.
  void validate() const;
  /// Hash of (layers, per layer: tensor count and bytes per slot), for config agreement.
  std::uint64_t layout_hash() const;

 private:
  void check_layer(int layer) const;
  int slots_per_rank_;
  std::vector<std::vector<TensorView>> layers_;
};

}  // namespace eplb::runtime
