// The migration-aware "sticky" policy: no moves on identical windows, the balance tolerance,
// and far fewer remote transfers than the reference under load noise.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/migration.hpp"
#include "eplb/algo/policy.hpp"
#include "eplb/algo/sticky.hpp"
#include "bench/shapes.hpp"

namespace {
using eplb::algo::LoadMatrix;
using eplb::algo::Placement;
using eplb::algo::StickyOptions;
using eplb::algo::StickyPolicy;
using eplb::algo::Topology;

Topology random_topology(std::mt19937& rng, bool allow_hierarchical) {
  auto pick = [&](std::initializer_list<int> v) {
    return *(v.begin() + std::uniform_int_distribution<int>(0, int(v.size()) - 1)(rng));
  };
  Topology t;
  t.num_layers = std::uniform_int_distribution<int>(1, 4)(rng);
  t.num_nodes = pick({1, 2, 4});
  t.num_ranks = t.num_nodes * pick({1, 2, 3, 4});
  t.num_slots = t.num_ranks * pick({1, 2, 3, 5, 8});
  const int e = std::uniform_int_distribution<int>(1, t.num_slots)(rng);
  t.num_groups = 1;
  t.num_logical = e;
  if (t.num_nodes > 1 && allow_hierarchical && pick({0, 1}) == 1 && e >= t.num_nodes) {
    t.num_groups = t.num_nodes;
    t.num_logical = e - e % t.num_nodes;
  } else if (t.num_nodes > 1) {
    t.num_groups = t.num_nodes + 1;  // G % N != 0: global
  }
  t.validate();
  return t;
}

LoadMatrix random_load(const Topology& t, std::mt19937& rng) {
  LoadMatrix m{t.num_layers, t.num_logical, {}};
  m.values.resize(static_cast<std::size_t>(t.num_layers) * t.num_logical);
  std::lognormal_distribution<double> logn(0.0, 1.2);
  const bool ints = std::uniform_int_distribution<int>(0, 2)(rng) == 0;
  for (auto& v : m.values) v = ints ? std::floor(5 * logn(rng)) : 1000 * logn(rng);
  return m;
}

std::vector<double> layer_max(const LoadMatrix& load, const Placement& p, const Topology& t) {
  std::vector<double> out;
  for (const auto& l : eplb::algo::evaluate(load.view(), p, t).layers) out.push_back(l.max_load);
  return out;
}

TEST(Sticky, KnobsOutsideTheirRangeAreRejected) {
  for (const char* name : {"sticky:max_swap_fraction=inf", "sticky:max_swap_fraction=1.5",
                           "sticky:max_swap_fraction=-0.1", "sticky:tolerance=inf",
                           "sticky:tolerance=nan", "sticky:node_tolerance=-1"}) {
    try {
      (void)eplb::algo::make_policy(name);
      ADD_FAILURE() << name << " was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("sticky policy"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW((void)eplb::algo::make_policy("sticky:max_swap_fraction=1:tolerance=0"));
  // The option string itself: every knob once, flags 0 or 1, no empty knob, whole numbers.
  for (const auto& [name, words] : std::vector<std::pair<const char*, const char*>>{
           {"sticky:tolerance=0.01:tolerance=0.02", "knob 'tolerance' is given twice"},
           {"sticky:keep_counts=0.5", "'keep_counts' is 0 or 1, not 0.5"},
           {"sticky:refine_fresh=-1", "'refine_fresh' is 0 or 1"},
           {"sticky:", "no knob after 'sticky:'"},
           {"sticky:tolerance=0.01:", "empty knob after the last ':'"},
           {"sticky:tolerance=0.01x", "'tolerance=0.01x' is not key=number"},
           {"sticky:tolerance", "'tolerance' is not key=number"},
           {"sticky:speed=2", "unknown knob 'speed'"}}) {
    try {
      (void)eplb::algo::make_policy(name);
      ADD_FAILURE() << name << " was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW((void)eplb::algo::make_policy("sticky:keep_counts=1:refine_fresh=0:tolerance=1e-3"));
  EXPECT_NO_THROW((void)eplb::algo::make_policy("sticky:tolerance=+0.01"));  // as std::stod read it
  EXPECT_THROW((void)eplb::algo::make_policy("sticky:tolerance=+"), std::invalid_argument);
}

TEST(Sticky, ThousandsOfSlotsPerGpuEndInBoundedTime) {
  // Above 64 slots per GPU the swap search tests every pair of slots, and a swap that would
  // put a second copy of an expert on a GPU is tested slot by slot: with 8 experts in 10000
  // slots per GPU every swap does, and one plan ran for minutes (moe_sim --experts 8 --slots
  // 200000 hung at its first rebalance). The search is bounded now; ctest's timeout is the
  // check that it ends, the placement's invariants the check that it is still right.
  const Topology t{1, 8, 20000, 2, 1, 1};
  LoadMatrix load{1, 8, {2013, 1081, 3755, 3027, 783, 3705, 472, 887}};
  eplb::algo::StickyPolicy sticky;
  const auto p = sticky.rebalance(load.view(), t);
  const auto again = sticky.rebalance(load.view(), t, &p);
  for (const auto* x : {&p, &again}) {
    for (int e = 0; e < 8; ++e) EXPECT_GE(x->logcnt(0)[static_cast<std::size_t>(e)], 1);
    EXPECT_LT(eplb::algo::evaluate(load.view(), *x, t).imbalance_mean(), 1.01);
  }
}

TEST(Sticky, IdenticalWindowsMoveNothing) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    const Topology t = random_topology(rng, true);
    SCOPED_TRACE(t.describe());
    const LoadMatrix load = random_load(t, rng);
    StickyPolicy policy;
    // From the contiguous layout, from nothing, and from the reference's placement.
    const Placement contiguous = Placement::contiguous(t);
    const Placement reference = eplb::algo::DeepseekPolicy{}.rebalance(load.view(), t);
    for (const Placement* start : {&contiguous, static_cast<const Placement*>(nullptr),
                                   &reference}) {
      const Placement a = policy.rebalance(load.view(), t, start);
      const Placement b = policy.rebalance(load.view(), t, &a);
      EXPECT_EQ(a, b);
      EXPECT_EQ(eplb::algo::plan_migration(a, b, t).stats().slots_changed, 0);
    }
  }
}

// Global topologies: every layer's most loaded GPU carries at most the greedy packing's (the
// policy's own fresh packing without refinement, which is what the tolerance refers to) plus
// tolerance x the layer's mean GPU load.
TEST(Sticky, BalanceToleranceIsRespected) {
  std::mt19937 rng(11);
  for (const double tol : {0.0, 0.004, 0.02, 0.1}) {
    StickyOptions o;
    o.tolerance = tol;
    StickyPolicy policy(o);
    StickyOptions fo;
    fo.refine_fresh = false;
    StickyPolicy greedy(fo);
    int moved_less = 0, trials = 0;
    double ratio_sum = 0;  // the greedy packing's layer max over the reference's
    int ratio_n = 0;
    for (int trial = 0; trial < 40; ++trial) {
      const Topology t = random_topology(rng, false);
      SCOPED_TRACE(t.describe() + " tolerance " + std::to_string(tol));
      const LoadMatrix first = random_load(t, rng);
      const Placement prev = policy.rebalance(first.view(), t, nullptr);
      LoadMatrix next = first;  // the same loads with +-30 % noise
      std::uniform_real_distribution<double> u(0.7, 1.3);
      for (auto& v : next.values) v *= u(rng);
      const Placement p = policy.rebalance(next.view(), t, &prev);
      const Placement g = greedy.rebalance(next.view(), t, nullptr);
      const auto pm = layer_max(next, p, t), gm = layer_max(next, g, t);
      const auto dm = layer_max(next, eplb::algo::DeepseekPolicy().rebalance(next.view(), t, nullptr), t);
      for (int l = 0; l < t.num_layers; ++l)
        if (dm[l] > 0) {
          ratio_sum += gm[l] / dm[l];
          ++ratio_n;
        }
      const auto bal = eplb::algo::evaluate(next.view(), p, t);
      for (int l = 0; l < t.num_layers; ++l)
        EXPECT_LE(pm[l], gm[l] + tol * bal.layers[l].mean_load + 1e-9 * (1 + gm[l]))
            << "layer " << l;
      ++trials;
      moved_less += eplb::algo::plan_migration(prev, p, t).stats().slots_changed <=
                    eplb::algo::plan_migration(prev, g, t).stats().slots_changed;
    }
    EXPECT_GE(moved_less, trials * 3 / 4) << "the repair should usually move less";
    // The bound above is relative to sticky's own greedy packing; anchor that packing to the
    // reference policy (pinned by the vectors), so a worse packing cannot loosen it unseen:
    // on these seeds its layer max is 1.004x the reference's on average (worst layer 1.31x).
    ASSERT_GT(ratio_n, 0);
    EXPECT_LE(ratio_sum / ratio_n, 1.02) << "sticky's greedy packing balances worse than the reference";
  }
}

// The measurement in miniature: V2-Lite shape, +-20 % noise windows.
TEST(Sticky, FarFewerRemoteTransfersThanReference) {
  const Topology t = eplb::bench::shapes()[0].topo;  // V2-Lite
  const auto windows =
      eplb::bench::load_windows(t, eplb::bench::WindowKind::lognormal, 4, 0.2, 3);
  StickyPolicy sticky;
  eplb::algo::DeepseekPolicy reference;
  Placement ps = Placement::contiguous(t), pr = ps;
  long long remote_s = 0, remote_r = 0;
  double imb_s = 0, imb_r = 0;
  for (std::size_t w = 0; w < windows.size(); ++w) {
    const Placement ns = sticky.rebalance(windows[w].view(), t, &ps);
    const Placement nr = reference.rebalance(windows[w].view(), t, &pr);
    if (w > 0) {
      remote_s += eplb::algo::plan_migration(ps, ns, t).stats().remote_units;
      remote_r += eplb::algo::plan_migration(pr, nr, t).stats().remote_units;
    }
    imb_s += eplb::algo::evaluate(windows[w].view(), ns, t).imbalance_mean();
    imb_r += eplb::algo::evaluate(windows[w].view(), nr, t).imbalance_mean();
    ps = ns;
    pr = nr;
  }
  EXPECT_LE(remote_s * 5, remote_r) << "sticky " << remote_s << " reference " << remote_r;
  EXPECT_LE(imb_s / windows.size(), imb_r / windows.size() + 0.005);
}

// "deepseek-refined": same replica counts as the reference, never a worse layer.
TEST(Sticky, RefinedReferenceIsNeverWorse) {
  std::mt19937 rng(5);
  auto refined = eplb::algo::make_policy("deepseek-refined");
  eplb::algo::DeepseekPolicy reference;
  for (int trial = 0; trial < 60; ++trial) {
    const Topology t = random_topology(rng, true);
    SCOPED_TRACE(t.describe());
    const LoadMatrix load = random_load(t, rng);
    const Placement a = reference.rebalance(load.view(), t);
    const Placement b = refined->rebalance(load.view(), t);
    ASSERT_TRUE(std::equal(a.logcnt().begin(), a.logcnt().end(), b.logcnt().begin()));
    const auto am = layer_max(load, a, t), bm = layer_max(load, b, t);
    for (int l = 0; l < t.num_layers; ++l) EXPECT_LE(bm[l], am[l] * (1 + 1e-12)) << l;
  }
}

int duplicate_pairs(const Placement& p, const Topology& t) {
  const int k = t.slots_per_rank();
  int dups = 0;
  for (int l = 0; l < t.num_layers; ++l) {
    const auto row = p.phy2log(l);
    for (int g = 0; g < t.num_ranks; ++g)
      for (int i = 0; i < k; ++i)
        for (int j = i + 1; j < k; ++j) dups += row[g * k + i] == row[g * k + j];
  }
  return dups;
}

// Two copies of one expert on one GPU: the reference has them in 6-12 % of (layer, GPU)
// pairs; sticky removes every one that a swap within the balance tolerance can remove (a very
// hot expert's second copy sometimes has no partner of similar load), so far fewer remain.
TEST(Sticky, FewTwoCopiesOfAnExpertOnAGpu) {
  for (const int shape : {0, 3}) {  // V2-Lite, Qwen3
    const Topology t = eplb::bench::shapes()[shape].topo;
    const auto windows =
        eplb::bench::load_windows(t, eplb::bench::WindowKind::lognormal, 3, 0.2, 9);
    StickyPolicy policy;
    eplb::algo::DeepseekPolicy reference;
    Placement prev = Placement::contiguous(t);
    int dups = 0, dups_ref = 0;
    for (const auto& w : windows) {
      const Placement p = policy.rebalance(w.view(), t, &prev);
      dups += duplicate_pairs(p, t);
      dups_ref += duplicate_pairs(reference.rebalance(w.view(), t), t);
      prev = p;
    }
    EXPECT_GT(dups_ref, 0);
    EXPECT_LE(dups * 4, dups_ref) << eplb::bench::shapes()[shape].name;
  }
}

}  // namespace
