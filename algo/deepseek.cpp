#include "algo/deepseek.hpp"

#include <algorithm>
#include <bit>
#include <stdexcept>
#include <string>

namespace eplb::algo {
namespace detail {
namespace {

/// Order-preserving key of a non-negative float (+0.0f folds -0.0 into +0).
inline std::uint32_t bits_of(float v) { return std::bit_cast<std::uint32_t>(v + 0.0f); }

/// A tournament tree over uint64 keys: every inner node holds the smaller child, so the
/// root is the minimum and an update costs log2(leaves) branch-free comparisons. Callers
/// encode "value then lowest index" orders into the key (value bits high, index low).
class MinTree {
 public:
  void reset(std::vector<std::uint64_t>& storage, int n) {
    leaves_ = 1;
    while (leaves_ < n) leaves_ *= 2;
    storage.assign(static_cast<std::size_t>(2 * leaves_), ~std::uint64_t{0});
    t_ = storage.data();
  }
  void set_leaf(int i, std::uint64_t key) { t_[leaves_ + i] = key; }
  void build() {
    for (int i = leaves_ - 1; i >= 1; --i) t_[i] = std::min(t_[2 * i], t_[2 * i + 1]);
  }
  void update(int i, std::uint64_t key) {
    int n = leaves_ + i;
    t_[n] = key;
    for (n /= 2; n >= 1; n /= 2) t_[n] = std::min(t_[2 * n], t_[2 * n + 1]);
  }
  std::uint64_t top() const { return t_[1]; }

 private:
  std::uint64_t* t_ = nullptr;
  int leaves_ = 1;
};

constexpr std::uint64_t kFull = ~std::uint64_t{0};

}  // namespace

void balanced_packing(std::span<const float> w, int m, std::span<int> pack, std::span<int> rank,
                      PackScratch& s) {
  const int n = static_cast<int>(w.size());
  const int cap = n / m;
  if (cap == 1) {
    for (int i = 0; i < n; ++i) {
      pack[i] = i;
      rank[i] = 0;
    }
    return;
  }
  // Weight descending, index ascending, as one integer sort: ~bits in the high word.
  s.keys.resize(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    s.keys[i] = (static_cast<std::uint64_t>(~bits_of(w[i])) << 32) | static_cast<std::uint32_t>(i);
  std::sort(s.keys.begin(), s.keys.end());

  // Least loaded pack with room, ties to the lowest index: key = (load bits, pack).
  s.pack_load.assign(static_cast<std::size_t>(m), 0.0f);
  s.fill.assign(static_cast<std::size_t>(m), 0);
  MinTree tree;
  tree.reset(s.tree, m);
  for (int p = 0; p < m; ++p) tree.set_leaf(p, static_cast<std::uint64_t>(p));
  tree.build();
  for (int t = 0; t < n; ++t) {
    const int item = static_cast<int>(s.keys[t] & 0xffffffffu);
    const int p = static_cast<int>(tree.top() & 0xffffffffu);
    pack[item] = p;
    rank[item] = s.fill[p]++;
    s.pack_load[p] += w[item];
    tree.update(p, s.fill[p] < cap ? (static_cast<std::uint64_t>(bits_of(s.pack_load[p])) << 32) |
                                         static_cast<std::uint32_t>(p)
                                   : kFull);
  }
}

void replicate_experts(std::span<const float> w, int r, std::span<int> phy2log,
                       std::span<int> count, PackScratch& s) {
  const int n = static_cast<int>(w.size());
  for (int j = 0; j < n; ++j) {
    phy2log[j] = j;
    count[j] = 1;
  }
  if (r == n) return;
  // Largest load per replica, ties to the lowest index: key = (~value bits, expert).
  auto key = [](float v, int e) {
    return (static_cast<std::uint64_t>(~bits_of(v)) << 32) | static_cast<std::uint32_t>(e);
  };
  MinTree tree;
  tree.reset(s.tree, n);
  for (int j = 0; j < n; ++j) tree.set_leaf(j, key(w[j], j));
  tree.build();
  for (int i = n; i < r; ++i) {
    const int e = static_cast<int>(tree.top() & 0xffffffffu);
    phy2log[i] = e;
    ++count[e];
    tree.update(e, key(w[e] / static_cast<float>(count[e]), e));
  }
}

}  // namespace detail

void DeepseekPolicy::rebalance_into(LoadView load, const Topology& topo,
                                    const Placement* previous, Placement& out) {
  topo.validate();
  load.validate(topo);
  if (previous) previous->check_shape(topo, "deepseek policy: previous placement");

  // The reference runs the global policy as the hierarchical routine with G = N = 1.
  const bool hier = topo.hierarchical();
  const int L = topo.num_layers, E = topo.num_logical, R = topo.num_slots, P = topo.num_ranks;
  const int G = hier ? topo.num_groups : 1;
  const int N = hier ? topo.num_nodes : 1;
  const int gs = E / G, gpn = G / N, En = E / N, Rn = R / N, Pn = P / N, k = R / P;
  if (E % N != 0)  // implied by E % G == 0 and G % N == 0; kept for clarity of failure
    throw std::invalid_argument("deepseek policy: num_logical % num_nodes == 0 violated");

  wf_.resize(static_cast<std::size_t>(E));
  group_load_.resize(static_cast<std::size_t>(G));
  gpack_.resize(static_cast<std::size_t>(G));
  grank_.resize(static_cast<std::size_t>(G));
  mlog2log_.resize(static_cast<std::size_t>(E));
  row_.resize(static_cast<std::size_t>(En));
  phy2mlog_.resize(static_cast<std::size_t>(Rn));
  mcnt_.resize(static_cast<std::size_t>(En));
  tok_.resize(static_cast<std::size_t>(Rn));
  ppack_.resize(static_cast<std::size_t>(Rn));
  prank_.resize(static_cast<std::size_t>(Rn));
  phy2log_.resize(static_cast<std::size_t>(L) * R);

  for (int l = 0; l < L; ++l) {
    const auto w = load.row(l);
    for (int e = 0; e < E; ++e) wf_[e] = static_cast<float>(w[e]);

    // 1. Groups to nodes; node-major ("mlog") numbering of experts.
    for (int g = 0; g < G; ++g) {
      double sum = 0;
      for (int i = 0; i < gs; ++i) sum += wf_[g * gs + i];
      group_load_[g] = static_cast<float>(sum);
    }
    detail::balanced_packing(group_load_, N, gpack_, grank_, scratch_);
    for (int g = 0; g < G; ++g) {
      const int base = (gpack_[g] * gpn + grank_[g]) * gs;
      for (int i = 0; i < gs; ++i) mlog2log_[base + i] = g * gs + i;
    }

    int* out_row = phy2log_.data() + static_cast<std::size_t>(l) * R;
    for (int n = 0; n < N; ++n) {
      // 2. Replicas within the node.
      const int* m2l = mlog2log_.data() + static_cast<std::size_t>(n) * En;
      for (int i = 0; i < En; ++i) row_[i] = wf_[m2l[i]];
      detail::replicate_experts(row_, Rn, phy2mlog_, mcnt_, scratch_);
      // 3. Replicas to the node's GPUs.
      for (int p = 0; p < Rn; ++p)
        tok_[p] = row_[phy2mlog_[p]] / static_cast<float>(mcnt_[phy2mlog_[p]]);
      detail::balanced_packing(tok_, Pn, ppack_, prank_, scratch_);
      // 4. Assemble global slots.
      for (int p = 0; p < Rn; ++p)
        out_row[(n * Pn + ppack_[p]) * k + prank_[p]] = m2l[phy2mlog_[p]];
    }
  }
  out.assign(L, E, R, phy2log_);
}

}  // namespace eplb::algo
