// Issue #2: "no per-call heap churn". Each policy, called again with the same shape into the
// same output (the runtime's steady state), must not allocate: its scratch only grows and the
// placement's buffers are reused. Its own program: it replaces the global operator new
// (tests/counting_new.hpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../counting_new.hpp"
#include "bench/shapes.hpp"
#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/policy.hpp"

namespace {
using eplb::algo::DeepseekPolicy;
using eplb::algo::LoadView;
using eplb::algo::Placement;
using eplb::algo::Topology;

// The shapes (the benchmarks') and two small ones.
const std::vector<Topology>& shapes() {
  static const std::vector<Topology> s = [] {
    std::vector<Topology> v;
    for (const auto& shape : eplb::bench::shapes()) v.push_back(shape.topo);
    v.push_back({3, 12, 16, 4, 2, 4});
    v.push_back({5, 17, 17, 1, 1, 1});
    return v;
  }();
  return s;
}
const Topology kKimi = eplb::bench::shapes()[4].topo;  // the tree path (64 GPUs per node)

/// Allocations of the third round of calls over three load windows of one shape (into the same
/// output; with the previous output as `previous` when `chained`, the outputs alternating).
/// The first two rounds are the warm-up: scratch grows to the shape, the buffers that the
/// policy swaps with its output settle, and log2phy grows to the largest replica count of the
/// three windows (a window with a new largest count grows it once more: amortised, not per
/// call).
long steady_allocations(eplb::algo::Policy& policy, const Topology& t, bool chained) {
  std::vector<std::vector<double>> loads;
  for (unsigned i = 0; i < 3; ++i) loads.push_back(eplb::bench::lognormal_load(t, 100u + i).values);
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
    EXPECT_EQ(steady_allocations(p, kKimi, false), 0) << kKimi.describe();
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
