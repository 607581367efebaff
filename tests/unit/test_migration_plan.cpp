// The migration plan, applied to simulated memory, always yields the new placement.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <tuple>

#include "eplb/algo/load.hpp"
#include "eplb/algo/migration.hpp"
#include "eplb/algo/policy.hpp"
#include "eplb/algo/spill.hpp"

namespace {
using eplb::algo::LoadMatrix;
using eplb::algo::MigrationOptions;
using eplb::algo::Placement;
using eplb::algo::Topology;

/// Executes the plan the way the runtime does (per round: sends read, receives write to the
/// first destination, local copies, fan-out, staging commit) on an array holding one expert
/// id per slot. Fails the test on any read of a slot that no longer holds the expert, and on
/// a round that stages more slots on one rank than the plan reports, or than `limit` (when
/// given: for plans whose dependency cycles each fit the limit alone).
std::vector<int> simulate(const eplb::algo::MigrationPlan& plan, const Placement& from,
                          int limit = 0) {
  const Topology& t = plan.topology();
  std::vector<int> mem(from.phy2log().begin(), from.phy2log().end());
  for (int l = 0; l < t.num_layers; ++l) {
    const auto& lp = plan.layer(l);
    int* m = mem.data() + static_cast<std::size_t>(l) * t.num_slots;
    for (const auto& round : lp.rounds) {
      std::map<int, int> staging;  // slot -> value written through staging
      std::vector<int> per_rank(t.num_ranks, 0);
      auto write = [&](int slot, int value) {
        if (lp.staged[slot]) {
          if (!staging.count(slot)) ++per_rank[slot / t.slots_per_rank()];
          staging[slot] = value;
        } else {
          m[slot] = value;
        }
      };
      auto where = [&](int slot) { return lp.staged[slot] ? staging.at(slot) : m[slot]; };
      const auto* begin = lp.units.data() + round.first_unit;
      const auto* end = begin + round.num_units;
      std::vector<int> sent;
      for (auto* u = begin; u != end; ++u)
        if (u->remote()) {
          EXPECT_EQ(m[u->src_slot], u->expert) << "send reads a clobbered slot, layer " << l;
          sent.push_back(m[u->src_slot]);
        }
      std::size_t i = 0;
      for (auto* u = begin; u != end; ++u)
        if (u->remote()) write(lp.dst_begin(*u)[0], sent[i++]);
      for (auto* u = begin; u != end; ++u)
        if (!u->remote()) {
          EXPECT_EQ(u->src_rank, u->dst_rank);
          EXPECT_EQ(m[u->src_slot], u->expert) << "local copy reads a clobbered slot";
          write(lp.dst_begin(*u)[0], m[u->src_slot]);
        }
      for (auto* u = begin; u != end; ++u)
        for (int q = 1; q < u->num_dst; ++q) write(lp.dst_begin(*u)[q], where(lp.dst_begin(*u)[0]));
      for (auto [slot, value] : staging) m[slot] = value;
      for (int r = 0; r < t.num_ranks; ++r) {
        EXPECT_LE(per_rank[r], plan.max_staged_slots());
        if (limit > 0) {
          EXPECT_LE(per_rank[r], limit) << "rank " << r << ", layer " << l;
        }
      }
    }
  }
  return mem;
}

/// 1-3 nodes, 1-4 ranks per node, 1-6 slots per rank, 1..R experts, 1-3 layers.
Topology random_topology(std::mt19937& rng) {
  Topology t;
  t.num_nodes = 1 + static_cast<int>(rng() % 3);
  t.num_ranks = t.num_nodes * (1 + static_cast<int>(rng() % 4));
  t.num_slots = t.num_ranks * (1 + static_cast<int>(rng() % 6));
  t.num_logical = 1 + static_cast<int>(rng() % t.num_slots);
  t.num_layers = 1 + static_cast<int>(rng() % 3);
  return t;
}

Placement random_placement(const Topology& t, std::mt19937& rng) {
  // Every expert once, then random extra replicas, shuffled per layer.
  std::vector<int> p;
  for (int l = 0; l < t.num_layers; ++l) {
    std::vector<int> row;
    for (int e = 0; e < t.num_logical; ++e) row.push_back(e);
    std::uniform_int_distribution<int> any(0, t.num_logical - 1);
    while (static_cast<int>(row.size()) < t.num_slots) row.push_back(any(rng));
    std::shuffle(row.begin(), row.end(), rng);
    p.insert(p.end(), row.begin(), row.end());
  }
  return Placement(t.num_layers, t.num_logical, t.num_slots, std::move(p));
}

Placement perturb(const Placement& from, const Topology& t, std::mt19937& rng, double frac) {
  // Swap a fraction of slot pairs: creates chains and cycles of moves.
  std::vector<int> p(from.phy2log().begin(), from.phy2log().end());
  std::uniform_int_distribution<int> slot(0, t.num_slots - 1);
  for (int l = 0; l < t.num_layers; ++l) {
    int* row = p.data() + static_cast<std::size_t>(l) * t.num_slots;
    for (int i = 0; i < frac * t.num_slots; ++i) std::swap(row[slot(rng)], row[slot(rng)]);
  }
  return Placement(t.num_layers, t.num_logical, t.num_slots, std::move(p));
}

/// Every field of two plans, layer by layer, and their statistics.
void expect_same_plan(const eplb::algo::MigrationPlan& p, const eplb::algo::MigrationPlan& q) {
  ASSERT_EQ(p.num_layers(), q.num_layers());
  for (int l = 0; l < p.num_layers(); ++l) {
    const auto &a = p.layer(l), &b = q.layer(l);
    ASSERT_EQ(a.units.size(), b.units.size()) << "layer " << l;
    for (std::size_t i = 0; i < a.units.size(); ++i) {
      const auto &u = a.units[i], &v = b.units[i];
      EXPECT_EQ(std::tie(u.expert, u.src_rank, u.src_slot, u.dst_rank, u.num_dst),
                std::tie(v.expert, v.src_rank, v.src_slot, v.dst_rank, v.num_dst))
          << "layer " << l << " unit " << i;
      EXPECT_TRUE(std::equal(a.dst_begin(u), a.dst_begin(u) + u.num_dst, b.dst_begin(v)));
    }
    ASSERT_EQ(a.rounds.size(), b.rounds.size());
    for (std::size_t r = 0; r < a.rounds.size(); ++r) {
      EXPECT_EQ(a.rounds[r].first_unit, b.rounds[r].first_unit);
      EXPECT_EQ(a.rounds[r].num_units, b.rounds[r].num_units);
    }
    EXPECT_EQ(a.staged, b.staged);
    EXPECT_EQ(a.slots_changed, b.slots_changed);
  }
  const auto &s = p.stats(), &t = q.stats();
  EXPECT_EQ(std::tie(s.slots_changed, s.remote_units, s.local_units, s.fanout_copies, s.same_node_remote,
                     s.max_rank_sends, s.max_rank_recvs, s.max_rounds),
            std::tie(t.slots_changed, t.remote_units, t.local_units, t.fanout_copies, t.same_node_remote,
                     t.max_rank_sends, t.max_rank_recvs, t.max_rounds));
  EXPECT_EQ(p.max_staged_slots(), q.max_staged_slots());
}

class MigrationPlanRandom : public testing::TestWithParam<unsigned> {};

TEST_P(MigrationPlanRandom, ApplyingThePlanYieldsTheNewPlacement) {
  std::mt19937 rng(GetParam());
  // Planned into over and over, across shapes and limits: must equal a fresh plan each time.
  eplb::algo::MigrationPlan reused;
  for (int trial = 0; trial < 40; ++trial) {
    const Topology t = random_topology(rng);
    SCOPED_TRACE(t.describe());
    const Placement a = random_placement(t, rng);
    const Placement b = (trial % 2) ? random_placement(t, rng) : perturb(a, t, rng, 0.3);
    for (int limit : {0, 1, 2, 5}) {
      const auto plan = eplb::algo::plan_migration(a, b, t, MigrationOptions{limit});
      EXPECT_EQ(simulate(plan, a), std::vector<int>(b.phy2log().begin(), b.phy2log().end()))
          << "limit " << limit;
      // Same inputs, same plan (every rank derives it alone), also into a reused plan.
      expect_same_plan(eplb::algo::plan_migration(a, b, t, MigrationOptions{limit}), plan);
      eplb::algo::plan_migration(a, b, t, MigrationOptions{limit}, reused);
      expect_same_plan(reused, plan);
      // Layers split over threads (as many as the layer count allows and more): the same plan.
      for (int threads : {2, 3, 16}) {
        eplb::algo::plan_migration(a, b, t, MigrationOptions{limit, threads}, reused);
        expect_same_plan(reused, plan);
      }
    }
  }
}

TEST(MigrationPlan, ThreadsSplitTheLayersAndGiveTheSamePlan) {
  // Enough layers and changed slots (plan_migration gives a thread 2048 changed slots at
  // least) that the layers are really split; random_topology's are too small.
  std::mt19937 rng(3);
  const Topology t{40, 64, 512, 8, 2, 4};
  const Placement a = random_placement(t, rng);
  const Placement b = perturb(a, t, rng, 0.8);
  const auto one = eplb::algo::plan_migration(a, b, t, MigrationOptions{2, 1});
  ASSERT_GE(one.stats().slots_changed, 7 * 2048);  // all 7 threads below get their share
  for (int threads : {2, 4, 7}) {
    SCOPED_TRACE(threads);
    eplb::algo::MigrationPlan p;
    eplb::algo::plan_migration(a, b, t, MigrationOptions{2, threads}, p);
    expect_same_plan(p, one);
    EXPECT_EQ(simulate(p, a), std::vector<int>(b.phy2log().begin(), b.phy2log().end()));
  }
  EXPECT_THROW(eplb::algo::plan_migration(a, b, t, MigrationOptions{0, 0}), std::invalid_argument);
}
INSTANTIATE_TEST_SUITE_P(Seeds, MigrationPlanRandom, testing::Range(1u, 9u));

TEST(MigrationPlan, IdenticalPlacementsMoveNothing) {
  const Topology t{3, 16, 24, 4, 2, 1};
  std::mt19937 rng(3);
  const auto a = random_placement(t, rng);
  const auto plan = eplb::algo::plan_migration(a, a, t);
  EXPECT_TRUE(plan.empty());
  EXPECT_EQ(plan.stats().remote_units + plan.stats().local_units, 0);
  for (int l = 0; l < 3; ++l) EXPECT_TRUE(plan.layer(l).rounds.empty());
}

TEST(MigrationPlan, LocalCopyWhenTheRankHoldsTheExpert) {
  // 2 ranks x 2 slots. Rank 0: [0,1] -> [1,1]: expert 1 is already on rank 0.
  const Topology t{1, 3, 4, 2, 1, 1};
  const Placement a(1, 3, 4, {0, 1, 2, 0});
  const Placement b(1, 3, 4, {1, 1, 2, 0});
  const auto plan = eplb::algo::plan_migration(a, b, t);
  ASSERT_EQ(plan.layer(0).units.size(), 1u);
  const auto& u = plan.layer(0).units[0];
  EXPECT_FALSE(u.remote());
  EXPECT_EQ(u.src_slot, 1);  // the slot that keeps expert 1
  EXPECT_EQ(plan.stats().local_units, 1);
  EXPECT_EQ(plan.stats().remote_units, 0);
}

TEST(MigrationPlan, OneTransferPerExpertAndRankWithFanOut) {
  // Rank 1 needs expert 0 in both its slots: one transfer, one fan-out copy.
  const Topology t{1, 2, 4, 2, 1, 1};
  const Placement a(1, 2, 4, {0, 0, 1, 1});
  const Placement b(1, 2, 4, {1, 1, 0, 0});
  const auto plan = eplb::algo::plan_migration(a, b, t);
  EXPECT_EQ(plan.stats().remote_units, 2);
  EXPECT_EQ(plan.stats().fanout_copies, 2);
  for (const auto& u : plan.layer(0).units) EXPECT_EQ(u.num_dst, 2);
  // A swap is a cycle: both receives go through staging in one round.
  EXPECT_EQ(plan.layer(0).rounds.size(), 1u);
}

TEST(MigrationPlan, SenderPrefersSameNode) {
  // 4 ranks x 2 slots on 2 nodes (ranks 0,1 | 2,3). Expert 0 is on ranks 0 and 2; rank 1
  // and rank 3 each need it: each gets it from the holder on its own node.
  const Topology t{1, 3, 8, 4, 2, 1};
  const Placement a(1, 3, 8, {0, 1, 1, 2, 0, 2, 2, 1});
  const Placement b(1, 3, 8, {0, 1, 0, 2, 0, 2, 0, 1});
  const auto plan = eplb::algo::plan_migration(a, b, t);
  ASSERT_EQ(plan.layer(0).units.size(), 2u);
  for (const auto& u : plan.layer(0).units) {
    EXPECT_TRUE(u.remote());
    EXPECT_EQ(t.node_of_rank(u.src_rank), t.node_of_rank(u.dst_rank)) << "same-node sender";
  }
  EXPECT_EQ(plan.stats().same_node_remote, 2);
}

TEST(MigrationPlan, SendingWorkIsSpreadOverHolders) {
  // One node, 4 ranks x 2 slots. Expert 0 is on ranks 0 and 1; ranks 2 and 3 need it.
  const Topology t{1, 4, 8, 4, 1, 1};
  const Placement a(1, 4, 8, {0, 1, 0, 2, 3, 1, 2, 3});
  const Placement b(1, 4, 8, {0, 1, 0, 2, 0, 3, 0, 1});
  const auto plan = eplb::algo::plan_migration(a, b, t);
  std::vector<int> senders;
  for (const auto& u : plan.layer(0).units)
    if (u.expert == 0) senders.push_back(u.src_rank);
  ASSERT_EQ(senders.size(), 2u);
  EXPECT_NE(senders[0], senders[1]) << "both transfers from one holder";
}

TEST(MigrationPlan, StagingLimitHoldsForEveryRound) {
  // Four swaps across two ranks (slot j <-> slot j + 4): each is a two-cycle that stages one
  // slot on each rank. One staged slot per rank allowed: four rounds, never two at once.
  const Topology t{1, 8, 8, 2, 1, 1};
  const auto a = Placement::contiguous(t);
  const Placement b(1, 8, 8, {4, 5, 6, 7, 0, 1, 2, 3});
  const auto unlimited = eplb::algo::plan_migration(a, b, t, MigrationOptions{0});
  EXPECT_EQ(unlimited.layer(0).rounds.size(), 1u);
  EXPECT_EQ(unlimited.max_staged_slots(), 4);
  for (int limit : {1, 2, 3}) {
    const auto plan = eplb::algo::plan_migration(a, b, t, MigrationOptions{limit});
    EXPECT_EQ(plan.layer(0).rounds.size(), static_cast<std::size_t>((4 + limit - 1) / limit))
        << "limit " << limit;
    EXPECT_EQ(plan.max_staged_slots(), limit);
    EXPECT_EQ(simulate(plan, a, limit), std::vector<int>(b.phy2log().begin(), b.phy2log().end()));
  }
}

TEST(MigrationPlan, StagingLimitSplitsRounds) {
  const Topology t{1, 8, 16, 2, 1, 1};
  std::mt19937 rng(11);
  const auto a = random_placement(t, rng);
  const auto b = random_placement(t, rng);
  const auto unlimited = eplb::algo::plan_migration(a, b, t, MigrationOptions{0});
  const auto limited = eplb::algo::plan_migration(a, b, t, MigrationOptions{1});
  EXPECT_LE(limited.max_staged_slots(), unlimited.max_staged_slots());
  EXPECT_GE(limited.layer(0).rounds.size(), unlimited.layer(0).rounds.size());
  EXPECT_EQ(unlimited.layer(0).rounds.size(), 1u);
}

TEST(MigrationPlan, HelpersRejectAnInvalidTopology) {
  // Shapes that match the placements but not a valid topology: 8 GPUs for 4 slots (no slot
  // per GPU: align_slots looped for ever), 0 GPUs (a division by zero), 3 slots over 2 GPUs.
  const Placement p(1, 4, 4, {0, 1, 2, 3});
  const LoadMatrix load{1, 4, {1, 2, 3, 4}};
  for (const Topology& bad : {Topology{1, 4, 4, 8, 1, 1}, Topology{1, 4, 4, 0, 1, 1},
                              Topology{1, 4, 4, 3, 1, 1}}) {
    SCOPED_TRACE(bad.describe());
    Placement next = p;
    EXPECT_THROW(eplb::algo::align_slots(p, next, bad), std::invalid_argument);
    EXPECT_THROW((void)eplb::algo::evaluate(load.view(), p, bad), std::invalid_argument);
    EXPECT_THROW((void)eplb::algo::evaluate_contiguous(load.view(), bad), std::invalid_argument);
    EXPECT_THROW((void)eplb::algo::node_local_traffic(load.view(), p, bad), std::invalid_argument);
  }
}

TEST(MigrationPlan, RejectsShapeMismatch) {
  const Topology t{1, 4, 8, 2, 1, 1};
  const auto a = Placement::contiguous(t);
  const auto other = Placement::contiguous(Topology{2, 4, 8, 2, 1, 1});
  EXPECT_THROW(eplb::algo::plan_migration(a, other, t), std::invalid_argument);
}

/// Per (layer, GPU): the sorted experts of a placement's slots on that GPU.
std::vector<std::vector<int>> gpu_multisets(const Placement& p, const Topology& t) {
  std::vector<std::vector<int>> m;
  const int k = t.slots_per_rank();
  for (int l = 0; l < t.num_layers; ++l)
    for (int g = 0; g < t.num_slots; g += k) {
      const auto row = p.phy2log(l);
      std::vector<int> v(row.begin() + g, row.begin() + g + k);
      std::sort(v.begin(), v.end());
      m.push_back(std::move(v));
    }
  return m;
}

TEST_P(MigrationPlanRandom, AlignedSlotsKeepEveryExpertTheGpuAlreadyHolds) {
  std::mt19937 rng(GetParam() + 100);
  for (int trial = 0; trial < 40; ++trial) {
    const Topology t = random_topology(rng);
    SCOPED_TRACE(t.describe());
    const Placement a = random_placement(t, rng);
    const Placement b = (trial % 2) ? random_placement(t, rng) : perturb(a, t, rng, 0.3);
    Placement c = b;
    const long long moved = eplb::algo::align_slots(a, c, t);
    // Same experts and replica counts on every GPU: the balance cannot change.
    EXPECT_EQ(gpu_multisets(c, t), gpu_multisets(b, t));
    EXPECT_TRUE(std::equal(c.logcnt().begin(), c.logcnt().end(), b.logcnt().begin()));
    long long differ = 0;
    for (std::size_t i = 0; i < b.phy2log().size(); ++i) differ += b.phy2log()[i] != c.phy2log()[i];
    EXPECT_EQ(moved, differ);
    // The most slots that can keep their expert do: sum over GPUs and experts of
    // min(replicas before, replicas after).
    const int k = t.slots_per_rank();
    long long kept = 0, best = 0;
    for (int l = 0; l < t.num_layers; ++l)
      for (int g = 0; g < t.num_slots; g += k) {
        std::map<int, int> before, after;
        for (int s = g; s < g + k; ++s) {
          ++before[a.phy2log(l)[s]];
          ++after[b.phy2log(l)[s]];
          kept += a.phy2log(l)[s] == c.phy2log(l)[s];
        }
        for (const auto& [e, n] : before) best += std::min(n, after.count(e) ? after[e] : 0);
      }
    EXPECT_EQ(kept, best);
    // The migration then moves no more experts between GPUs and copies no more locally.
    const auto pb = eplb::algo::plan_migration(a, b, t), pc = eplb::algo::plan_migration(a, c, t);
    EXPECT_EQ(pc.stats().remote_units, pb.stats().remote_units);
    EXPECT_LE(pc.stats().local_units + pc.stats().fanout_copies, pb.stats().local_units + pb.stats().fanout_copies);
    EXPECT_LE(pc.stats().slots_changed, pb.stats().slots_changed);
    EXPECT_EQ(simulate(pc, a), std::vector<int>(c.phy2log().begin(), c.phy2log().end()));
    // Aligning again changes nothing.
    Placement d = c;
    EXPECT_EQ(eplb::algo::align_slots(a, d, t), 0);
    EXPECT_EQ(d, c);
  }
}

TEST(MigrationPlan, AlignSlotsWorkedExample) {
  // 2 GPUs x 3 slots. GPU 0: [0,1,2] -> policy [2,3,0]: 0 and 2 keep their slots, 3 takes 1's.
  // GPU 1: [3,4,0] -> [4,1,4]: 4 keeps slot 4, its second replica takes slot 3 (the policy's
  // choice for it), 1 the last free slot.
  const Topology t{1, 5, 6, 2, 1, 1};
  const Placement a(1, 5, 6, {0, 1, 2, 3, 4, 0});
  Placement b(1, 5, 6, {2, 3, 0, 4, 1, 4});
  const Placement policy_order = b;
  EXPECT_EQ(eplb::algo::align_slots(a, b, t), 4);
  EXPECT_EQ(std::vector<int>(b.phy2log().begin(), b.phy2log().end()), (std::vector<int>{0, 3, 2, 4, 4, 1}));
  EXPECT_EQ(b.log2phy(0, 4)[0], 3);
  EXPECT_EQ(b.log2phy(0, 4)[1], 4);
  const auto before = eplb::algo::plan_migration(a, policy_order, t), after = eplb::algo::plan_migration(a, b, t);
  EXPECT_EQ(after.stats().slots_changed, 3);
  EXPECT_LT(after.stats().slots_changed, before.stats().slots_changed);
  EXPECT_THROW(eplb::algo::align_slots(a, b, Topology{1, 5, 8, 2, 1, 1}), std::invalid_argument);
}

}  // namespace
