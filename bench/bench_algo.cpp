// Placement policies on the model shapes of docs/BENCHMARKS.md (one rebalance = all layers).
#include <benchmark/benchmark.h>

#include <chrono>

#include "algo/policy.hpp"
#include "bench/shapes.hpp"

namespace {

void BM_Policy(benchmark::State& state, std::string policy_name, eplb::bench::Shape shape) {
  const auto load = eplb::bench::lognormal_load(shape.topo, 42);
  auto policy = eplb::algo::make_policy(policy_name);
  eplb::algo::Placement prev = eplb::algo::Placement::contiguous(shape.topo);
  eplb::algo::Placement out;
  policy->rebalance_into(load.view(), shape.topo, &prev, out);  // warm the scratch space
  double total_s = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    policy->rebalance_into(load.view(), shape.topo, &prev, out);
    total_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(out);
  }
  const double per_call_ms = 1e3 * total_s / static_cast<double>(state.iterations());
  state.counters["layers"] = shape.topo.num_layers;
  state.counters["numpy_ms"] = shape.numpy_ms;
  // Share of the fastest published Python implementation's time (target: <= 1 %).
  state.counters["pct_of_numpy"] = 100.0 * per_call_ms / shape.numpy_ms;
  state.SetLabel(shape.topo.describe());
}

const bool registered = [] {
  for (const auto& name : eplb::algo::policy_names())
    for (const auto& s : eplb::bench::shapes())
      benchmark::RegisterBenchmark(("policy/" + name + "/" + s.name).c_str(), BM_Policy, name, s)
          ->Unit(benchmark::kMicrosecond);
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
