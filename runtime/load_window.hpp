#pragma once
/// \file Host load recording: per-pass [L][E] token counts in a ring window of W passes.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "eplb/algo/load.hpp"

namespace eplb::runtime {

/// Counts, per layer and logical expert, the tokens routed in each of the last W passes.
/// Bad input (an expert id outside [0, E), a NaN / infinite / negative count, a layer outside
/// [0, L), counts of another length than E) rejects the whole call — nothing of it is counted —
/// and is remembered; the next rebalance reports it on every rank (Engine::rebalance) and the
/// window stays as it was. (Throwing on the calling rank instead would leave the other ranks
/// waiting in their next collective.)
class LoadWindow {
 public:
  /// skip_negative_ids: record() skips negative ids (see RuntimeConfig::skip_negative_ids)
  /// instead of rejecting the batch.
  LoadWindow(int num_layers, int num_logical, int window_passes, bool skip_negative_ids = false);
  /// An empty window (no layers: every call is rejected as out of range), for a member that
  /// is assigned its real window later. Allocates nothing.
  LoadWindow() = default;

  /// The largest count one (layer, expert) may reach summed over the window's passes (and, at
  /// a rebalance, over the ranks): 2^62, the bound a checkpoint's window is held to. Counts
  /// are int64: without a bound, large added counts wrapped when summed.
  static constexpr std::int64_t kMaxCount = algo::kMaxCount;

  int num_layers() const { return layers_; }
  int num_logical() const { return logical_; }
  int window_passes() const { return window_; }

  /// Router output of one layer in the current pass: topk_ids[tokens][k] row-major logical
  /// ids (host memory). Returns the number of out-of-range ids (0 = counted; -1: the layer is
  /// outside [0, L)); a batch with any is not counted and the next rebalance fails on every
  /// rank. With skip_negative_ids, negative ids are skipped (not counted, not errors).
  int record(int layer, std::span<const std::int32_t> topk_ids);
  int record(int layer, std::span<const std::int64_t> topk_ids);
  /// Adds per-expert counts of one layer (an engine's own counters). Returns false and
  /// counts nothing if any value is negative (or NaN / infinite for the double overload), would
  /// take the pass's count for its expert past kMaxCount, the layer is outside [0, L) or
  /// counts.size() != E.
  bool add_counts(int layer, std::span<const std::int64_t> counts);
  bool add_counts(int layer, std::span<const double> counts);

  /// Closes the current pass: the ring advances and the oldest pass is forgotten.
  void end_pass();
  /// out[L][E] = sum of the counts of the last W passes (the current one included); a sum
  /// past kMaxCount reads kMaxCount + 1 (the engine rejects it).
  void sum(std::span<std::int64_t> out) const;

  /// The first rejected input since the last call, if any (and clears it).
  std::optional<std::string> take_error();

  /// Raw ring access for checkpoints: [W][L][E], and the index of the current pass.
  std::span<const std::int64_t> ring() const { return ring_; }
  int cursor() const { return cursor_; }
  /// Replaces the ring (e.g. from a checkpoint). Throws std::invalid_argument on a size
  /// mismatch, a negative count, a (layer, expert) whose counts sum past kMaxCount over the
  /// window, or a cursor outside [0, W).
  void restore(std::span<const std::int64_t> ring, int cursor);

 private:
  template <class T>
  int record_impl(int layer, std::span<const T> ids);
  void reject(std::string message);
  /// Whether `add` more keeps a pass count `have` within kMaxCount; rejects the call if not.
  bool fits(std::int64_t have, std::int64_t add, int layer, std::size_t e);
  std::int64_t* current(int layer) {
    return ring_.data() + (static_cast<std::size_t>(cursor_) * layers_ + layer) * logical_;
  }
  /// Whether a call on `layer` with `size` values (expected: `expected`, 0 = any) may count;
  /// rejects it (reject()) if not.
  bool accept_call(int layer, std::size_t size, std::size_t expected, const char* what);

  int layers_ = 0, logical_ = 0, window_ = 0;
  bool skip_negative_ = false;
  int cursor_ = 0;
  std::vector<std::int64_t> ring_;
  std::optional<std::string> error_;
};

}  // namespace eplb::runtime
