// Migration with device weights over NCCL, under mpiexec with one GPU per rank: consecutive
// rebalances with every byte checked, maps switched per layer, and bounded failure.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "eplb/comm/nccl.hpp"
#include "eplb/runtime/cuda/transport.hpp"
#include "eplb/runtime/cuda/device_state.hpp"
#include "eplb/runtime/cuda/device_weights.hpp"
#include "eplb/runtime/engine.hpp"
#include "eplb/runtime/migrate.hpp"
#include "eplb/algo/policy.hpp"
#include "device_engine.hpp"
#include "../mpi/mpi_test_util.hpp"

namespace {
using eplb::algo::Topology;

int world(int* rank) {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  return s;
}

struct Case {
  const char* name;
  int layers;
  std::vector<eplb::runtime::cuda::TensorSpec> tensors;
  std::size_t staging;
  const char* policy;
  int pipeline_batches = 4;
  int max_layers_per_window = 0;
  friend void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }
};

class NcclMigrationBytes : public testing::TestWithParam<Case> {};

// The copy kernel's three access widths (16-byte, 4-byte, byte: tensor sizes that are not
// multiples of 16 or 4 make slot addresses unaligned), several rounds per layer, all layers in
// large windows, overlapped windows (the next window packs and sends before this one
// unpacks, on a second staging region), and (one batch per round) phases of more than one launch's 1024 copies: 60
// layers x ~380 sends per rank x 3 tensors at 4 ranks.
INSTANTIATE_TEST_SUITE_P(
    Tensors, NcclMigrationBytes,
    testing::Values(Case{"aligned_several_rounds", 6, {{"w13", 40960}, {"w2", 20480}, {"scale", 80}},
                         3 * 70000, ""},
                    Case{"odd_sizes", 6, {{"w", 4099}, {"v", 1000}, {"s", 37}}, 1 << 22, "deepseek"},
                    Case{"sixty_layers_large_windows", 60, {{"a", 256}, {"b", 48}, {"c", 32}},
                         std::size_t{64} << 20, "deepseek"},
                    Case{"over_1024_copies_per_phase", 60, {{"a", 256}, {"b", 48}, {"c", 32}},
                         std::size_t{64} << 20, "deepseek", 1},
                    Case{"overlapped_windows_of_two_layers", 12,
                         {{"w13", 40960}, {"w2", 20480}, {"scale", 80}}, std::size_t{64} << 20,
                         "deepseek", 4, 2},
                    Case{"overlapped_windows_odd_sizes_unpipelined", 12,
                         {{"w", 4099}, {"v", 1000}, {"s", 37}}, std::size_t{3} << 20, "deepseek", 1}),
    [](const testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

TEST_P(NcclMigrationBytes, ConsecutiveRebalancesKeepEveryByte) {
  const Case& tc = GetParam();
  int rank = 0;
  const int P = world(&rank);
  SKIP_WITHOUT_GPUS(P);
  eplb::comm::select_device_for_rank(rank);
  eplb::comm::CudaStream stream;
  const Topology t{tc.layers, 32, std::max(10, (40 + P - 1) / P) * P, P, 1, 4};
  eplb::runtime::RuntimeConfig cfg;
  cfg.topology = t;
  cfg.policy = tc.policy;
  cfg.window_passes = 3;
  cfg.rebalance_interval = 0;
  cfg.min_gain = -1;
  cfg.staging_bytes = tc.staging;
  cfg.max_layers_per_window = tc.max_layers_per_window;
  cfg.pipeline_batches = tc.pipeline_batches;
  eplb::test::DeviceEngine de(cfg, tc.tensors, stream.get(), rank);
  auto& [_, weights, initial, engine, window, maps] = de;

  std::mt19937 rng(99 + rank);
  const int n = 512 * 4;
  std::vector<std::int32_t> ids(n);
  eplb::comm::DeviceBuffer d_ids(n * sizeof(std::int32_t));
  for (int r = 0; r < 12; ++r) {
    // Skewed routing that shifts every round.
    std::geometric_distribution<int> g(0.08 + 0.01 * r);
    for (int pass = 0; pass < 2; ++pass) {
      for (int l = 0; l < t.num_layers; ++l) {
        for (auto& v : ids) v = (g(rng) + 5 * r + l) % t.num_logical;
        de.route(l, ids, d_ids);
      }
      (void)engine.step();
    }
    const auto st = engine.rebalance();
    ASSERT_FALSE(st.skipped);
    const auto bad = weights.verify(engine.placement(), rank);
    for (std::size_t i = 0; i < bad.size() && i < 3; ++i) ADD_FAILURE() << bad[i];
    ASSERT_EQ(eplb::test::sum_over_ranks(bad.size()), 0u) << "rebalance " << r;
    // The device maps equal the placement's (committed layer by layer).
    for (int l = 0; l < t.num_layers; ++l) {
      std::vector<int> cnt(t.num_logical);
      eplb::comm::copy_async(cnt.data(), maps.layer(l).logcnt, cnt.size() * sizeof(int), stream.get());
      stream.synchronize();
      EXPECT_EQ(cnt, std::vector<int>(engine.placement().logcnt(l).begin(), engine.placement().logcnt(l).end()));
    }
  }
}

// execute_migration directly with overlapped steps across several rounds per layer and
// windows of several layers (the engine's staging bound makes such plans one round per layer
// whenever two regions fit its budget): round r+1's packs and transfers are issued before
// round r's unpacks, on the two CUDA streams.
TEST(NcclMigration, OverlappedRoundsAndWindowsKeepEveryByte) {
  int rank = 0;
  const int P = world(&rank);
  SKIP_WITHOUT_GPUS(P);
  eplb::comm::select_device_for_rank(rank);
  eplb::comm::CudaStream stream;
  const Topology t{8, 32, std::max(10, (40 + P - 1) / P) * P, P, 1, 4};
  eplb::runtime::cuda::DeviceWeightSet weights(t.num_layers, t.slots_per_rank(),
                                               {{"w13", 40960}, {"w2", 20480}, {"scale", 80}});
  const auto reg = weights.registry();
  auto a = eplb::algo::Placement::contiguous(t);
  weights.fill(a, rank);
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  auto transport = eplb::runtime::cuda::make_nccl_transport(comm, stream.get());
  auto policy = eplb::algo::make_policy("deepseek");
  std::mt19937_64 rng(5);  // same loads on every rank
  std::lognormal_distribution<double> d(0.0, 1.5);
  const eplb::runtime::ExecOptions opt{0, 0, std::size_t{64} << 20, true, 3, true};
  auto plain = opt;
  plain.overlap_steps = false;
  int overlapped = 0, multi_round = 0;
  for (int it = 0; it < 6; ++it) {
    eplb::algo::LoadMatrix load{t.num_layers, t.num_logical, {}};
    for (int i = 0; i < t.num_layers * t.num_logical; ++i) load.values.push_back(std::floor(100 * d(rng)));
    const auto b = policy->rebalance(load.view(), t, &a);
    eplb::algo::MigrationOptions mo;
    mo.max_staged_slots_per_rank = 1;
    const auto plan = eplb::algo::plan_migration(a, b, t, mo);
    const std::size_t need = eplb::runtime::staging_bytes_needed(plan, reg, opt);
    if (need > eplb::runtime::staging_bytes_needed(plan, reg, plain)) ++overlapped;
    if (plan.stats().max_rounds > 1) ++multi_round;
    auto staging = transport->allocate(need);
    std::vector<int> done;
    const auto c = eplb::runtime::execute_migration(plan, reg, *transport, rank, {staging.get(), need},
                                                    [&](int l) { done.push_back(l); }, opt);
    EXPECT_EQ(static_cast<int>(done.size()), t.num_layers);
    EXPECT_GT(c.rounds, 0);
    const auto bad = weights.verify(b, rank);
    for (std::size_t i = 0; i < bad.size() && i < 3; ++i) ADD_FAILURE() << bad[i];
    ASSERT_EQ(eplb::test::sum_over_ranks(bad.size()), 0u) << "migration " << it;
    a = b;
  }
  EXPECT_GT(overlapped, 0) << "no migration used two staging regions";
  EXPECT_GT(multi_round, 0) << "no plan had several rounds";
}

TEST(NcclMigration, OutOfRangeIdsAreReportedOnEveryRank) {
  int rank = 0;
  const int P = world(&rank);
  SKIP_WITHOUT_GPUS(P);
  eplb::comm::select_device_for_rank(rank);
  eplb::comm::CudaStream stream;
  const Topology t{2, 8, 2 * P < 8 ? 8 : 2 * P, P, 1, 1};
  Topology tt = t;
  tt.num_slots = (tt.num_slots + P - 1) / P * P;
  eplb::runtime::RuntimeConfig cfg;
  cfg.topology = tt;
  cfg.window_passes = 1;
  cfg.rebalance_interval = 0;
  eplb::test::DeviceEngine de(cfg, {{"w", 256}}, stream.get(), rank);
  auto& [_, weights, initial, engine, window, maps] = de;
  std::vector<std::int64_t> ids = {1, 2, rank == P - 1 ? 99 : 3};
  eplb::comm::DeviceBuffer d(ids.size() * 8);
  de.route(1, ids, d);
  try {
    engine.rebalance();
    ADD_FAILURE() << "out-of-range id accepted";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("outside [0, 8)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.placement(), initial);
  EXPECT_EQ(eplb::test::sum_over_ranks(weights.verify(engine.placement(), rank).size()), 0u);
}

/// Two ranks or more, one GPU each, an NcclTransport with a 5 s timeout; rank 0 talks to
/// rank 1, which never posts its side.
class NcclTimeout : public testing::Test {
 protected:
  void SetUp() override {
    const int P = world(&rank);
    if (P < 2) GTEST_SKIP() << "needs 2 ranks";
    SKIP_WITHOUT_GPUS(P);
    eplb::comm::select_device_for_rank(rank);
    setenv("EPLB_NCCL_TIMEOUT_S", "5", 1);
    stream.emplace();
    mpi.emplace(MPI_COMM_WORLD);
    tr.emplace(*mpi, stream->get());
    // Connected first (NCCL connects lazily otherwise, at the first group's end, which then
    // waits for the peer: nothing would queue on the stream).
    tr->connect_peers();
    buf.emplace(std::size_t{64} << 20);
    t0 = std::chrono::steady_clock::now();
  }
  void TearDown() override {
    if (!tr) return;
    if (rank == 0) {
      EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60.0);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    unsetenv("EPLB_NCCL_TIMEOUT_S");
  }
  std::byte* data() { return static_cast<std::byte*>(buf->get()); }

  int rank = 0;
  std::optional<eplb::comm::CudaStream> stream;
  std::optional<eplb::comm::MpiComm> mpi;
  std::optional<eplb::comm::NcclTransport> tr;
  std::optional<eplb::comm::DeviceBuffer> buf;  // after the skips: no GPU, no allocation
  std::chrono::steady_clock::time_point t0;
};

TEST_F(NcclTimeout, APeerThatNeverArrivesTimesOutInsteadOfHanging) {
  if (rank != 0) return;  // rank 0 receives from rank 1, which never sends
  try {
    tr->begin_batch();
    tr->recv(data(), buf->size(), 1);
    tr->end_batch();
    tr->synchronize();
    ADD_FAILURE() << "a receive from a rank that never sends completed";
  } catch (const eplb::NcclError& e) {
    EXPECT_NE(std::string(e.what()).find("did not complete"), std::string::npos) << e.what();
  }
}

// A peer that stops posting while this rank still has much to issue: before the bounded
// issue-ahead, rank 0 queued work behind its stalled transfer until a CUDA launch blocked the
// host (a stream holds about a thousand operations), where no timeout runs, so it never
// reached synchronize()'s bounded wait. Now it waits, bounded, every kIssueAhead operations.
TEST_F(NcclTimeout, APeerThatStopsPostingTimesOutWhileIssuing) {
  // One receive from rank 1, which sends nothing (on 2 H200s a 64 MiB send to a peer that
  // posted nothing completed), then 3000 copies behind it on the same stream.
  if (rank != 0) return;
  int issued = 0;
  try {
    tr->begin_batch();
    tr->recv(data(), buf->size() / 2, 1);
    tr->end_batch();
    for (; issued < 3000; ++issued)
      tr->copy(data() + buf->size() / 2 + 8192, data() + buf->size() / 2, 4096, eplb::comm::Lane::transfer);
    tr->synchronize();
    ADD_FAILURE() << "a receive from a rank that never sends completed";
  } catch (const eplb::NcclError& e) {
    EXPECT_NE(std::string(e.what()).find("queued ahead) did not complete"), std::string::npos) << e.what();
    EXPECT_LT(issued, 3000) << "the wait came only at synchronize()";
  }
}

}  // namespace
