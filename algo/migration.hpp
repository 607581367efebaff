#pragma once
/// \file The migration plan: which expert weights move where between two placements.
///
/// Built from (old placement, new placement, topology, options) alone, so every rank derives
/// the same plan without communicating. See docs/MIGRATION.md for the design.
#include <cstdint>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/algo/topology.hpp"

namespace eplb::algo {

/// Knobs of the planner. Every rank must use the same values (they are part of the config
/// hash the runtime compares at start-up).
struct MigrationOptions {
  /// Most slots one rank may write through staging in one round of a layer (0 = no limit:
  /// each layer is one round). A set of moves that depend on each other in a cycle must share
  /// a round; such a set larger than the limit gets a round of its own and exceeds it, which
  /// the plan reports in max_staged_slots().
  int max_staged_slots_per_rank = 0;
  /// Threads that plan layers in parallel (>= 1; layers are independent). The plan is the
  /// same for any count.
  int threads = 1;
};

/// One logical expert written into one rank: from `src_slot` (old content, on src_rank) into
/// every slot in dst (all on dst_rank, ascending). A remote unit is one transfer; the first
/// destination receives it and the others are filled by local copies from there (fan-out).
struct MoveUnit {
  int expert = 0;
  int src_rank = 0;
  int src_slot = 0;  ///< global slot index, holds `expert` in the old placement
  int dst_rank = 0;
  int first_dst = 0;  ///< index into LayerPlan::dst_slots
  int num_dst = 0;
  bool remote() const { return src_rank != dst_rank; }
};

/// Units that run together: sends and receives are posted at once, then local copies.
/// A slot whose old content is read by a unit of the same round is written through staging
/// and committed after the round's reads are complete (LayerPlan::staged).
struct Round {
  int first_unit = 0;
  int num_units = 0;
};

struct LayerPlan {
  std::vector<MoveUnit> units;        ///< ordered by round
  std::vector<int> dst_slots;         ///< destination slots of all units, per unit contiguous
  std::vector<Round> rounds;
  std::vector<std::uint8_t> staged;   ///< [R]: 1 if the slot is written through staging
  int slots_changed = 0;

  const int* dst_begin(const MoveUnit& u) const { return dst_slots.data() + u.first_dst; }
};

/// Counts of a plan, in slots/units (multiply by bytes per expert for bytes).
struct MigrationStats {
  long long slots_changed = 0;    ///< slots whose expert differs
  long long remote_units = 0;     ///< transfers between ranks (one per expert and destination)
  long long local_units = 0;      ///< experts copied from a slot the rank already had
  long long fanout_copies = 0;    ///< extra destinations filled from a unit's first slot
  long long same_node_remote = 0; ///< remote units whose two ranks share a node
  long long max_rank_sends = 0;   ///< most remote units one rank sends (summed over layers)
  long long max_rank_recvs = 0;   ///< most remote units one rank receives (summed over layers)
  int max_rounds = 0;             ///< most rounds of one layer
};

class MigrationPlan {
 public:
  MigrationPlan() = default;

  const Topology& topology() const { return topo_; }
  const LayerPlan& layer(int l) const { return layers_[static_cast<std::size_t>(l)]; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  const MigrationStats& stats() const { return stats_; }
  /// Most slots any rank writes through staging in any one round.
  int max_staged_slots() const { return max_staged_; }
  bool empty() const { return stats_.slots_changed == 0; }

 private:
  friend void plan_migration(const Placement&, const Placement&, const Topology&,
                             const MigrationOptions&, MigrationPlan&);
  Topology topo_;
  std::vector<LayerPlan> layers_;
  MigrationStats stats_;
  int max_staged_ = 0;
};

/// Deterministic migration plan from `from` to `to` (same shape as topo).
/// - unchanged slots are skipped;
/// - a rank that already holds the expert copies it locally (preferring a slot that keeps
///   its content, then the lowest slot);
/// - otherwise one transfer per (expert, destination rank), fanned out locally to further
///   slots; the sender is chosen among the holders preferring the destination's node, then
///   the holder with the fewest sends so far, then the lowest rank; it sends from a slot that
///   keeps its content when it has one;
/// - moves are ordered so that a slot is overwritten only after every read of its old
///   content; rounds and staging as in MigrationOptions.
/// Throws std::invalid_argument if the shapes disagree.
MigrationPlan plan_migration(const Placement& from, const Placement& to, const Topology& topo,
                             const MigrationOptions& options = {});

/// The same plan, built into `plan` (whatever it held before is replaced). Reuses its storage:
/// a caller that plans every rebalance into one MigrationPlan allocates nothing once the plan
/// has reached its size (the planner's scratch is kept per thread between calls).
void plan_migration(const Placement& from, const Placement& to, const Topology& topo,
                    const MigrationOptions& options, MigrationPlan& plan);

/// Reorders `next` within each GPU so that every slot whose expert in `prev` is still on
/// that GPU in `next` keeps it; a remaining slot takes the expert `next` has there when
/// that one is still to be placed, and the GPU's other new experts fill the rest in their
/// order in `next` (so aligning an aligned placement again changes nothing). Each GPU keeps
/// exactly its experts and replica counts, so the load balance is unchanged, but a migration
/// from `prev` copies only what really changes GPU or gains a replica (the local moves
/// between slots of one GPU disappear).
/// Deterministic; returns the number of slots whose expert differs from `next`'s before.
/// Throws std::invalid_argument if the shapes disagree.
long long align_slots(const Placement& prev, Placement& next, const Topology& topo);

}  // namespace eplb::algo
