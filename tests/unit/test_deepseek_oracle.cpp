// The optimised deepseek policy against a textbook port of the specification
// (docs/POLICIES.md, "deepseek"): stable sorts, linear scans, float32 arithmetic. Random
// topologies and loads, with many ties (small integers, zeros, constant rows), where any
// difference in tie-breaking would show.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/simd.hpp"

namespace {
using eplb::algo::Topology;

/// pack[i], rank[i] for items w (n % m == 0): weight descending (stable), least loaded
/// non-full pack (lowest index on ties).
void oracle_packing(const std::vector<float>& w, int m, std::vector<int>& pack,
                    std::vector<int>& rank) {
  const int n = static_cast<int>(w.size()), cap = n / m;
  pack.assign(n, -1);
  rank.assign(n, -1);
  if (cap == 1) {
    std::iota(pack.begin(), pack.end(), 0);
    std::fill(rank.begin(), rank.end(), 0);
    return;
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return w[a] > w[b]; });
  std::vector<float> load(m, 0.0f);
  std::vector<int> fill(m, 0);
  for (const int i : order) {
    int best = -1;
    for (int p = 0; p < m; ++p)
      if (fill[p] < cap && (best < 0 || load[p] < load[best])) best = p;
    pack[i] = best;
    rank[i] = fill[best]++;
    load[best] = load[best] + w[i];
  }
}

/// phy2log of one topology, straight from the specification.
std::vector<int> oracle_rebalance(const std::vector<double>& load, const Topology& t) {
  const bool hier = t.num_groups % t.num_nodes == 0;
  const int E = t.num_logical, R = t.num_slots, P = t.num_ranks;
  const int G = hier ? t.num_groups : 1, N = hier ? t.num_nodes : 1;
  const int gs = E / G, gpn = G / N, En = E / N, Rn = R / N, Pn = P / N, k = R / P;
  std::vector<int> out(static_cast<std::size_t>(t.num_layers) * R);
  for (int l = 0; l < t.num_layers; ++l) {
    std::vector<float> w(E);
    for (int e = 0; e < E; ++e) w[e] = static_cast<float>(load[static_cast<std::size_t>(l) * E + e]);
    // 1. groups to nodes (group sums as the implementation: double, then float)
    std::vector<float> gl(G);
    for (int g = 0; g < G; ++g) {
      double s = 0;
      for (int i = 0; i < gs; ++i) s += w[g * gs + i];
      gl[g] = static_cast<float>(s);
    }
    std::vector<int> gpack, grank;
    oracle_packing(gl, N, gpack, grank);
    std::vector<int> m2l(E);
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < gs; ++i) m2l[(gpack[g] * gpn + grank[g]) * gs + i] = g * gs + i;
    for (int n = 0; n < N; ++n) {
      // 2. replicate within the node
      std::vector<float> row(En);
      for (int j = 0; j < En; ++j) row[j] = w[m2l[n * En + j]];
      std::vector<int> p2m(Rn), cnt(En, 1);
      std::iota(p2m.begin(), p2m.begin() + En, 0);
      for (int i = En; i < Rn; ++i) {
        int best = 0;
        for (int j = 1; j < En; ++j)
          if (row[j] / static_cast<float>(cnt[j]) > row[best] / static_cast<float>(cnt[best]))
            best = j;
        p2m[i] = best;
        ++cnt[best];
      }
      // 3. replicas to GPUs
      std::vector<float> per(Rn);
      for (int i = 0; i < Rn; ++i) per[i] = row[p2m[i]] / static_cast<float>(cnt[p2m[i]]);
      std::vector<int> pack, rank;
      oracle_packing(per, Pn, pack, rank);
      for (int i = 0; i < Rn; ++i)
        out[static_cast<std::size_t>(l) * R + (n * Pn + pack[i]) * k + rank[i]] =
            m2l[n * En + p2m[i]];
    }
  }
  return out;
}

struct Case {
  Topology topo;
  int kind;  // 0 lognormal floor, 1 small integers 0..3, 2 zeros, 3 constant, 4 one outlier
};

std::vector<double> make_load(const Case& c, std::mt19937_64& rng) {
  const std::size_t n = static_cast<std::size_t>(c.topo.num_layers) * c.topo.num_logical;
  std::vector<double> v(n);
  std::lognormal_distribution<double> logn(std::log(1000.0), 1.5);
  std::uniform_int_distribution<int> small(0, 3);
  for (auto& x : v) {
    switch (c.kind) {
      case 0: x = std::floor(logn(rng)); break;
      case 1: x = small(rng); break;
      case 2: x = 0; break;
      case 3: x = 7; break;
      default: x = 100 + small(rng); break;
    }
  }
  if (c.kind == 4)
    for (int l = 0; l < c.topo.num_layers; ++l)
      v[static_cast<std::size_t>(l) * c.topo.num_logical + rng() % c.topo.num_logical] = 1e9;
  return v;
}

/// Both implementations: the batched AVX-512 kernel (where the CPU has it) and the scalar code.
class DeepseekOracle : public ::testing::TestWithParam<bool> {};

TEST_P(DeepseekOracle, MatchesTextbookPortOnRandomInputs) {
  const bool batched = GetParam();
  if (batched && !eplb::algo::detail::simd_rows_available())
    GTEST_SKIP() << "no AVX-512 on this CPU (or EPLB_DEEPSEEK_SCALAR set): batched kernel not run";
  std::mt19937_64 rng(20261128);
  // Shapes: global and hierarchical, k == 1, R == E, large pack counts (tree paths),
  // large nodes (radix/bucket paths), many groups per node.
  const std::vector<Topology> topos = {
      {3, 12, 16, 8, 2, 4},     {4, 64, 72, 8, 1, 1},     {3, 256, 288, 32, 4, 8},
      {2, 256, 320, 64, 8, 8},  {3, 128, 136, 8, 1, 1},   {2, 384, 448, 64, 8, 1},
      {3, 16, 16, 4, 1, 1},     {3, 16, 32, 32, 2, 2},    {2, 1024, 1152, 16, 2, 16},
      {2, 600, 640, 20, 1, 1},  {3, 48, 96, 12, 3, 6},    {2, 2048, 2176, 17, 1, 1},
      {3, 40, 60, 10, 5, 5},    {2, 32, 64, 2, 2, 4},     {2, 9, 27, 3, 1, 3}};
  int checked = 0, took_batched = 0;
  for (const auto& t : topos)
    for (int kind = 0; kind < 5; ++kind)
      for (int rep = 0; rep < 3; ++rep) {
        const Case c{t, kind};
        const auto load = make_load(c, rng);
        eplb::algo::DeepseekPolicy policy;
        policy.set_batched(batched);
        took_batched += policy.batched_for(t);
        const auto p = policy.rebalance({load, t.num_layers, t.num_logical}, t);
        const auto expect = oracle_rebalance(load, t);
        ASSERT_TRUE(std::equal(expect.begin(), expect.end(), p.phy2log().begin()))
            << t.describe() << " load kind " << kind << " rep " << rep;
        // The derived maps too (the batched path hands its counts to Placement).
        const eplb::algo::Placement derived(t.num_layers, t.num_logical, t.num_slots, expect);
        ASSERT_TRUE(std::equal(derived.logcnt().begin(), derived.logcnt().end(), p.logcnt().begin(),
                               p.logcnt().end()));
        ASSERT_EQ(derived.max_replicas(), p.max_replicas());
        ASSERT_TRUE(std::equal(derived.log2phy().begin(), derived.log2phy().end(),
                               p.log2phy().begin(), p.log2phy().end()));
        ++checked;
      }
  EXPECT_EQ(checked, static_cast<int>(topos.size()) * 15);
  // Batched: every shape but E2048/R2176 (128 replicas to add: more than the kernel's queue
  // of 64, so the scalar code runs) has at most 64 GPUs per node and 64 candidate experts.
  EXPECT_EQ(took_batched, batched ? checked - 15 : 0);
}

INSTANTIATE_TEST_SUITE_P(Paths, DeepseekOracle, ::testing::Values(true, false),
                         [](const auto& p) { return p.param ? "batched" : "scalar"; });

// Batched and scalar agree on many random small topologies (odd sizes, rows that do not
// fill the last batch of 8, one slot per GPU, R == E), placement and derived maps alike.
using Access = eplb::algo::DeepseekPolicy::TableAccess;
const char* access_name(Access a) { return a == Access::scalar ? "scalar table access" : "gather table access"; }

void agrees_on_random_topologies(Access access) {
  std::mt19937 rng(7);
  int compared = 0;
  for (int trial = 0; trial < 600; ++trial) {
    const int N = 1 << (rng() % 3), G = N * static_cast<int>(1 + rng() % 3), gs = 1 + rng() % 9;
    const int E = G * gs;
    // GPUs per node: mostly <= 9 (queue in registers), sometimes 17..64 (tournament tree).
    const int P = N * static_cast<int>(rng() % 4 == 0 ? 17 + rng() % 48 : 1 + rng() % 9);
    int R = P * static_cast<int>(1 + rng() % 4);
    if (R < E) R = P * ((E + P - 1) / P);
    const Topology t{static_cast<int>(1 + rng() % 13), E, R, P, N, rng() % 3 == 0 ? 1 : G};
    try {
      t.validate();
    } catch (const std::invalid_argument&) {
      continue;
    }
    const Case c{t, static_cast<int>(rng() % 5)};
    std::mt19937_64 lrng(trial);
    const auto load = make_load(c, lrng);
    eplb::algo::DeepseekPolicy batched, scalar;
    batched.set_table_access(access);
    scalar.set_batched(false);
    if (!batched.batched_for(t)) continue;
    const auto a = batched.rebalance({load, t.num_layers, t.num_logical}, t);
    const auto b = scalar.rebalance({load, t.num_layers, t.num_logical}, t);
    ASSERT_TRUE(a == b) << t.describe() << " kind " << c.kind;
    ASSERT_TRUE(std::equal(a.logcnt().begin(), a.logcnt().end(), b.logcnt().begin(), b.logcnt().end()));
    ASSERT_TRUE(std::equal(a.log2phy().begin(), a.log2phy().end(), b.log2phy().begin(), b.log2phy().end()));
    ++compared;
  }
  EXPECT_GT(compared, 300);
}

TEST(DeepseekBatched, AgreesWithScalarOnRandomTopologies) {
  if (!eplb::algo::detail::simd_rows_available())
    GTEST_SKIP() << "no AVX-512 on this CPU (or EPLB_DEEPSEEK_SCALAR set): batched kernel not run";
  for (const Access access : {Access::gather, Access::scalar}) {
    SCOPED_TRACE(access_name(access));
    agrees_on_random_topologies(access);
  }
}

// Placement::assign_counted checks the counts it is given against phy2log.
TEST(PlacementCounted, RejectsCountsThatDisagreeWithPhy2log) {
  const std::vector<int> p2l = {0, 1, 2, 0, 3, 0};  // E = 4, R = 6
  const std::vector<int> good = {3, 1, 1, 1};
  eplb::algo::Placement a, b;
  a.assign_counted(1, 4, 6, p2l, good);
  b.assign(1, 4, 6, p2l);
  EXPECT_TRUE(std::equal(a.log2phy().begin(), a.log2phy().end(), b.log2phy().begin(), b.log2phy().end()));
  EXPECT_EQ(a.max_replicas(), 3);
  for (const auto& bad : {std::vector<int>{2, 2, 1, 1}, std::vector<int>{3, 2, 1, 0},
                          std::vector<int>{4, 1, 1, 1}, std::vector<int>{3, 1, 2, 0}})
    EXPECT_THROW(a.assign_counted(1, 4, 6, p2l, bad), std::logic_error);
  // Out-of-range slots are named as by assign().
  EXPECT_THROW(a.assign_counted(1, 4, 6, std::vector<int>{0, 1, 2, 9, 3, 0}, good), std::invalid_argument);
  // A failed replacement leaves the placement empty, never half replaced (new phy2log, old or
  // partly rebuilt log2phy), so that nothing can plan from it by mistake.
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.num_slots(), 0);
  EXPECT_TRUE(a.phy2log().empty() && a.logcnt().empty() && a.log2phy().empty());
  b.assign(1, 4, 6, p2l);
  EXPECT_THROW(b.assign(1, 4, 6, std::vector<int>{0, 1, 2, 0, 0, 0}), std::invalid_argument);  // no expert 3
  EXPECT_TRUE(b.empty());
  std::vector<int> counts = {2, 2, 1, 1}, storage = p2l;
  EXPECT_THROW(b.adopt_counted(1, 4, 6, storage, counts), std::logic_error);
  EXPECT_TRUE(b.empty());
}

}  // namespace
