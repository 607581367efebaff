// Placement policies on the model shapes of docs/BENCHMARKS.md (one rebalance = all layers).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <ctime>
#include <type_traits>
#include <vector>

#include "eplb/algo/migration.hpp"
#include "eplb/algo/policy.hpp"
#include "bench/shapes.hpp"
#include "eplb_build_revision.hpp"

namespace {

/// CPU time of the calling thread: on a shared VM the wall clock also counts time the vCPU
/// was not running (steal), which says nothing about the code.
double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Does nothing: the default untimed step before each call.
struct NoPrelude {
  void operator()() const {}
};

/// Runs call() once per benchmark iteration (the caller warms up first), each after an
/// untimed prelude(); the thread's CPU seconds per call.
template <class Call, class Prelude = NoPrelude>
double cpu_seconds_per_call(benchmark::State& state, Call&& call, Prelude&& prelude = {}) {
  constexpr bool has_prelude = !std::is_same_v<std::decay_t<Prelude>, NoPrelude>;
  double total_s = 0;
  for (auto _ : state) {
    if constexpr (has_prelude) {
      state.PauseTiming();
      prelude();
      state.ResumeTiming();
    }
    const double t0 = thread_seconds();
    call();
    total_s += thread_seconds() - t0;
  }
  return total_s / static_cast<double>(state.iterations());
}

/// policy.rebalance_into(load, topo, &prev, out) timed after one warm-up call (scratch sized,
/// output allocated), each call after an untimed prelude(); CPU seconds per call.
template <class Prelude = NoPrelude>
double time_rebalance(benchmark::State& state, eplb::algo::Policy& policy, const eplb::algo::LoadMatrix& load,
                      const eplb::algo::Topology& t, const eplb::algo::Placement& prev,
                      eplb::algo::Placement& out, Prelude&& prelude = {}) {
  policy.rebalance_into(load.view(), t, &prev, out);
  return cpu_seconds_per_call(
      state,
      [&] {
        policy.rebalance_into(load.view(), t, &prev, out);
        benchmark::DoNotOptimize(out);
      },
      prelude);
}

void BM_Policy(benchmark::State& state, std::string policy_name, eplb::bench::Shape shape) {
  const auto load = eplb::bench::lognormal_load(shape.topo, 42);
  auto policy = eplb::algo::make_policy(policy_name);
  const eplb::algo::Placement prev = eplb::algo::Placement::contiguous(shape.topo);
  eplb::algo::Placement out;
  const double per_call_ms = 1e3 * time_rebalance(state, *policy, load, shape.topo, prev, out);
  state.counters["layers"] = shape.topo.num_layers;
  state.counters["X"] = out.max_replicas();  // log2phy's replica dimension
  state.counters["numpy_ms"] = shape.numpy_ms;
  // Share of the fastest published Python implementation's time (target: <= 1 %), from the
  // thread's CPU time.
  state.counters["pct_of_numpy"] = 100.0 * per_call_ms / shape.numpy_ms;
  state.SetLabel(shape.topo.describe());
}

/// A rebalance in steady state: the previous placement is the policy's own for the previous
/// load window (+-20 % noise), as in the runtime after the first rebalance. BM_Policy starts
/// from the contiguous layout, which is the worst case for migration-aware policies (sticky
/// then has to move almost everything) and the same for the others.
void BM_PolicySteady(benchmark::State& state, std::string policy_name, eplb::bench::Shape shape) {
  const auto& t = shape.topo;
  const auto windows = eplb::bench::load_windows(t, eplb::bench::WindowKind::lognormal, 2, 0.2, 7);
  auto policy = eplb::algo::make_policy(policy_name);
  const eplb::algo::Placement prev = policy->rebalance(windows[0].view(), t);
  eplb::algo::Placement out;
  state.counters["cpu_us"] = 1e6 * time_rebalance(state, *policy, windows[1], t, prev, out);
  state.counters["slots_changed"] = static_cast<double>(eplb::algo::plan_migration(prev, out, t).stats().slots_changed);
  state.SetLabel(t.describe());
}

/// A rebalance with cold caches, as in the runtime, which calls the policy once every many
/// seconds: before each call (untimed) the thread writes a buffer larger than the dev VM's
/// L3 (105 MB), so the load matrix, the policy's scratch and the output's arrays come from
/// memory. BM_Policy (hot caches, the benchmark) is the best case.
void BM_PolicyCold(benchmark::State& state, std::string policy_name, eplb::bench::Shape shape) {
  const auto load = eplb::bench::lognormal_load(shape.topo, 42);
  auto policy = eplb::algo::make_policy(policy_name);
  const eplb::algo::Placement prev = eplb::algo::Placement::contiguous(shape.topo);
  eplb::algo::Placement out;
  std::vector<std::uint64_t> junk(std::size_t{16} << 20);  // 128 MB
  std::uint64_t round = 0;
  const double per_call_s = time_rebalance(state, *policy, load, shape.topo, prev, out, [&] {
    ++round;
    for (std::size_t i = 0; i < junk.size(); i += 8) junk[i] = round;  // one store per line
    benchmark::DoNotOptimize(junk.data());
  });
  const double per_call_ms = 1e3 * per_call_s;
  state.counters["cpu_us"] = 1e3 * per_call_ms;
  state.counters["pct_of_numpy"] = 100.0 * per_call_ms / shape.numpy_ms;
  state.SetLabel(shape.topo.describe());
}

/// Migration-plan derivation (every rank runs it at every rebalance) between the placements
/// of two consecutive load windows (+-20 % noise) made by `policy_name`.
void BM_MigrationPlan(benchmark::State& state, std::string policy_name, eplb::bench::Shape shape,
                      int threads) {
  const auto& t = shape.topo;
  const auto windows = eplb::bench::load_windows(t, eplb::bench::WindowKind::lognormal, 2, 0.2, 7);
  auto policy = eplb::algo::make_policy(policy_name);
  const auto a = policy->rebalance(windows[0].view(), t);
  const auto b = policy->rebalance(windows[1].view(), t, &a);
  long long changed = 0;
  eplb::algo::MigrationPlan plan;  // planned into again and again, as the runtime does
  for (auto _ : state) {
    eplb::algo::plan_migration(a, b, t, {.threads = threads}, plan);
    changed = plan.stats().slots_changed;
    benchmark::DoNotOptimize(plan);
  }
  state.counters["slots_changed"] = static_cast<double>(changed);
  state.SetLabel(t.describe());
}

/// align_slots (the engine's default step after every policy call) on two consecutive
/// deepseek placements: the new one reordered within each GPU to keep the old one's slots.
void BM_AlignSlots(benchmark::State& state, eplb::bench::Shape shape) {
  const auto& t = shape.topo;
  const auto windows = eplb::bench::load_windows(t, eplb::bench::WindowKind::lognormal, 2, 0.2, 7);
  auto policy = eplb::algo::make_policy("deepseek");
  const auto a = policy->rebalance(windows[0].view(), t);
  const auto b = policy->rebalance(windows[1].view(), t, &a);
  eplb::algo::Placement next;
  long long moved = 0;
  for (auto _ : state) {
    state.PauseTiming();
    next = b;
    state.ResumeTiming();
    moved = eplb::algo::align_slots(a, next, t);
    benchmark::DoNotOptimize(next);
  }
  state.counters["slots_reordered"] = static_cast<double>(moved);
  state.counters["slots_changed_before"] = static_cast<double>(eplb::algo::plan_migration(a, b, t).stats().slots_changed);
  state.counters["slots_changed_after"] = static_cast<double>(eplb::algo::plan_migration(a, next, t).stats().slots_changed);
  state.SetLabel(t.describe());
}

/// Placement::assign_counted on a deepseek placement: copies phy2log and logcnt, checks them
/// and derives log2phy (the part of every policy call that grows with L * E * X).
void BM_Derive(benchmark::State& state, eplb::bench::Shape shape) {
  const auto& t = shape.topo;
  const auto p = eplb::algo::make_policy("deepseek")->rebalance(eplb::bench::lognormal_load(t, 42).view(), t);
  eplb::algo::Placement out;
  out.assign_counted(t.num_layers, t.num_logical, t.num_slots, p.phy2log(), p.logcnt());
  const double per_call_s = cpu_seconds_per_call(state, [&] {
    out.assign_counted(t.num_layers, t.num_logical, t.num_slots, p.phy2log(), p.logcnt());
    benchmark::DoNotOptimize(out);
  });
  state.counters["X"] = out.max_replicas();
  state.counters["cpu_us"] = 1e6 * per_call_s;
  state.SetLabel(t.describe());
}

/// Probes of the machine's state, to read the other numbers of a run by: a dependent integer
/// chain (core speed) and a 32 MB streaming read (memory bandwidth). On the shared dev VM both
/// slow down in its busy periods (chain ~1.3x, stream ~2x; docs/BENCHMARKS.md).
void BM_ProbeChain(benchmark::State& state) {
  for (auto _ : state) {
    std::uint64_t x = 1;
    for (int i = 0; i < 20'000'000; ++i) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      benchmark::DoNotOptimize(x);
    }
  }
}
void BM_ProbeStream(benchmark::State& state) {
  std::vector<double> v(std::size_t{4} << 20, 1.0);  // 32 MB
  for (auto _ : state) {
    double sum = 0;
    for (std::size_t i = 0; i < v.size(); i += 8) sum += v[i];  // one load per cache line
    benchmark::DoNotOptimize(sum);
  }
}

const bool registered = [] {
  // Printed in the context header (and the JSON output): which code a figure measured.
  benchmark::AddCustomContext("eplb_revision", EPLB_BUILD_REVISION);
  benchmark::RegisterBenchmark("probe/chain_2e7", BM_ProbeChain)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("probe/stream_32MB", BM_ProbeStream)->Unit(benchmark::kMillisecond);
  for (const auto& s : eplb::bench::shapes())
    benchmark::RegisterBenchmark((std::string("derive/") + s.name).c_str(), BM_Derive, s)
        ->Unit(benchmark::kMicrosecond);
  // The issue shapes, and the shape bench_control uses (V3 on 4 ranks of one node).
  auto plan_shapes = eplb::bench::shapes();
  plan_shapes.push_back({"V3/P4", {58, 256, 288, 4, 1, 8}, 0});
  for (const char* name : {"deepseek", "sticky"})
    for (const auto& s : plan_shapes)
      benchmark::RegisterBenchmark((std::string("migration_plan/") + name + "/" + s.name).c_str(),
                                   BM_MigrationPlan, std::string(name), s, 1)
          ->Unit(benchmark::kMicrosecond);
  // The same plans with the layers split over 4 threads (MigrationOptions::threads): wall
  // time, against the single thread's wall time in the same run.
  for (int threads : {1, 4})
    for (const auto& s : plan_shapes)
      benchmark::RegisterBenchmark(("migration_plan_wall/deepseek/" + std::string(s.name) +
                                    "/t" + std::to_string(threads)).c_str(),
                                   BM_MigrationPlan, std::string("deepseek"), s, threads)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
  for (const auto& s : plan_shapes)
    benchmark::RegisterBenchmark((std::string("align_slots/") + s.name).c_str(), BM_AlignSlots, s)
        ->Unit(benchmark::kMicrosecond);
  for (const auto& name : eplb::algo::policy_names())
    for (const auto& s : eplb::bench::shapes())
      benchmark::RegisterBenchmark(("policy/" + name + "/" + s.name).c_str(), BM_Policy, name, s)
          ->Unit(benchmark::kMicrosecond);
  for (const auto& name : eplb::algo::policy_names())
    for (const auto& s : eplb::bench::shapes())
      benchmark::RegisterBenchmark(("policy_steady/" + name + "/" + s.name).c_str(), BM_PolicySteady, name, s)
          ->Unit(benchmark::kMicrosecond);
  for (const auto& s : eplb::bench::shapes())
    benchmark::RegisterBenchmark(("policy_cold/deepseek/" + std::string(s.name)).c_str(), BM_PolicyCold,
                                 std::string("deepseek"), s)
        ->Unit(benchmark::kMicrosecond);
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
