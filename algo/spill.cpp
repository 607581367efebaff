#include "eplb/algo/spill.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "eplb/algo/deepseek.hpp"

namespace eplb::algo {
namespace {

/// Items (by weight descending, ties by index) to the least loaded pack with room (ties: the
/// lowest index): the reference's greedy packing, written plainly (this policy is an option;
/// its sizes are small).
void greedy_pack(const std::vector<double>& w, int packs, int cap, std::vector<int>& pack_of) {
  std::vector<int> order(w.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return w[a] > w[b]; });
  std::vector<double> load(static_cast<std::size_t>(packs), 0);
  std::vector<int> fill(static_cast<std::size_t>(packs), 0);
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
    DeepseekPolicy reference;
    reference.rebalance_into(load, topo, previous, out);
    return;
  }
  const int L = topo.num_layers, E = topo.num_logical, R = topo.num_slots, N = topo.num_nodes;
  const int G = topo.num_groups, gs = E / G, Rn = R / N, Pn = topo.ranks_per_node();
  const int k = topo.slots_per_rank();
  phy2log_.assign(static_cast<std::size_t>(L) * R, 0);
  std::vector<float> gload_f(static_cast<std::size_t>(G));
  std::vector<double> node_load(static_cast<std::size_t>(N));
  std::vector<int> node_of_group(static_cast<std::size_t>(G)), group_rank(static_cast<std::size_t>(G));
  std::vector<int> cnt(static_cast<std::size_t>(E)), free_slots(static_cast<std::size_t>(N));
  detail::PackScratch scratch;
  std::vector<std::vector<int>> node_items(static_cast<std::size_t>(N));  // experts, one per replica
  std::vector<int> gpu_of;
  std::vector<double> item_w;
  for (int l = 0; l < L; ++l) {
    const auto w = load.row(l);
    // 1. Groups to nodes, as the reference does: its packing of the group sums as floats
    // (one group per node: group g on node g), so that the home nodes are the reference's.
    for (int g = 0; g < G; ++g)
      gload_f[g] = static_cast<float>(std::accumulate(w.begin() + g * gs, w.begin() + (g + 1) * gs, 0.0));
    detail::balanced_packing(gload_f, N, node_of_group, group_rank, scratch);
    // 2. Replica counts over the whole layer: one each, then the largest load per replica.
    std::fill(cnt.begin(), cnt.end(), 1);
    for (int i = E; i < R; ++i) {
      int best = 0;
      for (int e = 1; e < E; ++e)
        if (w[e] / cnt[e] > w[best] / cnt[best]) best = e;
      ++cnt[best];
    }
    // 3. First replicas on the home node; extra replicas, heaviest first, on the least loaded
    // node with a free slot (ties: the home node, then the lowest node).
    for (auto& v : node_items) v.clear();
    std::fill(node_load.begin(), node_load.end(), 0.0);
    std::fill(free_slots.begin(), free_slots.end(), Rn);
    for (int e = 0; e < E; ++e) {
      const int n = node_of_group[e / gs];
      node_items[n].push_back(e);
      node_load[n] += w[e] / cnt[e];
      --free_slots[n];
    }
    std::vector<int> extra;
    for (int e = 0; e < E; ++e)
      for (int r = 1; r < cnt[e]; ++r) extra.push_back(e);
    std::stable_sort(extra.begin(), extra.end(),
                     [&](int a, int b) { return w[a] / cnt[a] > w[b] / cnt[b]; });
    for (int e : extra) {
      const int home = node_of_group[e / gs];
      int best = -1;
      for (int n = 0; n < N; ++n) {
        if (free_slots[n] == 0) continue;
        if (best < 0 || node_load[n] < node_load[best] ||
            (node_load[n] == node_load[best] && n == home))
          best = n;
      }
      node_items[best].push_back(e);
      node_load[best] += w[e] / cnt[e];
      --free_slots[best];
    }
    // 4. Each node's replicas onto its GPUs (greedy packing, k per GPU).
    int* row = phy2log_.data() + static_cast<std::size_t>(l) * R;
    for (int n = 0; n < N; ++n) {
      const auto& items = node_items[n];
      item_w.resize(items.size());
      for (std::size_t i = 0; i < items.size(); ++i) item_w[i] = w[items[i]] / cnt[items[i]];
      greedy_pack(item_w, Pn, k, gpu_of);
      std::vector<int> fill(static_cast<std::size_t>(Pn), 0);
      for (std::size_t i = 0; i < items.size(); ++i) {
        const int gpu = gpu_of[i];
        row[(n * Pn + gpu) * k + fill[gpu]++] = items[i];
      }
    }
  }
  out.assign(L, E, R, phy2log_);
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
