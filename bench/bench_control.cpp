// Control path of a rebalance: load collection (device reduce + one D2H copy on GPU), the
// allreduce, the policy on rank 0, the placement broadcast and the plan derivation. Weights
// are tiny, so the migration phase is reported apart and is not part of "control".
//
//   mpirun -np 4 bench_control [--device cuda] [--policy deepseek]
#include <CLI/CLI.hpp>
#include <mpi.h>

#include <cmath>
#include <fstream>
#include <random>

#include "eplb/algo/policy.hpp"
#include "bench/mpi_bench.hpp"
#include "eplb/runtime/engine.hpp"
#if EPLB_HAVE_NCCL
#include "eplb/comm/nccl.hpp"
#include "eplb/runtime/cuda/transport.hpp"
#include "eplb/runtime/cuda/device_state.hpp"
#include "eplb/runtime/cuda/device_weights.hpp"
#endif

namespace {

int run(int argc, char** argv) {
  int rank = 0, P = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  std::string device = "cpu", policy, json;
  int iters = 20, window = 100, layers = 58, experts = 256, slots = 288, groups = 8, nodes = 1;
  CLI::App app{"bench_control: time of a rebalance's control path (DeepSeek-V3 shape by default)"};
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--policy", policy)->check(eplb::algo::policy_name_error, "POLICY");
  app.add_option("--iters", iters);
  app.add_option("--window", window, "passes in the load window");
  app.add_option("--layers", layers);
  app.add_option("--experts", experts);
  app.add_option("--slots", slots, "rounded up to a multiple of the ranks");
  app.add_option("--groups", groups);
  app.add_option("--nodes", nodes);
  app.add_option("--json", json);
  int threads = 0;
  app.add_option("--planning-threads", threads, "policy threads per planning rank (0: auto, min(8, hardware threads / ranks); the runtime's default is 1)");
  bool rank0 = false;
  bool no_align = false;
  app.add_flag("--no-align", no_align, "keep the policy's slot order (RuntimeConfig::align_slots = false)");
  app.add_flag("--rank0-planning", rank0, "rank 0 plans every layer and broadcasts (default: the ranks split the layers)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (rank == 0) app.exit(e);
    return e.get_exit_code() == 0 ? 0 : 2;
  }
  eplb::runtime::RuntimeConfig cfg;
  cfg.topology = {layers, experts, (slots + P - 1) / P * P, P, nodes, groups};
  cfg.policy = policy;
  cfg.window_passes = window;
  cfg.rebalance_interval = 0;
  cfg.min_gain = -1;
  cfg.planning_threads = threads;
  cfg.distributed_planning = !rank0;
  cfg.align_slots = !no_align;
  const auto& t = cfg.topology;
  t.validate();
  const auto initial = eplb::algo::Placement::contiguous(t);
  std::mt19937_64 rng(11 + rank);
  std::lognormal_distribution<double> d(0, 1.2);
  std::vector<double> control, migrate, collect, policy_ms, bcast, plan, mplan, prepare;

  auto measure = [&](eplb::runtime::Engine& engine, auto&& add_pass) {
    for (int it = 0; it < iters + 2; ++it) {
      add_pass();
      (void)engine.step();
      MPI_Barrier(MPI_COMM_WORLD);  // time the rebalance, not the ranks' skew before it
      const auto st = engine.rebalance();
      if (it < 2) continue;
      collect.push_back(eplb::bench::max_over_ranks(st.t_collect_ms));
      control.push_back(eplb::bench::max_over_ranks(st.t_collect_ms + st.t_policy_ms +
                                                    st.t_broadcast_ms + st.t_plan_ms));
      migrate.push_back(eplb::bench::max_over_ranks(st.t_migrate_ms));
      policy_ms.push_back(eplb::bench::max_over_ranks(st.t_policy_ms));
      bcast.push_back(eplb::bench::max_over_ranks(st.t_broadcast_ms));
      plan.push_back(eplb::bench::max_over_ranks(st.t_plan_ms));
      mplan.push_back(eplb::bench::max_over_ranks(st.t_migration_plan_ms));
      prepare.push_back(eplb::bench::max_over_ranks(st.t_prepare_ms));
    }
  };

  std::vector<std::int64_t> counts(static_cast<std::size_t>(t.num_logical));
  if (device == "cpu") {
    std::vector<std::byte> storage(static_cast<std::size_t>(t.num_layers) * t.slots_per_rank() * 16);
    eplb::runtime::WeightRegistry w(t.num_layers, t.slots_per_rank());
    for (int l = 0; l < t.num_layers; ++l)
      w.add(l, "w", storage.data() + static_cast<std::size_t>(l) * t.slots_per_rank() * 16, 16);
    eplb::runtime::Engine engine(MPI_COMM_WORLD, cfg, std::move(w), initial);
    measure(engine, [&] {
      for (int l = 0; l < t.num_layers; ++l) {
        for (auto& c : counts) c = static_cast<std::int64_t>(100 * d(rng));
        engine.window().add_counts(l, counts);
      }
    });
  } else {
#if EPLB_HAVE_NCCL
    eplb::comm::select_device_for_rank(rank);
    eplb::comm::CudaStream stream;
    eplb::runtime::cuda::DeviceWeightSet weights(t.num_layers, t.slots_per_rank(), {{"w", 256}});
    eplb::runtime::Engine engine(MPI_COMM_WORLD, cfg, weights.registry(), initial,
                                 [&](const eplb::comm::MpiComm& c) {
                                   return eplb::runtime::cuda::make_nccl_transport(c, stream.get());
                                 });
    eplb::runtime::cuda::DeviceLoadWindow win(t.num_layers, t.num_logical, window, stream.get());
    eplb::runtime::cuda::DeviceMaps maps(t, initial, stream.get());
    engine.set_load_source(&win);
    engine.set_map_listener(&maps);
    const int n = 256 * 8;
    std::vector<std::int32_t> ids(n);
    eplb::comm::DeviceBuffer d_ids(static_cast<std::size_t>(n) * t.num_layers * 4);
    measure(engine, [&] {
      for (int l = 0; l < t.num_layers; ++l) {
        for (auto& v : ids) v = static_cast<std::int32_t>(std::min<double>(t.num_logical - 1, 8 * d(rng)));
        auto* dst = d_ids.as<std::int32_t>() + static_cast<std::size_t>(l) * n;
        eplb::comm::copy_async(dst, ids.data(), ids.size() * 4, stream.get());
        EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_route_and_count(
            dst, false, n, maps.layer(l), 0, 0, nullptr, win.counts(l), win.errors(), stream.get()));
        stream.synchronize();
      }
    });
#else
    throw std::invalid_argument("this build has no CUDA/NCCL: use --device cpu");
#endif
  }
  if (rank == 0) {
    char cfgs[256];
    std::snprintf(cfgs, sizeof cfgs, "%s (%s) device=%s policy=%s window=%d iters=%d planning_threads=%d planning=%s align=%d",
                  t.describe().c_str(), t.hierarchical() ? "hierarchical" : "global", device.c_str(),
                  cfg.policy_name().c_str(), window, iters, threads,
                  rank0 ? "rank0+broadcast" : "split over ranks+allgather", cfg.align_slots ? 1 : 0);
    eplb::bench::print_header("bench_control", cfgs);
    std::printf("%-6s %11s %11s %11s %10s %10s %10s %15s %9s %10s\n", "ranks", "control_ms", "control_min",
                "collect_ms", "policy_ms", "bcast_ms", "plan_ms", "migrate_tiny_ms", "mplan_ms", "prepare_ms");
    std::printf("%-6d %11.3f %11.3f %11.3f %10.3f %10.3f %10.3f %15.3f %9.3f %10.3f\n", P,
                eplb::bench::median(control), *std::min_element(control.begin(), control.end()),
                eplb::bench::median(collect), eplb::bench::median(policy_ms), eplb::bench::median(bcast),
                eplb::bench::median(plan), eplb::bench::median(migrate), eplb::bench::median(mplan),
                eplb::bench::median(prepare));
    std::printf("# medians over %d rebalances of the max over ranks; control = collect (window sum, "
                "D2H, error agreement, allreduce) + policy + broadcast + plan; plan = mplan "
                "(algo::plan_migration) + prepare (staging, map listener) + agreement\n", iters);
    if (!json.empty()) {
      std::ofstream f(json);
      f << "{\"program\":\"bench_control\",\"config\":\"" << cfgs << "\",\"ranks\":" << P
        << ",\"control_ms\":" << eplb::bench::median(control) << ",\"collect_ms\":" << eplb::bench::median(collect)
        << "}\n";
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return eplb::bench::mpi_main(argc, argv, "bench_control", run); }
