#include "eplb/runtime/migrate.hpp"

#include <algorithm>
#include <exception>
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
  /// The stride alone (no offsets vector).
  static std::size_t stride_of(std::span<const TensorView> tensors) {
    std::size_t s = 0;
    for (const auto& t : tensors) s += align256(t.bytes_per_slot);
    return s;
  }
};

/// Whether destination q of unit u is written through staging. A slot is staged when a unit
/// of the same round reads its old content; in coalesced mode only a local unit's first
/// destination still needs it (received experts are unpacked and fan-out is copied after every
/// read of old content in the round).
bool through_staging(const algo::LayerPlan& lp, const algo::MoveUnit& u, int q, bool coalesce) {
  return lp.staged[lp.dst_begin(u)[q]] && (!coalesce || (!u.remote() && q == 0));
}

/// What one layer needs on the busiest rank in its busiest round: staged slots, and with
/// coalescing the bytes it packs to send and the bytes it receives.
struct LayerNeed {
  std::size_t staging = 0, send = 0, recv = 0;
  std::size_t total() const { return staging + send + recv; }
};

/// Per-rank counters of layer_need(), kept across layers.
struct NeedScratch {
  std::vector<int> per, sends, recvs;
  explicit NeedScratch(int P)
      : per(static_cast<std::size_t>(P)), sends(per.size()), recvs(per.size()) {}
};

LayerNeed layer_need(const algo::LayerPlan& lp, std::size_t stride, NeedScratch& scratch,
                     bool coalesce) {
  auto& [per, sends, recvs] = scratch;
  int most = 0, most_sent = 0, most_recv = 0;
  for (const auto& round : lp.rounds) {
    std::fill(per.begin(), per.end(), 0);
    std::fill(sends.begin(), sends.end(), 0);
    std::fill(recvs.begin(), recvs.end(), 0);
    // No division (a unit's destinations are all on its dst_rank) and few branches.
    const algo::MoveUnit* units = lp.units.data() + round.first_unit;
    if (coalesce) {  // only a local unit's first destination can be staged
      for (int i = 0; i < round.num_units; ++i) {
        const auto& u = units[i];
        const auto d = static_cast<std::size_t>(u.dst_rank), s = static_cast<std::size_t>(u.src_rank);
        const int remote = u.remote();
        per[d] += lp.staged[static_cast<std::size_t>(lp.dst_begin(u)[0])] & (remote ^ 1);
        sends[s] += remote;
        recvs[d] += remote;
      }
      // Counts only grow within a round: the busiest rank's is its final count.
      most = std::max(most, *std::max_element(per.begin(), per.end()));
      most_sent = std::max(most_sent, *std::max_element(sends.begin(), sends.end()));
      most_recv = std::max(most_recv, *std::max_element(recvs.begin(), recvs.end()));
    } else {
      for (int i = 0; i < round.num_units; ++i) {
        const auto& u = units[i];
        const int* dst = lp.dst_begin(u);
        for (int q = 0; q < u.num_dst; ++q)
          if (lp.staged[static_cast<std::size_t>(dst[q])])
            most = std::max(most, ++per[static_cast<std::size_t>(u.dst_rank)]);
      }
    }
  }
  return {stride * static_cast<std::size_t>(most), stride * static_cast<std::size_t>(most_sent),
          stride * static_cast<std::size_t>(most_recv)};
}

/// Consecutive layers migrated together: [first, last) and each layer's staging offset.
struct Window {
  int first, last;
  std::vector<std::size_t> offset;  // per layer of the window: its staged slots
  std::size_t staging = 0;          // staged slots of all layers
  std::size_t send = 0, recv = 0;   // pack buffers (coalescing), after the staged slots
  std::size_t rounds = 0;           // of its layers, the most rounds (its steps)
  std::size_t bytes() const { return staging + send + recv; }
};

/// Windows: a layer joins the current window while the window's staging stays within `cap`
/// (a window always takes at least one layer). Depends only on the plan, the weight layout
/// and the options, so every rank forms the same windows.
std::vector<Window> greedy_windows(const algo::MigrationPlan& plan, std::span<const LayerNeed> needs,
                                   const ExecOptions& options, std::size_t cap) {
  std::vector<Window> out;
  for (int l = 0; l < plan.num_layers(); ++l) {
    const LayerNeed& need = needs[static_cast<std::size_t>(l)];
    const bool join = !out.empty() && options.max_layers_per_window != 1 &&
                      (options.max_layers_per_window == 0 ||
                       out.back().last - out.back().first < options.max_layers_per_window) &&
                      out.back().bytes() + need.total() <= cap;
    if (!join) out.push_back(Window{l, l, {}, 0, 0, 0, 0});
    auto& w = out.back();
    w.rounds = std::max(w.rounds, plan.layer(l).rounds.size());
    w.offset.push_back(w.staging);
    w.staging += need.staging;
    w.send += need.send;
    w.recv += need.recv;
    w.last = l + 1;
  }
  return out;
}

/// The fewest windows the budget allows, as even as possible: greedy within the budget gives
/// the count n; then the smallest cap that still needs only n windows. Greedy alone can leave
/// a last window of one small layer, whose pipeline fill and drain cost as much as a large
/// one's (on 2 H200s a V3-sized migration took 80 ms in windows of 7 + 1 layers and 70 ms in
/// 4 + 4, docs/BENCHMARKS.md).
std::vector<Window> make_windows(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                 const ExecOptions& options) {
  const auto& t = plan.topology();
  NeedScratch scratch(t.num_ranks);
  std::vector<LayerNeed> needs;
  needs.reserve(static_cast<std::size_t>(plan.num_layers()));
  for (int l = 0; l < plan.num_layers(); ++l)
    needs.push_back(layer_need(plan.layer(l), StagingLayout::stride_of(weights.tensors(l)), scratch,
                               options.coalesce));
  auto out = greedy_windows(plan, needs, options, options.staging_budget);
  // Only when the budget decides (no budget, or a layer cap, keeps the windows as they are).
  if (out.size() < 2 || options.max_layers_per_window != 0 || options.staging_budget == 0) return out;
  std::size_t lo = 0, hi = 0;  // the cap searched in (lo, hi]: hi = greedy's largest window
  for (const auto& w : out) hi = std::max(hi, w.bytes());
  for (const auto& n : needs) lo = std::max(lo, n.total());
  if (lo == 0) return out;
  --lo;
  auto count = [&](std::size_t cap) {  // greedy_windows(..., cap).size(), without building them
    std::size_t n = 0, bytes = 0;
    for (const auto& need : needs) {
      if (n == 0 || bytes + need.total() > cap) {
        ++n;
        bytes = 0;
      }
      bytes += need.total();
    }
    return n;
  };
  while (hi - lo > 1) {
    const std::size_t mid = lo + (hi - lo) / 2;
    (count(mid) <= out.size() ? hi : lo) = mid;
  }
  return greedy_windows(plan, needs, options, hi);
}

/// The windows of a migration and the staging they use: one region, or two that
/// consecutive steps alternate between when steps overlap (docs/MIGRATION.md).
struct Regions {
  std::vector<Window> windows;
  std::size_t region = 0;  // bytes of one region: the largest window
  std::size_t count = 1;
  std::size_t total() const { return region * count; }
};

/// Overlapping steps (coalesced mode, more than one step) needs two regions: windows are
/// formed within half the budget, and used only if two regions fit the whole budget (or
/// there is no budget: 0, with which make_windows joins no layers, so each window is one
/// layer and the caller allocates what the plan needs); otherwise one region, as without
/// overlap.
Regions staging_regions(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                        const ExecOptions& options) {
  auto form = [&](std::size_t budget) {
    ExecOptions o = options;
    o.staging_budget = budget;
    Regions r;
    r.windows = make_windows(plan, weights, o);
    for (const auto& w : r.windows) r.region = std::max(r.region, w.bytes());
    return r;
  };
  if (options.coalesce && options.overlap_steps) {
    Regions r = form(options.staging_budget / 2);
    std::size_t steps = 0;
    for (const auto& w : r.windows) steps += w.rounds;
    if (steps <= 1) return r;
    r.count = 2;
    if (options.staging_budget == 0 || r.total() <= options.staging_budget) return r;
  }
  return form(options.staging_budget);
}

}  // namespace

std::size_t staging_bytes_needed(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                 const ExecOptions& options) {
  return staging_regions(plan, weights, options).total();
}

namespace {

struct Item {
  int layer;
  const algo::MoveUnit* unit;
};

/// One step of a migration: round `round` of every layer of one window, with its staging
/// region and, in coalesced mode, the layout of its pack and receive buffers.
struct Step {
  const Window* win = nullptr;
  std::size_t round = 0;
  bool last_of_window = false;
  std::byte* base = nullptr;  // region: [staged slots | send buffer | receive buffer]
  std::vector<Item> items;
  std::vector<std::size_t> item_off, peer_span;  // per item; per (batch, peer): 4 numbers
  std::vector<comm::Transport::Mark> arrived;    // per batch
  std::size_t per_batch = 1, nb = 0;
  std::pair<std::size_t, std::size_t> batch_items(std::size_t b) const {  // [i0, i1) of batch b
    return {b * per_batch, std::min(items.size(), (b + 1) * per_batch)};
  }
  std::byte* send_buf() const { return base + win->staging; }
  std::byte* recv_buf() const { return base + win->staging + win->send; }
};

}  // namespace

namespace detail {

/// Runs one migration on this rank. Everything it uses is allocated by the constructor (and
/// the transport's reserve()), so run() allocates nothing once it has issued its first
/// transfer (tracing aside): a rank out of memory fails before any weight moves.
class Executor {
 public:
  Executor(const algo::MigrationPlan& plan, const WeightRegistry& weights, comm::Transport& tr,
           int me, const ExecOptions& options)
      : plan_(plan), topo_(plan.topology()), weights_(weights), tr_(tr), me_(me), opt_(options),
        k_(topo_.slots_per_rank()), R_(topo_.num_slots),
        stage_idx_(static_cast<std::size_t>(topo_.num_layers) * R_, -1),
        regions_(staging_regions(plan, weights, options)) {
    layouts_.reserve(static_cast<std::size_t>(topo_.num_layers));
    for (int l = 0; l < topo_.num_layers; ++l) layouts_.emplace_back(weights.tensors(l));
    reserve();
  }

  std::size_t staging_bytes() const { return regions_.total(); }
  MigrationCounters run(std::span<std::byte> staging, const std::function<void(int)>& layer_done);

 private:
  using Lane = comm::Lane;
  using Mark = comm::Transport::Mark;

  std::byte* slot_ptr(int l, int slot, std::size_t t) const {
    return weights_.tensors(l)[t].slot(slot - me_ * k_);
  }
  std::size_t move_bytes(int l, std::size_t t) const { return weights_.tensors(l)[t].bytes_per_slot; }
  std::size_t num_tensors(int l) const { return weights_.tensors(l).size(); }
  /// Where destination `slot` of layer l is written in this step: the slot, or its staging.
  std::byte* loc(const Step& st, int l, int slot, std::size_t t) const {
    if (!plan_.layer(l).staged[slot]) return slot_ptr(l, slot, t);
    return st.base + st.win->offset[l - st.win->first] +
           static_cast<std::size_t>(stage_idx_[static_cast<std::size_t>(l) * R_ + slot]) *
               layouts_[l].stride +
           layouts_[l].offset[t];
  }
  void reserve();
  std::size_t units_per_batch(std::size_t items) const;
  void collect(Step& st);
  void front(Step& st, bool first);
  void back(Step& st);
  void per_tensor(Step& st);
  void add(std::byte* dst, const std::byte* src, std::size_t bytes) { ops_.push_back({dst, src, bytes}); }
  void flush() {  // the phase's copies, on the copy lane
    tr_.copy_all(ops_, Lane::copy);
    ops_.clear();
  }
  void fan_out(const Step& st, std::size_t i);
  void trace(const char* what, std::size_t batch = 0, std::size_t batches = 0);
  /// Tracing: `m` is a point of the device timeline.
  void point(Mark m, const char* what, std::size_t batch = 0, std::size_t batches = 0) {
    if (tracing()) points_.push_back({what, step_, batch, batches, m});
  }
  /// Tracing: a point of the device timeline at the end of what `lane` has so far.
  void point(Lane lane, const char* what, std::size_t batch = 0, std::size_t batches = 0) {
    if (tracing()) point(tr_.mark(lane), what, batch, batches);
  }
  void print_device_timeline();
  static bool tracing();

  const algo::MigrationPlan& plan_;
  const algo::Topology& topo_;
  const WeightRegistry& weights_;
  comm::Transport& tr_;
  const int me_;
  const ExecOptions opt_;
  const int k_, R_;
  std::vector<StagingLayout> layouts_;
  std::vector<int> stage_idx_;  // (layer, slot) -> index among the layer's staged slots
  const Regions regions_;
  Step steps_[2];  // consecutive steps alternate (overlapping: both are in flight)
  bool ran_ = false;
  std::vector<comm::Transport::CopyOp> ops_;  // one phase's copies
  MigrationCounters c_;
  std::chrono::steady_clock::time_point t_issue_ = std::chrono::steady_clock::now();
  std::size_t step_ = 0;
  bool overlap_ = false;  // steps overlap, on two staging regions
  struct Point {
    const char* what;
    std::size_t step, batch, batches;
    Mark mark;
  };
  std::vector<Point> points_;
};

bool Executor::tracing() { return comm::migration_tracing(); }

/// Units per batch of a step of `items` units (every rank splits the same list alike).
std::size_t Executor::units_per_batch(std::size_t items) const {
  std::size_t per = opt_.max_units_per_batch > 0 ? static_cast<std::size_t>(opt_.max_units_per_batch)
                                                 : std::max<std::size_t>(items, 1);
  if (opt_.coalesce) {
    // At least pipeline_batches batches, of equal unit counts, so that packing and
    // unpacking overlap transfers.
    const std::size_t parts = static_cast<std::size_t>(std::max(opt_.pipeline_batches, 1));
    per = std::min(per, std::max<std::size_t>(1, (items + parts - 1) / parts));
  }
  return per;
}

/// The most any step needs (units, batches, copies in one phase, messages in one batch) and
/// the marks of the whole migration: the steps' lists, the copy list and the transport are
/// sized for them here.
void Executor::reserve() {
  const std::size_t P = static_cast<std::size_t>(topo_.num_ranks);
  std::size_t items_max = 0, batches_max = 0, ops_max = 0, messages_max = 0, marks = 0, points = 0;
  for (const auto& w : regions_.windows)
    for (std::size_t r = 0; r < w.rounds; ++r) {
      std::size_t items = 0, ops = 0, tensor_max = 0;
      for (int l = w.first; l < w.last; ++l) {
        const auto& lp = plan_.layer(l);
        if (r >= lp.rounds.size()) continue;
        const auto& round = lp.rounds[r];
        items += static_cast<std::size_t>(round.num_units);
        tensor_max = std::max(tensor_max, num_tensors(l));
        for (int i = round.first_unit; i < round.first_unit + round.num_units; ++i)
          ops += static_cast<std::size_t>(lp.units[i].num_dst) * num_tensors(l);  // a phase copies at most this
      }
      const std::size_t per = units_per_batch(items), nb = (items + per - 1) / per;
      items_max = std::max(items_max, items);
      batches_max = std::max(batches_max, nb);
      ops_max = std::max(ops_max, ops);
      // Coalesced: one send and one receive per peer and batch; per tensor: one message per
      // tensor of each unit of the batch.
      messages_max = std::max(messages_max, opt_.coalesce ? 2 * P : per * tensor_max);
      if (opt_.coalesce) {
        marks += 2 + 2 * nb;   // front's wait and join, each batch's packed and arrived marks
        points += 2 + 3 * nb;  // tracing: the points of front() and back()
      }
    }
  for (auto& st : steps_) {
    st.items.reserve(items_max);
    st.item_off.reserve(items_max);
    st.peer_span.reserve(batches_max * P * 4);
    st.arrived.reserve(batches_max);
  }
  if (opt_.coalesce) ops_.reserve(ops_max);
  if (tracing()) {
    points_.reserve(points);
    marks += points;
  }
  tr_.reserve(messages_max, opt_.coalesce ? ops_max : 0, marks);
}

/// One line of the trace: "[eplb migrate rank 0] <clock> <ms> step <s>[ batch <b>/<n>]: <what>".
static void print_trace_line(const char* clock, double ms, std::size_t step, std::size_t batch,
                      std::size_t batches, const char* what) {
  if (batches)
    std::fprintf(stderr, "[eplb migrate rank 0] %s %9.3f ms  step %zu batch %zu/%zu: %s\n", clock, ms,
                 step, batch + 1, batches, what);
  else
    std::fprintf(stderr, "[eplb migrate rank 0] %s %9.3f ms  step %zu: %s\n", clock, ms, step, what);
}

void Executor::trace(const char* what, std::size_t batch, std::size_t batches) {
  if (!tracing() || me_ != 0) return;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_issue_).count();
  print_trace_line("host  ", ms, step_, batch, batches, what);
}

void Executor::print_device_timeline() {
  if (!tracing() || me_ != 0 || points_.empty()) return;
  if (tr_.elapsed_ms(points_[0].mark, points_[0].mark) < 0) return;  // cannot time marks
  for (const auto& p : points_)
    print_trace_line("device", tr_.elapsed_ms(points_[0].mark, p.mark), p.step, p.batch, p.batches, p.what);
}

/// The step's units (round `st.round` of every layer of its window) and the staging index
/// of each destination this rank writes through staging.
void Executor::collect(Step& st) {
  st.items.clear();
  for (int l = st.win->first; l < st.win->last; ++l) {
    const auto& lp = plan_.layer(l);
    if (st.round >= lp.rounds.size()) continue;
    const auto& round = lp.rounds[st.round];
    int next = 0;
    for (int i = round.first_unit; i < round.first_unit + round.num_units; ++i) {
      const auto& u = lp.units[i];
      st.items.push_back({l, &u});
      if (u.dst_rank != me_) continue;
      for (int q = 0; q < u.num_dst; ++q)
        if (through_staging(lp, u, q, opt_.coalesce))
          stage_idx_[static_cast<std::size_t>(l) * R_ + lp.dst_begin(u)[q]] = next++;
    }
  }
  st.per_batch = units_per_batch(st.items.size());
  st.nb = (st.items.size() + st.per_batch - 1) / st.per_batch;
}

/// Fan-out from a unit's first destination: its further destinations are read by no copy of
/// the round (packs and local copies only read old content, all issued before).
void Executor::fan_out(const Step& st, std::size_t i) {
  const auto [l, u] = st.items[i];
  const int* dst = plan_.layer(l).dst_begin(*u);
  for (int q = 1; q < u->num_dst; ++q) {
    for (std::size_t t = 0; t < num_tensors(l); ++t)
      add(slot_ptr(l, dst[q], t), slot_ptr(l, dst[0], t), move_bytes(l, t));
    c_.bytes_copied_local += weights_.bytes_per_expert(l);
  }
}

// Coalesced step, first half (docs/MIGRATION.md): on the copy lane, pack batch b, then the
// transfer lane sends it (host issue order too: the first transfer is queued before the later
// packs are issued); then the local copies, their staging commits and fan-out. Every read of
// old content of the step is issued here.
void Executor::front(Step& st, bool first) {
  const int P = topo_.num_ranks;
  const auto& its = st.items;
  st.item_off.assign(its.size(), 0);
  st.peer_span.assign(st.nb * P * 4, 0);  // per (batch, peer): send begin, len, recv begin, len
  std::size_t soff = 0, roff = 0;
  for (std::size_t b = 0; b < st.nb; ++b) {
    const auto [i0, i1] = st.batch_items(b);
    for (int p = 0; p < P; ++p) {
      std::size_t* span = st.peer_span.data() + (b * P + p) * 4;
      span[0] = soff;
      span[2] = roff;
      for (std::size_t i = i0; i < i1; ++i) {
        const auto [l, u] = its[i];
        if (!u->remote()) continue;
        if (u->src_rank == me_ && u->dst_rank == p) {
          st.item_off[i] = soff;
          soff += layouts_[l].stride;
        } else if (u->dst_rank == me_ && u->src_rank == p) {
          st.item_off[i] = roff;
          roff += layouts_[l].stride;
        }
      }
      span[1] = soff - span[0];
      span[3] = roff - span[2];
    }
  }
  // Overlapping steps: only the first waits for what the caller issued before; a later step
  // uses the other staging region, which the step before last has released (its unpacks,
  // which waited for all its transfers, precede this on the copy lane). Otherwise every
  // step starts after all earlier work.
  if (first || !overlap_) tr_.wait(Lane::copy, tr_.mark(Lane::transfer));
  point(Lane::copy, "start of packing");
  st.arrived.assign(st.nb, 0);
  for (std::size_t b = 0; b < st.nb; ++b) {
    const auto [i0, i1] = st.batch_items(b);
    for (std::size_t i = i0; i < i1; ++i) {
      const auto [l, u] = its[i];
      if (!u->remote() || u->src_rank != me_) continue;
      for (std::size_t t = 0; t < num_tensors(l); ++t)
        add(st.send_buf() + st.item_off[i] + layouts_[l].offset[t], slot_ptr(l, u->src_slot, t),
            move_bytes(l, t));
      c_.bytes_sent += weights_.bytes_per_expert(l);
    }
    flush();
    trace("packs issued", b, st.nb);
    const Mark packed = tr_.mark(Lane::copy);
    point(packed, "packed", b, st.nb);
    tr_.wait(Lane::transfer, packed);
    tr_.begin_batch();
    for (int p = 0; p < P; ++p) {
      const std::size_t* span = st.peer_span.data() + (b * P + p) * 4;
      if (span[1]) tr_.send(st.send_buf() + span[0], span[1], p);
      if (span[3]) tr_.recv(st.recv_buf() + span[2], span[3], p);
    }
    tr_.end_batch();
    st.arrived[b] = tr_.mark(Lane::transfer);
    point(st.arrived[b], "transferred", b, st.nb);
    trace("transfers issued", b, st.nb);
  }
  for (const auto& [l, u] : its) {  // local units read old content: before any unpack (a
    // first destination that another unit of the round reads is written through staging,
    // so no destination here is another copy's source)
    if (u->dst_rank != me_ || u->remote()) continue;
    const int d0 = plan_.layer(l).dst_begin(*u)[0];
    for (std::size_t t = 0; t < num_tensors(l); ++t)
      add(loc(st, l, d0, t), slot_ptr(l, u->src_slot, t), move_bytes(l, t));
    c_.bytes_copied_local += weights_.bytes_per_expert(l);
  }
  flush();
  for (const auto& [l, u] : its) {  // commit what local units wrote through staging
    if (u->dst_rank != me_ || u->remote()) continue;
    const int d0 = plan_.layer(l).dst_begin(*u)[0];
    if (!plan_.layer(l).staged[d0]) continue;
    for (std::size_t t = 0; t < num_tensors(l); ++t)
      add(slot_ptr(l, d0, t), loc(st, l, d0, t), move_bytes(l, t));
  }
  flush();
  for (std::size_t i = 0; i < its.size(); ++i)  // local units' fan-out: now
    if (its[i].unit->dst_rank == me_ && !its[i].unit->remote()) fan_out(st, i);
  flush();
  point(Lane::copy, "local copies done");
}

// Coalesced step, second half: unpack and fan out each batch once it has arrived, then join
// the lanes (later map commits on the transfer lane come after the step's copies).
void Executor::back(Step& st) {
  const auto& its = st.items;
  for (std::size_t b = 0; b < st.nb; ++b) {
    tr_.wait(Lane::copy, st.arrived[b]);
    const auto [i0, i1] = st.batch_items(b);
    for (std::size_t i = i0; i < i1; ++i) {
      const auto [l, u] = its[i];
      if (!u->remote() || u->dst_rank != me_) continue;
      const int d0 = plan_.layer(l).dst_begin(*u)[0];
      for (std::size_t t = 0; t < num_tensors(l); ++t)
        add(slot_ptr(l, d0, t), st.recv_buf() + st.item_off[i] + layouts_[l].offset[t], move_bytes(l, t));
      c_.bytes_received += weights_.bytes_per_expert(l);
    }
    flush();
    for (std::size_t i = i0; i < i1; ++i)
      if (its[i].unit->dst_rank == me_ && its[i].unit->remote()) fan_out(st, i);
    flush();
    point(Lane::copy, "unpacked", b, st.nb);
    trace("unpack and fan-out issued", b, st.nb);
  }
  tr_.wait(Lane::transfer, tr_.mark(Lane::copy));  // join
}

// Per-tensor step: per batch, one message per tensor per expert, received in place or in
// staging; the batch's local copies and fan-out; staged slots committed at the end.
void Executor::per_tensor(Step& st) {
  const auto& items = st.items;
  for (std::size_t b0 = 0; b0 < items.size(); b0 += st.per_batch) {
    const std::size_t b1 = std::min(items.size(), b0 + st.per_batch);
    tr_.begin_batch();
    for (std::size_t i = b0; i < b1; ++i) {
      const auto [l, u] = items[i];
      if (!u->remote()) continue;
      if (u->src_rank == me_) {
        for (std::size_t t = 0; t < num_tensors(l); ++t)
          tr_.send(slot_ptr(l, u->src_slot, t), move_bytes(l, t), u->dst_rank);
        c_.bytes_sent += weights_.bytes_per_expert(l);
      } else if (u->dst_rank == me_) {
        for (std::size_t t = 0; t < num_tensors(l); ++t)
          tr_.recv(loc(st, l, plan_.layer(l).dst_begin(*u)[0], t), move_bytes(l, t), u->src_rank);
        c_.bytes_received += weights_.bytes_per_expert(l);
      }
    }
    tr_.end_batch();
    for (std::size_t i = b0; i < b1; ++i) {
      const auto [l, u] = items[i];
      if (u->dst_rank != me_) continue;
      const auto& lp = plan_.layer(l);
      const int d0 = lp.dst_begin(*u)[0];
      if (!u->remote()) {
        for (std::size_t t = 0; t < num_tensors(l); ++t)
          tr_.copy(loc(st, l, d0, t), slot_ptr(l, u->src_slot, t), move_bytes(l, t));
        c_.bytes_copied_local += weights_.bytes_per_expert(l);
      }
      for (int q = 1; q < u->num_dst; ++q) {
        for (std::size_t t = 0; t < num_tensors(l); ++t)
          tr_.copy(loc(st, l, lp.dst_begin(*u)[q], t), loc(st, l, d0, t), move_bytes(l, t));
        c_.bytes_copied_local += weights_.bytes_per_expert(l);
      }
    }
  }
  // Commit: staged slots get their new content once every read of the old one is done.
  for (const auto& [l, u] : items) {
    if (u->dst_rank != me_) continue;
    const auto& lp = plan_.layer(l);
    for (int q = 0; q < u->num_dst; ++q) {
      const int d = lp.dst_begin(*u)[q];
      if (!lp.staged[d]) continue;
      for (std::size_t t = 0; t < num_tensors(l); ++t)
        tr_.copy(slot_ptr(l, d, t), loc(st, l, d, t), move_bytes(l, t));
      stage_idx_[static_cast<std::size_t>(l) * R_ + d] = -1;
    }
  }
}

MigrationCounters Executor::run(std::span<std::byte> staging_span, const std::function<void(int)>& layer_done) {
  if (ran_) throw std::logic_error("PreparedMigration::execute: this migration has already run");
  ran_ = true;
  t_issue_ = std::chrono::steady_clock::now();
  const Regions& regions = regions_;
  c_.staging_bytes = regions.total();
  // A buffer sized for other options (e.g. ExecOptions{} against the engine's) would be
  // written past its end.
  if (c_.staging_bytes > 0 && (!staging_span.data() || staging_span.size() < c_.staging_bytes))
    throw std::invalid_argument("execute_migration: the plan needs " + std::to_string(c_.staging_bytes) +
                                " bytes of staging with these options, " +
                                std::to_string(staging_span.size()) +
                                " were given (size it with staging_bytes_needed and the same options)");
  std::byte* const staging = staging_span.data();
  for (int l = 0; l < topo_.num_layers; ++l) {
    const std::size_t expert_bytes = weights_.bytes_per_expert(l);
    for (const auto& u : plan_.layer(l).units) {
      if (u.remote()) c_.total_remote_bytes += expert_bytes;
      else c_.total_local_bytes += expert_bytes;
      c_.total_local_bytes += expert_bytes * static_cast<std::size_t>(u.num_dst - 1);
    }
  }
  // A callback that throws must not stop this rank's part of the migration (the others wait
  // for its sends): the first exception is kept and rethrown once everything has completed.
  std::exception_ptr callback_error;
  auto report = [&](int first, int last) {
    if (!layer_done || callback_error) return;
    try {
      for (int l = first; l < last; ++l) layer_done(l);
    } catch (...) {
      callback_error = std::current_exception();
    }
  };
  auto finish = [&](const Step& st) {
    if (st.last_of_window) report(st.win->first, st.win->last);
  };
  // Steps alternate between the two staging regions. Overlapping (coalesced mode): step s's
  // packs and transfers are issued before step s-1's unpacks, so the links go on from one
  // step's last batch to the next step's first (docs/MIGRATION.md).
  overlap_ = regions.count > 1;
  Step* prev = nullptr;  // overlapping: the step whose back half is still to be issued
  std::size_t s = 0;
  auto drain = [&] {
    if (!prev) return;
    step_ = s - 1;
    back(*prev);
    finish(*prev);
    prev = nullptr;
  };
  for (const auto& w : regions.windows) {
    if (w.rounds == 0) {  // nothing moves in these layers: report them, in layer order
      drain();
      report(w.first, w.last);
      continue;
    }
    for (std::size_t r = 0; r < w.rounds; ++r, ++s) {
      step_ = s;
      Step& st = steps_[s % 2];
      st.win = &w;
      st.round = r;
      st.last_of_window = r + 1 == w.rounds;
      st.base = staging + (overlap_ ? (s % 2) * regions.region : 0);
      collect(st);
      ++c_.rounds;
      if (!opt_.coalesce) {
        per_tensor(st);
        finish(st);
        continue;
      }
      front(st, s == 0);
      if (overlap_) {
        drain();  // step s-1's unpacks, after step s's packs and transfers
        prev = &st;
      } else {
        back(st);
        finish(st);
      }
    }
  }
  drain();
  c_.issue_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_issue_).count();
  tr_.synchronize();
  trace("all done (synchronized)");
  print_device_timeline();
  if (callback_error) std::rethrow_exception(callback_error);
  return c_;
}

}  // namespace detail

PreparedMigration::PreparedMigration(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                     comm::Transport& transport, int my_rank, const ExecOptions& options) {
  const auto& topo = plan.topology();
  if (my_rank < 0 || my_rank >= topo.num_ranks)
    throw std::invalid_argument("execute_migration: rank " + std::to_string(my_rank) + " outside [0, " +
                                std::to_string(topo.num_ranks) + ") of the plan's topology");
  if (weights.num_layers() != topo.num_layers || weights.slots_per_rank() != topo.slots_per_rank())
    throw std::invalid_argument("execute_migration: weight registry shape (" +
                                std::to_string(weights.num_layers()) + " layers, " +
                                std::to_string(weights.slots_per_rank()) +
                                " slots per rank) does not match the plan's topology " +
                                topo.describe());
  impl_ = std::make_unique<detail::Executor>(plan, weights, transport, my_rank, options);
}

PreparedMigration::~PreparedMigration() = default;
PreparedMigration::PreparedMigration(PreparedMigration&&) noexcept = default;
PreparedMigration& PreparedMigration::operator=(PreparedMigration&&) noexcept = default;

std::size_t PreparedMigration::staging_bytes() const { return impl_->staging_bytes(); }

MigrationCounters PreparedMigration::execute(std::span<std::byte> staging,
                                             const std::function<void(int)>& layer_done) {
  return impl_->run(staging, layer_done);
}

MigrationCounters execute_migration(const algo::MigrationPlan& plan, const WeightRegistry& weights,
                                    comm::Transport& transport, int me, std::span<std::byte> staging,
                                    const std::function<void(int)>& layer_done,
                                    const ExecOptions& options) {
  return PreparedMigration(plan, weights, transport, me, options).execute(staging, layer_done);
}

}  // namespace eplb::runtime
