// The batched (AVX-512) deepseek path against the scalar one on edge shapes and loads that
// the random tests rarely reach: the kernel's support limits (64 candidate experts, 64 GPUs
// per row), one expert per row, one slot per GPU, one GPU per row, many more replicas than
// experts; subnormal, the largest accepted (LoadView::kMaxLoad; larger ones are rejected, see
// test_policy_invariants) and -0.0 loads;
// and one policy object reused across topologies, with the output also passed as `previous`
// and several threads. Placement, logcnt, log2phy and max_replicas must all agree.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/simd.hpp"

namespace {
using eplb::algo::DeepseekPolicy;
using eplb::algo::Placement;
using eplb::algo::Topology;

bool same_maps(const Placement& a, const Placement& b) {
  return a == b && std::ranges::equal(a.logcnt(), b.logcnt()) &&
         std::ranges::equal(a.log2phy(), b.log2phy()) && a.max_replicas() == b.max_replicas();
}

constexpr int kKinds = 10;

std::vector<double> edge_load(const Topology& t, int kind, std::mt19937_64& rng) {
  std::vector<double> v(static_cast<std::size_t>(t.num_layers) * t.num_logical);
  std::lognormal_distribution<double> logn(std::log(1000.0), 2.5);
  auto small = [&] { return static_cast<int>(rng() % 4); };
  constexpr double kMax = eplb::algo::LoadView::kMaxLoad;
  for (auto& x : v) {
    switch (kind) {
      case 0: x = std::floor(logn(rng)); break;
      case 1: x = small(); break;                                       // many ties
      case 2: x = 0; break;                                             // all zero
      case 3: x = small() * 1e-42; break;                               // float subnormals
      case 4: x = rng() % 2 ? kMax : kMax / (1 + small()); break;       // the largest accepted
      case 5: x = rng() % 4 == 0 ? kMax : small(); break;               // beside tiny ones
      case 6: x = rng() % 2 ? -0.0 : 0.0; break;
      case 7: x = rng() % 3 == 0 ? -0.0 : small(); break;
      // Distinct loads that agree in their top float bits: the 16-row sort's narrow keys tie
      // on them and order by index, so the wide keys must be re-sorted (sort_keys16).
      case 8: x = 1e6 + static_cast<double>(rng() % 512) * 0.25; break;
      default: x = std::ldexp(1.0, static_cast<int>(rng() % 250) - 150); break;  // 0, subnormal, normal (<= 2^99)
    }
  }
  return v;
}

/// The shapes of rows at and around the kernel's limits.
std::vector<Topology> edge_topologies() {
  std::vector<Topology> out;
  for (const int L : {1, 7, 9, 17})
    for (const Topology& t : std::vector<Topology>{
             {L, 1, 1, 1, 1, 1},          // one expert, one slot
             {L, 1, 8, 1, 1, 1},          // one expert, 7 replicas on one GPU
             {L, 1, 8, 8, 1, 1},          // one slot per GPU, K > n
             {L, 4, 4, 1, 1, 1},          // one GPU, no replicas
             {L, 4, 4, 4, 1, 1},          // slots == experts == GPUs
             {L, 8, 16, 1, 1, 1},         // one GPU
             {L, 64, 128, 64, 1, 1},      // Kc = 64, 64 GPUs (largest tree, both queues)
             {L, 64, 129, 1, 1, 1},       // K = 65 but Kc = 64: still batched
             {L, 100, 164, 4, 1, 1},      // K = 64
             {L, 100, 165, 5, 1, 1},      // K = Kc = 65: scalar
             {L, 65, 130, 65, 1, 1},      // 65 GPUs: scalar
             {L, 64, 320, 64, 1, 1},      // K = 256 > n
             {L, 32, 64, 16, 1, 1},  {L, 34, 68, 17, 1, 1}, {L, 32, 64, 32, 1, 1},
             {L, 33, 66, 33, 1, 1},       // 16/17/32/33 GPUs
             {L, 64, 64, 64, 1, 1},       // slots == GPUs == experts, 64
             {L, 256, 320, 64, 1, 1},     // K = 64 over 256 experts
             {L, 256, 288, 32, 8, 8},     // one group per node
             {L, 256, 288, 32, 4, 32},    // many groups per node
             {L, 256, 512, 64, 8, 256},   // groups of one expert
             {L, 16, 32, 32, 16, 16},     // one expert per node, one slot per GPU
             {L, 16, 64, 16, 16, 16},     // one expert per node, 3 replicas
             {L, 8, 8 * 65, 8, 8, 8},     // one expert per node, K = 64
             {L, 8, 8 * 66, 8, 8, 8},     // K = 65 per node (Kc = 1: batched)
             {L, 8, 8 * 64, 8 * 64, 8, 8},  // 64 GPUs per node, one slot each
             {L, 60, 120, 6, 2, 3},       // G % N != 0: global
             {L, 137, 201, 3, 1, 1},      // 16-row sort: 8 rows of 16 + 9 gathered columns
             {L, 200, 240, 8, 1, 1}})     // 16-row sort: 12 blocks + 8 columns
      out.push_back(t);
  return out;
}

bool kernel_runs() { return eplb::algo::detail::simd_rows_available(); }

TEST(DeepseekBatchedEdges, SupportLimits) {
  using eplb::algo::detail::RowShape;
  using eplb::algo::detail::simd_rows_supported;
  EXPECT_TRUE(simd_rows_supported(RowShape{64, 128, 64}));   // Kc = 64, 64 packs
  EXPECT_TRUE(simd_rows_supported(RowShape{64, 129, 1}));    // K = 65, Kc = 64
  EXPECT_TRUE(simd_rows_supported(RowShape{100, 164, 4}));   // Kc = 64
  EXPECT_FALSE(simd_rows_supported(RowShape{100, 165, 5}));  // Kc = 65
  EXPECT_FALSE(simd_rows_supported(RowShape{65, 130, 65}));  // 65 packs
  EXPECT_TRUE(simd_rows_supported(RowShape{1, 1, 1}));
  EXPECT_TRUE(simd_rows_supported(RowShape{1, 0x7fff, 1}));
  EXPECT_FALSE(simd_rows_supported(RowShape{1, 0x8000, 1}));  // item ids need slots < 2^15
  EXPECT_FALSE(simd_rows_supported(RowShape{4, 3, 1}));       // slots < experts
}

using Access = DeepseekPolicy::TableAccess;

void agrees_on_edge_shapes(Access access) {
  std::mt19937_64 rng(424242);
  int batched_runs = 0, compared = 0;
  for (const Topology& t : edge_topologies()) {
    ASSERT_NO_THROW(t.validate()) << t.describe();
    for (int kind = 0; kind < kKinds; ++kind) {
      const auto load = edge_load(t, kind, rng);
      DeepseekPolicy batched, scalar;
      batched.set_table_access(access);
      scalar.set_batched(false);
      batched_runs += batched.batched_for(t);
      const eplb::algo::LoadView view{load, t.num_layers, t.num_logical};
      const Placement a = batched.rebalance(view, t);
      const Placement b = scalar.rebalance(view, t);
      ASSERT_TRUE(same_maps(a, b)) << t.describe() << " load kind " << kind;
      ++compared;
    }
  }
  // Only the two shapes past the limits (Kc = 65, 65 GPUs), at each of the 4 layer counts,
  // run the scalar code.
  EXPECT_EQ(compared - batched_runs, 4 * 2 * kKinds);
}

TEST(DeepseekBatchedEdges, AgreesWithScalarOnEdgeShapesAndLoads) {
  if (!kernel_runs()) GTEST_SKIP() << "no AVX-512 on this CPU (or EPLB_DEEPSEEK_SCALAR set)";
  for (const Access access : {Access::gather, Access::scalar}) {
    SCOPED_TRACE(access == Access::scalar ? "scalar table access" : "gather table access");
    agrees_on_edge_shapes(access);
  }
}

// Non-finite loads are rejected on both paths alike, before anything is written.
TEST(DeepseekBatchedEdges, RejectsNonFiniteLoadsLikeScalar) {
  const Topology t{9, 16, 32, 8, 2, 4};
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (const double bad : {std::nan(""), kInf, -kInf, -1e-300}) {
    for (const std::size_t at : {std::size_t{0}, std::size_t{7}, std::size_t{9 * 16 - 1}}) {
      std::vector<double> load(9 * 16, 3.0);
      load[at] = bad;
      for (const bool batched : {true, false}) {
        DeepseekPolicy p;
        p.set_batched(batched);
        Placement out = Placement::contiguous(t);
        const Placement before = out;
        EXPECT_THROW(p.rebalance_into({load, t.num_layers, t.num_logical}, t, &out, out),
                     std::invalid_argument);
        EXPECT_TRUE(same_maps(out, before));
      }
    }
  }
}

// One policy object (and one output, passed as `previous` too) across changing topologies:
// scratch reuse, the buffers swapped by Placement::adopt_counted, threads splitting layers.
TEST(DeepseekBatchedEdges, ReusedPolicyAndOutputAcrossTopologies) {
  if (!kernel_runs()) GTEST_SKIP() << "no AVX-512 on this CPU (or EPLB_DEEPSEEK_SCALAR set)";
  const auto topos = edge_topologies();
  std::mt19937_64 rng(99);
  DeepseekPolicy batched, scalar;
  scalar.set_batched(false);
  Placement out_b, out_s;
  bool have_previous = false;
  for (int trial = 0; trial < 400; ++trial) {
    const Topology& t = topos[rng() % topos.size()];
    const auto load = edge_load(t, static_cast<int>(rng() % kKinds), rng);
    const int threads = 1 + static_cast<int>(rng() % 4);
    batched.set_threads(threads);
    scalar.set_threads(threads);
    const eplb::algo::LoadView view{load, t.num_layers, t.num_logical};
    const bool reuse_as_previous = have_previous && out_b.num_layers() == t.num_layers &&
                                   out_b.num_logical() == t.num_logical &&
                                   out_b.num_slots() == t.num_slots;
    batched.rebalance_into(view, t, reuse_as_previous ? &out_b : nullptr, out_b);
    scalar.rebalance_into(view, t, reuse_as_previous ? &out_s : nullptr, out_s);
    have_previous = true;
    const Placement fresh = DeepseekPolicy().rebalance(view, t);
    ASSERT_TRUE(same_maps(out_b, out_s)) << t.describe() << " trial " << trial;
    ASSERT_TRUE(same_maps(out_b, fresh)) << t.describe() << " trial " << trial;
  }
}

// detail::fill_cached (the log2phy padding): AVX-512 stores on AMD, memset or std::fill_n
// elsewhere; whichever this CPU takes must write exactly [0, n) for every value and length.
TEST(DeepseekBatchedEdges, FillCachedWritesExactlyTheRange) {
  for (const int v : {-1, 0, 7, 0x01010101, -2})
    for (const std::size_t n : {0u, 1u, 15u, 16u, 17u, 100u, 6528u}) {
      std::vector<int> buf(n + 34, 42);
      eplb::algo::detail::fill_cached(buf.data() + 17, n, v);
      for (std::size_t i = 0; i < buf.size(); ++i)
        ASSERT_EQ(buf[i], i >= 17 && i < 17 + n ? v : 42) << "v=" << v << " n=" << n << " i=" << i;
    }
}

}  // namespace
