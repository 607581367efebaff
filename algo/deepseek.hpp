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
  std::vector<std::uint64_t> keys;
  std::vector<std::uint64_t> tree;
  std::vector<int> fill;
  std::vector<float> pack_load;
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
  std::vector<float> wf_, group_load_, row_, tok_;
  std::vector<int> gpack_, grank_, mlog2log_, phy2mlog_, mcnt_, ppack_, prank_, phy2log_;
};

}  // namespace eplb::algo
