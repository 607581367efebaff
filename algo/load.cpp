#include "eplb/algo/load.hpp"

#include "eplb/algo/simd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace eplb::algo {

std::optional<std::string> check_count_ring(std::span<const std::int64_t> ring, std::size_t passes,
                                            std::size_t layers, std::size_t experts) {
  const std::size_t n = layers * experts;
  std::vector<std::int64_t> sum(passes > 0 ? n : 0, 0);
  for (std::size_t w = 0; w < passes; ++w)  // one pass over the ring, in memory order
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t v = ring[w * n + i];
      if (v < 0)
        return "negative count " + std::to_string(v) + " at pass " + std::to_string(w) + ", layer " +
               std::to_string(i / experts) + ", expert " + std::to_string(i % experts);
      if (v > kMaxCount - sum[i])
        return "counts of layer " + std::to_string(i / experts) + ", expert " + std::to_string(i % experts) +
               " add up to more than 2^62";
      sum[i] += v;
    }
  return std::nullopt;
}

void LoadView::validate() const {
  if (num_layers < 0 || num_logical < 0 ||
      values.size() != static_cast<std::size_t>(num_layers) * num_logical)
    throw std::invalid_argument("load matrix: " + std::to_string(values.size()) +
                                " values do not form a [" + std::to_string(num_layers) + "][" +
                                std::to_string(num_logical) + "] matrix");
  // Fast path: one branch-free pass (NaN fails both comparisons); the error message is
  // looked for only when some value is bad.
  if (detail::all_in_range(values.data(), values.size(), kMaxLoad)) return;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    if (v >= 0 && v <= kMaxLoad) continue;
    const char* what = std::isnan(v) ? "NaN" : (std::isinf(v) ? "infinite" : (v < 0 ? "negative" : "too large a"));
    char text[32];
    std::snprintf(text, sizeof text, "%g", v);
    throw std::invalid_argument("load matrix: " + std::string(what) + " load " + text +
                                " at layer " + std::to_string(i / num_logical) + ", expert " +
                                std::to_string(i % num_logical) +
                                " (loads must be finite, >= 0 and <= 1e30: the policies add "
                                "them up in 32-bit floats)");
  }
}

void LoadView::validate(const Topology& topo) const {
  if (num_layers != topo.num_layers || num_logical != topo.num_logical)
    throw std::invalid_argument("load matrix shape [" + std::to_string(num_layers) + "][" +
                                std::to_string(num_logical) + "] does not match topology " +
                                topo.describe() + " (need [L][E])");
  validate();
}

void gpu_loads(std::span<const double> load_row, const Placement& placement, int layer,
               const Topology& topo, std::span<double> out) {
  const int k = topo.slots_per_rank();
  const auto p2l = placement.phy2log(layer);
  const auto cnt = placement.logcnt(layer);
  for (int g = 0; g < topo.num_ranks; ++g) {
    double s = 0;
    for (int j = g * k; j < (g + 1) * k; ++j) s += load_row[p2l[j]] / cnt[p2l[j]];
    out[g] = s;
  }
}

double BalanceReport::imbalance_mean() const {
  if (layers.empty()) return 1.0;
  double s = 0;
  for (const auto& l : layers) s += l.imbalance();
  return s / static_cast<double>(layers.size());
}

double BalanceReport::imbalance_worst() const {
  double w = layers.empty() ? 1.0 : 0.0;
  for (const auto& l : layers) w = std::max(w, l.imbalance());
  return w;
}

double BalanceReport::balancedness() const {
  double mean = 0, max = 0;
  for (const auto& l : layers) {
    mean += l.mean_load;
    max += l.max_load;
  }
  return max > 0 ? mean / max : 1.0;
}

namespace {
LayerBalance summarize(std::span<const double> per_gpu) {
  LayerBalance b;
  double s = 0;
  for (double v : per_gpu) {
    s += v;
    b.max_load = std::max(b.max_load, v);
  }
  b.mean_load = per_gpu.empty() ? 0 : s / static_cast<double>(per_gpu.size());
  return b;
}
}  // namespace

BalanceReport evaluate(LoadView load, const Placement& placement, const Topology& topo) {
  topo.validate();
  load.validate(topo);
  placement.check_shape(topo, "evaluate");
  BalanceReport r;
  std::vector<double> per_gpu(static_cast<std::size_t>(topo.num_ranks));
  for (int l = 0; l < topo.num_layers; ++l) {
    gpu_loads(load.row(l), placement, l, topo, per_gpu);
    r.layers.push_back(summarize(per_gpu));
  }
  return r;
}

BalanceReport evaluate_contiguous(LoadView load, const Topology& topo) {
  topo.validate();
  load.validate(topo);
  BalanceReport r;
  std::vector<double> per_gpu(static_cast<std::size_t>(topo.num_ranks));
  for (int l = 0; l < topo.num_layers; ++l) {
    std::fill(per_gpu.begin(), per_gpu.end(), 0.0);
    const auto row = load.row(l);
    for (int e = 0; e < topo.num_logical; ++e)
      per_gpu[static_cast<std::size_t>(static_cast<long long>(e) * topo.num_ranks /
                                       topo.num_logical)] += row[e];
    r.layers.push_back(summarize(per_gpu));
  }
  return r;
}

}  // namespace eplb::algo
