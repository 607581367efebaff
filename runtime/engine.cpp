#include "eplb/runtime/engine.hpp"

#include <bit>
#include <climits>
#include <chrono>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>

#include "eplb/comm/mpi_transport.hpp"
#include "eplb/comm/placement_bcast.hpp"

namespace eplb::runtime {
namespace {
/// Why `source` does not fit `cfg`, or nullopt.
std::optional<std::string> source_mismatch(const LoadSource* source, const RuntimeConfig& cfg) {
  if (!source) return std::nullopt;
  if (const auto shape = source->layers_and_experts();
      shape && (shape->first != cfg.topology.num_layers || shape->second != cfg.topology.num_logical))
    return "the load source counts " + std::to_string(shape->first) + " layers x " +
           std::to_string(shape->second) + " experts, the topology has " +
           std::to_string(cfg.topology.num_layers) + " x " + std::to_string(cfg.topology.num_logical);
  if (source->window_passes() != 0 && source->window_passes() != cfg.window_passes)
    return "the load source keeps a window of " + std::to_string(source->window_passes()) +
           " passes, RuntimeConfig::window_passes is " + std::to_string(cfg.window_passes);
  if (const auto skips = source->skips_negative_ids(); skips && *skips != cfg.skip_negative_ids)
    return std::string("the load source ") + (*skips ? "skips" : "rejects") +
           " negative ids, RuntimeConfig::skip_negative_ids is " +
           (cfg.skip_negative_ids ? "true" : "false");
  return std::nullopt;
}

using comm::capture;
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::uint64_t hash_string(std::string_view s) { return comm::fnv1a(s.data(), s.size()); }

}  // namespace

Engine::Engine(MPI_Comm comm, RuntimeConfig config, WeightRegistry weights,
               algo::Placement initial, TransportFactory transport)
    : config_(std::move(config)),
      comm_(comm),
      weights_(std::move(weights)),
      window_() {  // sized in the try below, so that a failure there reaches every rank
  const auto& topo = config_.topology;
  std::optional<std::string> local, failure;  // bad input (InvalidInput); out of memory (Error)
  try {
    config_.validate();
    window_ = LoadWindow(topo.num_layers, topo.num_logical, config_.window_passes,
                         config_.skip_negative_ids);
    weights_.validate();
    if (topo.num_ranks != comm_.size())
      throw std::invalid_argument("topology has num_ranks = " + std::to_string(topo.num_ranks) +
                                  " but the communicator has " + std::to_string(comm_.size()) +
                                  " ranks");
    if (weights_.num_layers() != topo.num_layers || weights_.slots_per_rank() != topo.slots_per_rank())
      throw std::invalid_argument("weight registry has " + std::to_string(weights_.num_layers()) +
                                  " layers x " + std::to_string(weights_.slots_per_rank()) +
                                  " slots per rank; the topology needs " +
                                  std::to_string(topo.num_layers) + " x " +
                                  std::to_string(topo.slots_per_rank()));
    if (initial.empty()) initial = algo::Placement::contiguous(topo);
    initial.check_shape(topo, "initial placement");
    policy_ = algo::make_policy(config_.policy_name());
  } catch (const std::bad_alloc& e) {  // the load window (W*L*E counters) is the largest
    failure = std::string("creating the engine failed: ") + e.what();
  } catch (const std::exception& e) {
    local = e.what();
  }
  comm::throw_if_any_failed<Error>(comm_, failure);
  comm::throw_if_any_failed(comm_, local);

  // The policy's text is built (a string: an allocation) inside an agreement, so that a rank
  // out of memory here does not leave the others in check_config_agreement's reductions (its
  // field list is views: no allocation).
  std::string policy_text;
  std::uint64_t policy_hash = 0;
  capture(failure, "creating the engine failed: ", [&] {
    const std::string name = config_.policy_name();
    policy_hash = hash_string(name);
    policy_text.reserve(name.size() + 2);  // (appended: GCC 12's -Wrestrict misfires on "'" + name)
    policy_text.push_back('\'');
    policy_text.append(name);
    policy_text.push_back('\'');
  });
  comm::throw_if_any_failed<Error>(comm_, failure);
  const std::uint64_t min_gain_bits = std::bit_cast<std::uint64_t>(config_.min_gain);
  char min_gain_text[32];
  std::snprintf(min_gain_text, sizeof min_gain_text, "%.17g", config_.min_gain);
  comm::check_config_agreement(
      comm_, {{"num_layers", static_cast<std::uint64_t>(topo.num_layers)},
              {"num_logical", static_cast<std::uint64_t>(topo.num_logical)},
              {"num_slots", static_cast<std::uint64_t>(topo.num_slots)},
              {"num_ranks", static_cast<std::uint64_t>(topo.num_ranks)},
              {"num_nodes", static_cast<std::uint64_t>(topo.num_nodes)},
              {"num_groups", static_cast<std::uint64_t>(topo.num_groups)},
              {"policy", policy_hash, policy_text},
              {"window_passes", static_cast<std::uint64_t>(config_.window_passes)},
              {"rebalance_interval", static_cast<std::uint64_t>(config_.rebalance_interval)},
              {"first_rebalance", static_cast<std::uint64_t>(config_.first_rebalance)},
              {"min_gain", min_gain_bits, min_gain_text},
              {"staging_bytes", config_.staging_bytes},
              {"max_experts_per_batch", static_cast<std::uint64_t>(config_.max_experts_per_batch)},
              {"max_layers_per_window", static_cast<std::uint64_t>(config_.max_layers_per_window)},
              {"coalesce_messages", static_cast<std::uint64_t>(config_.coalesce_messages)},
              {"pipeline_batches", static_cast<std::uint64_t>(config_.pipeline_batches)},
              {"overlap_steps", static_cast<std::uint64_t>(config_.overlap_steps)},
              {"align_slots", static_cast<std::uint64_t>(config_.align_slots)},
              {"distributed_planning", static_cast<std::uint64_t>(config_.distributed_planning)},
              {"device_allreduce", static_cast<std::uint64_t>(config_.device_allreduce)},
              {"skip_negative_ids", static_cast<std::uint64_t>(config_.skip_negative_ids)},
              {"weight layout (hash)", weights_.layout_hash()},
              {"initial placement (hash)",
               comm::fnv1a(initial.phy2log().data(), initial.phy2log().size_bytes())}});

  placement_ = std::move(initial);
  int threads = config_.planning_threads;
  if (threads == 0)
    threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()) /
                             std::max(comm_.size(), 1), 1, 8);
  policy_->set_threads(threads);
  migration_options_.threads = threads;  // the migration plan's layers too (same plan)
  // Agreed (MIN over ranks), so that all ranks take the same path at a rebalance.
  int aware = comm::mpi_cuda_aware() ? 1 : 0;
  EPLB_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &aware, 1, MPI_INT, MPI_MIN, comm_.get()));
  cuda_aware_mpi_ = aware != 0;
  const std::size_t expert_bytes = std::max<std::size_t>(weights_.max_bytes_per_expert(), 1);
  migration_options_.max_staged_slots_per_rank = static_cast<int>(std::clamp<std::size_t>(
      config_.staging_bytes / expert_bytes, 1, static_cast<std::size_t>(INT_MAX)));
  // A transport that fails on one rank (no GPU memory there, a NCCL setup error) must not
  // leave the others to wait in their first rebalance.
  capture(local, "creating the weight transport failed: ", [&] {
    transport_ = transport ? transport(comm_) : std::make_unique<comm::MpiHostTransport>(comm_);
    if (!transport_) throw std::invalid_argument("the transport factory returned no transport (nullptr)");
    const std::size_t n = static_cast<std::size_t>(topo.num_layers) * topo.num_logical;
    local_load_.assign(n, 0);
    global_load_.assign(n, 0);
    load_f64_.assign(n, 0.0);
  });
  comm::throw_if_any_failed<Error>(comm_, local);
  // The same kind of transport everywhere: a factory that differs between ranks would pair
  // one kind's calls with another's at the first migration, after weights had started to move.
  // (Only for transports whose construction is not collective itself: NCCL's set-up on some
  // ranks would already have met the others' agreement above.)
  const std::string_view transport_name = transport_->name();
  comm::check_config_agreement(comm_, {{"weight transport", hash_string(transport_name), transport_name}});
}

Engine::~Engine() = default;

int Engine::expert_of_local_slot(int layer, int local) const {
  const int k = config_.topology.slots_per_rank();
  if (layer < 0 || layer >= config_.topology.num_layers || local < 0 || local >= k)
    throw std::invalid_argument("expert_of_local_slot: layer " + std::to_string(layer) + " or slot " +
                                std::to_string(local) + " outside [0, L) x [0, slots per rank)");
  return placement_.phy2log(layer)[comm_.rank() * k + local];
}

void Engine::end_pass() {
  // A failure is this rank's alone: step() rethrows it here, and the next rebalance reports
  // it on every rank (this rank's window may hold a wrong pass), so that the ranks learn of
  // it before they plan from that window.
  auto remember = [this](const char* what) {
    if (!pass_error_)
      pass_error_ = "ending pass " + std::to_string(pass_) + " failed on this rank: " + what;
  };
  try {
    if (source_) source_->end_pass();
    else window_.end_pass();
  } catch (const std::exception& e) {
    remember(e.what());
    throw;
  } catch (...) {
    remember("an exception not derived from std::exception");
    throw;
  }
}

std::optional<RebalanceStats> Engine::step() {
  ++pass_;
  const int interval = config_.rebalance_interval;
  bool due = false;
  if (interval > 0) {
    std::int64_t first = config_.first_rebalance < 0 ? interval / 4 : config_.first_rebalance;
    if (first <= 0) first = interval;
    due = pass_ >= first && (pass_ - first) % interval == 0;
  }
  std::optional<RebalanceStats> stats;
  try {
    if (due) stats = rebalance();
  } catch (...) {
    // The rebalance's error (agreed on by every rank) is the one to report: a second failure
    // here, on this rank only, must not replace it.
    try {
      end_pass();
    } catch (const std::exception& e) {
      eplb::detail::log_error(std::string("ending the pass after a failed rebalance also failed: ") + e.what());
    } catch (...) {
      eplb::detail::log_error("ending the pass after a failed rebalance also failed");
    }
    throw;
  }
  end_pass();
  return stats;
}

std::optional<std::string> Engine::too_large_load(std::span<const std::int64_t> load, const char* over) const {
  const int E = config_.topology.num_logical;
  for (std::size_t i = 0; i < load.size(); ++i)
    if (load[i] > LoadWindow::kMaxCount || load[i] < 0)
      return "the load of layer " + std::to_string(i / static_cast<std::size_t>(E)) + ", expert " +
             std::to_string(i % static_cast<std::size_t>(E)) + " summed over " + over + " is " +
             (load[i] < 0 ? "negative (" + std::to_string(load[i]) + ")" : std::string("more than 2^62"));
  return std::nullopt;
}

RebalanceStats Engine::rebalance() {
  if (migration_failed_)  // set on every rank by the same agreement: no collective needed
    throw Error("rebalance: an earlier migration failed (the weights may be partly moved and its "
                "messages still in flight); this engine moves no more weights: end the job");
  if (restore_failed_)  // likewise
    throw Error("rebalance: the last restore failed part-way (some ranks' maps or load windows were "
                "updated, the placement was not); restore again successfully, or end the job");
  const auto& topo = config_.topology;
  const auto t_start = Clock::now();
  RebalanceStats st;
  st.pass = pass_;

  // 1. Collect: rejected input anywhere stops every rank before anything changes.
  auto t = Clock::now();
  std::optional<std::string> input_error, failure;
  std::int64_t* device_sum = nullptr;
  // A load source that throws on one rank (a CUDA error on its GPU) must not leave the others
  // waiting: every rank agrees on failures (Error), then on rejected input (InvalidInput),
  // before the allreduce, and once more on the device path's copy back; the same sequence
  // of collectives on every rank and both paths.
  std::optional<std::string> mismatch;
  capture(failure, "collecting this rank's load failed: ", [&] {
    if (pass_error_) {  // reported once, on every rank (Engine::step)
      const std::string e = std::move(*pass_error_);
      pass_error_.reset();
      throw std::runtime_error(e);
    }
    if (source_ && config_.device_allreduce && cuda_aware_mpi_)
      device_sum = source_->reduce_on_device(input_error);
    if (!device_sum && source_) {
      input_error = source_->collect(local_load_);
    } else if (!device_sum) {
      input_error = window_.take_error();
      window_.sum(local_load_);
    }
    mismatch = source_mismatch(source_, config_);  // the source's hooks may throw too
  });
  comm::throw_if_any_failed<Error>(comm_, failure);
  if (mismatch && !input_error) input_error = *mismatch;
  // Counts stay within LoadWindow::kMaxCount (2^62, a checkpoint's bound): this rank's sums
  // here (the host window saturates past it; a load source may return anything), their sum
  // over the ranks after the allreduce, which saturates instead of wrapping. (The device
  // path's counters are token counts that cannot get near it.)
  if (!device_sum && !input_error) input_error = too_large_load(local_load_, "this rank's window");
  // Ranks that enter a rebalance at different pass counts (rebalance() called by hand at
  // different points) would sum windows of different passes: rejected on every rank. (A rank
  // that calls step() more often than the others is not seen here: each rank's automatic
  // rebalance comes at the same pass count of its own.)
  std::int64_t passes[2] = {pass_, -pass_};  // MIN gives min and -max
  EPLB_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, passes, 2, MPI_INT64_T, MPI_MIN, comm_.get()));
  if (passes[0] != -passes[1] && !input_error)
    input_error = "the ranks are at different passes (" + std::to_string(passes[0]) + " to " +
                  std::to_string(-passes[1]) +
                  "): step() must be called once per forward pass on every rank";
  comm::throw_if_any_failed(comm_, input_error);
  // In place on both paths (MPI needs MPI_IN_PLACE on all ranks or none).
  if (device_sum) {
    EPLB_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, device_sum, static_cast<int>(global_load_.size()),
                                 MPI_INT64_T, MPI_SUM, comm_.get()));
    capture(failure, "copying the reduced load to the host failed: ",
            [&] { source_->download_reduced(global_load_); });
  } else {
    std::copy(local_load_.begin(), local_load_.end(), global_load_.begin());
    comm::allreduce_sum(comm_, global_load_, global_load_);
  }
  for (std::size_t i = 0; i < global_load_.size(); ++i)
    load_f64_[i] = static_cast<double>(global_load_[i]);
  const algo::LoadView load{load_f64_, topo.num_layers, topo.num_logical};
  // The current placement's balance, agreed on with the copy back: evaluate() allocates, and a
  // rank that threw here would leave the others in the collectives below.
  std::optional<algo::BalanceReport> before;
  if (!failure)
    capture(failure, "evaluating the current placement failed: ",
            [&] { before = algo::evaluate(load, placement_, topo); });
  comm::throw_if_any_failed<Error>(comm_, failure);
  // The same numbers on every rank: every rank throws alike, no agreement needed.
  if (const auto e = too_large_load(global_load_, "the ranks' windows")) throw InvalidInput(*e);
  st.t_collect_ms = ms_since(t);

  // 2. Plan, 3. distribute. Split over the ranks (each plans its share of the layers, one
  // allgather; docs/DESIGN.md) when the policy plans layers independently, else rank 0 plans
  // and broadcasts. Either way every rank ends with the same placement or the same error.
  st.balancedness_before = before->balancedness();
  st.imbalance_before = before->imbalance_mean();
  std::optional<algo::BalanceReport> after;
  comm::PlacementMessage msg;
  // Whether to keep the current placement (status skip + note) or move to msg.placement.
  auto decide = [&] {
    after = algo::evaluate(load, msg.placement, topo);
    const double gain = after->balancedness() - st.balancedness_before;
    msg.status = comm::PlanStatus::ok;
    char why[160];
    if (msg.placement == placement_) {
      msg.status = comm::PlanStatus::skip;
      msg.note = "placement unchanged";
    } else if (config_.min_gain >= 0 && (gain < config_.min_gain || gain <= 0)) {
      msg.status = comm::PlanStatus::skip;
      std::snprintf(why, sizeof why, "predicted balancedness gain %.4g below min_gain %.4g", gain,
                    config_.min_gain);
      msg.note = why;
    }
  };
  const bool split = config_.distributed_planning && policy_->layers_independent() && comm_.size() > 1;
  if (split) {
    t = Clock::now();
    const auto share = comm::layer_share(topo.num_layers, comm_.rank(), comm_.size());
    char plan_error[480] = {};  // its text: copying it into a string could fail like the planning
    bool plan_failed = false;
    std::span<const int> slice;
    if (share.last > share.first) {
      try {
        algo::Topology ts = topo;
        ts.num_layers = share.last - share.first;
        share_prev_.assign_layers(placement_, share.first, share.last);
        policy_->rebalance_into(load.layers(share.first, share.last), ts, &share_prev_, share_out_);
        if (config_.align_slots) algo::align_slots(share_prev_, share_out_, ts);  // its share only
        share_out_.check_shape(ts, "policy output");  // a wrong size would break the allgather
        slice = share_out_.phy2log();
      } catch (const std::exception& e) {
        plan_failed = true;
        std::snprintf(plan_error, sizeof plan_error, "%s", e.what());
      }
    }
    st.t_policy_ms = ms_since(t);
    t = Clock::now();
    comm::allgather_placement(comm_, topo, slice, plan_failed ? plan_error : nullptr, msg.placement);
    msg.epoch = epoch_ + 1;
    // decide() evaluates (allocates) on every rank: a failure anywhere is agreed on before the
    // status broadcast, so that no rank leaves while the others wait in it.
    std::optional<std::string> decide_error;
    capture(decide_error, "evaluating the new placement failed: ", decide);
    comm::throw_if_any_failed<Error>(comm_, decide_error);
    // Every rank computed the same decision from the same numbers; rank 0's is the one all
    // follow, so that even a rank whose floating point differed cannot go its own way.
    std::int32_t status = static_cast<std::int32_t>(msg.status);
    EPLB_MPI_CHECK(MPI_Bcast(&status, 1, MPI_INT32_T, 0, comm_.get()));
    if (status != static_cast<std::int32_t>(msg.status)) {
      msg.status = static_cast<comm::PlanStatus>(status);
      msg.note = "rank 0 decided to " + std::string(status == 0 ? "move" : "skip");
    }
    st.t_broadcast_ms = ms_since(t);
  } else {
    if (comm_.rank() == 0) {
      t = Clock::now();
      msg.epoch = epoch_ + 1;
      try {
        policy_->rebalance_into(load, topo, &placement_, msg.placement);
        if (config_.align_slots) algo::align_slots(placement_, msg.placement, topo);
        decide();
      } catch (const std::exception& e) {
        msg.status = comm::PlanStatus::error;
        msg.note = e.what();
      }
      st.t_policy_ms = ms_since(t);
    }
    // Every rank throws on a planning error or a message that fails to verify.
    t = Clock::now();
    comm::broadcast_placement(comm_, 0, topo, epoch_ + 1, msg);
    st.t_broadcast_ms = ms_since(t);
  }
  st.epoch = msg.epoch;
  if (msg.status == comm::PlanStatus::skip) {
    epoch_ = msg.epoch;
    st.skipped = true;
    st.skip_reason = msg.note;
    st.balancedness_after = st.balancedness_before;
    st.imbalance_after = st.imbalance_before;
    st.t_total_ms = ms_since(t_start);
    // The history grows by one on every rank or on none (a rank that threw alone here would
    // leave the others in their next collective).
    std::optional<std::string> record_error;
    capture(record_error, "recording the skipped rebalance failed: ", [&] { history_.push_back(st); });
    comm::throw_if_any_failed<Error>(comm_, record_error);
    return st;
  }

  // 4. Every rank derives the same migration plan.
  t = Clock::now();
  const ExecOptions exec{config_.max_experts_per_batch, config_.max_layers_per_window,
                         config_.staging_bytes, config_.coalesce_messages,
                         config_.pipeline_batches, config_.overlap_steps};
  // The plan, the executor's bookkeeping (PreparedMigration: all it allocates), staging (host
  // or GPU memory, which may run out on one rank only) and the listener's preparation: agreed
  // before any weight moves, so a failure (std::bad_alloc included) leaves everything as it was.
  std::optional<PreparedMigration> migration;
  capture(failure, "preparing the migration failed: ", [&] {
    if (!after) after = algo::evaluate(load, msg.placement, topo);
    st.balancedness_after = after->balancedness();
    st.imbalance_after = after->imbalance_mean();
    const auto t_mplan = Clock::now();
    algo::plan_migration(placement_, msg.placement, topo, migration_options_, plan_);  // reuses its storage
    st.t_migration_plan_ms = ms_since(t_mplan);
    st.plan = plan_.stats();
    const auto t_prepare = Clock::now();
    migration.emplace(plan_, weights_, *transport_, comm_.rank(), exec);
    const std::size_t need = migration->staging_bytes();
    if (need > staging_size_) {
      staging_ = comm::Buffer{nullptr, [](std::byte*) {}};
      staging_size_ = 0;
      staging_ = transport_->allocate(need);
      staging_size_ = need;
    }
    if (listener_) listener_->prepare(msg.placement);
    st.t_prepare_ms = ms_since(t_prepare);
  });
  comm::throw_if_any_failed<Error>(comm_, failure);
  st.t_plan_ms = ms_since(t);

  // 5. Move the weights, then switch the maps. A map listener failing on one rank (a CUDA
  // error) does not stop that rank's part of the migration, which the others wait for: the
  // error is kept, the migration ends on every rank, and then every rank throws it. A failure
  // of the migration itself on one rank (a copy kernel fault found at the final
  // synchronisation; a NCCL error or timeout, after which the peers' bounded waits fail too)
  // is agreed on in the same way, so that no rank is left waiting for the others (the peers
  // of a rank that stopped early leave their transfers through the transports' bounded waits).
  t = Clock::now();
  std::optional<std::string> commit_error, migrate_error;
  capture(migrate_error, "moving the weights failed (they may be only partly moved: treat this as fatal): ", [&] {
    st.moved = migration->execute({staging_.get(), staging_size_}, [this, &commit_error](int layer) {
      if (!listener_ || commit_error) return;
      capture(commit_error, "", [&] { listener_->commit_layer(layer); });  // no allocation unless it fails
      if (commit_error) try {
          *commit_error = "switching the maps of layer " + std::to_string(layer) + " failed: " + *commit_error;
        } catch (...) {  // out of memory for the longer text: the listener's own text stays
        }
    });
  });
  st.t_migrate_ms = ms_since(t);
  // The weights are where the new placement says on every rank (or, after a migration
  // failure, nowhere consistent; the engine follows the plan all ranks executed).
  placement_ = std::move(msg.placement);
  epoch_ = msg.epoch;
  st.t_total_ms = ms_since(t_start);
  {  // std::bad_alloc on one rank must not skip the agreements below
    std::optional<std::string> record_error;
    capture(record_error, "recording the rebalance failed: ", [&] { history_.push_back(st); });
    if (!commit_error) commit_error = std::move(record_error);
  }
  // Two agreements: every rank must know whether the migration failed anywhere (then this
  // engine refuses further rebalances: unmatched messages of the failed one may be in flight)
  // even when a lower rank's map-listener error is the one reported.
  if (auto e = comm::agree_on_error(comm_, migrate_error)) {
    migration_failed_ = true;
    throw Error(*e);
  }
  comm::throw_if_any_failed<Error>(comm_, commit_error);
  return st;
}

namespace {
const char* const kNoRing =
    "the load source set with Engine::set_load_source keeps no ring of passes "
    "(LoadSource::has_ring() is false), so its load window cannot be checkpointed or restored";
}  // namespace

void Engine::window_ring(std::vector<std::int64_t>& ring, int& cursor) const {
  if (!source_) {
    ring.assign(window_.ring().begin(), window_.ring().end());
    cursor = window_.cursor();
    return;
  }
  if (!source_->has_ring()) throw InvalidInput(std::string("window_ring: ") + kNoRing);
  ring.assign(window_.ring().size(), 0);  // same shape: [W][L][E]
  source_->download_ring(ring, cursor);
}

void Engine::restore(algo::Placement placement, std::span<const std::int64_t> ring, int cursor,
                     std::int64_t epoch, std::int64_t pass) {
  const bool keep_window = ring.empty();
  std::optional<std::string> local, failure;  // bad input (InvalidInput); out of memory (Error)
  // The new window is built and checked here, before the agreements, and moved in after them
  // (no allocation there: a rank out of memory then would be alone).
  std::optional<LoadWindow> restored;
  try {
    placement.check_shape(config_.topology, "restore");
    if (!keep_window) {
      restored.emplace(config_.topology.num_layers, config_.topology.num_logical, config_.window_passes,
                       config_.skip_negative_ids);
      restored->restore(ring, cursor);
      if (source_ && !source_->has_ring()) throw std::invalid_argument(std::string("restore: ") + kNoRing);
      if (const auto m = source_mismatch(source_, config_)) throw std::invalid_argument("restore: " + *m);
    }
    if (epoch < 0 || pass < 0) throw std::invalid_argument("restore: negative epoch or pass");
  } catch (const std::bad_alloc& e) {  // the new window (W*L*E counters)
    failure = std::string("restore: ") + e.what();
  } catch (const std::exception& e) {
    local = e.what();
  } catch (...) {  // a load source's hook may throw anything: the others must still hear of it
    local = "restore: the load source threw an exception not derived from std::exception";
  }
  comm::throw_if_any_failed<Error>(comm_, failure);
  comm::throw_if_any_failed(comm_, local);
  // Whether the window is replaced, and its cursor, too: ranks that differed would evict
  // different passes from then on.
  comm::check_config_agreement(
      comm_, {{"restored placement (hash)",
               comm::fnv1a(placement.phy2log().data(), placement.phy2log().size_bytes())},
              {"restored epoch", static_cast<std::uint64_t>(epoch)},
              {"restored pass", static_cast<std::uint64_t>(pass)},
              {"restore replaces the window", static_cast<std::uint64_t>(!keep_window)},
              {"restored window cursor", static_cast<std::uint64_t>(keep_window ? 0 : cursor)}});
  // The device side (a failure there, e.g. a CUDA error, reaches every rank as Error): the
  // window that step() and rebalance() read, and the routing maps, which must agree with
  // the restored placement before the next forward pass.
  capture(local, "restore: updating the load source or the map listener failed: ", [&] {
    if (!keep_window && source_) source_->upload_ring(ring, cursor);
    if (listener_) listener_->reset(placement);
  });
  // On every rank, set or not. The ranks whose update succeeded route with the new maps and
  // count into the new window, while the engine keeps the old placement: until a restore
  // succeeds, this engine plans and moves nothing (every rank sets the flag).
  if (auto e = comm::agree_on_error(comm_, local)) {
    restore_failed_ = true;
    throw Error(*e);
  }
  restore_failed_ = false;
  if (!keep_window) {
    window_ = std::move(*restored);  // a call rejected before (LoadWindow::error) goes with the old window
    pass_error_.reset();  // the window it concerned is replaced
  }
  placement_ = std::move(placement);
  epoch_ = epoch;
  pass_ = pass;
}

}  // namespace eplb::runtime
