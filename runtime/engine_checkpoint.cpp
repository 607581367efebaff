#include "eplb/runtime/engine_checkpoint.hpp"

#include <algorithm>
#include <optional>

namespace eplb::runtime {

CheckpointConfig checkpoint_config(const Engine& engine) {
  const auto& cfg = engine.config();
  CheckpointConfig c;
  c.topology = cfg.topology;
  c.policy = cfg.policy_name();
  c.window_passes = cfg.window_passes;
  c.rebalance_interval = cfg.rebalance_interval;
  c.first_rebalance = cfg.first_rebalance;
  c.min_gain = cfg.min_gain;
  c.staging_bytes = cfg.staging_bytes;
  c.weight_layout_hash = engine.weights().layout_hash();
  return c;
}

CheckpointStatsRow to_stats_row(const RebalanceStats& s) {
  CheckpointStatsRow r;
  r.epoch = s.epoch;
  r.pass = s.pass;
  r.skipped = s.skipped ? 1 : 0;
  r.balancedness_before = s.balancedness_before;
  r.balancedness_after = s.balancedness_after;
  r.imbalance_before = s.imbalance_before;
  r.imbalance_after = s.imbalance_after;
  r.slots_changed = s.plan.slots_changed;
  r.remote_units = s.plan.remote_units;
  r.local_units = s.plan.local_units;
  r.fanout_copies = s.plan.fanout_copies;
  r.same_node_remote = s.plan.same_node_remote;
  r.max_rank_sends = s.plan.max_rank_sends;
  r.max_rank_recvs = s.plan.max_rank_recvs;
  r.max_rounds = s.plan.max_rounds;
  r.migration_rounds = s.moved.rounds;
  r.total_remote_bytes = s.moved.total_remote_bytes;
  r.total_local_bytes = s.moved.total_local_bytes;
  r.t_collect_ms = s.t_collect_ms;
  r.t_policy_ms = s.t_policy_ms;
  r.t_broadcast_ms = s.t_broadcast_ms;
  r.t_plan_ms = s.t_plan_ms;
  r.t_migrate_ms = s.t_migrate_ms;
  r.t_total_ms = s.t_total_ms;
  r.skip_reason = s.skip_reason;
  return r;
}

Checkpoint snapshot(const Engine& engine, std::span<const CheckpointStatsRow> earlier) {
  if (engine.restore_failed())  // agreed on every rank: no collective needed
    throw Error("checkpoint: the last restore failed part-way (some ranks' windows were replaced, "
                "the placement was not); restore again successfully before saving");
  Checkpoint c;
  std::vector<std::int64_t> ring;
  int cursor = 0;
  std::optional<std::string> bad_input, failure;
  // Everything that can throw on one rank (the window's copy, every allocation) comes before
  // the agreements: after them there is only the allreduce, and a rank that threw alone would
  // leave the others in it.
  try {
    c.writer = kWriterEngine;
    c.config = checkpoint_config(engine);
    c.epoch = engine.epoch();
    c.pass = engine.pass();
    engine.window_ring(ring, cursor);  // the load source's window when one is set
    c.window.resize(ring.size());
    const auto p = engine.placement().phy2log();
    c.phy2log.assign(p.begin(), p.end());
    c.stats.reserve(earlier.size() + engine.history().size());
    c.stats.assign(earlier.begin(), earlier.end());
    for (const auto& s : engine.history()) c.stats.push_back(to_stats_row(s));
    // Counts the saturating allreduce below accepts (and the file's bound, per rank).
    const auto& t = engine.config().topology;
    if (const auto e = algo::check_count_ring(ring, static_cast<std::size_t>(engine.config().window_passes),
                                              static_cast<std::size_t>(t.num_layers),
                                              static_cast<std::size_t>(t.num_logical)))
      throw std::invalid_argument("this rank's window: " + *e);
  } catch (const std::invalid_argument& e) {
    bad_input = std::string("checkpoint: ") + e.what();
  } catch (const std::exception& e) {  // e.g. a CUDA error copying the device window, bad_alloc
    failure = std::string("checkpoint: ") + e.what();
  } catch (...) {  // a load source may throw anything
    failure = "checkpoint: the load source threw an exception not derived from std::exception";
  }
  comm::throw_if_any_failed<Error>(engine.comm(), failure);
  comm::throw_if_any_failed(engine.comm(), bad_input);
  // Ranks at different passes (one called step() once more) would sum windows of different
  // passes into one ring and save rank 0's pass: rejected on every rank, as rebalance() does.
  comm::check_config_agreement(engine.comm(), {{"pass (Engine::pass)", static_cast<std::uint64_t>(c.pass)},
                                               {"window cursor", static_cast<std::uint64_t>(cursor)}});
  c.window_cursor = cursor;
  comm::allreduce_sum(engine.comm(), ring, c.window);
  return c;
}

void save_checkpoint(const Engine& engine, const std::string& path,
                     std::span<const CheckpointStatsRow> earlier) {
  const auto c = snapshot(engine, earlier);
  std::optional<std::string> local;
  if (engine.comm().rank() == 0) {
    try {
      write_checkpoint(path, c);
    } catch (const std::exception& e) {
      local = "writing checkpoint '" + path + "' failed: " + e.what();
    }
  }
  comm::throw_if_any_failed<Error>(engine.comm(), local);
}

std::vector<CheckpointStatsRow> resume_from_checkpoint(Engine& engine, const std::string& path) {
  const auto& comm = engine.comm();
  const auto& topo = engine.config().topology;
  Checkpoint c;
  std::optional<std::string> local, oom;
  if (comm.rank() == 0) {
    try {
      c = read_checkpoint(path);
      const auto diff = describe_mismatch(c.config, checkpoint_config(engine),
                                          c.writer == kWriterEngine);
      if (!diff.empty())
        throw CheckpointError("checkpoint '" + path + "' does not match the running job: " + diff);
      if (c.phy2log.size() != static_cast<std::size_t>(topo.num_layers) * topo.num_slots)
        throw CheckpointError("checkpoint '" + path + "': phy2log has " +
                              std::to_string(c.phy2log.size()) + " entries, the job's L*R is " +
                              std::to_string(static_cast<long long>(topo.num_layers) * topo.num_slots));
    } catch (const std::bad_alloc& e) {  // not a bad file: Error, like the buffers below
      oom = std::string("resuming from checkpoint '") + path + "': reading it failed: " + e.what();
    } catch (const std::exception& e) {
      local = e.what();
    }
  }
  // The receiving buffers exist on every rank before the broadcasts (a rank that failed to
  // allocate one must not leave the others in them); the ring is allocated on the other ranks
  // even for a placement-only file, whose flag only the broadcast brings.
  std::vector<int> phy2log;
  std::vector<std::int64_t> ring;
  std::optional<std::string> failure;
  comm::capture(failure, "resuming from checkpoint: allocating the buffers failed: ", [&] {
    phy2log.resize(static_cast<std::size_t>(topo.num_layers) * topo.num_slots);
    if (comm.rank() != 0) ring.assign(engine.window().ring().size(), 0);
  });
  if (!failure) failure = std::move(oom);
  comm::throw_if_any_failed<Error>(comm, failure);
  comm::throw_if_any_failed(comm, local);

  // Everything but the window goes to every rank; the window stays on rank 0 (see header).
  // A placement-only file (eplb-plan: W = 0) changes the placement alone.
  std::int64_t head[4] = {c.epoch, c.pass, c.window_cursor, c.config.window_passes == 0};
  EPLB_MPI_CHECK(MPI_Bcast(head, 4, MPI_INT64_T, 0, comm.get()));
  if (comm.rank() == 0) std::copy(c.phy2log.begin(), c.phy2log.end(), phy2log.begin());
  EPLB_MPI_CHECK(MPI_Bcast(phy2log.data(), static_cast<int>(phy2log.size()), MPI_INT, 0,
                           comm.get()));
  const bool placement_only = head[3] != 0;
  if (placement_only) {  // an empty ring: Engine::restore keeps the running window
    head[0] = engine.epoch();
    head[1] = engine.pass();
    head[2] = 0;
    std::vector<std::int64_t>().swap(ring);
  } else if (comm.rank() == 0) {
    ring = std::move(c.window);
  }

  algo::Placement placement;
  std::optional<std::string> bad;
  try {
    placement = algo::Placement(topo.num_layers, topo.num_logical, topo.num_slots,
                                std::move(phy2log));
  } catch (const std::exception& e) {
    bad = "checkpoint '" + path + "': " + e.what();
  }
  comm::throw_if_any_failed(comm, bad);
  engine.restore(std::move(placement), ring, static_cast<int>(head[2]), head[0], head[1]);
  return std::move(c.stats);
}

CheckpointSchedule::CheckpointSchedule(std::string path, int every_rebalances)
    : path_(std::move(path)), every_(every_rebalances) {
  if (every_ < 1)
    throw std::invalid_argument("checkpoint schedule: every_rebalances >= 1 violated (got " +
                                std::to_string(every_) + ")");
}

void CheckpointSchedule::resume(Engine& engine, const std::string& from) {
  earlier_ = resume_from_checkpoint(engine, from);
}

void CheckpointSchedule::agree(const Engine& engine) {
  if (agreed_) return;
  // Once, at the first collective call: a schedule that writes on some ranks only would pair
  // save_checkpoint's collectives with the others' next rebalance.
  comm::check_config_agreement(
      engine.comm(), {{"checkpoint schedule writes (path set)", path_.empty() ? 0u : 1u},
                      {"checkpoint every_rebalances", static_cast<std::uint64_t>(every_)}});
  agreed_ = true;
}

bool CheckpointSchedule::after_step(const Engine& engine, bool rebalanced) {
  if (!rebalanced) return false;
  agree(engine);
  if (path_.empty() || engine.epoch() % every_ != 0) return false;
  save(engine);
  return true;
}

void CheckpointSchedule::save(const Engine& engine) {
  agree(engine);
  if (!path_.empty()) save_checkpoint(engine, path_, earlier_);
}

}  // namespace eplb::runtime
