// Issue #2: "no per-call heap churn". Each policy, called again with the same shape into the
// same output (the runtime's steady state), must not allocate: its scratch only grows and the
// placement's buffers are reused. Its own program: it replaces the global operator new
// (tests/counting_new.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "../counting_new.hpp"
#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/policy.hpp"

namespace {
using eplb::algo::DeepseekPolicy;
using eplb::algo::LoadView;
using eplb::algo::Placement;
using eplb::algo::Topology;

// The shapes (bench/shapes.hpp) and two small ones.
const std::vector<Topology>& shapes() {
  static const std::vector<Topology> s = {
      {26, 64, 72, 8, 1, 1},       {58, 256, 288, 32, 4, 8}, {58, 256, 320, 64, 8, 8},
      {94, 128, 136, 8, 1, 1},     {61, 384, 448, 64, 8, 1}, {3, 12, 16, 4, 2, 4},
      {5, 17, 17, 1, 1, 1},
  };
  return s;
}

std::vector<double> lognormal(const Topology& t, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> d(std::log(1000.0), 1.5);
  std::vector<double> v(static_cast<std::size_t>(t.num_layers) * t.num_logical);
  for (auto& x : v) x = std::floor(d(rng));
  return v;
}

/// Allocations of the third round of calls over three load windows of one shape (into the same
/// output; with the previous output as `previous` when `chained`, the outputs alternating).
/// The first two rounds are the warm-up: scratch grows to the shape, the buffers that the
/// policy swaps with its output settle, and log2phy grows to the largest replica count of the
/// three windows (a window with a new largest count grows it once more: amortised, not per
/// call).
long steady_allocations(eplb::algo::Policy& policy, const Topology& t, bool chained) {
  std::vector<std::vector<double>> loads;
  for (unsigned i = 0; i < 3; ++i) loads.push_back(lognormal(t, 100u + i));
  Placement out, prev;
  long counted = 0;
  for (int i = 0; i < 9; ++i) {
    const LoadView view{loads[static_cast<std::size_t>(i % 3)], t.num_layers, t.num_logical};
    const bool count = i >= 6;
    if (count) {
      g_allocations = 0;
      g_counting = true;
    }
    policy.rebalance_into(view, t, chained && i > 0 ? &prev : nullptr, out);
    if (chained) std::swap(out, prev);  // swapping Placements moves no storage
    if (count) {
      g_counting = false;
      counted += g_allocations.load();
    }
  }
  return counted;
}

TEST(PolicyAllocations, CounterSeesAllocations) {
  g_allocations = 0;
  g_counting = true;
  auto* p = new std::vector<int>(100);
  g_counting = false;
  delete p;
  EXPECT_EQ(g_allocations.load(), 2) << "the replaced operator new is not in use";
}

TEST(PolicyAllocations, DeepseekSteadyStateAllocatesNothing) {
  for (const bool batched : {true, false})
    for (const Topology& t : shapes()) {
      DeepseekPolicy p;
      p.set_batched(batched);
      EXPECT_EQ(steady_allocations(p, t, false), 0) << t.describe() << (batched ? " batched" : " scalar");
      EXPECT_EQ(steady_allocations(p, t, true), 0) << t.describe() << (batched ? " batched" : " scalar") << ", chained";
    }
}

TEST(PolicyAllocations, DeepseekBothTableAccessForms) {
  for (const auto access : {DeepseekPolicy::TableAccess::scalar, DeepseekPolicy::TableAccess::gather}) {
    DeepseekPolicy p;
    p.set_table_access(access);
    EXPECT_EQ(steady_allocations(p, shapes()[4], false), 0) << shapes()[4].describe();
  }
}

TEST(PolicyAllocations, EveryPolicySteadyState) {
  for (const auto& name : eplb::algo::policy_names())
    for (const Topology& t : shapes()) {
      auto p = eplb::algo::make_policy(name);
      EXPECT_EQ(steady_allocations(*p, t, true), 0) << name << " " << t.describe() << ", chained";
    }
}

}  // namespace
