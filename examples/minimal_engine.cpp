// The README's "Using eplb in an engine" as a complete program: host weights, a skewed
// synthetic router, the engine's step loop, and a check after every rebalance that each local
// slot holds its expert's weights. Run: mpirun -np 2 build/examples/minimal_engine
// Exit code 0 when every check passed, 1 otherwise (every rank agrees).
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <random>
#include <vector>

#include "eplb/runtime/engine.hpp"

namespace {
constexpr int L = 4, E = 16, kTokens = 256, kTopK = 2;
constexpr std::size_t kW13 = 4096, kW2 = 2048;  // bytes per slot of each tensor

// The weights of (layer, expert) in a real engine come from the checkpoint of the model; here
// every byte of tensor t says which (layer, expert) it belongs to.
std::uint8_t byte_of(int layer, int expert, int tensor) {
  return static_cast<std::uint8_t>(layer * 31 + expert * 7 + tensor * 3 + 1);
}

void load_expert(std::vector<std::uint8_t>& buf, std::size_t bytes, int slot, int layer,
                 int expert, int tensor) {
  std::memset(buf.data() + static_cast<std::size_t>(slot) * bytes, byte_of(layer, expert, tensor), bytes);
}

int run(int rank, int P) {
  // Every expert needs a slot, and two per GPU are left for replicas of the hot ones.
  const int kSlotsPerRank = (E + P - 1) / P + 2;
  eplb::runtime::RuntimeConfig cfg;
  cfg.topology = {L, E, kSlotsPerRank * P, P, /*nodes*/ 1, /*groups*/ 1};
  cfg.window_passes = 20;       // W: passes in the load window
  cfg.rebalance_interval = 40;  // passes between rebalances (the first at pass 10)

  // This rank's slots of every tensor that moves with an expert: [slots per rank][bytes].
  std::vector<std::vector<std::uint8_t>> w13(L), w2(L);
  eplb::runtime::WeightRegistry registry(L, kSlotsPerRank);
  for (int l = 0; l < L; ++l) {
    w13[l].resize(kSlotsPerRank * kW13);
    w2[l].resize(kSlotsPerRank * kW2);
    registry.add(l, "w13", w13[l].data(), kW13);
    registry.add(l, "w2", w2[l].data(), kW2);
  }
  eplb::runtime::Engine engine(MPI_COMM_WORLD, cfg, std::move(registry));  // collective

  // Load each local slot with the expert the (initial) placement puts there.
  for (int l = 0; l < L; ++l)
    for (int i = 0; i < kSlotsPerRank; ++i) {
      const int e = engine.expert_of_local_slot(l, i);
      load_expert(w13[l], kW13, i, l, e, 0);
      load_expert(w2[l], kW2, i, l, e, 1);
    }

  // A router whose favourite experts differ per layer (Zipf-like), different tokens per rank.
  std::mt19937 rng(1234 + rank);
  std::vector<double> weights(E);
  std::vector<std::int32_t> topk(kTokens * kTopK);
  long long bad = 0, moved_slots = 0, rebalances = 0;
  for (int pass = 1; pass <= 200; ++pass) {
    for (int l = 0; l < L; ++l) {
      for (int e = 0; e < E; ++e) weights[e] = 1.0 / (1 + (e + 5 * l) % E);
      std::discrete_distribution<int> router(weights.begin(), weights.end());
      for (auto& id : topk) id = router(rng);
      (void)engine.window().record(l, topk);  // [tokens][k] expert ids of this pass
    }
    const auto stats = engine.step();  // collective when a rebalance is due
    if (!stats) continue;
    ++rebalances;
    if (rank == 0)
      std::printf("pass %3d: epoch %lld %s balancedness %.3f -> %.3f, %lld slots changed, %.2f ms\n",
                  pass, static_cast<long long>(stats->epoch), stats->skipped ? "skipped" : "moved",
                  stats->balancedness_before, stats->balancedness_after,
                  static_cast<long long>(stats->plan.slots_changed),
                  stats->t_total_ms);
    if (stats->skipped) continue;
    moved_slots += stats->plan.slots_changed;
    // eplb moved the bytes: every local slot must now hold its new expert's weights.
    for (int l = 0; l < L; ++l)
      for (int i = 0; i < kSlotsPerRank; ++i) {
        const int e = engine.expert_of_local_slot(l, i);
        for (std::size_t b = 0; b < kW13; ++b) bad += w13[l][i * kW13 + b] != byte_of(l, e, 0);
        for (std::size_t b = 0; b < kW2; ++b) bad += w2[l][i * kW2 + b] != byte_of(l, e, 1);
      }
  }
  MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("%lld rebalances, %lld slots changed in total, %lld wrong bytes: %s\n", rebalances,
                moved_slots, bad, bad ? "FAILED" : "every slot holds its expert's weights");
  return bad ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;  // eplb's planning threads make no MPI calls: FUNNELED is enough
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rc = 0;
  try {
    rc = run(rank, size);
  } catch (const std::invalid_argument& e) {  // bad input: thrown on every rank
    std::fprintf(stderr, "minimal_engine [rank %d]: error: %s\n", rank, e.what());
    rc = 2;
  } catch (const std::exception& e) {  // a library failure: fatal for the job
    std::fprintf(stderr, "minimal_engine [rank %d]: fatal: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
