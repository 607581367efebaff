#pragma once
// Small helpers shared by the multi-rank tests.
#include <gtest/gtest.h>
#include <mpi.h>

#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/algo/policy.hpp"
#include "eplb/algo/topology.hpp"
#include "eplb/runtime/engine.hpp"
#include "eplb/runtime/pattern.hpp"
#include "eplb/runtime/weights.hpp"

namespace eplb::test {

inline int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

/// A path every rank agrees on (rank 0's process id), removed at the end.
struct SharedPath {
  std::string path;
  explicit SharedPath(const char* stem) {
    long id = static_cast<long>(getpid());
    MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    path = (std::filesystem::temp_directory_path() / (std::string(stem) + std::to_string(id) + ".h5")).string();
  }
  ~SharedPath() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) std::filesystem::remove(path);
  }
};

/// Host weights for one rank: a buffer per (layer, tensor).
struct HostWeights {
  std::vector<std::vector<std::byte>> buffers;
  eplb::runtime::WeightRegistry registry;
  HostWeights(const eplb::algo::Topology& t, std::vector<std::size_t> tensor_bytes, std::size_t pad = 0)
      : registry(t.num_layers, t.slots_per_rank()) {
    const int k = t.slots_per_rank();
    for (int l = 0; l < t.num_layers; ++l)
      for (std::size_t i = 0; i < tensor_bytes.size(); ++i) {
        const std::size_t stride = tensor_bytes[i] + pad;
        buffers.emplace_back(stride * k);
        std::string name = "t";  // not "t" + to_string(i): GCC 12 -Wrestrict false positive
        name += std::to_string(i);
        registry.add(l, std::move(name), buffers.back().data(), tensor_bytes[i], stride);
      }
  }
};

/// The sum of `n` over the ranks (every rank calls it).
inline std::size_t sum_over_ranks(std::size_t n) {
  unsigned long long mine = n, total = 0;
  MPI_Allreduce(&mine, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  return total;
}

/// Slots on any rank whose bytes are not their expert's under `p` (every rank calls it).
inline std::size_t bad_slots_anywhere_in(const eplb::runtime::WeightRegistry& w, const eplb::algo::Placement& p) {
  const auto bad = eplb::runtime::verify_slots(w, p, world_rank());
  for (std::size_t i = 0; i < bad.size() && i < 3; ++i) ADD_FAILURE() << bad[i];
  return sum_over_ranks(bad.size());
}

/// Whether a rebalance works on every rank (every rank calls it); this rank's error in `why`.
inline bool rebalance_works_everywhere(eplb::runtime::Engine& e, std::string& why) {
  int ok = 1;
  try {
    (void)e.rebalance();
  } catch (const std::exception& ex) {
    ok = 0;
    why = ex.what();
  }
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return ok == 1;
}

/// The executor tests' set-up: 6 layers of 16 experts (fewer with one rank), 6 slots per rank,
/// three tensors per expert (512, 96 and 40 bytes, strides padded by 24), loaded for the
/// contiguous placement `a`; `next()` is the deepseek policy's placement for the next
/// lognormal load, the same on every rank (one seed).
struct MigrationSetup {
  eplb::algo::Topology t;
  HostWeights w;
  std::unique_ptr<eplb::algo::Policy> policy = eplb::algo::make_policy("deepseek");
  eplb::algo::Placement a;
  std::mt19937_64 rng;
  std::lognormal_distribution<double> d{0.0, 1.5};
  explicit MigrationSetup(unsigned seed)
      : t(topology()), w(t, {512, 96, 40}, 24), a(eplb::algo::Placement::contiguous(t)), rng(seed) {
    eplb::runtime::fill_slots(w.registry, a, world_rank());
  }
  eplb::algo::Placement next() {
    eplb::algo::LoadMatrix load{t.num_layers, t.num_logical, {}};
    for (int i = 0; i < t.num_layers * t.num_logical; ++i) load.values.push_back(std::floor(100 * d(rng)));
    return policy->rebalance(load.view(), t, &a);
  }
  static eplb::algo::Topology topology() {
    const int P = world_size();
    eplb::algo::Topology t{6, 16, 6 * P, P, 1, 1};
    if (t.num_slots < t.num_logical) t.num_logical = t.num_slots;
    return t;
  }
};

}  // namespace eplb::test
