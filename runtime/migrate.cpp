#include "runtime/migrate.hpp"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace eplb::runtime {
namespace {

constexpr std::size_t align256(std::size_t n) { return (n + 255) / 256 * 256; }

/// Staging layout of one expert: each tensor at a 256-byte aligned offset (NCCL's fast
/// path needs aligned buffers; see docs/MIGRATION.md).
struct StagingLayout {
  std::vector<std::size_t> offset;  // per tensor
  std::size_t stride = 0;           // per staged slot
  explicit StagingLayout(std::span<const TensorView> tensors) {
    for (const auto& t : tensors) {
      offset.push_back(stride);
      stride += align256(t.bytes_per_slot);
    }
  }
};

int max_staged_on_one_rank(const algo::LayerPlan& lp, const algo::Round& round, int k, int P) {
  std::vector<int> per(static_cast<std::size_t>(P), 0);
  int most = 0;
  for (int i = round.first_unit; i < round.first_unit + round.num_units; ++i) {
    const auto& u = lp.units[i];
    for (int q = 0; q < u.num_dst; ++q)
      if (lp.staged[lp.dst_begin(u)[q]]) most = std::max(most, ++per[lp.dst_begin(u)[q] / k]);
  }
  return most;
}

}  // namespace

std::size_t staging_bytes_needed(const algo::MigrationPlan& plan, const WeightRegistry& weights) {
  const auto& t = plan.topology();
  std::size_t need = 0;
  for (int l = 0; l < plan.num_layers(); ++l) {
    const auto& lp = plan.layer(l);
    const StagingLayout layout(weights.tensors(l));
    for (const auto& r : lp.rounds)
      need = std::max(need, layout.stride * static_cast<std::size_t>(max_staged_on_one_rank(
                                                lp, r, t.slots_per_rank(), t.num_ranks)));
  }
  return need;
}

MigrationCounters execute_migration(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                    comm::Transport& transport, int me, std::byte* staging,
                                    const std::function<void(int)>& layer_done,
                                    const ExecOptions& options) {
  const auto& topo = plan.topology();
  const int k = topo.slots_per_rank();
  if (weights.num_layers() != topo.num_layers || weights.slots_per_rank() != k)
    throw std::invalid_argument("execute_migration: weight registry shape (" +
                                std::to_string(weights.num_layers()) + " layers, " +
                                std::to_string(weights.slots_per_rank()) +
                                " slots per rank) does not match the plan's topology " +
                                topo.describe());
  MigrationCounters c;
  c.staging_bytes = staging_bytes_needed(plan, weights);
  if (c.staging_bytes > 0 && !staging)
    throw std::invalid_argument("execute_migration: the plan needs staging but none was given");
  std::vector<int> stage_idx(static_cast<std::size_t>(topo.num_slots), -1);

  for (int l = 0; l < topo.num_layers; ++l) {
    const auto& lp = plan.layer(l);
    const auto tensors = weights.tensors(l);
    const StagingLayout layout(tensors);
    const std::size_t expert_bytes = weights.bytes_per_expert(l);
    auto slot_ptr = [&](int slot, std::size_t t) { return tensors[t].slot(slot - me * k); };
    auto loc = [&](int slot, std::size_t t) {
      return lp.staged[slot] ? staging + static_cast<std::size_t>(stage_idx[slot]) * layout.stride +
                                   layout.offset[t]
                             : slot_ptr(slot, t);
    };
    for (const auto& u : lp.units) {
      if (u.remote()) c.total_remote_bytes += expert_bytes;
      else c.total_local_bytes += expert_bytes;
      c.total_local_bytes += expert_bytes * static_cast<std::size_t>(u.num_dst - 1);
    }

    for (const auto& round : lp.rounds) {
      const auto* begin = lp.units.data() + round.first_unit;
      const auto* end = begin + round.num_units;
      int next_stage = 0;
      for (auto* u = begin; u != end; ++u)
        if (u->dst_rank == me)
          for (int q = 0; q < u->num_dst; ++q)
            if (lp.staged[lp.dst_begin(*u)[q]]) stage_idx[lp.dst_begin(*u)[q]] = next_stage++;

      const long long per_batch =
          options.max_units_per_batch > 0 ? options.max_units_per_batch : round.num_units;
      for (auto* b0 = begin; b0 < end; b0 += per_batch) {
        const auto* b1 = std::min(end, b0 + per_batch);
        transport.begin_batch();
        for (auto* u = b0; u != b1; ++u) {
          if (!u->remote()) continue;
          if (u->src_rank == me) {
            for (std::size_t t = 0; t < tensors.size(); ++t)
              transport.send(slot_ptr(u->src_slot, t), tensors[t].bytes_per_slot, u->dst_rank);
            c.bytes_sent += expert_bytes;
          } else if (u->dst_rank == me) {
            for (std::size_t t = 0; t < tensors.size(); ++t)
              transport.recv(loc(lp.dst_begin(*u)[0], t), tensors[t].bytes_per_slot, u->src_rank);
            c.bytes_received += expert_bytes;
          }
        }
        transport.end_batch();

        for (auto* u = b0; u != b1; ++u) {
          if (u->dst_rank != me) continue;
          const int d0 = lp.dst_begin(*u)[0];
          if (!u->remote()) {
            for (std::size_t t = 0; t < tensors.size(); ++t)
              transport.copy(loc(d0, t), slot_ptr(u->src_slot, t), tensors[t].bytes_per_slot);
            c.bytes_copied_local += expert_bytes;
          }
          for (int q = 1; q < u->num_dst; ++q) {
            for (std::size_t t = 0; t < tensors.size(); ++t)
              transport.copy(loc(lp.dst_begin(*u)[q], t), loc(d0, t), tensors[t].bytes_per_slot);
            c.bytes_copied_local += expert_bytes;
          }
        }
      }
      for (auto* u = begin; u != end; ++u) {
        if (u->dst_rank != me) continue;
        for (int q = 0; q < u->num_dst; ++q) {
          const int d = lp.dst_begin(*u)[q];
          if (!lp.staged[d]) continue;
          for (std::size_t t = 0; t < tensors.size(); ++t)
            transport.copy(slot_ptr(d, t), loc(d, t), tensors[t].bytes_per_slot);
          stage_idx[d] = -1;
        }
      }
      ++c.rounds;
    }
    if (layer_done) layer_done(l);
  }
  transport.synchronize();
  return c;
}

}  // namespace eplb::runtime
