#pragma once
// The model shapes the benchmarks and eplb-eval use, with skewed synthetic loads.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "eplb/algo/load.hpp"

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

namespace eplb::bench {

/// Kinds of synthetic load sequences (eplb-eval, benchmarks).
enum class WindowKind {
  lognormal,  ///< stationary: one lognormal base matrix, each window = base * U(1-a, 1+a)
  zipf,       ///< Zipf(1) popularity over a hot set that rotates by `rotate` ranks per window
  burst,      ///< lognormal base with noise; each window a few random experts get x5 load
};

/// `count` load windows of topology t, deterministic in `seed`. `noise` is the size a of the
/// multiplicative noise U(1-a, 1+a) applied to every entry of every window (a in [0, 1]).
inline std::vector<algo::LoadMatrix> load_windows(const algo::Topology& t, WindowKind kind,
                                                  int count, double noise, unsigned seed,
                                                  int rotate = 4) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(1.0 - noise, 1.0 + noise);
  const std::size_t n = static_cast<std::size_t>(t.num_layers) * t.num_logical;
  const algo::LoadMatrix base = lognormal_load(t, seed ^ 0x9e3779b9u);
  // Zipf: per layer, a fixed random ranking of the experts; window w shifts the ranks.
  std::vector<int> rank(n);
  for (int l = 0; l < t.num_layers; ++l) {
    int* r = rank.data() + static_cast<std::size_t>(l) * t.num_logical;
    for (int e = 0; e < t.num_logical; ++e) r[e] = e;
    std::shuffle(r, r + t.num_logical, rng);
  }
  std::vector<algo::LoadMatrix> out;
  for (int w = 0; w < count; ++w) {
    algo::LoadMatrix m{t.num_layers, t.num_logical, std::vector<double>(n)};
    for (std::size_t i = 0; i < n; ++i) {
      double v = base.values[i];
      if (kind == WindowKind::zipf) {
        const int r = (rank[i] + w * rotate) % t.num_logical;
        v = 100000.0 / (1.0 + r);
      }
      m.values[i] = std::floor(v * u(rng));
    }
    if (kind == WindowKind::burst) {
      std::uniform_int_distribution<int> pick(0, t.num_logical - 1);
      const int hot = std::max(1, t.num_logical / 32);
      for (int l = 0; l < t.num_layers; ++l)
        for (int h = 0; h < hot; ++h)
          m.values[static_cast<std::size_t>(l) * t.num_logical + pick(rng)] *= 5.0;
    }
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace eplb::bench
