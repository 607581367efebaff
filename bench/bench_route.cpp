// The routing + counting kernel (runtime/cuda/kernels.cu): time per launch, CUDA-event timed.
#include <benchmark/benchmark.h>

#include <random>

#include "eplb/algo/placement.hpp"
#include "eplb/comm/cuda.hpp"
#include "eplb/runtime/cuda/device_state.hpp"

namespace {

void BM_RouteAndCount(benchmark::State& state) {
  const int tokens = static_cast<int>(state.range(0)), k = static_cast<int>(state.range(1));
  const int E = static_cast<int>(state.range(2));
  const bool i64 = state.range(3) != 0;
  if (eplb::comm::cuda_device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const eplb::algo::Topology t{1, E, E + E / 8, 8, 1, 1};
  std::vector<int> p2l(t.num_slots);
  for (int j = 0; j < t.num_slots; ++j) p2l[j] = j % E;
  const eplb::algo::Placement p(1, E, t.num_slots, p2l);
  eplb::comm::CudaStream s;
  eplb::runtime::cuda::DeviceMaps maps(t, p, s.get());
  eplb::runtime::cuda::DeviceLoadWindow window(1, E, 4, s.get());
  const long long n = static_cast<long long>(tokens) * k;
  std::mt19937 rng(1);
  std::vector<long long> ids64(n);
  std::vector<int> ids32(n);
  for (long long i = 0; i < n; ++i) ids32[i] = static_cast<int>(ids64[i] = rng() % E);
  eplb::comm::DeviceBuffer d_ids(n * (i64 ? 8 : 4)), d_slots(n * sizeof(int));
  eplb::comm::copy_async(d_ids.get(), i64 ? static_cast<const void*>(ids64.data()) : ids32.data(),
                         d_ids.size(), s.get());
  // Launches back to back, as in a forward pass (one per MoE layer); the time per launch is
  // the events' interval over `batch` launches, so event overhead is amortised.
  constexpr int batch = 20;
  eplb::comm::CudaEvent a, b;
  for (auto _ : state) {
    a.record(s.get());
    for (int i = 0; i < batch; ++i)
      EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_route_and_count(
          d_ids.get(), i64, n, maps.layer(0), 0, 0, d_slots.as<int>(), window.counts(0),
          window.errors(), s.get()));
    b.record(s.get());
    b.synchronize();
    state.SetIterationTime(eplb::comm::CudaEvent::elapsed_ms(a, b) / 1e3 / batch);
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["launches_per_timing"] = batch;
}

BENCHMARK(BM_RouteAndCount)
    ->ArgNames({"tokens", "topk", "experts", "int64"})
    ->Args({256, 8, 256, 0})
    ->Args({256, 8, 256, 1})
    ->Args({64, 8, 384, 0})
    ->Args({8192, 8, 256, 0})
    ->Args({65536, 8, 256, 1})
    ->UseManualTime()
    ->Iterations(2000)
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
