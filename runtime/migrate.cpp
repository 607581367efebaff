#include "runtime/migrate.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <stdexcept>
#include <utility>
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

/// Whether destination q of unit u is written through staging. A slot is staged when a unit
/// of the same round reads its old content; in coalesced mode only a local unit's first
/// destination still needs it (received experts are unpacked and fan-out is copied after every
/// read of old content in the round).
bool through_staging(const algo::LayerPlan& lp, const algo::MoveUnit& u, int q, bool coalesce) {
  if (!lp.staged[lp.dst_begin(u)[q]]) return false;
  return !coalesce || (!u.remote() && q == 0);
}

/// What one layer needs on the busiest rank in its busiest round: staged slots, and with
/// coalescing the bytes it packs to send and the bytes it receives.
struct LayerNeed {
  std::size_t staging = 0, send = 0, recv = 0;
  std::size_t total() const { return staging + send + recv; }
};

LayerNeed layer_need(const algo::LayerPlan& lp, const StagingLayout& layout, int k, int P,
                     bool coalesce) {
  std::vector<int> per(static_cast<std::size_t>(P)), sends(per), recvs(per);
  int most = 0, most_sent = 0, most_recv = 0;
  for (const auto& round : lp.rounds) {
    std::fill(per.begin(), per.end(), 0);
    std::fill(sends.begin(), sends.end(), 0);
    std::fill(recvs.begin(), recvs.end(), 0);
    for (int i = round.first_unit; i < round.first_unit + round.num_units; ++i) {
      const auto& u = lp.units[i];
      for (int q = 0; q < u.num_dst; ++q)
        if (through_staging(lp, u, q, coalesce)) most = std::max(most, ++per[lp.dst_begin(u)[q] / k]);
      if (coalesce && u.remote()) {
        most_sent = std::max(most_sent, ++sends[u.src_rank]);
        most_recv = std::max(most_recv, ++recvs[u.dst_rank]);
      }
    }
  }
  return {layout.stride * static_cast<std::size_t>(most),
          layout.stride * static_cast<std::size_t>(most_sent),
          layout.stride * static_cast<std::size_t>(most_recv)};
}

/// Consecutive layers migrated together: [first, last) and each layer's staging offset.
struct Window {
  int first, last;
  std::vector<std::size_t> offset;  // per layer of the window: its staged slots
  std::size_t staging = 0;          // staged slots of all layers
  std::size_t send = 0, recv = 0;   // pack buffers (coalescing), after the staged slots
  std::size_t bytes() const { return staging + send + recv; }
};

/// Greedy windows: a layer joins the current window while the window's staging stays within
/// the budget (a window always takes at least one layer). Depends only on the plan, the
/// weight layout and the options, so every rank forms the same windows.
std::vector<Window> make_windows(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                 const ExecOptions& options) {
  const auto& t = plan.topology();
  std::vector<Window> out;
  for (int l = 0; l < plan.num_layers(); ++l) {
    const LayerNeed need = layer_need(plan.layer(l), StagingLayout(weights.tensors(l)),
                                      t.slots_per_rank(), t.num_ranks, options.coalesce);
    const bool join = !out.empty() && options.max_layers_per_window != 1 &&
                      (options.max_layers_per_window == 0 ||
                       out.back().last - out.back().first < options.max_layers_per_window) &&
                      out.back().bytes() + need.total() <= options.staging_budget;
    if (!join) out.push_back(Window{l, l, {}, 0, 0, 0});
    auto& w = out.back();
    w.offset.push_back(w.staging);
    w.staging += need.staging;
    w.send += need.send;
    w.recv += need.recv;
    w.last = l + 1;
  }
  return out;
}

}  // namespace

std::size_t staging_bytes_needed(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                 const ExecOptions& options) {
  std::size_t need = 0;
  for (const auto& w : make_windows(plan, weights, options)) need = std::max(need, w.bytes());
  return need;
}

MigrationCounters execute_migration(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                    comm::Transport& transport, int me, std::byte* staging,
                                    const std::function<void(int)>& layer_done,
                                    const ExecOptions& options) {
  const auto& topo = plan.topology();
  const int k = topo.slots_per_rank(), R = topo.num_slots;
  if (weights.num_layers() != topo.num_layers || weights.slots_per_rank() != k)
    throw std::invalid_argument("execute_migration: weight registry shape (" +
                                std::to_string(weights.num_layers()) + " layers, " +
                                std::to_string(weights.slots_per_rank()) +
                                " slots per rank) does not match the plan's topology " +
                                topo.describe());
  const auto t_issue = std::chrono::steady_clock::now();
  // EPLB_MIGRATION_TRACE=1: rank 0 prints when each step was issued (host time), to see
  // whether issuing keeps ahead of the device (docs/ENVIRONMENT.md).
  static const bool tracing = [] {
    const char* v = std::getenv("EPLB_MIGRATION_TRACE");
    return v && *v && std::string(v) != "0";
  }();
  auto trace = [&](const char* what, std::size_t batch = 0, std::size_t batches = 0) {
    if (!tracing || me != 0) return;
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_issue).count();
    if (batches)
      std::fprintf(stderr, "[eplb migrate rank 0] %9.3f ms  batch %zu/%zu: %s\n", ms, batch + 1, batches, what);
    else
      std::fprintf(stderr, "[eplb migrate rank 0] %9.3f ms  %s\n", ms, what);
  };
  MigrationCounters c;
  const auto windows = make_windows(plan, weights, options);
  for (const auto& w : windows) c.staging_bytes = std::max(c.staging_bytes, w.bytes());
  if (c.staging_bytes > 0 && !staging)
    throw std::invalid_argument("execute_migration: the plan needs staging but none was given");

  std::vector<StagingLayout> layouts;
  for (int l = 0; l < topo.num_layers; ++l) {
    layouts.emplace_back(weights.tensors(l));
    const std::size_t expert_bytes = weights.bytes_per_expert(l);
    for (const auto& u : plan.layer(l).units) {
      if (u.remote()) c.total_remote_bytes += expert_bytes;
      else c.total_local_bytes += expert_bytes;
      c.total_local_bytes += expert_bytes * static_cast<std::size_t>(u.num_dst - 1);
    }
  }
  // Staging position of a staged slot of this rank: (layer, slot) -> index within the
  // layer's staging region in the current round.
  std::vector<int> stage_idx(static_cast<std::size_t>(topo.num_layers) * R, -1);
  struct Item {
    int layer;
    const algo::MoveUnit* unit;
  };
  std::vector<Item> items;
  std::vector<std::size_t> item_off, peer_span;
  std::vector<comm::Transport::Mark> arrived;  // per batch
  std::vector<comm::Transport::CopyOp> ops;    // one phase's copies

  for (const auto& win : windows) {
    auto slot_ptr = [&](int l, int slot, std::size_t t) {
      return weights.tensors(l)[t].slot(slot - me * k);
    };
    auto loc = [&](int l, int slot, std::size_t t) {
      if (!plan.layer(l).staged[slot]) return slot_ptr(l, slot, t);
      return staging + win.offset[l - win.first] +
             static_cast<std::size_t>(stage_idx[static_cast<std::size_t>(l) * R + slot]) *
                 layouts[l].stride +
             layouts[l].offset[t];
    };
    auto move_bytes = [&](int l, std::size_t t) { return weights.tensors(l)[t].bytes_per_slot; };
    // Coalesced round: one message per peer and batch. Two lanes (docs/MIGRATION.md):
    // the copy lane packs every batch's sends, then does the local copies, their staging
    // commits and fan-out, then unpacks and fans out each batch once it has arrived; the
    // transfer lane runs batch b as soon as batch b is packed. So packing overlaps the first
    // transfers and unpacking the later ones. Received experts land in the receive buffer,
    // and no weight slot is written before all packs and local copies of the round, which
    // read old content, are issued on the same lane.
    std::byte* const send_buf = staging + win.staging;
    std::byte* const recv_buf = send_buf + win.send;
    using comm::Lane;
    auto run_coalesced_round = [&](const std::vector<Item>& its, std::size_t per_batch) {
      const int P = topo.num_ranks;
      const std::size_t nb = (its.size() + per_batch - 1) / per_batch;
      auto batch_items = [&](std::size_t b) {  // items [i0, i1) of batch b
        return std::pair{b * per_batch, std::min(its.size(), (b + 1) * per_batch)};
      };
      item_off.assign(its.size(), 0);
      peer_span.assign(nb * P * 4, 0);  // per (batch, peer): send begin, len, recv begin, len
      std::size_t soff = 0, roff = 0;
      for (std::size_t b = 0; b < nb; ++b) {
        const auto [i0, i1] = batch_items(b);
        for (int p = 0; p < P; ++p) {
          std::size_t* span = peer_span.data() + (b * P + p) * 4;
          span[0] = soff;
          span[2] = roff;
          for (std::size_t i = i0; i < i1; ++i) {
            const auto [l, u] = its[i];
            if (!u->remote()) continue;
            if (u->src_rank == me && u->dst_rank == p) {
              item_off[i] = soff;
              soff += layouts[l].stride;
            } else if (u->dst_rank == me && u->src_rank == p) {
              item_off[i] = roff;
              roff += layouts[l].stride;
            }
          }
          span[1] = soff - span[0];
          span[3] = roff - span[2];
        }
      }
      transport.wait(Lane::copy, transport.mark(Lane::transfer));  // after earlier work
      // Each phase's copies are independent of each other (distinct destinations, none of
      // which is another's source), so they go to the transport as one batch.
      auto add = [&](std::byte* dst, const std::byte* src, std::size_t bytes) {
        ops.push_back({dst, src, bytes});
      };
      auto flush = [&] {
        transport.copy_all(ops, Lane::copy);
        ops.clear();
      };
      arrived.assign(nb, 0);
      for (std::size_t b = 0; b < nb; ++b) {  // pack batch b, then send it (host issue order
        // too: the first transfer is queued before the later packs are issued)
        const auto [i0, i1] = batch_items(b);
        for (std::size_t i = i0; i < i1; ++i) {
          const auto [l, u] = its[i];
          if (!u->remote() || u->src_rank != me) continue;
          for (std::size_t t = 0; t < weights.tensors(l).size(); ++t)
            add(send_buf + item_off[i] + layouts[l].offset[t], slot_ptr(l, u->src_slot, t),
                move_bytes(l, t));
          c.bytes_sent += weights.bytes_per_expert(l);
        }
        flush();
        trace("packs issued", b, nb);
        transport.wait(Lane::transfer, transport.mark(Lane::copy));
        transport.begin_batch();
        for (int p = 0; p < P; ++p) {
          const std::size_t* span = peer_span.data() + (b * P + p) * 4;
          if (span[1]) transport.send(send_buf + span[0], span[1], p);
          if (span[3]) transport.recv(recv_buf + span[2], span[3], p);
        }
        transport.end_batch();
        arrived[b] = transport.mark(Lane::transfer);
        trace("transfers issued", b, nb);
      }
      for (const auto& [l, u] : its) {  // local units read old content: before any unpack
        // (a first destination that another unit of the round reads is written through
        // staging, so no destination here is another copy's source)
        if (u->dst_rank != me || u->remote()) continue;
        const int d0 = plan.layer(l).dst_begin(*u)[0];
        for (std::size_t t = 0; t < weights.tensors(l).size(); ++t)
          add(loc(l, d0, t), slot_ptr(l, u->src_slot, t), move_bytes(l, t));
        c.bytes_copied_local += weights.bytes_per_expert(l);
      }
      flush();
      for (const auto& [l, u] : its) {  // commit what local units wrote through staging
        if (u->dst_rank != me || u->remote()) continue;
        const int d0 = plan.layer(l).dst_begin(*u)[0];
        if (!plan.layer(l).staged[d0]) continue;
        for (std::size_t t = 0; t < weights.tensors(l).size(); ++t)
          add(slot_ptr(l, d0, t), loc(l, d0, t), move_bytes(l, t));
      }
      flush();
      // Fan-out from a unit's first destination: its further destinations are read by no
      // copy of the round (pack and local copies only read old content, all issued above).
      auto fan_out = [&](std::size_t i) {
        const auto [l, u] = its[i];
        const int* dst = plan.layer(l).dst_begin(*u);
        for (int q = 1; q < u->num_dst; ++q) {
          for (std::size_t t = 0; t < weights.tensors(l).size(); ++t)
            add(slot_ptr(l, dst[q], t), slot_ptr(l, dst[0], t), move_bytes(l, t));
          c.bytes_copied_local += weights.bytes_per_expert(l);
        }
      };
      for (std::size_t i = 0; i < its.size(); ++i)  // local units' fan-out: now
        if (its[i].unit->dst_rank == me && !its[i].unit->remote()) fan_out(i);
      flush();
      for (std::size_t b = 0; b < nb; ++b) {  // unpack each batch once it has arrived,
        transport.wait(Lane::copy, arrived[b]);  // then fan it out
        const auto [i0, i1] = batch_items(b);
        for (std::size_t i = i0; i < i1; ++i) {
          const auto [l, u] = its[i];
          if (!u->remote() || u->dst_rank != me) continue;
          const int d0 = plan.layer(l).dst_begin(*u)[0];
          for (std::size_t t = 0; t < weights.tensors(l).size(); ++t)
            add(slot_ptr(l, d0, t), recv_buf + item_off[i] + layouts[l].offset[t], move_bytes(l, t));
          c.bytes_received += weights.bytes_per_expert(l);
        }
        flush();
        for (std::size_t i = i0; i < i1; ++i)
          if (its[i].unit->dst_rank == me && its[i].unit->remote()) fan_out(i);
        flush();
        trace("unpack and fan-out issued", b, nb);
      }
      transport.wait(Lane::transfer, transport.mark(Lane::copy));  // join
    };
    std::size_t max_rounds = 0;
    for (int l = win.first; l < win.last; ++l)
      max_rounds = std::max(max_rounds, plan.layer(l).rounds.size());

    for (std::size_t r = 0; r < max_rounds; ++r) {
      // Round r of every layer of the window runs together.
      items.clear();
      for (int l = win.first; l < win.last; ++l) {
        const auto& lp = plan.layer(l);
        if (r >= lp.rounds.size()) continue;
        int next = 0;
        for (int i = lp.rounds[r].first_unit; i < lp.rounds[r].first_unit + lp.rounds[r].num_units; ++i) {
          const auto& u = lp.units[i];
          items.push_back({l, &u});
          if (u.dst_rank != me) continue;
          for (int q = 0; q < u.num_dst; ++q)
            if (through_staging(lp, u, q, options.coalesce))
              stage_idx[static_cast<std::size_t>(l) * R + lp.dst_begin(u)[q]] = next++;
        }
      }
      std::size_t per_batch =
          options.max_units_per_batch > 0 ? static_cast<std::size_t>(options.max_units_per_batch)
                                          : std::max<std::size_t>(items.size(), 1);
      if (options.coalesce) {
        // At least pipeline_batches batches, of equal unit counts, so that packing and
        // unpacking overlap transfers.
        const std::size_t parts = static_cast<std::size_t>(std::max(options.pipeline_batches, 1));
        per_batch = std::min(per_batch, std::max<std::size_t>(1, (items.size() + parts - 1) / parts));
        run_coalesced_round(items, per_batch);
        ++c.rounds;
        continue;
      }
      for (std::size_t b0 = 0; b0 < items.size(); b0 += per_batch) {
        const std::size_t b1 = std::min(items.size(), b0 + per_batch);
        transport.begin_batch();
        for (std::size_t i = b0; i < b1; ++i) {
          const auto [l, u] = items[i];
          if (!u->remote()) continue;
          const auto tensors = weights.tensors(l);
          if (u->src_rank == me) {
            for (std::size_t t = 0; t < tensors.size(); ++t)
              transport.send(slot_ptr(l, u->src_slot, t), move_bytes(l, t), u->dst_rank);
            c.bytes_sent += weights.bytes_per_expert(l);
          } else if (u->dst_rank == me) {
            for (std::size_t t = 0; t < tensors.size(); ++t)
              transport.recv(loc(l, plan.layer(l).dst_begin(*u)[0], t), move_bytes(l, t), u->src_rank);
            c.bytes_received += weights.bytes_per_expert(l);
          }
        }
        transport.end_batch();
        for (std::size_t i = b0; i < b1; ++i) {
          const auto [l, u] = items[i];
          if (u->dst_rank != me) continue;
          const auto& lp = plan.layer(l);
          const std::size_t nt = weights.tensors(l).size();
          const int d0 = lp.dst_begin(*u)[0];
          if (!u->remote()) {
            for (std::size_t t = 0; t < nt; ++t)
              transport.copy(loc(l, d0, t), slot_ptr(l, u->src_slot, t), move_bytes(l, t));
            c.bytes_copied_local += weights.bytes_per_expert(l);
          }
          for (int q = 1; q < u->num_dst; ++q) {
            for (std::size_t t = 0; t < nt; ++t)
              transport.copy(loc(l, lp.dst_begin(*u)[q], t), loc(l, d0, t), move_bytes(l, t));
            c.bytes_copied_local += weights.bytes_per_expert(l);
          }
        }
      }
      // Commit: staged slots get their new content once every read of the old one is done.
      for (const auto& [l, u] : items) {
        if (u->dst_rank != me) continue;
        const auto& lp = plan.layer(l);
        for (int q = 0; q < u->num_dst; ++q) {
          const int d = lp.dst_begin(*u)[q];
          if (!lp.staged[d]) continue;
          for (std::size_t t = 0; t < weights.tensors(l).size(); ++t)
            transport.copy(slot_ptr(l, d, t), loc(l, d, t), move_bytes(l, t));
          stage_idx[static_cast<std::size_t>(l) * R + d] = -1;
        }
      }
      ++c.rounds;
    }
    if (layer_done)
      for (int l = win.first; l < win.last; ++l) layer_done(l);
  }
  c.issue_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_issue).count();
  transport.synchronize();
  trace("all done (synchronized)");
  return c;
}

}  // namespace eplb::runtime
