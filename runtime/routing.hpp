#pragma once
/// \file Routing of router output to physical slots and load counting: the host reference of
/// the CUDA kernel in runtime/cuda/kernels.cu (tests compare the two).
#include <cstdint>
#include <span>
#include <stdexcept>

namespace eplb::runtime {

/// The maps of one layer, as the kernel reads them.
struct LayerMaps {
  const int* log2phy = nullptr;  ///< [E][X]: each expert's slots, -1 padded
  const int* logcnt = nullptr;   ///< [E]: replicas per expert (>= 1)
  int num_logical = 0;           ///< E
  int max_replicas = 0;          ///< X (row stride of log2phy)
};

/// For every (token, j) of topk_ids[tokens][k] (flat index i = token*k + j), with e = id:
///  - slots_out[i] = log2phy[e][i % logcnt[e]] (replica chosen by position modulo count), or,
///    when [local_begin, local_end) is non-empty and e has a replica there, the first such one;
///  - counts[e] += 1.
/// An id outside [0, E) gives slots_out[i] = -1, counts nothing and adds 1 to *errors; with
/// skip_negative_ids a negative id (a top-k entry that selects no expert, e.g. DeepEP's -1, or a
/// padded token) gives slots_out[i] = -1 and is not an error.
template <class Id>
void route_and_count_host(std::span<const Id> topk_ids, const LayerMaps& maps, int local_begin,
                          int local_end, std::span<int> slots_out, std::span<std::int64_t> counts,
                          std::int64_t* errors, bool skip_negative_ids = false) {
  if (slots_out.size() < topk_ids.size() || counts.size() < static_cast<std::size_t>(maps.num_logical) ||
      !errors)
    throw std::invalid_argument("route_and_count_host: slots_out needs one entry per id, counts one per "
                                "expert, and errors a counter");
  for (std::size_t i = 0; i < topk_ids.size(); ++i) {
    const long long e = static_cast<long long>(topk_ids[i]);
    if (e < 0 || e >= maps.num_logical) {
      slots_out[i] = -1;
      if (!(skip_negative_ids && e < 0)) ++*errors;
      continue;
    }
    const int* reps = maps.log2phy + e * maps.max_replicas;
    const int cnt = maps.logcnt[e];
    int slot = reps[static_cast<long long>(i % static_cast<std::size_t>(cnt))];
    if (local_begin < local_end)
      for (int r = 0; r < cnt; ++r)
        if (reps[r] >= local_begin && reps[r] < local_end) {
          slot = reps[r];
          break;
        }
    slots_out[i] = slot;
    ++counts[e];
  }
}

}  // namespace eplb::runtime
