#include "eplb/algo/spill.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "eplb/algo/deepseek.hpp"

namespace eplb::algo {
namespace {

/// Items (by weight descending, ties by index) to the least loaded pack with room (ties: the
/// lowest index): the reference's greedy packing, written plainly (this policy is an option;
/// its sizes are small). order, load, fill: scratch.
void greedy_pack(const std::vector<double>& w, int packs, int cap, std::vector<int>& pack_of,
                 std::vector<int>& order, std::vector<double>& load, std::vector<int>& fill) {
  order.resize(w.size());
  std::iota(order.begin(), order.end(), 0);
  // std::sort with the index as tie-break: the order of a stable sort, without its buffer.
  std::sort(order.begin(), order.end(), [&](int a, int b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  load.assign(static_cast<std::size_t>(packs), 0);
  fill.assign(static_cast<std::size_t>(packs), 0);
  pack_of.assign(w.size(), -1);
  for (int i : order) {
    int best = -1;
    for (int p = 0; p < packs; ++p)
      if (fill[p] < cap && (best < 0 || load[p] < load[best])) best = p;
    pack_of[i] = best;
    load[best] += w[i];
    ++fill[best];
  }
}

}  // namespace

void SpillPolicy::rebalance_into(LoadView load, const Topology& topo, const Placement* previous,
                                 Placement& out) {
  topo.validate();
  load.validate(topo);
  if (previous) previous->check_shape(topo, "hierarchical-spill policy: previous placement");
  if (!topo.hierarchical() || topo.num_nodes == 1) {  // nothing to spill: the reference
    reference_.rebalance_into(load, topo, previous, out);
    return;
  }
  const int L = topo.num_layers, E = topo.num_logical, R = topo.num_slots, N = topo.num_nodes;
  const int G = topo.num_groups, gs = E / G, Rn = R / N, Pn = topo.ranks_per_node();
  const int k = topo.slots_per_rank();
  Scratch& s = s_;
  s.phy2log.assign(static_cast<std::size_t>(L) * R, 0);
  s.gload_f.resize(static_cast<std::size_t>(G));
  s.node_load.resize(static_cast<std::size_t>(N));
  s.node_of_group.resize(static_cast<std::size_t>(G));
  s.group_rank.resize(static_cast<std::size_t>(G));
  s.cnt.resize(static_cast<std::size_t>(E));
  s.free_slots.resize(static_cast<std::size_t>(N));
  s.node_items.resize(static_cast<std::size_t>(N));
  for (int l = 0; l < L; ++l) {
    const auto w = load.row(l);
    // 1. Groups to nodes, as the reference does: its packing of the group sums as floats
    // (one group per node: group g on node g), so that the home nodes are the reference's.
    for (int g = 0; g < G; ++g)
      s.gload_f[g] = static_cast<float>(std::accumulate(w.begin() + g * gs, w.begin() + (g + 1) * gs, 0.0));
    detail::balanced_packing(s.gload_f, N, s.node_of_group, s.group_rank, s.pack);
    // 2. Replica counts over the whole layer: one each, then the largest load per replica.
    auto& cnt = s.cnt;
    std::fill(cnt.begin(), cnt.end(), 1);
    for (int i = E; i < R; ++i) {
      int best = 0;
      for (int e = 1; e < E; ++e)
        if (w[e] / cnt[e] > w[best] / cnt[best]) best = e;
      ++cnt[best];
    }
    // 3. First replicas on the home node; extra replicas, heaviest first, on the least loaded
    // node with a free slot (ties: the home node, then the lowest node).
    for (auto& v : s.node_items) v.clear();
    std::fill(s.node_load.begin(), s.node_load.end(), 0.0);
    std::fill(s.free_slots.begin(), s.free_slots.end(), Rn);
    for (int e = 0; e < E; ++e) {
      const int n = s.node_of_group[e / gs];
      s.node_items[n].push_back(e);
      s.node_load[n] += w[e] / cnt[e];
      --s.free_slots[n];
    }
    s.extra.clear();
    for (int e = 0; e < E; ++e)
      for (int r = 1; r < cnt[e]; ++r) s.extra.push_back(e);
    std::sort(s.extra.begin(), s.extra.end(), [&](int a, int b) {  // ties: lower expert first
      const double wa = w[a] / cnt[a], wb = w[b] / cnt[b];
      return wa > wb || (wa == wb && a < b);
    });
    for (int e : s.extra) {
      const int home = s.node_of_group[e / gs];
      int best = -1;
      for (int n = 0; n < N; ++n) {
        if (s.free_slots[n] == 0) continue;
        if (best < 0 || s.node_load[n] < s.node_load[best] ||
            (s.node_load[n] == s.node_load[best] && n == home))
          best = n;
      }
      s.node_items[best].push_back(e);
      s.node_load[best] += w[e] / cnt[e];
      --s.free_slots[best];
    }
    // 4. Each node's replicas onto its GPUs (greedy packing, k per GPU).
    int* row = s.phy2log.data() + static_cast<std::size_t>(l) * R;
    for (int n = 0; n < N; ++n) {
      const auto& items = s.node_items[n];
      s.item_w.resize(items.size());
      for (std::size_t i = 0; i < items.size(); ++i) s.item_w[i] = w[items[i]] / cnt[items[i]];
      greedy_pack(s.item_w, Pn, k, s.gpu_of, s.order, s.pack_load, s.fill);
      std::fill(s.fill.begin(), s.fill.end(), 0);  // now: slots used per GPU
      for (std::size_t i = 0; i < items.size(); ++i) {
        const int gpu = s.gpu_of[i];
        row[(n * Pn + gpu) * k + s.fill[gpu]++] = items[i];
      }
    }
  }
  out.assign(L, E, R, s.phy2log);
}

double node_local_traffic(LoadView load, const Placement& placement, const Topology& topo) {
  topo.validate();
  load.validate(topo);
  placement.check_shape(topo, "node_local_traffic");
  const int E = topo.num_logical, R = topo.num_slots, N = topo.num_nodes;
  const int G = topo.hierarchical() ? topo.num_groups : E;  // no groups: each expert alone
  const int gs = E / G, per_node = R / N;
  double local = 0, total = 0;
  std::vector<int> count(static_cast<std::size_t>(G) * N);
  for (int l = 0; l < topo.num_layers; ++l) {
    std::fill(count.begin(), count.end(), 0);
    const auto p2l = placement.phy2log(l);
    for (int j = 0; j < R; ++j) ++count[static_cast<std::size_t>(p2l[j] / gs) * N + j / per_node];
    std::vector<int> home(static_cast<std::size_t>(G));
    for (int g = 0; g < G; ++g)
      home[g] = static_cast<int>(std::max_element(count.begin() + g * N, count.begin() + (g + 1) * N) -
                                 (count.begin() + g * N));
    const auto w = load.row(l);
    const auto cnt = placement.logcnt(l);
    for (int j = 0; j < R; ++j) {
      const int e = p2l[j];
      const double share = w[e] / cnt[e];
      total += share;
      if (j / per_node == home[e / gs]) local += share;
    }
  }
  return total > 0 ? local / total : 1.0;
}

}  // namespace eplb::algo
