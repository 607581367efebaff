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

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
std::atomic<long> g_fail_at{0};  // while counting: the allocation with this number (from 1) throws

void* counted_alloc(std::size_t n, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) {
    const long k = g_allocations.fetch_add(1, std::memory_order_relaxed) + 1;
    if (k == g_fail_at.load(std::memory_order_relaxed)) throw std::bad_alloc();
  }
  if (n == 0) n = 1;
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                              : std::malloc(n);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

// Every replaceable allocation form counts while g_counting is set.
void* operator new(std::size_t n) { return counted_alloc(n, 0); }
void* operator new[](std::size_t n) { return counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {
using eplb::algo::Topology;
using eplb::test::bad_slots_anywhere_in;
using eplb::test::HostWeights;
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
  const int P = world_size(), me = world_rank();
  Topology t{6, 16, 6 * P, P, 1, 1};
  if (t.num_slots < t.num_logical) t.num_logical = t.num_slots;
  HostWeights w(t, {512, 96, 40}, 24);
  auto policy = eplb::algo::make_policy("deepseek");
  auto a = eplb::algo::Placement::contiguous(t);
  eplb::runtime::fill_slots(w.registry, a, me);
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport transport(comm);
  std::mt19937_64 rng(7);  // same loads on every rank
  std::lognormal_distribution<double> d(0.0, 1.5);
  for (int round = 0; round < 3; ++round) {
    eplb::algo::LoadMatrix load{t.num_layers, t.num_logical, {}};
    for (int i = 0; i < t.num_layers * t.num_logical; ++i) load.values.push_back(std::floor(100 * d(rng)));
    const auto b = policy->rebalance(load.view(), t, &a);
    eplb::algo::MigrationOptions mo;
    mo.max_staged_slots_per_rank = c.staged_slots;
    const auto plan = eplb::algo::plan_migration(a, b, t, mo);
    eplb::runtime::PreparedMigration m(plan, w.registry, transport, me, c.options);
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
    EXPECT_EQ(bad_slots_anywhere_in(w.registry, b), 0u) << "round " << round;
    a = b;
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
  Topology t{2, 8, 8 * P, P, 1, 1};
  HostWeights w(t, {256});
  const auto a = eplb::algo::Placement::contiguous(t);
  eplb::runtime::fill_slots(w.registry, a, me);
  std::vector<int> p2l(a.phy2log().begin(), a.phy2log().end());
  for (int l = 0; l < t.num_layers; ++l) std::swap(p2l[l * t.num_slots], p2l[(l + 1) * t.num_slots - 1]);
  const eplb::algo::Placement b(t.num_layers, t.num_logical, t.num_slots, p2l);
  const auto plan = eplb::algo::plan_migration(a, b, t);
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport transport(comm);
  EXPECT_THROW(eplb::runtime::PreparedMigration(plan, w.registry, transport, P), std::invalid_argument);
  HostWeights other(Topology{3, 8, 8 * P, P, 1, 1}, {256});
  EXPECT_THROW(eplb::runtime::PreparedMigration(plan, other.registry, transport, me), std::invalid_argument);
  eplb::runtime::PreparedMigration m(plan, w.registry, transport, me);
  EXPECT_EQ(m.staging_bytes(), eplb::runtime::staging_bytes_needed(plan, w.registry));
  auto staging = transport.allocate(m.staging_bytes());
  (void)m.execute({staging.get(), m.staging_bytes()});
  EXPECT_EQ(bad_slots_anywhere_in(w.registry, b), 0u);
  EXPECT_THROW((void)m.execute({staging.get(), m.staging_bytes()}), std::logic_error);  // local: no peer waits
}

/// One rebalance of a fresh engine (same loads every time) in which allocation number k of
/// rank `bad` fails; k = 1, 2, ... until that rank makes fewer than k allocations.
void sweep_one_failing_allocation(const eplb::runtime::RuntimeConfig& cfg, int bad) {
  const int P = world_size(), me = world_rank();
  const auto& t = cfg.topology;
  const auto initial = eplb::algo::Placement::contiguous(t);
  int failures = 0, successes = 0;
  for (long k = 1;; ++k) {
    HostWeights w(t, {300, 64}, 8);
    eplb::runtime::fill_slots(w.registry, initial, me);
    eplb::runtime::Engine engine(MPI_COMM_WORLD, cfg, std::move(w.registry), initial);
    std::mt19937_64 rng(77 + static_cast<unsigned>(me));
    std::lognormal_distribution<double> d(0.0, 1.3);
    std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical));
    for (int pass = 0; pass < 2; ++pass) {
      for (int l = 0; l < t.num_layers; ++l) {
        for (auto& v : c) v = static_cast<std::int64_t>(100 * d(rng));
        ASSERT_TRUE(engine.window().add_counts(l, c));
      }
      (void)engine.step();
    }
    bool threw = false;
    std::string what;
    g_allocations = 0;
    g_fail_at = me == bad ? k : 0;
    g_counting = me == bad;
    try {
      (void)engine.rebalance();
    } catch (const std::exception& e) {
      threw = true;
      what = e.what();
    }
    g_counting = false;
    g_fail_at = 0;
    if (std::getenv("EPLB_ALLOC_TEST_DEBUG")) std::fprintf(stderr, "rank %d k=%ld threw=%d %s\n", me, k, threw, what.c_str());
    const int reached = me == bad && g_allocations.load() >= k;  // allocation k happened
    int flags[3] = {reached, threw ? 1 : 0, threw ? 0 : 1};  // MAX: any reached, any threw, any went on
    MPI_Allreduce(MPI_IN_PLACE, flags, 3, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    ASSERT_FALSE(flags[1] && flags[2]) << "allocation " << k << " of rank " << bad
                                       << " failed: some ranks threw, others did not (this rank: "
                                       << (threw ? what : std::string("no error")) << ")";
    (threw ? failures : successes) += 1;
    // Whatever happened, the weights hold what the placement says, and it is the same
    // everywhere (bad_slots_anywhere_in checks every rank against its own copy).
    ASSERT_EQ(bad_slots_anywhere_in(engine.weights(), engine.placement()), 0u)
        << "allocation " << k << " of rank " << bad << ": " << what;
    long long h = 0;
    for (int v : engine.placement().phy2log()) h = h * 1000003 + v;
    long long mn = h, mx = h;
    MPI_Allreduce(MPI_IN_PLACE, &mn, 1, MPI_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    ASSERT_EQ(mn, mx) << "placements differ between ranks after allocation " << k << " failed";
    if (threw && engine.epoch() == 0) {  // failed before the placement changed: nothing moved
      ASSERT_EQ(bad_slots_anywhere_in(engine.weights(), initial), 0u);
    }
    // The engine goes on: the next rebalance works on every rank.
    bool next_ok = true;
    std::string next_what;
    try {
      (void)engine.rebalance();
    } catch (const std::exception& e) {
      next_ok = false;
      next_what = e.what();
    }
    int ok = next_ok ? 1 : 0;
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    ASSERT_EQ(ok, 1) << "after allocation " << k << " of rank " << bad << " failed (" << what
                     << "), the next rebalance failed: " << next_what;
    ASSERT_EQ(bad_slots_anywhere_in(engine.weights(), engine.placement()), 0u);
    if (!flags[0]) break;  // rank `bad` made fewer than k allocations: every one was tried
  }
  if (me == 0)
    std::printf("[ rank %d of %d fails one allocation ] %d rebalances failed on every rank, %d went on\n",
                bad, P, failures, successes);
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

TEST(OneFailingAllocation, RebalancePlannedOnRankZeroEndsAlikeOnEveryRank) {
  for (int bad = 0; bad < world_size(); ++bad) sweep_one_failing_allocation(sweep_config(false), bad);
}

}  // namespace
