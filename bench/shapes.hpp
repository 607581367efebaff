#pragma once
// The model shapes the benchmarks and eplb-eval use, with skewed synthetic loads.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "algo/load.hpp"

namespace eplb::bench {

struct Shape {
  const char* name;
  algo::Topology topo;
  double numpy_ms;  ///< fastest published Python (numpy, vLLM) time per rebalance, same shapes
};

inline const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {"V2-Lite", {26, 64, 72, 8, 1, 1}, 2.8},
      {"V3/N4", {58, 256, 288, 32, 4, 8}, 23.6},
      {"V3/N8", {58, 256, 320, 64, 8, 8}, 27.1},
      {"Qwen3-235B", {94, 128, 136, 8, 1, 1}, 16.8},
      {"Kimi-K2", {61, 384, 448, 64, 8, 1}, 48.9},
  };
  return s;
}

/// Lognormal token counts (sigma 1.0 around 1000 tokens), seeded.
inline algo::LoadMatrix lognormal_load(const algo::Topology& t, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> d(std::log(1000.0), 1.0);
  algo::LoadMatrix m{t.num_layers, t.num_logical, {}};
  m.values.resize(static_cast<std::size_t>(t.num_layers) * t.num_logical);
  for (auto& v : m.values) v = std::floor(d(rng));
  return m;
}

}  // namespace eplb::bench
