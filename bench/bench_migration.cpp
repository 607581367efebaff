// Migration benchmark: a realistic rebalance (two load windows differing by noise, planned by
// a policy) of expert weights between ranks, against the transport's own pairwise peak
// measured in the same program. One rank per GPU with --device cuda (NCCL), host memory and
// MPI otherwise.
//
//   mpirun -np 4 bench_migration --model v2lite --device cuda --json out.json
#include <CLI/CLI.hpp>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "eplb/algo/migration.hpp"
#include "eplb/algo/policy.hpp"
#include "bench/mpi_bench.hpp"
#include "eplb/comm/mpi_transport.hpp"
#include "eplb/config.hpp"
#include "eplb/runtime/migrate.hpp"
#if EPLB_HAVE_NCCL
#include "eplb/comm/nccl.hpp"
#include "eplb/runtime/cuda/transport.hpp"
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Memory {  // weights + staging in the transport's memory space
  std::vector<eplb::comm::Buffer> buffers;
  eplb::comm::Buffer staging{nullptr, [](std::byte*) {}};
};

eplb::algo::LoadMatrix noisy(const eplb::algo::LoadMatrix& m, double noise, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(1 - noise, 1 + noise);
  auto out = m;
  for (auto& v : out.values) v = std::floor(v * u(rng));
  return out;
}

/// All pairs in one batch, `bytes` to and from every peer; returns GiB/s per rank out.
double pairwise_peak(eplb::comm::Transport& t, int me, int P, std::size_t bytes, int iters) {
  if (P < 2) return 0;
  auto src = t.allocate(bytes * (P - 1)), dst = t.allocate(bytes * (P - 1));
  std::vector<double> times;
  for (int it = 0; it < iters + 1; ++it) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = Clock::now();
    t.begin_batch();
    for (int k = 1; k < P; ++k) {
      const int to = (me + k) % P, from = (me - k + P) % P;
      t.send(src.get() + (k - 1) * bytes, bytes, to);
      t.recv(dst.get() + (k - 1) * bytes, bytes, from);
    }
    t.end_batch();
    t.synchronize();
    const double s = eplb::bench::max_over_ranks(std::chrono::duration<double>(Clock::now() - t0).count());
    if (it > 0) times.push_back(s);
  }
  return static_cast<double>(bytes) * (P - 1) / eplb::bench::median(times) / (1ull << 30);
}

int run(int argc, char** argv) {
  int rank = 0, P = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  std::string model = "v2lite", device = "cpu", policy_name = "deepseek", json;
  int layers = 0, experts = 0, slots = 0, iters = 5, batch = 0, pipeline = 4;
  bool overlap = eplb::runtime::ExecOptions{}.overlap_steps, high_priority = false, align = true;
  double noise = 0.2;
  std::size_t peak_bytes = std::size_t{256} << 20, staging_bytes = 0, window_bytes = 0;
  std::vector<std::size_t> tensors;
  CLI::App app{"bench_migration: time a realistic rebalance's weight movement"};
  app.add_option("--model", model, "v2lite (26 layers, 64 experts, 3 x 5.77 MB) or v3 (256 experts, 3 x 14.7 MB)")
      ->check(CLI::IsMember({"v2lite", "v3"}));
  app.add_option("--layers", layers, "override the layer count");
  app.add_option("--experts", experts, "override E");
  app.add_option("--slots", slots, "override R (default: v2lite 80, v3 288; rounded to a multiple of ranks)");
  app.add_option("--tensor-bytes", tensors, "override the tensor sizes of one expert");
  app.add_option("--device", device, "cuda (NCCL) or cpu (MPI host)")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--policy", policy_name)->check(eplb::algo::policy_name_error, "POLICY");
  app.add_option("--noise", noise, "relative noise between the two load windows");
  app.add_option("--iters", iters, "timed rebalances (alternating A->B, B->A)");
  app.add_option("--peak-bytes", peak_bytes, "bytes per peer in the pairwise peak measurement");
  app.add_option("--staging-bytes", staging_bytes, "staging budget per rank (0: unlimited, one round per layer)");
  app.add_option("--max-experts-per-batch", batch, "experts per NCCL group (0: whole round)");
  app.add_flag("--overlap,!--no-overlap", overlap,
               "coalesced mode: the next window packs and sends before this one unpacks (two staging "
               "regions; off by default, docs/MIGRATION.md) / finish each window first");
  app.add_option("--pipeline-batches", pipeline,
                 "coalesced mode: batches per round, pipelined with packing/unpacking (1: none)")
      ->check(CLI::PositiveNumber);
  bool per_tensor = false;
  app.add_flag("--per-tensor-messages", per_tensor,
               "one message per tensor per expert instead of one per peer (no packing)");
  app.add_option("--window-bytes", window_bytes,
                 "staging for several consecutive layers moved in one batch (0: layer by layer)");
  app.add_flag("!--no-align", align,
               "keep the policy's slot order (default: aligned to the previous placement within each "
               "GPU, as the engine does)");
  app.add_flag("--high-priority-stream", high_priority,
               "create the engine's stream (NCCL's transfer lane) with the device's greatest priority, "
               "so its kernels are scheduled before the copy lane's");
  app.add_option("--json", json, "write results as JSON (rank 0)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (rank == 0) app.exit(e);
    return e.get_exit_code() == 0 ? 0 : 2;
  }
  const bool v3 = model == "v3";
  eplb::algo::Topology t;
  t.num_layers = layers ? layers : (v3 ? 20 : 26);
  t.num_logical = experts ? experts : (v3 ? 256 : 64);
  t.num_slots = slots ? slots : (v3 ? 288 : 80);
  t.num_slots = (t.num_slots + P - 1) / P * P;
  t.num_ranks = P;
  t.validate();
  if (tensors.empty()) tensors = v3 ? std::vector<std::size_t>(3, 14680064) : std::vector<std::size_t>(3, 5767168);
  std::size_t expert_bytes = 0;
  for (auto b : tensors) expert_bytes += b;

  // Two windows and their placements, the second planned from the first.
  std::mt19937_64 rng(1);
  std::lognormal_distribution<double> d(std::log(1000.0), 1.0);
  eplb::algo::LoadMatrix w1{t.num_layers, t.num_logical, {}};
  w1.values.resize(static_cast<std::size_t>(t.num_layers) * t.num_logical);
  for (auto& v : w1.values) v = std::floor(d(rng));
  const auto w2 = noisy(w1, noise, 2);
  auto policy = eplb::algo::make_policy(policy_name);
  const auto c0 = eplb::algo::Placement::contiguous(t);
  const auto A = policy->rebalance(w1.view(), t, &c0);
  const auto B = policy->rebalance(w2.view(), t, &A);
  eplb::algo::MigrationOptions mo;
  mo.max_staged_slots_per_rank = staging_bytes ? static_cast<int>(std::max<std::size_t>(1, staging_bytes / expert_bytes)) : 0;
  // The placements the iterations go through: A, B, A, ... each aligned to the one before
  // (as the engine does, RuntimeConfig::align_slots) unless --no-align.
  std::vector<eplb::algo::Placement> chain{A};
  std::vector<eplb::algo::MigrationPlan> plans;
  for (int it = 0; it < iters + 1; ++it) {
    auto next = it % 2 == 0 ? B : A;
    if (align) eplb::algo::align_slots(chain.back(), next, t);
    plans.push_back(eplb::algo::plan_migration(chain.back(), next, t, mo));
    chain.push_back(std::move(next));
  }
  const auto& AB = plans.front();

  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  std::unique_ptr<eplb::comm::Transport> transport;
  double create_s = 0, first_s = 0;  // transport creation, first (untimed) migration
#if EPLB_HAVE_NCCL
  std::unique_ptr<eplb::comm::CudaStream> stream;
  if (device == "cuda") {
    eplb::comm::select_device_for_rank(rank);
    stream = high_priority ? std::make_unique<eplb::comm::CudaStream>(eplb::comm::cuda_stream_priorities().second)
                           : std::make_unique<eplb::comm::CudaStream>();
    const auto tc = Clock::now();
    transport = eplb::runtime::cuda::make_nccl_transport(comm, stream->get());
    create_s = eplb::bench::max_over_ranks(std::chrono::duration<double>(Clock::now() - tc).count());
  }
#endif
  if (!transport) {
    if (device == "cuda") throw std::invalid_argument("this build has no NCCL: use --device cpu");
    transport = std::make_unique<eplb::comm::MpiHostTransport>(comm);
  }
  const int k = t.slots_per_rank();
  Memory mem;
  eplb::runtime::WeightRegistry reg(t.num_layers, k);
  for (int l = 0; l < t.num_layers; ++l)
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      mem.buffers.push_back(transport->allocate(tensors[i] * k));
      reg.add(l, "t" + std::to_string(i), mem.buffers.back().get(), tensors[i]);
    }
  const eplb::runtime::ExecOptions exec{batch, window_bytes ? 0 : 1, window_bytes, !per_tensor, pipeline,
                                              overlap};
  std::size_t stage = 0;
  for (const auto& p : plans) stage = std::max(stage, eplb::runtime::staging_bytes_needed(p, reg, exec));
  mem.staging = transport->allocate(stage);

  const double peak = pairwise_peak(*transport, rank, P, peak_bytes, 5);
  std::vector<double> times;
  double sent = 0, recvd = 0, local = 0;
  std::vector<double> issue;
  for (int it = 0; it < iters + 1; ++it) {
    const auto& plan = plans[static_cast<std::size_t>(it)];
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = Clock::now();
    const auto c = eplb::runtime::execute_migration(plan, reg, *transport, rank, {mem.staging.get(), stage}, {},
                                                    exec);
    const double s = eplb::bench::max_over_ranks(std::chrono::duration<double>(Clock::now() - t0).count());
    if (it == 0) {  // warm-up
      first_s = s;
      continue;
    }
    times.push_back(s);
    sent = std::max(sent, eplb::bench::max_over_ranks(static_cast<double>(c.bytes_sent)));
    recvd = std::max(recvd, eplb::bench::max_over_ranks(static_cast<double>(c.bytes_received)));
    local = std::max(local, eplb::bench::max_over_ranks(static_cast<double>(c.bytes_copied_local)));
    issue.push_back(eplb::bench::max_over_ranks(c.issue_ms));
  }
  const double med = eplb::bench::median(times);
  const double busiest = std::max(sent, recvd);
  const double achieved = busiest / med / (1ull << 30);
  if (rank == 0) {
    char cfg[512];
    std::snprintf(cfg, sizeof cfg,
                  "model=%s %s device=%s transport=%s policy=%s noise=%.2f expert_bytes=%zu tensors=%zu "
                  "staging=%zu B batch=%d window_bytes=%zu coalesce=%d pipeline=%d overlap=%d align=%d NCCL_NVLS_ENABLE=%s",
                  model.c_str(), t.describe().c_str(), device.c_str(), std::string(transport->name()).c_str(),
                  policy_name.c_str(), noise, expert_bytes, tensors.size(), stage, batch, window_bytes, !per_tensor, pipeline, overlap, align,
                  std::getenv("NCCL_NVLS_ENABLE") ? std::getenv("NCCL_NVLS_ENABLE") : "unset");
    eplb::bench::print_header("bench_migration", cfg);
    std::printf("# plan A->B: %lld slots changed, %lld remote transfers, %lld local copies, %d max rounds/layer\n",
                AB.stats().slots_changed, AB.stats().remote_units, AB.stats().local_units + AB.stats().fanout_copies,
                AB.stats().max_rounds);
    std::printf("%-10s %10s %10s %12s %12s %12s %10s %10s\n", "ranks", "median_ms", "min_ms", "max_sent_GB",
                "max_recv_GB", "GiB/s_busiest", "peak_GiB/s", "of_peak");
    std::printf("%-10d %10.2f %10.2f %12.3f %12.3f %12.1f %10.1f %9.1f%%\n", P, med * 1e3,
                *std::min_element(times.begin(), times.end()) * 1e3, sent / 1e9, recvd / 1e9, achieved, peak,
                peak > 0 ? 100 * achieved / peak : 0.0);
    std::printf("# host time issuing the work (median, max over ranks): %.2f ms\n", eplb::bench::median(issue));
    std::printf("# local copies and fan-out (max over ranks): %.3f GB, %.1f GB/s over the median time\n",
                local / 1e9, local / med / 1e9);
    std::printf("# transport creation %.1f ms (EPLB_NCCL_CONNECT=%s), first migration %.1f ms\n", create_s * 1e3,
                std::getenv("EPLB_NCCL_CONNECT") ? std::getenv("EPLB_NCCL_CONNECT") : "unset", first_s * 1e3);
    std::printf("# GiB/s_busiest = max over ranks of max(bytes sent, bytes received) / median time; "
                "peak = all-pairs exchange of %zu B per peer in one batch, GiB/s each rank sends\n",
                peak_bytes);
    if (!json.empty()) {
      std::ofstream f(json);
      f << "{\"program\":\"bench_migration\",\"config\":\"" << cfg << "\",\"ranks\":" << P
        << ",\"median_ms\":" << med * 1e3 << ",\"max_sent_bytes\":" << sent << ",\"max_recv_bytes\":" << recvd
        << ",\"achieved_gibps\":" << achieved << ",\"peak_gibps\":" << peak
        << ",\"remote_transfers\":" << AB.stats().remote_units << "}\n";
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return eplb::bench::mpi_main(argc, argv, "bench_migration", run); }
