// Heap allocations around a migration and a rebalance, through a replaced global operator new
// (which is why this is its own program):
// - PreparedMigration allocates everything up front: execute() makes no heap allocation, so a
//   rank out of memory fails in the constructor, before any weight moves, where the engine's
//   preparation agreement catches it.
// - A rebalance in which one allocation on one rank fails (every allocation in turn, on every
//   rank) ends alike on every rank: all succeed or all throw, no rank hangs, the weights match
//   the placement every rank holds, and the next rebalance works. A hang here is a failure
//   path that does not reach the other ranks (CTest's timeout ends it); EPLB_ALLOC_TEST_DEBUG=1
//   prints each rank's outcome per allocation, the last lines before the hang name it.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpi_test_util.hpp"
#include "eplb/algo/migration.hpp"
#include "eplb/algo/policy.hpp"
#include "eplb/comm/mpi_transport.hpp"
#include "eplb/runtime/engine.hpp"
#include "eplb/runtime/migrate.hpp"
#include "eplb/runtime/pattern.hpp"
#if EPLB_TEST_CHECKPOINTS
#include <unistd.h>

#include <filesystem>

#include "eplb/runtime/checkpoint.hpp"
#include "eplb/runtime/engine_checkpoint.hpp"
#endif

#include "alloc_hooks.hpp"

namespace {
using eplb::algo::Topology;
using eplb::test::bad_slots_anywhere_in;
using eplb::test::rebalance_works_everywhere;
using eplb::test::HostWeights;
using eplb::test::SharedPath;
using eplb::test::world_rank;
using eplb::test::world_size;

struct AllocCase {
  const char* name;
  int staged_slots;  // plan bound: several rounds per layer when > 0
  eplb::runtime::ExecOptions options;
};
void PrintTo(const AllocCase& c, std::ostream* os) { *os << c.name; }

class PreparedMigrationAllocations : public testing::TestWithParam<AllocCase> {};

/// Three rebalances of a drifting load, each migration prepared and then executed with
/// allocations counted on every rank; every slot checked afterwards.
TEST_P(PreparedMigrationAllocations, ExecuteAllocatesNothing) {
  {  // the counter sees what the library allocates (a std::vector in this program)
    g_allocations = 0;
    g_fail_at = 0;
    g_counting = true;
    std::vector<int> probe(3);
    g_counting = false;
    ASSERT_EQ(g_allocations.load(), 1) << "the replaced operator new is not in use";
  }
  const auto& c = GetParam();
  const int me = world_rank();
  eplb::test::MigrationSetup s(7);
  const auto& t = s.t;
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport transport(comm);
  for (int round = 0; round < 3; ++round) {
    const auto b = s.next();
    eplb::algo::MigrationOptions mo;
    mo.max_staged_slots_per_rank = c.staged_slots;
    const auto plan = eplb::algo::plan_migration(s.a, b, t, mo);
    eplb::runtime::PreparedMigration m(plan, s.w.registry, transport, me, c.options);
    auto staging = transport.allocate(m.staging_bytes());
    int reported = 0;
    g_allocations = 0;
    g_fail_at = 0;
    g_counting = true;
    const auto moved = m.execute({staging.get(), m.staging_bytes()}, [&](int) { ++reported; });
    g_counting = false;
    const long n = g_allocations.load();
    EXPECT_EQ(n, 0) << "heap allocations during execute() in round " << round;
    EXPECT_EQ(reported, t.num_layers);
    EXPECT_GT(moved.rounds, 0);
    EXPECT_EQ(bad_slots_anywhere_in(s.w.registry, b), 0u) << "round " << round;
    s.a = b;
  }
}

using eplb::runtime::ExecOptions;
INSTANTIATE_TEST_SUITE_P(
    Modes, PreparedMigrationAllocations,
    testing::Values(
        AllocCase{"coalesced_layer_by_layer", 0, ExecOptions{0, 1, 0, true, 4, false}},
        AllocCase{"coalesced_overlapped_rounds", 2, ExecOptions{0, 1, 0, true, 2, true}},
        AllocCase{"coalesced_windows_in_a_budget", 0, ExecOptions{0, 0, std::size_t{64} << 10, true, 3, true}},
        AllocCase{"per_tensor_small_batches", 2, ExecOptions{3, 1, 0, false, 1, false}},
        AllocCase{"per_tensor_windows", 0, ExecOptions{0, 0, std::size_t{1} << 20, false, 1, false}}),
    [](const testing::TestParamInfo<AllocCase>& i) { return std::string(i.param.name); });

TEST(PreparedMigration, RunsOnceAndChecksItsInputsInTheConstructor) {
  const int P = world_size(), me = world_rank();
  eplb::test::MigrationSetup s(3);
  const auto& t = s.t;
  auto& w = s.w;
  const auto b = s.next();
  const auto plan = eplb::algo::plan_migration(s.a, b, t);
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport transport(comm);
  EXPECT_THROW(eplb::runtime::PreparedMigration(plan, w.registry, transport, P), std::invalid_argument);
  HostWeights other(Topology{t.num_layers + 1, t.num_logical, t.num_slots, P, 1, 1}, {256});
  EXPECT_THROW(eplb::runtime::PreparedMigration(plan, other.registry, transport, me), std::invalid_argument);
  eplb::runtime::PreparedMigration m(plan, w.registry, transport, me);
  EXPECT_EQ(m.staging_bytes(), eplb::runtime::staging_bytes_needed(plan, w.registry));
  auto staging = transport.allocate(m.staging_bytes());
  (void)m.execute({staging.get(), m.staging_bytes()});
  EXPECT_EQ(bad_slots_anywhere_in(w.registry, b), 0u);
  EXPECT_THROW((void)m.execute({staging.get(), m.staging_bytes()}), std::logic_error);  // local: no peer waits
}

/// An engine of `cfg` after two passes of the same loads every time (per rank), contiguous.
/// In three parts, so that a sweep can make the engine's constructor alone fail: the test's
/// own allocations (weights, the config's copy, loads) happen outside the swept call.
struct EngineFixture {
  std::optional<HostWeights> w;
  std::optional<eplb::runtime::Engine> engine;
  std::optional<eplb::runtime::RuntimeConfig> cfg;  // moved into the engine
  std::optional<eplb::algo::Placement> initial;     // moved into the engine
  void prepare(const eplb::runtime::RuntimeConfig& c) {
    engine.reset();
    w.emplace(c.topology, std::vector<std::size_t>{300, 64}, 8);
    initial.emplace(eplb::algo::Placement::contiguous(c.topology));
    eplb::runtime::fill_slots(w->registry, *initial, world_rank());
    cfg.emplace(c);
  }
  void construct() { engine.emplace(MPI_COMM_WORLD, std::move(*cfg), std::move(w->registry), std::move(*initial)); }
  void passes() {
    const auto& t = engine->config().topology;
    const int me = world_rank();
    std::mt19937_64 rng(77 + static_cast<unsigned>(me));
    std::lognormal_distribution<double> d(0.0, 1.3);
    std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical));
    for (int pass = 0; pass < 2; ++pass) {
      for (int l = 0; l < t.num_layers; ++l) {
        for (auto& v : c) v = static_cast<std::int64_t>(100 * d(rng));
        ASSERT_TRUE(engine->window().add_counts(l, c));
      }
      (void)engine->step();
    }
  }
  void reset(const eplb::runtime::RuntimeConfig& c) {
    prepare(c);
    construct();
    passes();
  }
};

/// The weights hold what the placement says, on every rank, and every rank has the same one.
void expect_consistent(const eplb::runtime::Engine& e, const std::string& when) {
  EXPECT_EQ(bad_slots_anywhere_in(e.weights(), e.placement()), 0u) << when;
  unsigned long long h = static_cast<unsigned long long>(e.epoch());  // wraps, as a hash may
  for (int v : e.placement().phy2log()) h = h * 1000003u + static_cast<unsigned>(v);
  unsigned long long mn = h, mx = h;
  MPI_Allreduce(MPI_IN_PLACE, &mn, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(mn, mx) << "placements or epochs differ between ranks " << when;
}

/// One rebalance of a fresh engine in which one allocation of rank `bad` fails.
void sweep_one_failing_allocation(const eplb::runtime::RuntimeConfig& cfg, int bad) {
  EngineFixture f;
  const auto initial = eplb::algo::Placement::contiguous(cfg.topology);
  const int failures = sweep(
      "rebalance", bad, [&] { f.reset(cfg); }, [&] { (void)f.engine->rebalance(); },
      [&](const Outcome& o) {
        const std::string& when = o.when;
        expect_consistent(*f.engine, when);
        if (o.threw && f.engine->epoch() == 0) {  // failed before the placement changed: nothing moved
          EXPECT_EQ(bad_slots_anywhere_in(f.engine->weights(), initial), 0u) << when;
        }
        std::string why;
        EXPECT_TRUE(rebalance_works_everywhere(*f.engine, why)) << when << ", the next rebalance failed: " << why;
        expect_consistent(*f.engine, when + ", then a rebalance");
      });
  EXPECT_GT(failures, 0) << "no allocation failure was ever reported";
}

eplb::runtime::RuntimeConfig sweep_config(bool distributed_planning) {
  const int P = world_size();
  eplb::runtime::RuntimeConfig cfg;
  cfg.topology = Topology{2, 8, 12, P, 1, 1};  // 12 slots: 1, 2, 3, 4 or 6 ranks
  if (12 % P) cfg.topology.num_slots = 4 * P;
  cfg.window_passes = 2;
  cfg.rebalance_interval = 0;
  cfg.staging_bytes = std::size_t{1} << 16;
  cfg.min_gain = -1;  // never skip: every rebalance migrates
  cfg.policy = "deepseek";
  cfg.distributed_planning = distributed_planning;
  return cfg;
}

TEST(OneFailingAllocation, RebalanceEndsAlikeOnEveryRank) {
  for (int bad = 0; bad < world_size(); ++bad) sweep_one_failing_allocation(sweep_config(true), bad);
}

TEST(OneFailingAllocation, StickyRebalanceWithTwoNodesEndsAlikeOnEveryRank) {
  // The migration-aware policy (its own scratch and search) on a hierarchical topology where
  // the ranks allow two nodes.
  auto cfg = sweep_config(true);
  cfg.policy = "sticky";
  if (world_size() % 2 == 0) {
    cfg.topology.num_nodes = 2;
    cfg.topology.num_groups = 4;
  }
  for (int bad = 0; bad < world_size(); ++bad) sweep_one_failing_allocation(cfg, bad);
}

TEST(OneFailingAllocation, RebalancePlannedOnRankZeroEndsAlikeOnEveryRank) {
  for (int bad = 0; bad < world_size(); ++bad) sweep_one_failing_allocation(sweep_config(false), bad);
}

TEST(OneFailingAllocation, EngineConstructionEndsAlikeOnEveryRank) {
  const auto cfg = sweep_config(true);
  for (int bad = 0; bad < world_size(); ++bad) {
    EngineFixture f;
    sweep(
        "construction", bad, [&] { f.prepare(cfg); }, [&] { f.construct(); },
        [&](const Outcome& o) {
          if (o.threw) return;  // every rank threw: nothing to use
          const std::string& when = o.when;
          f.passes();
          expect_consistent(*f.engine, when);
          std::string why;
          EXPECT_TRUE(rebalance_works_everywhere(*f.engine, why)) << when << ": " << why;
        });
  }
}

#if EPLB_TEST_CHECKPOINTS
TEST(OneFailingAllocation, SaveCheckpointEndsAlikeOnEveryRankAndChangesNothing) {
  const auto cfg = sweep_config(true);
  SharedPath file("eplb_alloc_save_");
  for (int bad = 0; bad < world_size(); ++bad) {
    EngineFixture f;
    f.reset(cfg);
    std::string why;
    ASSERT_TRUE(rebalance_works_everywhere(*f.engine, why)) << why;
    const auto epoch = f.engine->epoch();
    const auto pass = f.engine->pass();
    const int failures = sweep(
        "save_checkpoint", bad, [] {}, [&] { eplb::runtime::save_checkpoint(*f.engine, file.path); },
        [&](const Outcome& o) {
          const std::string& when = o.when;
          EXPECT_EQ(f.engine->epoch(), epoch) << when;
          EXPECT_EQ(f.engine->pass(), pass) << when;
          expect_consistent(*f.engine, when);
          if (!o.threw && world_rank() == 0) {  // a failure that was absorbed left a whole file
            const auto c = eplb::runtime::read_checkpoint(file.path);
            EXPECT_EQ(c.epoch, epoch) << when;
            EXPECT_EQ(c.pass, pass) << when;
            const auto p = f.engine->placement().phy2log();
            EXPECT_TRUE(std::equal(p.begin(), p.end(), c.phy2log.begin(), c.phy2log.end())) << when;
          }
        });
    EXPECT_GT(failures, 0);
    // The last save (nothing failed) wrote a file that resumes.
    EngineFixture g;
    g.reset(cfg);
    (void)eplb::runtime::resume_from_checkpoint(*g.engine, file.path);
    EXPECT_EQ(g.engine->epoch(), epoch);
    EXPECT_TRUE(g.engine->placement() == f.engine->placement());
  }
}

TEST(OneFailingAllocation, ResumeEndsAlikeOnEveryRank) {
  const auto cfg = sweep_config(true);
  SharedPath file("eplb_alloc_resume_");
  EngineFixture src;
  src.reset(cfg);
  std::string why;
  ASSERT_TRUE(rebalance_works_everywhere(*src.engine, why)) << why;
  eplb::runtime::save_checkpoint(*src.engine, file.path);
  for (int bad = 0; bad < world_size(); ++bad) {
    EngineFixture f;
    const auto initial = eplb::algo::Placement::contiguous(cfg.topology);
    const int failures = sweep(
        "resume_from_checkpoint", bad, [&] { f.reset(cfg); },
        [&] { (void)eplb::runtime::resume_from_checkpoint(*f.engine, file.path); },
        [&](const Outcome& o) {
          const std::string& when = o.when;
          int flag = f.engine->restore_failed() ? 1 : 0, any = flag;
          MPI_Allreduce(&flag, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
          EXPECT_EQ(flag, any) << "restore_failed() differs between ranks, " << when;
          if (!o.threw) {
            EXPECT_TRUE(f.engine->placement() == src.engine->placement()) << when;
            EXPECT_EQ(f.engine->epoch(), src.engine->epoch()) << when;
          } else if (!any) {  // refused before anything changed
            EXPECT_TRUE(f.engine->placement() == initial) << when;
            EXPECT_EQ(f.engine->epoch(), 0) << when;
          }
          if (any) {  // documented: rebalances refuse until a restore succeeds
            std::string ignored;
            EXPECT_FALSE(rebalance_works_everywhere(*f.engine, ignored)) << when;
            (void)eplb::runtime::resume_from_checkpoint(*f.engine, file.path);
            EXPECT_FALSE(f.engine->restore_failed()) << when;
          }
          // The weights were loaded for the initial placement; a resumed engine moves none
          // (Engine::restore), so load them for its placement before rebalancing.
          eplb::runtime::fill_slots(f.engine->weights(), f.engine->placement(), world_rank());
          std::string next;
          EXPECT_TRUE(rebalance_works_everywhere(*f.engine, next)) << when << ", then: " << next;
          expect_consistent(*f.engine, when);
        });
    EXPECT_GT(failures, 0);
  }
}
#endif

}  // namespace
