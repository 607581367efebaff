#include "eplb/algo/deepseek.hpp"

#include <algorithm>
#include <numeric>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "eplb/algo/parallel.hpp"

namespace eplb::algo {
namespace detail {
namespace {

using u32 = std::uint32_t;
using u64 = std::uint64_t;

/// Larger than every real key: padding leaves, full packs, end-of-list sentinels.
constexpr u64 kNone = ~u64{0};

/// Order-preserving key of a non-negative float (+0.0f folds -0.0 into +0).
inline u32 bits_of(float v) { return std::bit_cast<u32>(v + 0.0f); }
inline float float_of(u32 b) { return std::bit_cast<float>(b); }
inline u32 hi(u64 k) { return static_cast<u32>(k >> 32); }
inline u32 lo(u64 k) { return static_cast<u32>(k); }
inline u64 make_key(u32 h, u32 l) { return (u64{h} << 32) | l; }
/// Ascending keys order "larger value first, then lower index".
inline u64 desc_key(float v, u32 i) { return make_key(~bits_of(v), i); }

inline int ceil_log2(int m) { return std::bit_width(static_cast<u32>(m > 1 ? m - 1 : 0)); }

// ---------------------------------------------------------------------------------------
// Sorting

/// Insertion sort of src[0..n) into dst (src == dst sorts in place: src[i] is read before
/// anything at index >= i is written).
void insertion_sort(const u64* src, u64* dst, int n) {
  for (int i = 0; i < n; ++i) {
    const u64 x = src[i];
    int j = i;
    while (j > 0 && dst[j - 1] > x) {
      dst[j] = dst[j - 1];
      --j;
    }
    dst[j] = x;
  }
}
void insertion_sort(u64* a, int n) { insertion_sort(a, a, n); }

/// Sorts keys with distinct low words whose input order is ascending in the low word (so
/// sorting by the high word stably is sorting by the whole key), in place. A bucket sort
/// over the high words' range, then insertion sort, which only moves keys within their
/// bucket: every step is a short, mostly predictable loop, unlike a comparison sort's
/// data-dependent branches (std::sort was 3-4x slower for 32-384 keys; BENCHMARKS.md).
/// Buckets that collect many keys (a skewed range) are sorted on their own first.
void sort_node(u64* a, u64* tmp, int n, PackScratch& s) {
  if (n <= 16) {
    insertion_sort(a, n);
    return;
  }
  u32 mn = ~u32{0}, mx = 0;
  for (int i = 0; i < n; ++i) {
    mn = std::min(mn, hi(a[i]));
    mx = std::max(mx, hi(a[i]));
  }
  if (mn == mx) return;  // one high word: already in order
  // Bucket of h: floor((h - mn) * nb / (mx - mn + 1)) < nb, by a 32.32 fixed-point scale.
  const u32 nb = 2 * static_cast<u32>(n);
  const u64 scale = (u64{nb} << 32) / (u64{mx - mn} + 1);
  u32* c = grow(s.counts, nb);
  std::memset(c, 0, sizeof(u32) * nb);
  for (int i = 0; i < n; ++i) ++c[(u64{hi(a[i]) - mn} * scale) >> 32];
  u32 sum = 0, widest = 0;
  for (u32 b = 0; b < nb; ++b) {
    const u32 t = c[b];
    widest = std::max(widest, t);
    c[b] = sum;
    sum += t;
  }
  for (int i = 0; i < n; ++i) {
    const u64 k = a[i];
    tmp[c[(u64{hi(k) - mn} * scale) >> 32]++] = k;
  }
  if (widest > 32) {  // now c[b] is the end of bucket b
    u32 begin = 0;
    for (u32 b = 0; b < nb; ++b) {
      if (c[b] - begin > 32) std::sort(tmp + begin, tmp + c[b]);
      begin = c[b];
    }
  }
  insertion_sort(tmp, a, n);  // keys move only within their bucket
}

/// Sorts by the whole key (any input order).
void sort_keys(u64* a, int n) {
  if (n <= 32)
    insertion_sort(a, n);
  else
    std::sort(a, a + n);
}

// ---------------------------------------------------------------------------------------
// Priority queue: a tournament tree of 2^LOG leaves over uint64 keys (minimum at the root).
// Callers encode "value, then lowest index" orders into the key (value bits high, index low).
// The only update is "replace the minimum": the new root is min(new key, siblings on the
// leaf's path), whose loads do not wait for the new key, so a step's dependency chain is
// short. LOG < 0: size chosen at run time.

template <int LOG>
struct Tree {
  static constexpr int kSib = LOG > 0 ? LOG : 1;
  u64* t = nullptr;
  u64 root = kNone;
  int log = LOG;

  int levels() const {
    if constexpr (LOG >= 0)
      return LOG;
    else
      return log;
  }

  /// keys(i) for leaf i < n, kNone beyond.
  template <class KeyOf>
  void init(std::vector<u64>& storage, int n, int log_rt, KeyOf&& key_of) {
    if constexpr (LOG < 0) log = log_rt;
    const u32 leaves = 1u << levels();
    t = grow(storage, 2 * static_cast<std::size_t>(leaves));
    for (u32 i = 0; i < leaves; ++i) t[leaves + i] = i < static_cast<u32>(n) ? key_of(i) : kNone;
    for (u32 i = leaves - 1; i >= 1; --i) t[i] = std::min(t[2 * i], t[2 * i + 1]);
    root = t[1];
  }

  u64 front() const { return root; }

  void replace_front(u64 x, u32 leaf) {
    if constexpr (LOG == 0) {
      t[1] = root = x;
    } else if constexpr (LOG > 0) {
      const u32 i = (1u << LOG) + leaf;
      u64 sib[kSib];
      for (int d = 0; d < LOG; ++d) sib[d] = t[(i >> d) ^ 1u];
      t[i] = x;
      u64 pm = kNone;
      for (int d = 0; d + 1 < LOG; ++d) {
        pm = std::min(pm, sib[d]);
        t[i >> (d + 1)] = std::min(x, pm);
      }
      root = std::min(x, reduce<LOG>(sib));
      t[1] = root;
    } else {
      const u32 i = (1u << log) + leaf;
      t[i] = x;
      u64 v = x;
      for (u32 j = i; j > 1; j >>= 1) {
        v = std::min(v, t[j ^ 1u]);
        t[j >> 1] = v;
      }
      root = v;
    }
  }

 private:
  template <int N>
  static u64 reduce(const u64* v) {
    if constexpr (N == 1)
      return v[0];
    else
      return std::min(reduce<N / 2>(v), reduce<N - N / 2>(v + N / 2));
  }
};

/// A sorted array of M keys held in registers (M small): the minimum is a[0]; replacing it
/// by a key x >= a[0] is a branch-free insertion (every slot is min(max(x, a[i]), a[i+1])),
/// so the next minimum is known two operations after x, without a trip through memory.
template <int M>
struct SortedQueue {
  u64 a[M];
  template <class KeyOf>
  void init(int n, KeyOf&& key_of) {  // key_of(i) ascending in i
    for (int i = 0; i < M; ++i) a[i] = i < n ? key_of(static_cast<u32>(i)) : kNone;
  }
  u64 front() const { return a[0]; }
  void replace_front(u64 x) {
    if constexpr (M == 1) {
      a[0] = x;
    } else {
      u64 b[M];
      b[0] = std::min(x, a[1]);
      for (int i = 1; i + 1 < M; ++i) b[i] = std::min(std::max(x, a[i]), a[i + 1]);
      b[M - 1] = std::max(x, a[M - 1]);
      for (int i = 0; i < M; ++i) a[i] = b[i];
    }
  }
};

/// Calls f(Tree<LOG>{}) for the tree size log, with a compile-time LOG where small.
template <class F>
void with_tree(int log, F&& f) {
  switch (log) {
    case 0: f(Tree<0>{}); break;
    case 1: f(Tree<1>{}); break;
    case 2: f(Tree<2>{}); break;
    case 3: f(Tree<3>{}); break;
    case 4: f(Tree<4>{}); break;
    case 5: f(Tree<5>{}); break;
    case 6: f(Tree<6>{}); break;
    case 7: f(Tree<7>{}); break;
    case 8: f(Tree<8>{}); break;
    default: f(Tree<-1>{}); break;
  }
}

// ---------------------------------------------------------------------------------------
// Greedy LPT over a merged item stream. Items are the union of two ascending key lists a
// and b (each ended by kNone); an item key is (~weight bits, index). Pack keys are
// (load bits, pack); full packs are kNone. emit(pack, rank, item index).

template <class Q, class Emit>
void lpt_run(Q& q, const u64* a, const u64* b, int total, int cap, int* fill, Emit&& emit) {
  for (int t = 0; t < total; ++t) {
    const u64 ka = *a, kb = *b;
    const bool take_a = ka < kb;
    const u64 item = take_a ? ka : kb;
    a += take_a;
    b += !take_a;
    const u64 f = q.front();
    const u32 pk = lo(f);
    const int r = fill[pk];
    fill[pk] = r + 1;
    emit(pk, r, lo(item));
    const float load = float_of(hi(f)) + float_of(~hi(item));
    q.replace_front(r + 1 < cap ? make_key(bits_of(load), pk) : kNone, pk);
  }
}

/// The same LPT for at most 8 packs with the fill count inside the pack key:
/// (load bits, pack << 16 | fill). Packs are distinct, so the fill bits never decide an order,
/// and the whole state stays in registers.
template <int M, class Emit>
void lpt_small(const u64* a, const u64* b, int total, int m, int cap, Emit&& emit) {
  SortedQueue<M> q;
  q.init(m, [](u32 p) { return u64{p} << 16; });
  for (int t = 0; t < total; ++t) {
    // The merge of the two item lists is a second dependency chain, independent of the
    // queue's, so the two overlap.
    const u64 ka = *a, kb = *b;
    const bool take_a = ka < kb;
    const u64 item = take_a ? ka : kb;
    a += take_a;
    b += !take_a;
    const u64 f = q.front();
    const u32 pk = lo(f) >> 16;
    const u32 r = lo(f) & 0xffffu;
    emit(pk, static_cast<int>(r), lo(item));
    const float load = float_of(hi(f)) + float_of(~hi(item));
    q.replace_front(static_cast<int>(r) + 1 < cap ? make_key(bits_of(load), (pk << 16) | (r + 1))
                                                  : kNone);
  }
}

/// m packs, cap items each, all empty.
template <class Emit>
void lpt(const u64* a, const u64* b, int total, int m, int cap, PackScratch& s, Emit&& emit) {
  if (m <= 8 && cap < 0xffff) {
    switch (m) {
      case 1: return lpt_small<1>(a, b, total, m, cap, emit);
      case 2: return lpt_small<2>(a, b, total, m, cap, emit);
      case 3: case 4: return lpt_small<4>(a, b, total, m, cap, emit);
      default: return lpt_small<8>(a, b, total, m, cap, emit);
    }
  }
  int* fill = grow(s.fill, static_cast<std::size_t>(m));
  std::fill_n(fill, m, 0);
  with_tree(ceil_log2(m), [&](auto q) {
    q.init(s.tree, m, ceil_log2(m), [](u32 p) { return u64{p}; });
    lpt_run(q, a, b, total, cap, fill, emit);
  });
}

/// Greedy replication: k replicas, one at a time, to the expert with the largest
/// w[e] / cnt[e] (ties: lowest e). Only the k heaviest experts (order: weight descending,
/// index ascending) can ever be chosen: an expert still at one replica is chosen only when
/// every expert before it in that order already has a second one. `sorted` holds the
/// experts' keys desc_key(w[e], e) in ascending order (at least min(k, n) of them).
void replicate_sorted(const float* w, const u64* sorted, int n, int k, int* cnt, int* picks,
                      PackScratch& s) {
  if (k <= 0) return;
  const int kc = std::min(k, n);
  if (kc <= 8) {
    auto run = [&](auto q) {
      q.init(kc, [&](u32 t) { return sorted[t]; });
      for (int t = 0; t < k; ++t) {
        const u32 e = lo(q.front());
        const int c = cnt[e] + 1;
        cnt[e] = c;
        picks[t] = static_cast<int>(e);
        q.replace_front(desc_key(w[e] / static_cast<float>(c), e));
      }
    };
    if (kc <= 2) return run(SortedQueue<2>{});
    if (kc <= 4) return run(SortedQueue<4>{});
    return run(SortedQueue<8>{});
  }
  int* leaf = grow(s.leaf, static_cast<std::size_t>(n));
  for (int t = 0; t < kc; ++t) leaf[lo(sorted[t])] = t;
  with_tree(ceil_log2(kc), [&](auto q) {
    q.init(s.tree, kc, ceil_log2(kc), [&](u32 t) { return sorted[t]; });
    for (int t = 0; t < k; ++t) {
      const u32 e = lo(q.front());
      const int c = cnt[e] + 1;
      cnt[e] = c;
      picks[t] = static_cast<int>(e);
      q.replace_front(desc_key(w[e] / static_cast<float>(c), e), static_cast<u32>(leaf[e]));
    }
  });
}

const u64 kNoneList[1] = {kNone};

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
  u64* a = grow(s.keys, static_cast<std::size_t>(n) + 1);
  u64* b = grow(s.keys2, static_cast<std::size_t>(n) + 1);
  for (int i = 0; i < n; ++i) a[i] = desc_key(w[i], static_cast<u32>(i));
  sort_node(a, b, n, s);
  u64* sorted = a;
  sorted[n] = kNone;
  lpt(sorted, kNoneList, n, m, cap, s, [&](u32 pk, int r, u32 item) {
    pack[item] = static_cast<int>(pk);
    rank[item] = r;
  });
}

void replicate_experts(std::span<const float> w, int r, std::span<int> phy2log,
                       std::span<int> count, PackScratch& s) {
  const int n = static_cast<int>(w.size());
  for (int j = 0; j < n; ++j) {
    phy2log[j] = j;
    count[j] = 1;
  }
  if (r == n) return;
  u64* a = grow(s.keys, static_cast<std::size_t>(n) + 1);
  u64* b = grow(s.keys2, static_cast<std::size_t>(n) + 1);
  for (int j = 0; j < n; ++j) a[j] = desc_key(w[j], static_cast<u32>(j));
  sort_node(a, b, n, s);
  const u64* sorted = a;
  replicate_sorted(w.data(), sorted, n, r - n, count.data(), phy2log.data() + n, s);
}

}  // namespace detail

namespace {
/// The shape of one row of the routine: a node's experts, slots and GPUs (the whole layer for
/// the global policy, which the reference runs as the hierarchical routine with G = N = 1).
detail::RowShape row_shape(const Topology& topo) {
  const int N = topo.hierarchical() ? topo.num_nodes : 1;
  return {topo.num_logical / N, topo.num_slots / N, topo.num_ranks / N};
}
}  // namespace

void DeepseekPolicy::rebalance_into(LoadView load, const Topology& topo,
                                    const Placement* previous, Placement& out) {
  topo.validate();
  load.validate(topo);
  if (previous) previous->check_shape(topo, "deepseek policy: previous placement");
  // A bad EPLB_DEEPSEEK_ACCESS throws here, on any CPU and whatever the setting, before any write.
  (void)detail::scalar_access();
  const int L = topo.num_layers, R = topo.num_slots;
  int* out_all = detail::grow(phy2log_, static_cast<std::size_t>(L) * R);
  const bool batched = batched_for(topo);
  int* cnt_all = batched ? detail::grow(logcnt_, static_cast<std::size_t>(L) * topo.num_logical) : nullptr;
  const int T = std::max(1, std::min(threads_, L));
  if (ws_.size() < static_cast<std::size_t>(T)) ws_.resize(static_cast<std::size_t>(T));
  detail::run_shares(T, [&](int t) {
    plan_layers(L * t / T, L * (t + 1) / T, load, topo, ws_[static_cast<std::size_t>(t)], out_all, cnt_all);
  });
  if (batched) {  // hand the buffers over (the previous placement's come back for reuse)
    phy2log_.resize(static_cast<std::size_t>(L) * R);
    logcnt_.resize(static_cast<std::size_t>(L) * topo.num_logical);
    out.adopt_counted(L, topo.num_logical, R, phy2log_, logcnt_);
  } else {
    out.assign(L, topo.num_logical, R, std::span<const int>(out_all, static_cast<std::size_t>(L) * R));
  }
}

void DeepseekPolicy::plan_layers(int first, int last, LoadView load, const Topology& topo,
                                 Workspace& ws, int* out_all, int* cnt_all) const {
  using detail::grow;
  using detail::u32;
  using detail::u64;
  // The reference runs the global policy as the hierarchical routine with G = N = 1.
  const bool hier = topo.hierarchical();
  const int E = topo.num_logical, R = topo.num_slots, P = topo.num_ranks;
  const int G = hier ? topo.num_groups : 1;
  const int N = hier ? topo.num_nodes : 1;
  const int gs = E / G, gpn = G / N, En = E / N, Rn = R / N, Pn = P / N, k = R / P;
  if (E % N != 0)  // implied by E % G == 0 and G % N == 0; kept for clarity of failure
    throw std::invalid_argument("deepseek policy: num_logical % num_nodes == 0 violated");
  const int K = Rn - En;           // replicas added per node
  const int Kc = std::min(K, En);  // experts that can receive them
  // Groups packed one per node (or a single group): node-major order is the identity.
  const bool identity = gpn == 1;

  auto& s = ws.scratch;
  float* wf = grow(ws.wf, E);
  float* row = grow(ws.row, E);
  float* gload = grow(ws.gload, G);
  int* m2l = grow(ws.mlog2log, E);
  int* cnt = grow(ws.cnt, En);
  int* picks = grow(ws.picks, std::max(K, 1));
  int* lid = grow(ws.lid, Rn);
  u32* tokb = grow(ws.tokb, En);
  u64* keys = grow(s.keys, static_cast<std::size_t>(std::max(E, G)) + 1);
  u64* keys2 = grow(s.keys2, static_cast<std::size_t>(std::max(E, G)) + 1);
  u64* items_u = grow(ws.items_u, static_cast<std::size_t>(En) + 1);
  u64* items_v = grow(ws.items_v, static_cast<std::size_t>(K + Kc) + 1);
  const detail::RowShape shape = row_shape(topo);
  const bool simd = cnt_all != nullptr;  // batched_for(topo): the caller decided
  if (simd) {
    grow(ws.simd.w, static_cast<std::size_t>(En) * detail::SimdScratch::kRows);
    grow(ws.lane_lid, static_cast<std::size_t>(En) * detail::SimdScratch::kRows);
    ws.pending = 0;
  }
  constexpr int kRows = detail::SimdScratch::kRows;
  // Queues row (layer l, node n) with loads wl and local-to-logical ids lid_l filled by the
  // caller; every 16 rows run together.
  auto queued = [&](int l, int n) {
    ws.lane_out[ws.pending] = out_all + static_cast<std::size_t>(l) * R + static_cast<std::size_t>(n) * Pn * k;
    ws.lane_cnt[ws.pending] = cnt_all + static_cast<std::size_t>(l) * E;
    if (++ws.pending == kRows) flush_rows(ws, En, shape);
  };
  auto lane_w = [&] { return ws.simd.w.data() + static_cast<std::size_t>(ws.pending) * En; };
  auto lane_lid = [&] { return ws.lane_lid.data() + static_cast<std::size_t>(ws.pending) * En; };
  int* group_at = grow(ws.gdest, G);
  ws.lid_identity = identity;
  ws.group_size = gs;
  ws.groups_per_row = gpn;
  if (simd) grow(ws.lane_groups, static_cast<std::size_t>(gpn) * kRows);

  for (int l = first; l < last; ++l) {
    const double* w = load.values.data() + static_cast<std::size_t>(l) * E;
    if (simd && identity) {  // no group step: the rows are slices of the layer
      for (int n = 0; n < N; ++n) {
        detail::to_float(w + static_cast<std::size_t>(n) * En, lane_w(), En);
        ws.lane_first[ws.pending] = n * En;  // lid[j] = n * En + j: no lid array needed
        queued(l, n);
      }
      continue;
    }
    if (simd)
      detail::to_float(w, wf, E);
    else
      for (int e = 0; e < E; ++e) wf[e] = static_cast<float>(w[e]);

    // 1. Groups to nodes; node-major ("mlog") numbering of experts.
    if (!identity) {
      // Group sums in double, each group's experts added in index order.
      double* gsum = grow(ws.gsum, G);
      if (simd) {
        detail::group_sums(wf, G, gs, gsum);
      } else {
        for (int g = 0; g < G; ++g) {
          double sum = 0;
          for (int i = 0; i < gs; ++i) sum += wf[g * gs + i];
          gsum[g] = sum;
        }
      }
      for (int g = 0; g < G; ++g) gload[g] = static_cast<float>(gsum[g]);
      for (int g = 0; g < G; ++g) keys[g] = detail::desc_key(gload[g], static_cast<u32>(g));
      detail::sort_keys(keys, G);
      keys[G] = detail::kNone;
      detail::lpt(keys, detail::kNoneList, G, N, gpn, s,
                  [&](u32 pk, int r, u32 g) { group_at[static_cast<int>(pk) * gpn + r] = static_cast<int>(g); });
      if (simd) {  // node n's row: its groups' loads, in node-major order
        for (int n = 0; n < N; ++n) {
          float* wl = lane_w();
          int* lid_l = lane_lid();
          for (int r = 0; r < gpn; ++r) {
            const int g = group_at[n * gpn + r];
            std::copy_n(wf + static_cast<std::size_t>(g) * gs, gs, wl + r * gs);
            std::iota(lid_l + r * gs, lid_l + (r + 1) * gs, g * gs);
            ws.lane_groups[static_cast<std::size_t>(ws.pending) * gpn + r] = g;
          }
          queued(l, n);
        }
        continue;
      }
      for (int slot = 0; slot < G; ++slot) {
        const int g = group_at[slot];
        std::copy_n(wf + static_cast<std::size_t>(g) * gs, gs, row + slot * gs);
        std::iota(m2l + slot * gs, m2l + (slot + 1) * gs, g * gs);
      }
    } else {
      std::copy_n(wf, E, row);
    }

    int* out_row = out_all + static_cast<std::size_t>(l) * R;
    // Every node's experts by weight descending (ties: lower index).
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < En; ++j)
        keys[n * En + j] = detail::make_key(~detail::bits_of(row[n * En + j]), static_cast<u32>(j));
    for (int n = 0; n < N; ++n) detail::sort_node(keys + static_cast<std::size_t>(n) * En, keys2, En, s);
    const u64* sorted = keys;

    for (int n = 0; n < N; ++n) {
      const u64* S = sorted + static_cast<std::size_t>(n) * En;
      const float* rw = row + static_cast<std::size_t>(n) * En;
      if (identity)
        for (int j = 0; j < En; ++j) lid[j] = n * En + j;
      else
        for (int j = 0; j < En; ++j) lid[j] = m2l[n * En + j];

      // 2. Replicas within the node.
      const u64* list_a;
      const u64* list_b = detail::kNoneList;
      if (K > 0) {
        std::fill_n(cnt, En, 1);
        detail::replicate_sorted(rw, S, En, K, cnt, picks, s);
        for (int t = 0; t < K; ++t) lid[En + t] = lid[picks[t]];
        // Items (replicas) by load per replica descending, ties by position p: experts
        // with one replica keep their sorted order (p = j); the few replicated ones get
        // their new load and are sorted apart, then both lists are merged.
        int nu = 0;
        for (int t = 0; t < En; ++t) {
          const u64 key = S[t];
          items_u[nu] = key;
          nu += cnt[detail::lo(key)] == 1;
        }
        items_u[nu] = detail::kNone;
        int nv = 0;
        for (int t = 0; t < Kc; ++t) {
          const u32 e = detail::lo(S[t]);
          tokb[e] = ~detail::bits_of(rw[e] / static_cast<float>(cnt[e]));
          items_v[nv] = detail::make_key(tokb[e], e);
          nv += cnt[e] > 1;
        }
        for (int t = 0; t < K; ++t)
          items_v[nv++] = detail::make_key(tokb[picks[t]], static_cast<u32>(En + t));
        detail::sort_keys(items_v, nv);
        items_v[nv] = detail::kNone;
        list_a = items_u;
        list_b = items_v;
      } else {
        std::copy_n(S, En, items_u);
        items_u[En] = detail::kNone;
        list_a = items_u;
      }

      // 3. Replicas to the node's GPUs; 4. global slots.
      if (k == 1) {  // the reference's shortcut: item p on pack p
        for (int p = 0; p < Rn; ++p) out_row[n * Pn + p] = lid[p];
      } else {
        int* node_out = out_row + static_cast<std::size_t>(n) * Pn * k;
        detail::lpt(list_a, list_b, Rn, Pn, k, s, [&](u32 pk, int r, u32 p) {
          node_out[static_cast<int>(pk) * k + r] = lid[p];
        });
      }
    }
  }
  if (simd && ws.pending > 0) flush_rows(ws, En, shape);
}

bool DeepseekPolicy::batched_for(const Topology& topo) const {
  return batched_ && detail::simd_rows_available() && detail::simd_rows_supported(row_shape(topo));
}

void DeepseekPolicy::flush_rows(Workspace& ws, int En, const detail::RowShape& shape) const {
  constexpr int kLanes = detail::SimdScratch::kLanes, kRows = detail::SimdScratch::kRows;
  const int filled = ws.pending;
  for (int row = filled; row < kRows; ++row)  // padding rows: copies, output unused
    std::copy_n(ws.simd.w.data(), En, ws.simd.w.data() + static_cast<std::size_t>(row) * En);
  const bool scalar = scalar_access();
  detail::sort_rows_simd(shape, ws.simd, (filled + kLanes - 1) / kLanes, scalar);
  for (int half = 0; half * kLanes < filled; ++half) {
    detail::plan_rows_simd(shape, ws.simd, half, scalar);
    for (int lane = 0; lane < kLanes && half * kLanes + lane < filled; ++lane)
      map_lane(ws, En, shape, lane, half * kLanes + lane);
  }
  ws.pending = 0;
}

void DeepseekPolicy::map_lane(Workspace& ws, int En, const detail::RowShape& shape, int lane, int row) const {
  // The kernel's buffers are the batch's (lane); the queue's are the row's.
  constexpr int kLanes = detail::SimdScratch::kLanes;
  const int slots = shape.slots;
  const int* item = ws.simd.slot_item.data() + static_cast<std::size_t>(lane) * slots;
  int* out = ws.lane_out[row];
  int* cnt = ws.lane_cnt[row];
  if (ws.lid_identity) {  // the row's experts are first .. first + En - 1
    const int first = ws.lane_first[row];
    detail::map_slots_offset(item, first, out, slots);
    if (slots == En)
      std::fill_n(cnt + first, En, 1);
    else
      detail::lane_counts(ws.simd.cnt.data(), lane, cnt + first, En);
    return;
  }
  const int* lid = ws.lane_lid.data() + static_cast<std::size_t>(row) * En;
  detail::map_slots(item, lid, out, slots);
  // The row is its groups' blocks of contiguous ids: counts go block by block.
  const int gs = ws.group_size;
  for (int r = 0; r < ws.groups_per_row; ++r) {
    int* block = cnt + static_cast<std::size_t>(ws.lane_groups[static_cast<std::size_t>(row) * ws.groups_per_row + r]) * gs;
    if (slots == En)
      std::fill_n(block, gs, 1);
    else
      detail::lane_counts(ws.simd.cnt.data() + static_cast<std::size_t>(r) * gs * kLanes, lane, block, gs);
  }
}

}  // namespace eplb::algo
