#pragma once
/// \file Load matrices ([L][E] token counts) and the balance metrics computed from them.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/algo/topology.hpp"

namespace eplb::algo {

/// A borrowed [L][E] row-major matrix of non-negative finite loads (host memory).
struct LoadView {
  std::span<const double> values;  ///< num_layers * num_logical entries
  int num_layers = 0;
  int num_logical = 0;

  std::span<const double> row(int layer) const {
    return values.subspan(static_cast<std::size_t>(layer) * num_logical,
                          static_cast<std::size_t>(num_logical));
  }
  /// The largest load accepted: a layer's sum must stay finite in 32-bit floats (the deepseek
  /// policy works in float, as the reference does) for any E up to 2^20.
  static constexpr double kMaxLoad = 1e30;
  /// Throws std::invalid_argument on a size that disagrees with the shape, or on the first
  /// NaN, infinite, negative or too large (> kMaxLoad) value (naming its layer and expert).
  void validate() const;
  /// validate(), and the shape equals topo's (L, E).
  void validate(const Topology& topo) const;
  /// Layers [first, last) as a view of their own (layer 0 = `first`).
  LoadView layers(int first, int last) const {
    return {values.subspan(static_cast<std::size_t>(first) * num_logical,
                           static_cast<std::size_t>(last - first) * num_logical),
            last - first, num_logical};
  }
};

/// An owning [L][E] load matrix.
struct LoadMatrix {
  int num_layers = 0;
  int num_logical = 0;
  std::vector<double> values;

  LoadView view() const { return {values, num_layers, num_logical}; }
};

/// The largest token count eplb keeps for one (layer, expert), summed over a window's passes
/// and over the ranks: 2^62, the bound a checkpoint's window is held to (int64 sums of such
/// counts stay far from overflow).
inline constexpr std::int64_t kMaxCount = std::int64_t{1} << 62;

/// a + b for counts in [0, kMaxCount + 1], saturating at kMaxCount + 1 instead of wrapping.
inline std::int64_t saturating_count_sum(std::int64_t a, std::int64_t b) {
  return b > kMaxCount - a ? kMaxCount + 1 : a + b;
}

/// The first problem of a ring of counts [passes][layers * experts] (a load window), as a
/// message naming the pass, layer and expert: a negative count, or a (layer, expert) whose
/// counts add up to more than kMaxCount over the passes. nullopt when there is none.
/// Precondition: ring.size() == passes * layers * experts.
std::optional<std::string> check_count_ring(std::span<const std::int64_t> ring, std::size_t passes,
                                            std::size_t layers, std::size_t experts);

/// Per-GPU load of one layer: GPU g carries sum over its slots j of load[e] / logcnt[e],
/// e = phy2log[j] (tokens split evenly over replicas). out has P entries.
void gpu_loads(std::span<const double> load_row, const Placement& placement, int layer,
               const Topology& topo, std::span<double> out);

/// Per-layer balance of a placement: max and mean GPU load.
struct LayerBalance {
  double max_load = 0;
  double mean_load = 0;
  /// max / mean (1 = perfect); 1 for an all-zero layer.
  double imbalance() const { return mean_load > 0 ? max_load / mean_load : 1.0; }
};

/// Balance of every layer, and the summary over layers.
struct BalanceReport {
  std::vector<LayerBalance> layers;
  double imbalance_mean() const;   ///< mean over layers of max/mean
  double imbalance_worst() const;  ///< max over layers of max/mean
  /// The reference notes' balancedness: sum_l mean_l / sum_l max_l (1 = perfect).
  double balancedness() const;
};

BalanceReport evaluate(LoadView load, const Placement& placement, const Topology& topo);

/// Balance before any placement: experts laid out contiguously, no replicas (expert e on GPU
/// e * P / E), which is how a job starts.
BalanceReport evaluate_contiguous(LoadView load, const Topology& topo);

}  // namespace eplb::algo
