#pragma once
/// \file "deepseek": output-compatible port of DeepSeek's open-source EPLB policy
/// (specification: docs/POLICIES.md). Balanced packing + replication, hierarchical
/// (groups -> nodes -> GPUs) when G % N == 0, global otherwise.
#include <cstdint>
#include <span>
#include <vector>

#include "algo/policy.hpp"

namespace eplb::algo {

namespace detail {
/// Scratch space of the packing/replication primitives, reused across calls.
struct PackScratch {
  std::vector<std::uint64_t> keys, keys2;  ///< sort keys and the radix sort's second buffer
  std::vector<std::uint64_t> tree;         ///< tournament tree
  std::vector<std::uint64_t> merged;       ///< merged item lists
  std::vector<std::uint32_t> counts;       ///< radix sort histograms
  std::vector<int> fill;                   ///< items per pack
  std::vector<int> leaf;                   ///< expert -> tree leaf (replication)
};

/// Greedy LPT with a cardinality constraint: n items, m packs of n/m items each. Items in
/// order of weight descending (ties: lower index first) go to the least loaded non-full pack
/// (ties: lowest pack index). Writes pack[i] and rank[i] (position inside the pack).
/// Precondition: n % m == 0, weights >= 0 and finite.
void balanced_packing(std::span<const float> w, int m, std::span<int> pack, std::span<int> rank,
                      PackScratch& s);

/// Adds r - n replicas one at a time to the expert with the largest w[e] / count[e]
/// (ties: lowest index). phy2log gets r entries (first n are 0..n-1), count n entries.
void replicate_experts(std::span<const float> w, int r, std::span<int> phy2log,
                       std::span<int> count, PackScratch& s);
}  // namespace detail

class DeepseekPolicy final : public Policy {
 public:
  std::string_view name() const override { return "deepseek"; }
  void rebalance_into(LoadView load, const Topology& topo, const Placement* previous,
                      Placement& out) override;

 private:
  detail::PackScratch scratch_;
  std::vector<float> wf_, row_, gload_;
  std::vector<std::uint32_t> tokb_;
  std::vector<std::uint64_t> items_u_, items_v_;
  std::vector<int> mlog2log_, cnt_, picks_, lid_, phy2log_;
};

}  // namespace eplb::algo
