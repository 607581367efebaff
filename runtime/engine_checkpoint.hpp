#pragma once
/// \file Checkpoint and resume of an Engine's placement state (docs/CHECKPOINT.md). Every
/// function here is collective over the engine's communicator: rank 0 alone touches the file
/// (the Debian HDF5 is serial), ranks agree on any failure, so an error reaches every rank as
/// an exception and none is left waiting in a collective.
#include <span>
#include <string>
#include <vector>

#include "eplb/runtime/checkpoint.hpp"
#include "eplb/runtime/engine.hpp"

namespace eplb::runtime {

/// The settings of `engine` as a checkpoint stores them (no communication).
CheckpointConfig checkpoint_config(const Engine& engine);
/// One history row as stored (the rank's own timings; per-rank byte counters dropped).
CheckpointStatsRow to_stats_row(const RebalanceStats& s);

/// Collective: the engine's state with the load window summed over ranks (one allreduce of
/// W*L*E int64). The window is the one the engine rebalances from: the load source's when
/// one is set (e.g. the device window; Engine::window_ring), else the host window; a source
/// without a ring (LoadSource::has_ring()) makes every rank throw InvalidInput. `earlier` rows (from a resumed checkpoint) precede engine.history().
/// Every rank gets the same placement, window and counters; `stats` is earlier + this
/// rank's history.
Checkpoint snapshot(const Engine& engine, std::span<const CheckpointStatsRow> earlier = {});

/// Collective: snapshot, then rank 0 writes `path` atomically. On failure every rank throws
/// eplb::Error (I/O: naming rank 0's failing call; or a rank could not copy its window or
/// allocate the snapshot), or InvalidInput (snapshot's rejections: ranks at different passes,
/// a bad window on some rank); the engine is never changed.
void save_checkpoint(const Engine& engine, const std::string& path,
                     std::span<const CheckpointStatsRow> earlier = {});

/// Collective: rank 0 reads and validates `path` against the running engine (topology and
/// window shape always; policy, interval, first rebalance, min_gain, staging and weight
/// layout too when the file was written by an engine), broadcasts the placement, epoch, pass
/// and cursor, and every rank calls Engine::restore. Rank 0's window becomes the stored
/// global window and the other ranks' become zeros, so the window summed over ranks is the
/// stored one (the load source's window when one is set). A placement-only file (W = 0, as
/// eplb-plan writes) changes the placement alone (window, epoch and pass stay). On a bad
/// file every rank throws InvalidInput naming the file and the field,
/// and the engine is unchanged. A load source or map listener failing on some rank during the
/// restore gives Error on every rank and may leave the device side half restored (see
/// Engine::restore: rebalances then refuse until a restore succeeds). Weights are not moved: load them for engine.placement()
/// (Engine::expert_of_local_slot). Returns the stored history rows on rank 0 (empty
/// elsewhere).
std::vector<CheckpointStatsRow> resume_from_checkpoint(Engine& engine, const std::string& path);

/// Periodic checkpoints: call after_step() after every Engine::step() / rebalance() with its
/// result; a rebalance whose epoch is a multiple of `every_rebalances` (epochs count the
/// resumed history too, and are equal on every rank) writes `path`. Holds the history rows
/// read by resume() so that the file keeps the whole history.
class CheckpointSchedule {
 public:
  /// path empty: never writes. every_rebalances >= 1.
  explicit CheckpointSchedule(std::string path, int every_rebalances = 1);

  /// Collective: resume_from_checkpoint(engine, from), keeping its history rows.
  void resume(Engine& engine, const std::string& from);
  /// Collective when `rebalanced`: writes if this rebalance is a multiple of the period.
  /// Returns whether it wrote. The first such call (or save()) checks that every rank's
  /// schedule agrees (a path set or not, the period) and throws InvalidInput on every rank if
  /// not.
  bool after_step(const Engine& engine, bool rebalanced);
  /// Collective (also with an empty path): writes now (on demand, e.g. at the end of a job).
  void save(const Engine& engine);

  const std::string& path() const { return path_; }
  /// History rows before this process started (rank 0; empty elsewhere).
  const std::vector<CheckpointStatsRow>& earlier() const { return earlier_; }

 private:
  void agree(const Engine& engine);  ///< the settings agreement, once
  std::string path_;
  int every_;
  bool agreed_ = false;  ///< the ranks' schedules were compared (at the first rebalance)
  std::vector<CheckpointStatsRow> earlier_;
};

}  // namespace eplb::runtime
