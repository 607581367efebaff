#pragma once
/// \file "sticky": a migration-aware policy. It repairs the previous placement (replica count
/// changes, then swaps of replicas between GPUs) until every layer is within a tolerance of a
/// lower bound of its balance (max(mean GPU load, heaviest replica)); only when the swaps get
/// stuck above that is a fresh packing computed, as the yardstick and the fallback. The
/// fallback relabels the fresh packs to GPUs (Hungarian assignment) to keep as many experts in
/// place as possible. See docs/POLICIES.md.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eplb/algo/policy.hpp"

namespace eplb::algo {

/// Knobs of the sticky policy (and of its "refined" variant).
struct StickyOptions {
  /// Balance tolerance, in units of the layer's mean GPU load (so in units of the max/mean
  /// imbalance): the repair of a layer (of a node in the hierarchical case) swaps replicas
  /// until its most loaded GPU carries at most the lower bound max(mean GPU load of the
  /// domain, heaviest replica) plus tolerance x mean. Only when the swaps get stuck above that
  /// is a fresh reference-style packing (greedy LPT) computed: the result is accepted when
  /// within tolerance x mean of it, else the fresh packing is used. Either way each layer's
  /// most loaded GPU is at most the greedy packing's + tolerance x mean. 0 = as balanced as
  /// the swaps can reach (moves more); larger = fewer moves, looser balance.
  double tolerance = 0.008;
  /// Hierarchical topologies: the previous assignment of groups to nodes is kept when its
  /// most loaded node carries at most the reference's greedy assignment's plus
  /// node_tolerance x the mean node load; else the single swap of two groups that keeps the
  /// most slots and meets that bound; else the greedy assignment relabelled to nodes.
  /// (Moving a group moves all its experts across nodes.) The worst layer's imbalance can
  /// exceed the fresh packing's by about tolerance + node_tolerance.
  double node_tolerance = 0.01;
  /// Refine the fresh packing by swaps before using it as the balance yardstick and fallback.
  bool refine_fresh = true;
  /// Keep the replica counts of the previous placement when their largest load per replica
  /// is within tolerance x mean of the new optimal counts' (a count change moves a weight).
  bool keep_counts = true;
  /// Most swaps the repair may make per domain (node or whole layer), as a fraction of the
  /// domain's slots (the move budget). When it is spent the fallback is used.
  double max_swap_fraction = 0.25;
  /// Ignore the previous placement and return the reference policy's placement improved by
  /// swaps inside each node (same replica counts; never worse on any layer): the
  /// "deepseek-refined" policy.
  bool refine_reference = false;
};

class StickyPolicy final : public Policy {
 public:
  explicit StickyPolicy(StickyOptions options = {}, std::string name = "sticky");
  ~StickyPolicy() override;
  std::string_view name() const override { return name_; }
  const StickyOptions& options() const { return opt_; }
  bool layers_independent() const override { return true; }
  void rebalance_into(LoadView load, const Topology& topo, const Placement* previous,
                      Placement& out) override;

 private:
  struct Domain;
  void plan_domain(const Domain& d, const int* prev_row, int* row);
  void choose_counts(const Domain& d, const int* prev_row);
  void star_counts(const Domain& d);
  void fresh_pack(const Domain& d, int* row);
  void settle(const Domain& d, int* row, const int* prev_row, const double* r);
  void place(const Domain& d, const int* prev_row, int* row, const int* cnt, const double* r);
  bool repair(const Domain& d, const int* prev_row, int* row, double target, const int* cnt,
              const double* r, int max_swaps = -1);
  bool dedup(const Domain& d, int* row, double target, const int* prev_row, const double* r);
  void relabel(const Domain& d, const int* prev_row, const int* fresh, int* row);
  bool improve(const Domain& d, int* row, double target, const int* prev_row, int max_swaps,
               const double* r);
  void map_groups(const Topology& topo, const int* prev_row);

  StickyOptions opt_;
  std::string name_;
  std::unique_ptr<Policy> reference_;  // for refine_reference
  Placement base_;
  // Scratch (sized per call, reused).
  std::vector<double> gl_save_, sr_, w_, r_, rs_, gl_, group_load_, node_load_;
  std::vector<int> cnt_, cstar_, have_, dom_of_, dom_experts_, dom_first_, row_fresh_, gstamp_;
  std::vector<int> node_of_group_, fresh_node_, fill_, free_, pack_, perm_;
  std::vector<std::uint64_t> keys_, amask_;  // amask_: improve's candidate pairs
  std::vector<std::uint64_t> fmask_, hmask_;  // place: free slots per GPU, GPUs per expert
  std::vector<long long> ov_, cost_, hu_u_, hu_v_, hu_minv_;
  std::vector<int> hu_p_, hu_way_, hu_ans_;
  std::vector<char> hu_used_;
  std::vector<int> group_of_;  // expert -> group (hierarchical)
  std::vector<std::uint32_t> seen_;  // dedup: per-expert stamps
  std::uint32_t stamp_ = 0;
  std::vector<int> phy2log_;
  double mean_gpu_load_ = 0;
  bool cstar_ready_ = false;
  double dom_load_ = 0;
};

}  // namespace eplb::algo
