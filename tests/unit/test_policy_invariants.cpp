// Invariants every policy must keep, over many random topologies, loads and seeds.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "eplb/algo/policy.hpp"

namespace {
using eplb::algo::LoadMatrix;
using eplb::algo::LoadView;
using eplb::algo::Placement;
using eplb::algo::Topology;

struct Case {
  std::string policy;
  unsigned seed;
  // GoogleTest prints parameters into test listings that CTest parses: keep it a plain name.
  friend void PrintTo(const Case& c, std::ostream* os) { *os << c.policy << "_seed" << c.seed; }
};

Topology random_topology(std::mt19937& rng) {
  auto pick = [&](std::initializer_list<int> v) {
    return *(v.begin() + std::uniform_int_distribution<int>(0, int(v.size()) - 1)(rng));
  };
  Topology t;
  t.num_layers = std::uniform_int_distribution<int>(1, 6)(rng);
  t.num_nodes = pick({1, 1, 2, 4});
  t.num_ranks = t.num_nodes * pick({1, 2, 3, 4});
  const int k = pick({1, 2, 3, 5, 8});
  t.num_slots = t.num_ranks * k;
  t.num_groups = pick({1, t.num_nodes, 2 * t.num_nodes, 3});
  int e = std::uniform_int_distribution<int>(1, t.num_slots)(rng);
  if (t.hierarchical()) {
    e = std::max(t.num_groups, e - e % t.num_groups);
    if (e > t.num_slots) {  // groups need more experts than there are slots: go global
      t.num_groups = 1;
      e = t.num_slots;
      if (t.num_nodes > 1) t.num_groups = t.num_nodes + 1;
    }
  }
  t.num_logical = e;
  t.validate();
  return t;
}

LoadMatrix random_load(const Topology& t, std::mt19937& rng) {
  LoadMatrix m{t.num_layers, t.num_logical, {}};
  m.values.resize(static_cast<std::size_t>(t.num_layers) * t.num_logical);
  const int kind = std::uniform_int_distribution<int>(0, 3)(rng);
  std::lognormal_distribution<double> logn(0.0, 1.5);
  std::uniform_int_distribution<int> small(0, 5);
  for (auto& v : m.values) {
    switch (kind) {
      case 0: v = std::floor(1000 * logn(rng)); break;  // skewed integer counts
      case 1: v = small(rng); break;                    // many ties and zeros
      case 2: v = 0; break;                             // idle layer
      default: v = logn(rng); break;                    // real-valued
    }
  }
  return m;
}

void check_invariants(const Placement& p, const Topology& t, bool groups_on_one_node) {
  ASSERT_EQ(p.num_layers(), t.num_layers);
  ASSERT_EQ(p.num_logical(), t.num_logical);
  ASSERT_EQ(p.num_slots(), t.num_slots);
  const int k = t.slots_per_rank();
  for (int l = 0; l < t.num_layers; ++l) {
    const auto p2l = p.phy2log(l);
    const auto cnt = p.logcnt(l);
    ASSERT_EQ(static_cast<int>(p2l.size()), t.num_ranks * k) << "every GPU has R/P slots";
    int sum = 0;
    for (int e = 0; e < t.num_logical; ++e) {
      EXPECT_GE(cnt[e], 1) << "layer " << l << " expert " << e << " has no replica";
      sum += cnt[e];
      const auto slots = p.log2phy(l, e);
      int n = 0, prev = -1;
      for (int s : slots) {
        if (s < 0) break;
        EXPECT_GT(s, prev) << "log2phy ascending";
        EXPECT_EQ(p2l[s], e) << "log2phy and phy2log agree";
        prev = s;
        ++n;
      }
      EXPECT_EQ(n, cnt[e]);
      for (std::size_t i = n; i < slots.size(); ++i) EXPECT_EQ(slots[i], -1) << "padding";
    }
    EXPECT_EQ(sum, t.num_slots) << "replica counts sum to R";
    if (groups_on_one_node) {
      const int gs = t.num_logical / t.num_groups;
      const int slots_per_node = t.num_slots / t.num_nodes;
      std::vector<int> node_of_group(t.num_groups, -1);
      for (int j = 0; j < t.num_slots; ++j) {
        const int g = p2l[j] / gs, node = j / slots_per_node;
        if (node_of_group[g] < 0) node_of_group[g] = node;
        EXPECT_EQ(node_of_group[g], node) << "group " << g << " spans nodes (layer " << l << ")";
      }
    }
  }
}

/// Most loaded GPU of layer `l`: GPU r holds slots [r*k, (r+1)*k), an expert's load is split
/// evenly over its replicas (computed here, not with algo::gpu_loads, to check it too).
double max_gpu_load(const LoadMatrix& load, const Placement& p, const Topology& t, int l) {
  const int k = t.slots_per_rank();
  const auto p2l = p.phy2log(l);
  const auto cnt = p.logcnt(l);
  double worst = 0;
  for (int r = 0; r < t.num_ranks; ++r) {
    double sum = 0;
    for (int j = r * k; j < (r + 1) * k; ++j) {
      const int e = p2l[j];
      sum += load.values[static_cast<std::size_t>(l) * t.num_logical + e] / cnt[e];
    }
    worst = std::max(worst, sum);
  }
  return worst;
}

/// A balance bound on every layer of a policy's placement. The contiguous placement
/// (Placement::contiguous, slot j holds expert j % E) is NOT a bound: every registered policy
/// is worse than it on some layers of these topologies (about 5% of them), because the
/// reference's greedy replica counts need not pack evenly: E=2 R=4 P=2 and loads (2, 1) give
/// counts (3, 1) and a max GPU load of 5/3, where round-robin 0,1,0,1 gives 3/2. So, when the
/// policy packs over all GPUs (one node, or G % N != 0: no group-to-node pinning): max GPU
/// load <= mean GPU load + heaviest replica (max_e load[e]/logcnt[e]), the greedy packing's
/// bound. Measured, not proven for packing with equal slot counts per GPU: all policies stay
/// within 0.67 replica of the mean on these seeds. Groups pinned to nodes (hierarchical,
/// N > 1) can make a GPU carry a whole hot node, up to 5.2 replicas above the mean here; no
/// bound that could fail is checked for them.
void check_balance(const LoadMatrix& load, const Placement& p, const Topology& t) {
  const bool one_domain = t.num_nodes == 1 || !t.hierarchical();
  if (!one_domain) return;
  for (int l = 0; l < t.num_layers; ++l) {
    double total = 0, replica = 0;
    for (int e = 0; e < t.num_logical; ++e) {
      const double v = load.values[static_cast<std::size_t>(l) * t.num_logical + e];
      total += v;
      replica = std::max(replica, v / p.logcnt(l)[e]);
    }
    const double mean = total / t.num_ranks, got = max_gpu_load(load, p, t, l);
    EXPECT_LE(got, (mean + replica) * (1 + 1e-9))
        << "layer " << l << ": max GPU load above mean + heaviest replica (one domain)";
  }
}

// The balance check itself fails on a placement that piles the load on one GPU.
TEST(BalanceCheck, CatchesALoadPiledOnOneGpu) {
  const Topology t{1, 4, 8, 2, 1, 1};  // one node: the tight bound applies
  const LoadMatrix load{1, 4, {3, 3, 0, 0}};
  // GPU 0 holds both loaded experts: 6 against mean 3 + heaviest replica 1.5.
  const Placement bad(1, 4, 8, {0, 0, 1, 1, 2, 2, 3, 3});
  EXPECT_NONFATAL_FAILURE(check_balance(load, bad, t), "above mean + heaviest replica");
  check_balance(load, Placement(1, 4, 8, {0, 1, 2, 3, 0, 1, 2, 3}), t);
}

class PolicyInvariants : public testing::TestWithParam<Case> {};

TEST_P(PolicyInvariants, RandomTopologiesAndLoads) {
  std::mt19937 rng(GetParam().seed);
  auto policy = eplb::algo::make_policy(GetParam().policy);
  for (int trial = 0; trial < 25; ++trial) {
    const Topology t = random_topology(rng);
    SCOPED_TRACE(t.describe());
    const LoadMatrix load = random_load(t, rng);
    const Placement p = policy->rebalance(load.view(), t, nullptr);
    // Every registered policy keeps each group's experts on one node when hierarchical.
    check_invariants(p, t, t.hierarchical() && policy->keeps_groups_on_nodes());
    check_balance(load, p, t);
    // With the previous placement given (as the runtime does) the invariants still hold.
    const LoadMatrix load2 = random_load(t, rng);
    const Placement q = policy->rebalance(load2.view(), t, &p);
    check_invariants(q, t, t.hierarchical() && policy->keeps_groups_on_nodes());
    check_balance(load2, q, t);
    // Deterministic: same input, same output.
    EXPECT_EQ(policy->rebalance(load2.view(), t, &p), q);
  }
}

// A policy that says its layers are independent gives the same placement when the layers are
// planned in slices (as the runtime does over ranks), with and without a previous placement.
TEST_P(PolicyInvariants, LayerSlicesPlanLikeTheWhole) {
  std::mt19937 rng(GetParam().seed + 1000);
  auto policy = eplb::algo::make_policy(GetParam().policy);
  if (!policy->layers_independent()) GTEST_SKIP() << "policy plans layers together";
  for (int trial = 0; trial < 25; ++trial) {
    Topology t = random_topology(rng);
    t.num_layers += 3;
    SCOPED_TRACE(t.describe());
    const LoadMatrix load = random_load(t, rng), load2 = random_load(t, rng);
    const Placement prev = policy->rebalance(load.view(), t, nullptr);
    const Placement whole = policy->rebalance(load2.view(), t, &prev);
    const Placement whole_fresh = policy->rebalance(load2.view(), t, nullptr);
    // Cut points: 0 < a <= b < L (b == a: an empty middle slice is skipped).
    const int a = std::uniform_int_distribution<int>(1, t.num_layers - 1)(rng);
    const int b = std::uniform_int_distribution<int>(a, t.num_layers - 1)(rng);
    std::vector<int> joined, joined_fresh;
    Placement prev_slice, out;
    for (const auto& [first, last] : {std::pair{0, a}, std::pair{a, b}, std::pair{b, t.num_layers}}) {
      if (first == last) continue;
      Topology ts = t;
      ts.num_layers = last - first;
      prev_slice.assign_layers(prev, first, last);
      policy->rebalance_into(load2.view().layers(first, last), ts, &prev_slice, out);
      joined.insert(joined.end(), out.phy2log().begin(), out.phy2log().end());
      policy->rebalance_into(load2.view().layers(first, last), ts, nullptr, out);
      joined_fresh.insert(joined_fresh.end(), out.phy2log().begin(), out.phy2log().end());
    }
    EXPECT_TRUE(std::equal(joined.begin(), joined.end(), whole.phy2log().begin(), whole.phy2log().end()))
        << "slices [0," << a << ") [" << a << "," << b << ") [" << b << "," << t.num_layers << ")";
    EXPECT_TRUE(std::equal(joined_fresh.begin(), joined_fresh.end(), whole_fresh.phy2log().begin(),
                           whole_fresh.phy2log().end()));
  }
}

TEST_P(PolicyInvariants, RejectsBadLoadsAndLeavesOutputUntouched) {
  auto policy = eplb::algo::make_policy(GetParam().policy);
  const Topology t{2, 8, 12, 4, 2, 4};
  LoadMatrix load{2, 8, std::vector<double>(16, 1.0)};
  Placement out = Placement::contiguous(t);
  const Placement before = out;
  struct Bad {
    double value;
    const char* word;
  };
  for (const Bad bad : {Bad{std::numeric_limits<double>::quiet_NaN(), "NaN"},
                        Bad{std::numeric_limits<double>::infinity(), "infinite"},
                        Bad{-1.0, "negative"},
                        // finite, but sums overflow (float: the deepseek policy; double: 2e308)
                        Bad{1e308, "too large"},
                        Bad{double{std::numeric_limits<float>::max()}, "too large"},
                        Bad{std::nextafter(LoadView::kMaxLoad, 2e30), "too large"}}) {
    load.values[11] = bad.value;
    try {
      policy->rebalance_into(load.view(), t, nullptr, out);
      ADD_FAILURE() << "accepted a " << bad.word << " load";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(bad.word), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("layer 1, expert 3"), std::string::npos) << e.what();
    }
    EXPECT_EQ(out, before);
  }
  load.values[11] = 1.0;
  LoadMatrix wrong{2, 7, std::vector<double>(14, 1.0)};
  EXPECT_THROW(policy->rebalance_into(wrong.view(), t, nullptr, out), std::invalid_argument);
  const Placement other_shape = Placement::contiguous(Topology{3, 8, 12, 4, 2, 4});
  EXPECT_THROW(policy->rebalance_into(load.view(), t, &other_shape, out), std::invalid_argument);
  EXPECT_EQ(out, before);
}

TEST_P(PolicyInvariants, ExtremeFiniteLoadsGiveValidPlacements) {
  // The largest accepted load (whose sums stay finite in float), subnormals and zeros: a valid
  // placement (every expert placed, every GPU full), never a crash.
  auto policy = eplb::algo::make_policy(GetParam().policy);
  for (const Topology& t : {Topology{1, 3, 3, 1, 1, 1}, Topology{1, 6, 6, 2, 1, 1},
                            Topology{2, 8, 12, 4, 2, 4}, Topology{1, 8, 16, 4, 1, 1}}) {
    for (const double v : {LoadView::kMaxLoad, 1e20, 5e-324, 0.0}) {
      SCOPED_TRACE(t.describe() + " load " + std::to_string(v));
      LoadMatrix load{t.num_layers, t.num_logical,
                      std::vector<double>(static_cast<std::size_t>(t.num_layers) * t.num_logical, v)};
      load.values[0] = v == 0.0 ? 1.0 : v / 2;  // not all equal
      const Placement prev = Placement::contiguous(t);
      for (const Placement* p : {static_cast<const Placement*>(nullptr), &prev}) {
        Placement out;
        ASSERT_NO_THROW(policy->rebalance_into(load.view(), t, p, out));
        ASSERT_NO_THROW(out.check_shape(t, "policy output"));
        for (int l = 0; l < t.num_layers; ++l)
          for (int e = 0; e < t.num_logical; ++e) EXPECT_GE(out.logcnt(l)[e], 1);
      }
    }
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> v;
  for (const auto& name : eplb::algo::policy_names())
    for (unsigned seed = 1; seed <= 8; ++seed) v.push_back({name, seed});
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, PolicyInvariants, testing::ValuesIn(all_cases()),
                         [](const testing::TestParamInfo<Case>& p) {
                           std::string n = p.param.policy + "_seed" +
                                           std::to_string(p.param.seed);
                           for (auto& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

}  // namespace
