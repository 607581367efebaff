// One failing allocation on one rank during rebalances over NCCL with device weights, a device
// load window and device maps (the GPU path of mpi.alloc): every rank throws or none does, the
// weights match the placement every rank holds, and the engine goes on. One engine for the
// whole sweep (a NCCL communicator per allocation would take minutes), so this is the steady
// state: each rebalance starts from the one before. With HDF5, the same for saving and resuming
// checkpoints with the device load window.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "../mpi/alloc_hooks.hpp"
#include "device_engine.hpp"
#if EPLB_TEST_CHECKPOINTS
#include "eplb/runtime/checkpoint.hpp"
#include "eplb/runtime/engine_checkpoint.hpp"
#endif

namespace {
using eplb::algo::Topology;
using eplb::test::rebalance_works_everywhere;
using eplb::test::sum_over_ranks;
using eplb::test::world_rank;
using eplb::test::world_size;

/// Two layers, one GPU per rank, an engine whose rebalances always migrate; passes() routes
/// two passes of skewed ids that shift at every call.
struct Sweeper {
  int P = world_size(), rank = world_rank();
  eplb::comm::CudaStream stream;
  Topology t{2, 16, 12 * world_size(), world_size(), 1, 1};
  eplb::test::DeviceEngine de;
  std::mt19937 rng;
  std::vector<std::int32_t> ids = std::vector<std::int32_t>(256);
  eplb::comm::DeviceBuffer d_ids{256 * sizeof(std::int32_t)};
  int round = 0;

  Sweeper() : de(config(t), {{"w", 4096}, {"s", 100}}, stream.get(), world_rank()), rng(5 + world_rank()) {}
  static eplb::runtime::RuntimeConfig config(const Topology& t) {
    eplb::runtime::RuntimeConfig cfg;
    cfg.topology = t;
    cfg.policy = "deepseek";
    cfg.window_passes = 2;
    cfg.rebalance_interval = 0;
    cfg.min_gain = -1;  // never skip: every rebalance migrates
    cfg.staging_bytes = std::size_t{1} << 20;
    return cfg;
  }
  void passes() {
    std::geometric_distribution<int> g(0.1);
    ++round;
    for (int pass = 0; pass < 2; ++pass) {
      for (int l = 0; l < t.num_layers; ++l) {
        for (auto& v : ids) v = (g(rng) + 3 * round + l) % t.num_logical;
        de.route(l, ids, d_ids);
      }
      (void)de.engine.step();
    }
  }
  /// The weights hold the placement on every rank (the stream synchronized first).
  void expect_weights_match(const std::string& when) {
    stream.synchronize();
    const auto wrong = de.weights.verify(de.engine.placement(), rank);
    for (std::size_t i = 0; i < wrong.size() && i < 3; ++i) ADD_FAILURE() << wrong[i];
    EXPECT_EQ(sum_over_ranks(wrong.size()), 0u) << when;
  }
  /// New routing, then a rebalance that works on every rank and leaves the weights right.
  void expect_next_rebalance_works(const std::string& when) {
    passes();
    std::string why;
    EXPECT_TRUE(rebalance_works_everywhere(de.engine, why)) << when << ", then: " << why;
    expect_weights_match(when + ", then a rebalance");
  }
};

TEST(NcclOneFailingAllocation, RebalanceEndsAlikeOnEveryRank) {
  SKIP_WITHOUT_GPUS(world_size());
  eplb::comm::select_device_for_rank(world_rank());
  Sweeper w;
  const int P = w.P;
  auto& engine = w.de.engine;
  for (int bad = 0; bad < P; ++bad) {
    const int failures = sweep(
        "rebalance over NCCL", bad, [&] { w.passes(); }, [&] { (void)engine.rebalance(); },
        [&](const Outcome& o) {
          w.expect_weights_match(o.when);
          w.expect_next_rebalance_works(o.when);
        });
    EXPECT_GT(failures, 0);
  }
}

#if EPLB_TEST_CHECKPOINTS
// Checkpoints with the device load window: its counters come from the GPU at a save and go
// back at a resume. One failing allocation on one rank: every rank throws or none does, a save
// changes nothing, an absorbed failure still wrote a whole file, a failed resume is agreed
// (restore_failed() on every rank or on none), and the engine goes on.
TEST(NcclOneFailingAllocation, CheckpointsWithTheDeviceWindowEndAlikeOnEveryRank) {
  SKIP_WITHOUT_GPUS(world_size());
  eplb::comm::select_device_for_rank(world_rank());
  Sweeper w;
  auto& engine = w.de.engine;
  eplb::test::SharedPath file("eplb_gpu_alloc_ckpt_");
  w.passes();
  std::string why;
  ASSERT_TRUE(rebalance_works_everywhere(engine, why)) << why;
  w.passes();  // a window with counts in it
  for (int bad = 0; bad < w.P; ++bad) {
    const auto epoch = engine.epoch();
    const auto pass = engine.pass();
    const auto placed = engine.placement();
    const int saves = sweep(
        "save_checkpoint with the device window", bad, [] {},
        [&] { eplb::runtime::save_checkpoint(engine, file.path); },
        [&](const Outcome& o) {
          EXPECT_EQ(engine.epoch(), epoch) << o.when;
          EXPECT_EQ(engine.pass(), pass) << o.when;
          EXPECT_TRUE(engine.placement() == placed) << o.when;
          if (!o.threw && w.rank == 0) {  // an absorbed failure left a whole file
            const auto c = eplb::runtime::read_checkpoint(file.path);
            EXPECT_EQ(c.epoch, epoch) << o.when;
            const auto p = placed.phy2log();
            EXPECT_TRUE(std::equal(p.begin(), p.end(), c.phy2log.begin(), c.phy2log.end())) << o.when;
          }
        });
    EXPECT_GT(saves, 0);
    // The last save wrote the file the resumes read: the placement `placed`, epoch `epoch`.
    const int resumes = sweep(
        "resume_from_checkpoint into the device window", bad, [] {},
        [&] { (void)eplb::runtime::resume_from_checkpoint(engine, file.path); },
        [&](const Outcome& o) {
          int flag = engine.restore_failed() ? 1 : 0, any = flag;
          MPI_Allreduce(&flag, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
          EXPECT_EQ(flag, any) << "restore_failed() differs between ranks, " << o.when;
          if (any) {  // rebalances refuse until a restore succeeds
            (void)eplb::runtime::resume_from_checkpoint(engine, file.path);
            EXPECT_FALSE(engine.restore_failed()) << o.when;
          }
          EXPECT_TRUE(engine.placement() == placed) << o.when;
          // Engine::restore moves no weights: load them for the restored placement.
          w.de.weights.fill(engine.placement(), w.rank);
          w.expect_next_rebalance_works(o.when);
          // Back to the saved state for the next allocation's resume.
          (void)eplb::runtime::resume_from_checkpoint(engine, file.path);
          w.de.weights.fill(engine.placement(), w.rank);
        });
    EXPECT_GT(resumes, 0);
  }
}
#endif

}  // namespace
