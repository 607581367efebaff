#pragma once
/// \file Checkpoints of placement state in HDF5 (docs/CHECKPOINT.md): a plain struct and
/// serial read / atomic write. No MPI here: runtime/engine_checkpoint.hpp has the collective
/// helpers an engine uses, eplb-plan uses these functions directly.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "eplb/algo/topology.hpp"

namespace eplb::runtime {

/// The format this build writes, and the newest it reads (older versions are read too).
inline constexpr int kCheckpointFormatVersion = 1;

/// A checkpoint file that cannot be used: missing, not HDF5, truncated, corrupt (checksum),
/// another format version, a missing or misshapen dataset, values out of range, or a
/// topology that differs from the running job. what() names the file and the field.
class CheckpointError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// What produced the placement; resume compares the engine settings only for "engine".
inline constexpr const char* kWriterEngine = "engine";
inline constexpr const char* kWriterPlan = "eplb-plan";

/// The engine settings that must match for a resumed job to behave like the original one.
struct CheckpointConfig {
  algo::Topology topology;
  std::string policy;                ///< policy name (never empty)
  int window_passes = 0;             ///< W of the window dataset (0 = no window stored)
  int rebalance_interval = 0;
  int first_rebalance = -1;
  double min_gain = 0;
  std::uint64_t staging_bytes = 0;
  std::uint64_t weight_layout_hash = 0;  ///< WeightRegistry::layout_hash(); 0 = unknown

  friend bool operator==(const CheckpointConfig&, const CheckpointConfig&) = default;
};

/// FNV-1a over every field of `c` in a fixed order (stored as config_hash; it also guards
/// the attributes, which HDF5 does not checksum).
std::uint64_t config_hash(const CheckpointConfig& c);

/// One row of the rebalance history (RebalanceStats of the writing rank, without the
/// per-rank byte counters). Times are the writing rank's, in milliseconds.
struct CheckpointStatsRow {
  std::int64_t epoch = 0, pass = 0;
  std::int32_t skipped = 0;  ///< 0 / 1
  double balancedness_before = 1, balancedness_after = 1;
  double imbalance_before = 1, imbalance_after = 1;
  std::int64_t slots_changed = 0, remote_units = 0, local_units = 0, fanout_copies = 0;
  std::int64_t same_node_remote = 0, max_rank_sends = 0, max_rank_recvs = 0;
  std::int32_t max_rounds = 0, migration_rounds = 0;
  std::uint64_t total_remote_bytes = 0, total_local_bytes = 0;
  double t_collect_ms = 0, t_policy_ms = 0, t_broadcast_ms = 0, t_plan_ms = 0,
         t_migrate_ms = 0, t_total_ms = 0;
  std::string skip_reason;  ///< stored truncated to kSkipReasonBytes - 1 bytes

  static constexpr int kSkipReasonBytes = 128;

  friend bool operator==(const CheckpointStatsRow&, const CheckpointStatsRow&) = default;
};

/// Everything a checkpoint holds. Shapes: phy2log [L][R], window [W][L][E] (W =
/// config.window_passes, may be 0), L/E/R from config.topology.
struct Checkpoint {
  int format_version = kCheckpointFormatVersion;  ///< as read (writes always use the current)
  std::string eplb_version;                       ///< filled by write_checkpoint when empty
  std::string created;                            ///< ISO 8601 UTC; filled by write when empty
  std::string writer = kWriterEngine;
  CheckpointConfig config;
  std::int64_t epoch = 0;  ///< placement epoch (rebalances run, skipped ones included)
  std::int64_t pass = 0;   ///< forward passes recorded
  int window_cursor = 0;   ///< ring index of the pass in progress, in [0, W) (0 when W = 0)
  std::vector<std::int64_t> window;  ///< [W][L][E], summed over ranks
  std::vector<std::int32_t> phy2log; ///< [L][R]
  std::vector<CheckpointStatsRow> stats;

  /// Throws CheckpointError naming the first inconsistent field (shapes, ranges, a placement
  /// that leaves an expert without a replica, negative counts).
  void validate() const;

  friend bool operator==(const Checkpoint&, const Checkpoint&) = default;
};

/// The HDF5 file format of a checkpoint file (docs/CHECKPOINT.md, "HDF5 file format").
enum class CheckpointFileFormat {
  /// HDF5 1.10's format: every metadata block (superblock, object headers with the attributes,
  /// chunk indexes) carries a checksum and every dataset the Fletcher32 filter, so a damaged
  /// byte is an error on read unless HDF5 does not use it (free space, padding): never a
  /// different value. Readable by HDF5 >= 1.10 (2016).
  checksummed,
  /// HDF5's earliest format, for HDF5 1.8 tools: its object headers and B-trees carry no
  /// checksum, so a damaged attribute can be read as a different value, or crash HDF5.
  earliest,
};

/// Writes `c` to `path` atomically: a temporary file `path.tmp.<pid>` in the same directory,
/// flushed, fsync'ed, renamed over `path`, directory fsync'ed. An existing `path` is replaced
/// as itself: through a symbolic link its target is replaced (the link stays), and the new
/// file keeps the old one's permissions; a `path` that exists but is not a regular file (a
/// directory, device or FIFO) is not replaced (eplb::Error). On failure the temporary file
/// is removed and `path` is left as it was, except when only the final directory sync fails:
/// then `path` holds the new file and the Error says so. Throws CheckpointError for an invalid `c` and
/// H5Error / eplb::Error for I/O failures. Serial: call on one process only.
void write_checkpoint(const std::string& path, const Checkpoint& c,
                      CheckpointFileFormat format = CheckpointFileFormat::checksummed);

/// Reads and validates a checkpoint (any supported format version). Throws CheckpointError
/// "checkpoint 'path': ..." naming the problem (missing file, not HDF5 or truncated, checksum
/// mismatch in a dataset, unsupported version, missing / misshapen / mistyped dataset or
/// attribute, config hash mismatch, invalid values).
Checkpoint read_checkpoint(const std::string& path);

/// The fields of `file` that differ from `running`, as "name (file X, running Y)", joined by
/// ", "; empty when they agree. The topology always counts, window_passes when the file holds
/// a window (W > 0: not for placement-only files); the other settings only when
/// `compare_settings`.
std::string describe_mismatch(const CheckpointConfig& file, const CheckpointConfig& running,
                              bool compare_settings);

}  // namespace eplb::runtime
