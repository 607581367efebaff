#pragma once
/// \file Executes a migration plan on this rank's weights through a transport.
#include <cstddef>
#include <functional>
#include <memory>
#include <span>

#include "eplb/algo/migration.hpp"
#include "eplb/comm/transport.hpp"
#include "eplb/runtime/weights.hpp"

namespace eplb::runtime {

/// What one migration moved, from this rank's point of view, and in total.
struct MigrationCounters {
  std::size_t bytes_sent = 0;           ///< this rank, to other ranks
  std::size_t bytes_received = 0;       ///< this rank, from other ranks
  std::size_t bytes_copied_local = 0;   ///< this rank, local copies and fan-out
  std::size_t total_remote_bytes = 0;   ///< all ranks together (from the plan)
  std::size_t total_local_bytes = 0;    ///< all ranks together (from the plan)
  std::size_t staging_bytes = 0;        ///< staging this migration needed on one rank
  int rounds = 0;                       ///< rounds over all layers
  double issue_ms = 0;                  ///< host time issuing the work (before the final wait)
};

/// How the executor batches a round's transfers.
struct ExecOptions {
  /// Most move units (experts) per NCCL group / MPI batch; 0 = the whole round in one batch.
  /// Very large groups have hung NCCL at scale (a peer chunks at 32); every rank splits the
  /// same global unit list the same way, so batches always match across ranks.
  int max_units_per_batch = 0;
  /// Consecutive layers whose transfers share one batch ("window"), as long as their staging
  /// fits staging_budget: larger batches keep every link busy instead of draining between
  /// layers. 1 = layer by layer; 0 = as many as the budget allows.
  int max_layers_per_window = 1;
  /// Staging bytes a window may use (a window always takes at least one layer, whatever it
  /// needs).
  std::size_t staging_budget = 0;
  /// One message per peer and batch: each rank packs what it sends into one buffer and
  /// unpacks what it receives (HBM copies), instead of one message per tensor per expert.
  /// Costs send + receive buffers in staging; NCCL loses ~20 % to many messages per peer.
  bool coalesce = true;
  /// Coalesced mode: each round is split into at least this many batches (equal unit
  /// counts), packed, sent and unpacked as a pipeline on the transport's two lanes, so the
  /// HBM copies overlap the transfers. 1 = pack all, send all, unpack all.
  int pipeline_batches = 4;
  /// Coalesced mode: step s+1 (the next round or window) packs and sends before step s
  /// unpacks, on a second staging region, so the links run on from one step's last batch
  /// to the next step's first. Windows are then formed within half of staging_budget, and
  /// overlap is used only when both regions fit the budget (docs/MIGRATION.md).
  bool overlap_steps = false;
};

/// Staging bytes a plan needs per rank with these weights and options (256-byte aligned
/// pieces; the largest window, twice when steps overlap).
std::size_t staging_bytes_needed(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                 const ExecOptions& options = {});

namespace detail {
class Executor;
}

/// A migration made ready on this rank: the constructor checks the rank and the registry's
/// shape (std::invalid_argument), works out the windows and their staging, and allocates all
/// the bookkeeping execute() uses, asking the transport to do the same
/// (comm::Transport::reserve). So std::bad_alloc, or a transport's failure to make room,
/// comes from the constructor, before any weight moves, where the ranks can agree on it (the
/// engine does, with its other preparation); execute() allocates nothing in eplb once it has
/// issued its first transfer (migration tracing aside). Holds references to plan and weights:
/// they must outlive it. One execute() per object.
class PreparedMigration {
 public:
  PreparedMigration(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                    comm::Transport& transport, int my_rank, const ExecOptions& options = {});
  ~PreparedMigration();
  PreparedMigration(PreparedMigration&&) noexcept;
  PreparedMigration& operator=(PreparedMigration&&) noexcept;

  /// staging_bytes_needed(plan, weights, options), worked out once.
  std::size_t staging_bytes() const;
  /// Runs the migration (as execute_migration below); std::logic_error on a second call.
  MigrationCounters execute(std::span<std::byte> staging, const std::function<void(int)>& layer_done = {});

 private:
  std::unique_ptr<detail::Executor> impl_;
};

/// Runs the plan: per window of layers (as many consecutive layers as options allow), per
/// round, per batch of units: sends and receives in one batch, then that batch's local copies
/// and fan-out (coalesced mode: packs, transfers, the local copies and the commits of their
/// staged slots, then unpacks and fan-out as each batch arrives; per-tensor mode: staged slots
/// committed at the end of the round). `staging` is this rank's staging memory in the
/// transport's memory space: at least staging_bytes_needed(plan, weights, options) bytes with
/// the same options (std::invalid_argument otherwise, before anything moves). After each
/// window, `layer_done(layer)` is called for each of its layers in order (device transports:
/// stream-ordered after those layers' copies); if it throws, the migration still runs to its
/// end on this rank (the others wait for its sends), later layers are not reported, and the
/// first exception is rethrown at the end. Collective over the transport's ranks: every rank
/// must call it with the same plan and options; `my_rank` in [0, P).
/// It is PreparedMigration(plan, weights, transport, my_rank, options).execute(staging,
/// layer_done): use that directly to learn of an allocation failure before anything moves.
MigrationCounters execute_migration(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                    comm::Transport& transport, int my_rank,
                                    std::span<std::byte> staging,
                                    const std::function<void(int)>& layer_done = {},
                                    const ExecOptions& options = {});

}  // namespace eplb::runtime
