#pragma once
/// \file The per-rank engine: load window, periodic rebalance, migration of weights.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "eplb/algo/migration.hpp"
#include "eplb/algo/placement.hpp"
#include "eplb/algo/policy.hpp"
#include "eplb/comm/mpi.hpp"
#include "eplb/comm/transport.hpp"
#include "eplb/runtime/config.hpp"
#include "eplb/runtime/hooks.hpp"
#include "eplb/runtime/load_window.hpp"
#include "eplb/runtime/migrate.hpp"
#include "eplb/runtime/weights.hpp"

namespace eplb::runtime {

/// One rebalance, as seen from this rank (times in milliseconds).
struct RebalanceStats {
  std::int64_t epoch = 0;        ///< placement epoch after this rebalance
  std::int64_t pass = 0;         ///< passes recorded when it ran
  bool skipped = false;          ///< the placement was kept
  std::string skip_reason;
  /// Balancedness (sum_l mean / sum_l max GPU load; 1 = perfect) of the window's load under
  /// the old and the new placement, and the mean over layers of max/mean GPU load.
  double balancedness_before = 1, balancedness_after = 1;
  double imbalance_before = 1, imbalance_after = 1;
  algo::MigrationStats plan;     ///< slots changed, transfers (all ranks)
  MigrationCounters moved;       ///< bytes (this rank, and all ranks)
  double t_collect_ms = 0;       ///< window sum, error agreement, allreduce
  double t_policy_ms = 0;        ///< policy: this rank's layer share (split planning), else
                                 ///< all layers on rank 0 (0 elsewhere)
  double t_broadcast_ms = 0;     ///< placement allgather / broadcast and verification
  double t_plan_ms = 0;          ///< migration plan, staging, map listener's prepare, agreement
  double t_migration_plan_ms = 0;  ///< part of t_plan_ms: algo::plan_migration alone
  double t_prepare_ms = 0;       ///< part of t_plan_ms: staging allocation and the map listener's
                                 ///< prepare (e.g. DeviceMaps staging the new maps)
  double t_migrate_ms = 0;       ///< weight movement
  double t_total_ms = 0;
};

/// Makes the weight transport once the engine's communicator exists. Called on every rank;
/// a failure on one rank reaches the others (the engine agrees on it after the call), but only
/// if the factory runs no collective of its own after a rank-local step that can fail: such a
/// rank would skip that collective while the others wait in it. Make those failures
/// collective inside the factory (comm::throw_if_any_failed), as cuda::make_nccl_transport
/// does: its rank-local set-up errors (sizing the copy kernel, creating the copy stream) go
/// into NcclComm's first agreement.
using TransportFactory = std::function<std::unique_ptr<comm::Transport>(const comm::MpiComm&)>;

/// The per-rank runtime. Construct on every rank of the communicator; call step() after
/// every forward pass (dummy passes too) so that all ranks rebalance at the same pass.
class Engine {
 public:
  /// Collective over `comm` (duplicated): validates the config, checks that every rank has
  /// the same topology, policy, window, staging and weight layout (InvalidInput on every
  /// rank naming the differing fields otherwise), and starts from `initial` (contiguous when
  /// empty). `weights` must describe this rank's slots; `transport` defaults to MPI host.
  Engine(MPI_Comm comm, RuntimeConfig config, WeightRegistry weights,
         algo::Placement initial = {}, TransportFactory transport = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const RuntimeConfig& config() const { return config_; }
  const comm::MpiComm& comm() const { return comm_; }
  const algo::Placement& placement() const { return placement_; }
  const WeightRegistry& weights() const { return weights_; }
  LoadWindow& window() { return window_; }
  const LoadWindow& window() const { return window_; }
  std::int64_t epoch() const { return epoch_; }
  /// Whether the last restore() failed part-way (the same on every rank): rebalances and
  /// checkpoints refuse until a restore succeeds.
  bool restore_failed() const { return restore_failed_; }
  std::int64_t pass() const { return pass_; }
  const std::vector<RebalanceStats>& history() const { return history_; }

  /// Borrowed; must outlive the engine or be reset to null. With a source set, step() and
  /// rebalance() use it instead of window() (e.g. a device window on the GPU): what is
  /// recorded into window() is then not read.
  void set_load_source(LoadSource* source) { source_ = source; }
  /// Borrowed; must outlive the engine or be reset to null. Told about every migration layer
  /// by layer (e.g. device maps).
  void set_map_listener(MapListener* listener) { listener_ = listener; }
  comm::Transport& transport() { return *transport_; }
  /// Whether the MPI library reported CUDA support at start-up (comm::mpi_cuda_aware()).
  bool mpi_is_cuda_aware() const { return cuda_aware_mpi_; }

  /// The logical expert this rank's local slot `local` holds (to load its weights).
  int expert_of_local_slot(int layer, int local) const;

  /// Ends the current pass. Collective when it triggers an automatic rebalance (every rank
  /// reaches the same pass count). Returns that rebalance's stats. When closing the pass
  /// fails (the load source's end_pass(), e.g. a CUDA error), step() throws that error on
  /// this rank only (no collective is spent on it at every pass); the pass still counts, and
  /// the next rebalance fails on every rank with Error "[rank r] collecting this rank's load
  /// failed: ending pass p failed on this rank: ..." before anything changes (this rank's
  /// window may hold a wrong pass). The one after it runs normally; a restore() with a window
  /// clears the report.
  std::optional<RebalanceStats> step();
  /// Collective: rebalance now. On bad input anywhere (rejected router output or counts, a
  /// failing policy, a corrupt broadcast) every rank throws InvalidInput / Error and the
  /// placement and weights are unchanged; so too when collecting the load, allocating staging
  /// or the map listener's prepare() fails on some rank (Error). A map listener failing in
  /// commit_layer() (the weights have moved) ends the migration on every rank, adopts the new
  /// placement, then every rank throws Error; that rank's maps of the layers after the failing
  /// one were not switched: call the listener's reset(placement()) before routing again, or
  /// treat the error as fatal. A failure of the weight transfer itself on some rank (a CUDA
  /// fault in a copy, a NCCL error, an MPI error) also reaches every rank as Error: the peers'
  /// waits for that rank end after EPLB_NCCL_TIMEOUT_S (NCCL) or EPLB_TRANSFER_TIMEOUT_S (MPI
  /// host transport), then the ranks agree; the engine adopts the new placement but the
  /// weights may be partly moved: treat it as fatal (MPI_Abort); every later rebalance()
  /// throws Error at once on every rank. A custom Transport must bound its waits the same way
  /// for this to hold. Not thread-safe: call
  /// every Engine member from one thread (the one that owns the rank's GPU).
  RebalanceStats rebalance();

  /// This rank's load window as a ring [W][L][E] and the index of its current pass: the load
  /// source's when one is set (set_load_source), else window()'s. Local (not collective).
  /// Throws InvalidInput when the source keeps no ring (LoadSource::has_ring()).
  void window_ring(std::vector<std::int64_t>& ring, int& cursor) const;

  /// Collective: replaces placement, window (the load source's when one is set; it must keep
  /// a ring; an empty `ring` keeps the window as it is), epoch and pass (resume from a
  /// checkpoint). On bad input on any rank every rank throws InvalidInput and nothing changes.
  /// An Error (the load source or map listener failing on some rank, e.g. a CUDA error) may
  /// leave the device side half restored (some ranks' maps and windows updated, the placement
  /// not): every later rebalance() (and step() when one is due) then throws Error at once on
  /// every rank until a restore() succeeds; treat it as fatal unless you restore again.
  /// Weights are not moved: load them for the new placement (expert_of_local_slot).
  void restore(algo::Placement placement, std::span<const std::int64_t> ring, int cursor,
               std::int64_t epoch, std::int64_t pass);

 private:
  void end_pass();
  /// The first entry of `load` (summed over `over`) that is negative or past
  /// LoadWindow::kMaxCount, as an input error.
  std::optional<std::string> too_large_load(std::span<const std::int64_t> load, const char* over) const;

  RuntimeConfig config_;
  comm::MpiComm comm_;
  WeightRegistry weights_;
  LoadWindow window_;
  algo::Placement placement_;
  std::unique_ptr<algo::Policy> policy_;
  // Declared before transport_, so freed after it: a migration that failed mid-batch leaves
  // transfers in flight into staging_. The transport's destructor ends its communicator's
  // work (NCCL: flushed within EPLB_NCCL_TIMEOUT_S, else aborted); copies still queued on its
  // copy lane are not waited for there, and freeing staging (cudaFree) waits for the device.
  comm::Buffer staging_{nullptr, [](std::byte*) {}};
  std::size_t staging_size_ = 0;
  std::unique_ptr<comm::Transport> transport_;
  algo::MigrationOptions migration_options_;
  algo::MigrationPlan plan_;  ///< the last rebalance's plan (kept: the next one reuses its storage)
  bool cuda_aware_mpi_ = false;
  LoadSource* source_ = nullptr;
  MapListener* listener_ = nullptr;
  std::vector<std::int64_t> local_load_, global_load_;
  std::vector<double> load_f64_;
  algo::Placement share_prev_, share_out_;  ///< this rank's layers (split planning)
  std::int64_t epoch_ = 0, pass_ = 0;
  bool restore_failed_ = false;  ///< the last restore() failed after some ranks updated their device side
  std::optional<std::string> pass_error_;  ///< end_pass() failed here; reported by the next rebalance
  std::vector<RebalanceStats> history_;
  bool migration_failed_ = false;  ///< agreed: a migration failed on some rank; no more rebalances
};

}  // namespace eplb::runtime
