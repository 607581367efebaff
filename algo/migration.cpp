#include "eplb/algo/migration.hpp"

#include <algorithm>
#include <stdexcept>

#include "eplb/algo/parallel.hpp"

namespace eplb::algo {
namespace {

/// Per-call scratch of the planner (one allocation set per plan, reused across layers).
struct Scratch {
  std::vector<int> rank_of;         // [R] slot -> rank (no division in the hot loops)
  std::vector<int> node_of;         // [P] rank -> node
  std::vector<int> unit_of_expert;  // [E] -> unit index on the current rank, -1 if none
  std::vector<int> holder_begin, holder_fill;  // [E]: CSR of the layer's old slots by expert
  std::vector<int> holder_slots;               // [R]
  std::vector<MoveUnit> units;       // the layer's units before ordering by round
  std::vector<int> dst;
  std::vector<MoveUnit> unit_buf;    // [R]: units and destinations while they are built
  std::vector<int> dst_buf;          // [R]
  std::vector<int> sends;                 // [P] units sent by each rank in this layer
  std::vector<int> reader_begin, reader_list;  // CSR: slot -> units reading its old content
  std::vector<int> adj_begin, adj_list;        // CSR: unit -> units that must not run earlier
  std::vector<int> index, low, scc_of, stack, order, scc_begin;  // Tarjan
  std::vector<char> on_stack;
  std::vector<std::pair<int, int>> call;  // (unit, next edge)
  std::vector<int> round_of;
  std::vector<int> staged_now;  // [P]
  std::vector<int> add;         // [P]
  std::vector<int> fill;
  std::vector<std::uint8_t> read;  // [R]: the slot's old content is read by a unit
};

struct Builder {
  const Topology& t;
  const MigrationOptions& opt;
  Scratch& s;
  int k, P, E, R;

  void build(const Placement& from, const Placement& to, int l, LayerPlan& lp,
             MigrationStats& st, std::vector<long long>& rank_sends,
             std::vector<long long>& rank_recvs, int& max_staged) {
    // Raw pointers in the hot loops: the vectors' data pointers would otherwise be reloaded
    // after every store (the compiler cannot rule out aliasing).
    const int* o = from.phy2log(l).data();
    const int* n = to.phy2log(l).data();
    std::vector<MoveUnit>& units = s.units;
    std::vector<int>& dst = s.dst;
    MoveUnit* up = s.unit_buf.data();  // R entries: at most one unit / destination per slot
    int* dp = s.dst_buf.data();
    int* uid = s.unit_of_expert.data();  // all -1 between ranks
    const int* rank_of = s.rank_of.data();
    int nu = 0, nd = 0, changed = 0;

    // 1. Units: one per (destination rank, expert), destinations ascending. Two passes per
    // rank (count, then place) keep it linear in the rank's slots.
    for (int r = 0; r < P; ++r) {
      const int first_unit = nu;
      for (int j = r * k; j < (r + 1) * k; ++j) {
        const int e = n[j];
        if (o[j] == e) continue;
        ++changed;
        int u = uid[e];
        if (u < 0) {
          u = nu++;
          uid[e] = u;
          up[u] = MoveUnit{};
          up[u].expert = e;
          up[u].dst_rank = r;
        }
        ++up[u].num_dst;
      }
      for (int u = first_unit; u < nu; ++u) {
        up[u].first_dst = nd;
        nd += up[u].num_dst;
        up[u].num_dst = 0;
      }
      for (int j = r * k; j < (r + 1) * k; ++j) {
        const int e = n[j];
        if (o[j] == e) continue;
        MoveUnit& u = up[uid[e]];
        dp[u.first_dst + u.num_dst++] = j;
      }
      for (int u = first_unit; u < nu; ++u) uid[up[u].expert] = -1;
    }
    lp.slots_changed = changed;

    // 2. Sources, from each expert's old slots (ascending): read from the old placement's
    // log2phy, or, when many units look them up, from one compact copy (the layer's slots
    // sorted by old expert with a counting sort: cache-resident, where log2phy's rows are
    // spread over E * X entries).
    s.sends.assign(static_cast<std::size_t>(P), 0);
    int* sends = s.sends.data();
    const int* node_of = s.node_of.data();
    const int* cnt_old = from.logcnt(l).data();
    // With few units (a placement that changes little) the scattered rows are cheaper than
    // sorting the layer.
    const bool compact = 4 * nu > R;
    int* hbegin = s.holder_begin.data();
    int* hslots = s.holder_slots.data();
    if (compact) {
      int* fill = s.holder_fill.data();
      int acc = 0;
      for (int e = 0; e < E; ++e) {
        hbegin[e] = acc;
        fill[e] = acc;
        acc += cnt_old[e];
      }
      for (int j = 0; j < R; ++j) hslots[fill[o[j]]++] = j;
    }
    for (int i = 0; i < nu; ++i) {
      MoveUnit& u = up[i];
      // One pass over the expert's old slots, ascending (so their ranks are ascending too):
      // a slot on the destination rank (a kept one first, else the lowest) makes a local
      // copy; otherwise the best holder rank (same node, then fewest sends so far, then the
      // lowest rank) sends from its slot chosen the same way.
      const int* holders = compact ? hslots + hbegin[u.expert] : from.log2phy(l, u.expert).data();
      const int num_holders = cnt_old[u.expert];
      const int dnode = node_of[u.dst_rank];
      int local = -1, best = -1, best_slot = -1;
      bool local_kept = false, best_kept = false;
      for (int x = 0; x < num_holders; ++x) {
        const int j = holders[x];
        const int h = rank_of[j];
        const bool kept = n[j] == u.expert;
        if (h == u.dst_rank) {
          if (local < 0 || (kept && !local_kept)) {
            local = j;
            local_kept = kept;
          }
          continue;
        }
        if (h == best) {
          if (kept && !best_kept) {
            best_slot = j;
            best_kept = true;
          }
          continue;
        }
        // A later holder has a higher rank, so on a tie the current best stays.
        const bool h_near = node_of[h] == dnode;
        if (best < 0 || (h_near != (node_of[best] == dnode) ? h_near : sends[h] < sends[best])) {
          best = h;
          best_slot = j;
          best_kept = kept;
        }
      }
      if (local >= 0) {
        u.src_rank = u.dst_rank;
        u.src_slot = local;
      } else {
        u.src_rank = best;
        u.src_slot = best_slot;
        ++sends[best];
      }
    }

    if (single_round(up, nu, dp, nd, lp, st, rank_sends, rank_recvs, max_staged)) return;
    units.assign(up, up + nu);
    dst.assign(dp, dp + nd);
    const int U = nu;
    // 3. Readers of each slot's old content, and the "must not run earlier" edges: a unit
    // writing slot d comes after (or with, through staging) every unit reading d.
    s.reader_begin.assign(static_cast<std::size_t>(R) + 1, 0);
    for (const auto& u : units) ++s.reader_begin[u.src_slot + 1];
    for (int j = 0; j < R; ++j) s.reader_begin[j + 1] += s.reader_begin[j];
    s.reader_list.assign(static_cast<std::size_t>(U), 0);
    {
      std::vector<int>& fill = s.add;
      fill.assign(s.reader_begin.begin(), s.reader_begin.end() - 1);
      for (int u = 0; u < U; ++u) s.reader_list[fill[units[u].src_slot]++] = u;
    }
    // Edge reader -> writer, stored per reader.
    s.adj_begin.assign(static_cast<std::size_t>(U) + 1, 0);
    for (int u = 0; u < U; ++u)
      for (int i = 0; i < units[u].num_dst; ++i) {
        const int d = dst[units[u].first_dst + i];
        for (int p = s.reader_begin[d]; p < s.reader_begin[d + 1]; ++p)
          ++s.adj_begin[s.reader_list[p] + 1];
      }
    for (int u = 0; u < U; ++u) s.adj_begin[u + 1] += s.adj_begin[u];
    s.adj_list.assign(static_cast<std::size_t>(s.adj_begin[U]), 0);
    {
      std::vector<int>& fill = s.fill;
      fill.assign(s.adj_begin.begin(), s.adj_begin.end() - 1);
      for (int u = 0; u < U; ++u)
        for (int i = 0; i < units[u].num_dst; ++i) {
          const int d = dst[units[u].first_dst + i];
          for (int p = s.reader_begin[d]; p < s.reader_begin[d + 1]; ++p)
            s.adj_list[fill[s.reader_list[p]]++] = u;
        }
    }

    // 4. Strongly connected components (iterative Tarjan); emitted in reverse topological
    // order of the edges, so reversing gives readers before writers.
    s.index.assign(static_cast<std::size_t>(U), -1);
    s.low.assign(static_cast<std::size_t>(U), 0);
    s.scc_of.assign(static_cast<std::size_t>(U), -1);
    s.stack.clear();
    s.order.clear();  // units grouped by SCC, in emission order
    std::vector<int>& scc_begin = s.scc_begin;
    scc_begin.clear();
    std::vector<char>& on_stack = s.on_stack;
    on_stack.assign(static_cast<std::size_t>(U), 0);
    std::vector<std::pair<int, int>>& call = s.call;  // (unit, next edge)
    call.clear();
    int counter = 0;
    for (int root = 0; root < U; ++root) {
      if (s.index[root] >= 0) continue;
      call.push_back({root, s.adj_begin[root]});
      s.index[root] = s.low[root] = counter++;
      s.stack.push_back(root);
      on_stack[root] = 1;
      while (!call.empty()) {
        auto& [v, e] = call.back();
        if (e < s.adj_begin[v + 1]) {
          const int w = s.adj_list[e++];
          if (s.index[w] < 0) {
            s.index[w] = s.low[w] = counter++;
            s.stack.push_back(w);
            on_stack[w] = 1;
            call.push_back({w, s.adj_begin[w]});
          } else if (on_stack[w]) {
            s.low[v] = std::min(s.low[v], s.index[w]);
          }
          continue;
        }
        if (s.low[v] == s.index[v]) {
          scc_begin.push_back(static_cast<int>(s.order.size()));
          int w;
          do {
            w = s.stack.back();
            s.stack.pop_back();
            on_stack[w] = 0;
            s.scc_of[w] = static_cast<int>(scc_begin.size()) - 1;
            s.order.push_back(w);
          } while (w != v);
        }
        const int done = v;
        call.pop_back();
        if (!call.empty()) s.low[call.back().first] = std::min(s.low[call.back().first], s.low[done]);
      }
    }
    scc_begin.push_back(static_cast<int>(s.order.size()));

    // 5. Rounds: components in topological order, greedily packed under the staging limit.
    s.round_of.assign(static_cast<std::size_t>(U), -1);
    s.staged_now.assign(static_cast<std::size_t>(P), 0);
    lp.staged.assign(static_cast<std::size_t>(R), 0);
    int round = 0;
    bool round_empty = true;
    const int limit = opt.max_staged_slots_per_rank;
    auto needs_staging = [&](int d, int r_now, int scc) {
      for (int p = s.reader_begin[d]; p < s.reader_begin[d + 1]; ++p) {
        const int rd = s.reader_list[p];
        if (s.round_of[rd] == r_now || s.scc_of[rd] == scc) return true;
      }
      return false;
    };
    for (int c = static_cast<int>(scc_begin.size()) - 2; c >= 0; --c) {
      for (int attempt = 0; attempt < 2; ++attempt) {
        s.add.assign(static_cast<std::size_t>(P), 0);
        bool over = false;
        for (int i = scc_begin[c]; i < scc_begin[c + 1]; ++i) {
          const auto& u = units[s.order[i]];
          for (int q = 0; q < u.num_dst; ++q)
            if (needs_staging(dst[u.first_dst + q], round, c)) ++s.add[u.dst_rank];
        }
        for (int r = 0; r < P; ++r)
          if (limit > 0 && s.staged_now[r] + s.add[r] > limit) over = true;
        if (over && !round_empty && attempt == 0) {
          ++round;
          round_empty = true;
          s.staged_now.assign(static_cast<std::size_t>(P), 0);
          continue;
        }
        for (int i = scc_begin[c]; i < scc_begin[c + 1]; ++i) {
          const auto& u = units[s.order[i]];
          for (int q = 0; q < u.num_dst; ++q) {
            const int d = dst[u.first_dst + q];
            if (needs_staging(d, round, c)) lp.staged[d] = 1;
          }
        }
        for (int i = scc_begin[c]; i < scc_begin[c + 1]; ++i) s.round_of[s.order[i]] = round;
        for (int r = 0; r < P; ++r) {
          s.staged_now[r] += s.add[r];
          max_staged = std::max(max_staged, s.staged_now[r]);
        }
        round_empty = false;
        break;
      }
    }
    const int num_rounds = U ? round + 1 : 0;

    // 6. Emit units ordered by (round, original index): a stable counting sort.
    lp.units.clear();
    lp.dst_slots.clear();
    lp.rounds.assign(static_cast<std::size_t>(num_rounds), Round{});
    for (int u = 0; u < U; ++u) ++lp.rounds[s.round_of[u]].num_units;
    for (int rd = 1; rd < num_rounds; ++rd)
      lp.rounds[rd].first_unit = lp.rounds[rd - 1].first_unit + lp.rounds[rd - 1].num_units;
    lp.units.resize(static_cast<std::size_t>(U));
    {
      std::vector<int>& next = s.fill;
      next.resize(static_cast<std::size_t>(num_rounds));
      for (int rd = 0; rd < num_rounds; ++rd) next[rd] = lp.rounds[rd].first_unit;
      for (int u = 0; u < U; ++u) lp.units[next[s.round_of[u]]++] = units[u];
    }
    for (auto& m : lp.units) {
      const int from_dst = m.first_dst;
      m.first_dst = static_cast<int>(lp.dst_slots.size());
      lp.dst_slots.insert(lp.dst_slots.end(), dst.begin() + from_dst,
                          dst.begin() + from_dst + m.num_dst);
    }
    count(lp, num_rounds, st, rank_sends, rank_recvs);
  }

  /// When every rank's staged slots fit the limit, the general ordering below puts all units
  /// in one round (no rank ever exceeds the limit) and stages exactly the destination slots
  /// that some unit reads (every reader of a slot is ordered before or with its writer).
  /// This computes that result directly, without the dependency graph. Returns false
  /// (nothing written) when some rank's staged slots exceed the limit.
  bool single_round(const MoveUnit* units, int nu, const int* dst, int nd, LayerPlan& lp,
                    MigrationStats& st, std::vector<long long>& rank_sends,
                    std::vector<long long>& rank_recvs, int& max_staged) {
    std::uint8_t* read = s.read.data();
    std::fill_n(read, R, std::uint8_t{0});
    for (int u = 0; u < nu; ++u) read[units[u].src_slot] = 1;
    int* staged_now = s.staged_now.data();
    std::fill_n(staged_now, P, 0);
    for (int i = 0; i < nd; ++i) staged_now[s.rank_of[dst[i]]] += read[dst[i]];
    const int most = nu == 0 ? 0 : *std::max_element(staged_now, staged_now + P);
    if (opt.max_staged_slots_per_rank > 0 && most > opt.max_staged_slots_per_rank) return false;
    // Into the plan's own vectors: a reused plan keeps their storage.
    lp.staged.assign(static_cast<std::size_t>(R), 0);
    for (int i = 0; i < nd; ++i) lp.staged[dst[i]] = read[dst[i]];
    const int num_rounds = nu == 0 ? 0 : 1;
    lp.rounds.assign(static_cast<std::size_t>(num_rounds), Round{0, nu});
    lp.units.assign(units, units + nu);
    lp.dst_slots.assign(dst, dst + nd);
    max_staged = std::max(max_staged, most);
    count(lp, num_rounds, st, rank_sends, rank_recvs);
    return true;
  }

  void count(const LayerPlan& lp, int num_rounds, MigrationStats& st,
             std::vector<long long>& rank_sends, std::vector<long long>& rank_recvs) const {
    st.slots_changed += lp.slots_changed;
    st.max_rounds = std::max(st.max_rounds, num_rounds);
    // Branch-free, into locals (the counters would otherwise go through memory: the stores
    // to rank_sends may alias st).
    long long fanout = 0, remote = 0, near = 0;
    long long* sends = rank_sends.data();
    long long* recvs = rank_recvs.data();
    const int* node_of = s.node_of.data();
    for (const auto& u : lp.units) {
      const int is_remote = u.src_rank != u.dst_rank;
      fanout += u.num_dst - 1;
      remote += is_remote;
      sends[u.src_rank] += is_remote;
      recvs[u.dst_rank] += is_remote;
      near += is_remote & static_cast<int>(node_of[u.src_rank] == node_of[u.dst_rank]);
    }
    st.fanout_copies += fanout;
    st.remote_units += remote;
    st.local_units += static_cast<long long>(lp.units.size()) - remote;
    st.same_node_remote += near;
  }
};

}  // namespace

namespace {
/// One planning thread's share: its scratch (kept between calls) and its totals.
struct Share {
  Scratch scratch;
  MigrationStats stats;
  std::vector<long long> sends, recvs;
  int max_staged = 0;
};

void plan_layers(const Placement& from, const Placement& to, const Topology& topo,
                 const MigrationOptions& options, std::vector<LayerPlan>& layers, int first,
                 int last, Share& sh) {
  Scratch& scratch = sh.scratch;
  const auto R = static_cast<std::size_t>(topo.num_slots);
  const auto E = static_cast<std::size_t>(topo.num_logical);
  const auto P = static_cast<std::size_t>(topo.num_ranks);
  scratch.rank_of.resize(R);
  for (int j = 0; j < topo.num_slots; ++j) scratch.rank_of[j] = topo.rank_of_slot(j);
  scratch.unit_of_expert.assign(E, -1);
  scratch.holder_begin.resize(E);
  scratch.holder_fill.resize(E);
  scratch.holder_slots.resize(R);
  scratch.unit_buf.resize(R);
  scratch.dst_buf.resize(R);
  scratch.read.resize(R);
  scratch.staged_now.resize(P);
  scratch.node_of.resize(P);
  for (int r = 0; r < topo.num_ranks; ++r) scratch.node_of[r] = topo.node_of_rank(r);
  sh.stats = MigrationStats{};
  sh.sends.assign(P, 0);
  sh.recvs.assign(P, 0);
  sh.max_staged = 0;
  Builder b{topo, options, scratch, topo.slots_per_rank(), topo.num_ranks, topo.num_logical,
            topo.num_slots};
  for (int l = first; l < last; ++l)
    b.build(from, to, l, layers[static_cast<std::size_t>(l)], sh.stats, sh.sends, sh.recvs,
            sh.max_staged);
}
}  // namespace

void plan_migration(const Placement& from, const Placement& to, const Topology& topo,
                    const MigrationOptions& options, MigrationPlan& plan) {
  topo.validate();
  from.check_shape(topo, "migration plan: old placement");
  to.check_shape(topo, "migration plan: new placement");
  if (options.max_staged_slots_per_rank < 0)
    throw std::invalid_argument("migration plan: max_staged_slots_per_rank >= 0 violated");
  if (options.threads < 1) throw std::invalid_argument("migration plan: threads >= 1 violated");
  const int L = topo.num_layers;
  plan.topo_ = topo;
  plan.layers_.resize(static_cast<std::size_t>(L));
  // Scratch per calling thread and share, kept between calls: planning allocates nothing in
  // steady state (fresh pages cost a page fault each on first touch, a large share of a
  // plan's time). Threads only where each gets enough changed slots that starting it (~10-50
  // us) pays, 2048 or more each: a plan's time follows its changed slots (V3, deepseek from
  // the contiguous layout, 16k changed: 1.5-2.1x less time on four threads; sticky's steady
  // state, ~1k changed in 58 layers: 30 us on one, 150 us on four; docs/BENCHMARKS.md).
  thread_local std::vector<Share> this_threads_shares;
  // A reference the workers capture: in their lambdas the thread_local name would denote the
  // worker's own (empty) vector.
  std::vector<Share>& shares = this_threads_shares;
  long long changed = 0;
  if (options.threads > 1) {
    const int* o = from.phy2log().data();
    const int* n = to.phy2log().data();
    const std::size_t all = from.phy2log().size();
    for (std::size_t i = 0; i < all; ++i) changed += o[i] != n[i];
  }
  const int T = static_cast<int>(std::max<long long>(1, std::min<long long>({options.threads, L, changed / 2048})));
  if (shares.size() < static_cast<std::size_t>(T)) shares.resize(static_cast<std::size_t>(T));
  // A share whose thread cannot start is planned by this thread: the plan stays whole.
  detail::run_shares(T, [&](int t) {
    plan_layers(from, to, topo, options, plan.layers_, L * t / T, L * (t + 1) / T,
                shares[static_cast<std::size_t>(t)]);
  });
  // Totals over the shares (sums and maxima: the same for any split).
  MigrationStats& st = plan.stats_;
  st = MigrationStats{};
  plan.max_staged_ = 0;
  std::vector<long long> sends(static_cast<std::size_t>(topo.num_ranks), 0), recvs = sends;
  for (int t = 0; t < T; ++t) {
    const Share& sh = shares[static_cast<std::size_t>(t)];
    st.slots_changed += sh.stats.slots_changed;
    st.remote_units += sh.stats.remote_units;
    st.local_units += sh.stats.local_units;
    st.fanout_copies += sh.stats.fanout_copies;
    st.same_node_remote += sh.stats.same_node_remote;
    st.max_rounds = std::max(st.max_rounds, sh.stats.max_rounds);
    plan.max_staged_ = std::max(plan.max_staged_, sh.max_staged);
    for (std::size_t r = 0; r < sends.size(); ++r) {
      sends[r] += sh.sends[r];
      recvs[r] += sh.recvs[r];
    }
  }
  st.max_rank_sends = *std::max_element(sends.begin(), sends.end());
  st.max_rank_recvs = *std::max_element(recvs.begin(), recvs.end());
}

MigrationPlan plan_migration(const Placement& from, const Placement& to, const Topology& topo,
                             const MigrationOptions& options) {
  MigrationPlan plan;
  plan_migration(from, to, topo, options, plan);
  return plan;
}

long long align_slots(const Placement& prev, Placement& next, const Topology& topo) {
  topo.validate();
  prev.check_shape(topo, "align_slots: previous placement");
  next.check_shape(topo, "align_slots: new placement");
  const int L = topo.num_layers, R = topo.num_slots, E = topo.num_logical, k = topo.slots_per_rank();
  thread_local std::vector<int> left, out;  // per expert: new replicas on the GPU not yet placed
  left.assign(static_cast<std::size_t>(E), 0);
  out.resize(static_cast<std::size_t>(L) * R);
  long long moved = 0;
  for (int l = 0; l < L; ++l) {
    const int* old = prev.phy2log(l).data();
    const int* nxt = next.phy2log(l).data();
    int* o = out.data() + static_cast<std::size_t>(l) * R;
    for (int g = 0; g < R; g += k) {
      for (int s = g; s < g + k; ++s) ++left[static_cast<std::size_t>(nxt[s])];
      for (int s = g; s < g + k; ++s) {  // slots that keep their expert
        int& n = left[static_cast<std::size_t>(old[s])];
        o[s] = n > 0 ? old[s] : -1;
        n -= n > 0;
      }
      for (int s = g; s < g + k; ++s) {  // a free slot takes next's expert for it if still due
        int& n = left[static_cast<std::size_t>(nxt[s])];
        if (o[s] >= 0 || n == 0) continue;
        o[s] = nxt[s];
        --n;
      }
      int free = g;
      for (int s = g; s < g + k; ++s) {  // the rest, in next's order, into the free slots
        int& n = left[static_cast<std::size_t>(nxt[s])];
        if (n == 0) continue;
        --n;
        while (o[free] >= 0) ++free;
        o[free] = nxt[s];
      }
      for (int s = g; s < g + k; ++s) moved += o[s] != nxt[s];
    }
  }
  if (moved) {
    thread_local std::vector<int> cnt;  // next's counts, copied: assign_counted replaces them
    cnt.assign(next.logcnt().begin(), next.logcnt().end());
    next.assign_counted(L, E, R, out, cnt);
  }
  return moved;
}

}  // namespace eplb::algo
