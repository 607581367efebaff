#pragma once
/// \file "deepseek": output-compatible port of DeepSeek's open-source EPLB policy
/// (specification: docs/POLICIES.md). Balanced packing + replication, hierarchical
/// (groups -> nodes -> GPUs) when G % N == 0, global otherwise.
#include <cstdint>
#include <span>
#include <vector>

#include "eplb/algo/simd.hpp"
#include "eplb/algo/policy.hpp"

namespace eplb::algo {

namespace detail {
/// Scratch space of the packing/replication primitives, reused across calls.
struct PackScratch {
  std::vector<std::uint64_t> keys, keys2;  ///< sort keys and the radix sort's second buffer
  std::vector<std::uint64_t> tree;         ///< tournament tree
  std::vector<std::uint32_t> counts;       ///< bucket sort counts
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
  /// Layers are independent: with threads > 1 they are split over that many threads (same
  /// output, bit for bit). Default 1.
  void set_threads(int threads) override { threads_ = threads < 1 ? 1 : threads; }
  bool layers_independent() const override { return true; }
  /// Rows (one per layer and node) are planned eight at a time in AVX-512 lanes (long rows
  /// sorted sixteen at a time) where the CPU has AVX-512 (same output, bit for bit; see
  /// docs/POLICIES.md). Default on; off runs the scalar code everywhere.
  /// EPLB_DEEPSEEK_SCALAR=1 turns it off for a whole process.
  void set_batched(bool on) { batched_ = on; }
  /// How the batched path reads and writes the tables it revisits within a batch (the
  /// tournament trees, the merge beside them, the sorted keys' loads; docs/POLICIES.md):
  /// `automatic` (the default) follows detail::scalar_access() (the CPU's vendor, or
  /// EPLB_DEEPSEEK_ACCESS); `scalar` and `gather` force one form. Same output, bit for bit.
  enum class TableAccess { automatic, scalar, gather };
  void set_table_access(TableAccess access) { access_ = access; }
  /// Whether rebalances of this topology take the batched path.
  bool batched_for(const Topology& topo) const;

 private:
  /// Scratch of one planning thread.
  struct Workspace {
    detail::PackScratch scratch;
    std::vector<float> wf, row, gload;
    std::vector<std::uint32_t> tokb;
    std::vector<std::uint64_t> items_u, items_v;
    std::vector<int> mlog2log, cnt, picks, lid, gdest;
    std::vector<double> gsum;
    detail::SimdScratch simd;     ///< batched rows (16 queued: two batches of 8 lanes)
    std::vector<int> lane_lid;    ///< [16][En] logical id of each row's local experts
    int* lane_out[detail::SimdScratch::kRows] = {};  ///< where each row's slots go
    int* lane_cnt[detail::SimdScratch::kRows] = {};  ///< its layer's logcnt row
    int pending = 0;              ///< rows queued
    int lane_first[detail::SimdScratch::kRows] = {};  ///< identity rows: lid[j] = first + j
    bool lid_identity = false;    ///< rows of this shape have contiguous logical ids
    std::vector<int> lane_groups; ///< [16][G/N] the groups of each row, in row order
    int group_size = 0, groups_per_row = 0;
  };
  /// The table access form set_table_access chose (automatic: detail::scalar_access()).
  bool scalar_access() const {
    return access_ == TableAccess::automatic ? detail::scalar_access() : access_ == TableAccess::scalar;
  }
  void flush_rows(Workspace& ws, int En, const detail::RowShape& shape) const;
  /// Writes the slots and replica counts of queued row `row`, planned in lane `lane`.
  void map_lane(Workspace& ws, int En, const detail::RowShape& shape, int lane, int row) const;
  /// Writes phy2log of layers [first, last) into out_all and, on the batched path, their
  /// replica counts into cnt_all.
  void plan_layers(int first, int last, LoadView load, const Topology& topo, Workspace& w,
                   int* out_all, int* cnt_all) const;

  std::vector<Workspace> ws_;
  std::vector<int> phy2log_, logcnt_;
  int threads_ = 1;
  bool batched_ = true;
  TableAccess access_ = TableAccess::automatic;
};

}  // namespace eplb::algo
