#pragma once
/// \file Placement of logical experts in physical slots, with its derived maps.
#include <span>
#include <vector>

#include "eplb/algo/topology.hpp"

namespace eplb::algo {

/// phy2log[L][R] (the logical expert held by each slot) and what follows from it:
/// logcnt[L][E] (replicas per expert, each >= 1) and log2phy[L][E][X] (each expert's slots in
/// ascending slot order, padded with -1; X = max replicas over the whole placement).
/// All arrays are row-major int32 in host memory.
class Placement {
 public:
  Placement() = default;
  /// Validates (values in [0, E), every expert >= 1 replica) and derives the maps.
  /// Throws std::invalid_argument naming the first bad layer/slot/expert.
  Placement(int num_layers, int num_logical, int num_slots, std::vector<int> phy2log);

  /// Slot j holds expert j % E: experts laid out contiguously, the first R - E repeated.
  static Placement contiguous(const Topology& topo);

  /// Replaces the content, reusing storage (no allocation when the shape is unchanged). On an
  /// invalid phy2log (std::invalid_argument) the placement is left empty, not half replaced;
  /// the same for assign_counted / adopt_counted.
  void assign(int num_layers, int num_logical, int num_slots, std::span<const int> phy2log);
  /// As assign(), for producers that already know the replica counts (the deepseek policy):
  /// skips counting. The counts are still checked against phy2log (std::logic_error if they
  /// disagree: a bug in the producer).
  void assign_counted(int num_layers, int num_logical, int num_slots, std::span<const int> phy2log,
                      std::span<const int> logcnt);
  /// As assign_counted(), taking the arrays' storage instead of copying it: phy2log (exactly
  /// L*R values) and logcnt (exactly L*E) are swapped in, and the caller gets the previous
  /// storage back for reuse.
  void adopt_counted(int num_layers, int num_logical, int num_slots, std::vector<int>& phy2log,
                     std::vector<int>& logcnt);
  /// Replaces the content with layers [first, last) of `from` (storage reused).
  void assign_layers(const Placement& from, int first, int last) {
    assign(last - first, from.logical_, from.slots_,
           from.phy2log().subspan(static_cast<std::size_t>(first) * from.slots_,
                                  static_cast<std::size_t>(last - first) * from.slots_));
  }

  int num_layers() const { return layers_; }
  int num_logical() const { return logical_; }
  int num_slots() const { return slots_; }
  int max_replicas() const { return max_replicas_; }
  bool empty() const { return layers_ == 0; }

  std::span<const int> phy2log() const { return phy2log_; }
  std::span<const int> phy2log(int layer) const {
    return {phy2log_.data() + static_cast<std::size_t>(layer) * slots_,
            static_cast<std::size_t>(slots_)};
  }
  std::span<const int> logcnt() const { return logcnt_; }
  std::span<const int> logcnt(int layer) const {
    return {logcnt_.data() + static_cast<std::size_t>(layer) * logical_,
            static_cast<std::size_t>(logical_)};
  }
  /// [L][E][X] flat.
  std::span<const int> log2phy() const { return log2phy_; }
  /// The slots of one expert, ascending, padded with -1 to max_replicas().
  std::span<const int> log2phy(int layer, int expert) const {
    return {log2phy_.data() +
                (static_cast<std::size_t>(layer) * logical_ + expert) * max_replicas_,
            static_cast<std::size_t>(max_replicas_)};
  }

  /// Same shape as topo (L, E, R)? Throws std::invalid_argument otherwise.
  void check_shape(const Topology& topo, const char* what) const;

  friend bool operator==(const Placement& a, const Placement& b) {
    return a.layers_ == b.layers_ && a.logical_ == b.logical_ && a.slots_ == b.slots_ &&
           a.phy2log_ == b.phy2log_;
  }

 private:
  /// Checks phy2log and derives log2phy (and logcnt unless `counted`); on a failure the
  /// placement is left empty (its shape and arrays were already replaced).
  void derive(bool counted);
  void derive_maps(bool counted);
  /// assign_counted / adopt_counted: checks the arrays' sizes against the shape, then sets it.
  void set_counted_shape(int num_layers, int num_logical, int num_slots, std::size_t phy2log_size,
                         std::size_t logcnt_size);

  int layers_ = 0, logical_ = 0, slots_ = 0, max_replicas_ = 0;
  std::vector<int> phy2log_, logcnt_, log2phy_;
  std::vector<int> scratch_;  ///< derive(): per-expert fill positions
};

}  // namespace eplb::algo
