// One failing allocation on one rank during rebalances over NCCL with device weights, a device
// load window and device maps (the GPU path of mpi.alloc): every rank throws or none does, the
// weights match the placement every rank holds, and the engine goes on. One engine for the
// whole sweep (a NCCL communicator per allocation would take minutes), so this is the steady
// state: each rebalance starts from the one before.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "../mpi/alloc_hooks.hpp"
#include "device_engine.hpp"

namespace {
using eplb::algo::Topology;
using eplb::test::rebalance_works_everywhere;
using eplb::test::sum_over_ranks;
using eplb::test::world_rank;
using eplb::test::world_size;

TEST(NcclOneFailingAllocation, RebalanceEndsAlikeOnEveryRank) {
  const int P = world_size(), rank = world_rank();
  if (eplb::comm::cuda_device_count() < P)
    GTEST_SKIP() << "needs " << P << " CUDA devices (one per rank), found " << eplb::comm::cuda_device_count();
  eplb::comm::select_device_for_rank(rank);
  eplb::comm::CudaStream stream;
  const Topology t{2, 16, 12 * P, P, 1, 1};
  eplb::runtime::RuntimeConfig cfg;
  cfg.topology = t;
  cfg.policy = "deepseek";
  cfg.window_passes = 2;
  cfg.rebalance_interval = 0;
  cfg.min_gain = -1;  // never skip: every rebalance migrates
  cfg.staging_bytes = std::size_t{1} << 20;
  eplb::test::DeviceEngine de(cfg, {{"w", 4096}, {"s", 100}}, stream.get(), rank);
  auto& [_, weights, initial, engine, window, maps] = de;
  std::mt19937 rng(5 + rank);
  const int n = 256;
  std::vector<std::int32_t> ids(n);
  eplb::comm::DeviceBuffer d_ids(n * sizeof(std::int32_t));
  int round = 0;
  auto passes = [&] {  // two passes of skewed routing that shifts every time
    std::geometric_distribution<int> g(0.1);
    ++round;
    for (int pass = 0; pass < 2; ++pass) {
      for (int l = 0; l < t.num_layers; ++l) {
        for (auto& v : ids) v = (g(rng) + 3 * round + l) % t.num_logical;
        de.route(l, ids, d_ids);
      }
      (void)engine.step();
    }
  };
  for (int bad = 0; bad < P; ++bad) {
    const int failures = sweep(
        "rebalance over NCCL", bad, passes, [&] { (void)engine.rebalance(); },
        [&](const Outcome& o) {
          const std::string& when = o.when;
          stream.synchronize();
          const auto wrong = weights.verify(engine.placement(), rank);
          for (std::size_t i = 0; i < wrong.size() && i < 3; ++i) ADD_FAILURE() << wrong[i];
          EXPECT_EQ(sum_over_ranks(wrong.size()), 0u) << when;
          // The next rebalance works on every rank.
          passes();
          std::string why;
          EXPECT_TRUE(rebalance_works_everywhere(engine, why)) << when << ", then: " << why;
          stream.synchronize();
          EXPECT_EQ(sum_over_ranks(weights.verify(engine.placement(), rank).size()), 0u) << when << ", then a rebalance";
        });
    EXPECT_GT(failures, 0);
  }
}

}  // namespace
