#pragma once
// Small helpers shared by the multi-rank tests.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstddef>
#include <string>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/algo/topology.hpp"
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

/// Slots on any rank whose bytes are not their expert's under `p` (every rank calls it).
inline std::size_t bad_slots_anywhere_in(const eplb::runtime::WeightRegistry& w, const eplb::algo::Placement& p) {
  const auto bad = eplb::runtime::verify_slots(w, p, world_rank());
  for (std::size_t i = 0; i < bad.size() && i < 3; ++i) ADD_FAILURE() << bad[i];
  unsigned long long n = bad.size(), total = 0;
  MPI_Allreduce(&n, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  return total;
}

}  // namespace eplb::test
