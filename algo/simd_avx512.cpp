// AVX-512 kernels of the algo layer (declared in simd_avx512.hpp; dispatched from simd.cpp,
// which checks the CPU first). The only file compiled with AVX-512 flags, so it must not
// instantiate anything with external linkage that another file could share: no standard
// library templates (a std::vector member or std::min instantiated here could be the copy
// the linker keeps for the whole program, AVX-512 instructions included, and run on a CPU
// without them). Raw pointers in, helpers in an anonymous namespace.
//
// Why lanes across rows: the policy's steps are short dependent chains (a priority queue
// updated once per item, an insertion into a sorted list); one row alone leaves the core
// waiting on latencies. Eight independent rows advance together in one register, so each
// step costs about what one row's step costs alone. Sorting is a fixed comparator network,
// the same for every lane.
#include "eplb/algo/simd_avx512.hpp"

#include <immintrin.h>

namespace eplb::algo::detail::avx512 {
namespace {

constexpr int kLanes = 8;
inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }
int pow2_at_least(int x) {
  int m = 1;
  while (m < x) m <<= 1;
  return m;
}
using u64 = std::uint64_t;  // a typedef: nothing instantiated

constexpr long long kNone = -1;  // all bits set: larger than every key, as unsigned

inline __m512i lane64() { return _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0); }
inline __m256i lane32() { return _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0); }

/// Lane-major element i of every lane: [i * 8 + lane].
inline __m512i load_row(const u64* a, int i) { return _mm512_loadu_si512(a + i * kLanes); }
inline void store_row(u64* a, int i, __m512i v) { _mm512_storeu_si512(a + i * kLanes, v); }
/// Element idx[lane] of each lane.
inline __m512i gather_at(const u64* a, __m512i idx) {
  return _mm512_i64gather_epi64(_mm512_add_epi64(_mm512_slli_epi64(idx, 3), lane64()), a, 8);
}
inline void scatter_at(u64* a, __m512i idx, __m512i v) {
  _mm512_i64scatter_epi64(a, _mm512_add_epi64(_mm512_slli_epi64(idx, 3), lane64()), v, 8);
}
/// As gather_at, by eight scalar loads. A load that reads what a scalar store of a recent step
/// wrote gets the value forwarded from the store; a gather after a scatter waits for the
/// scatter to reach the cache. The tournament trees read back what they wrote a step before.
inline __m512i load_at(const u64* a, __m512i idx) {
  const __m512i off = _mm512_add_epi64(_mm512_slli_epi64(idx, 3), lane64());
  const __m256i o_lo = _mm512_castsi512_si256(off), o_hi = _mm512_extracti64x4_epi64(off, 1);
  __m128i v[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m128i o = q < 2 ? (q == 0 ? _mm256_castsi256_si128(o_lo) : _mm256_extracti128_si256(o_lo, 1))
                            : (q == 2 ? _mm256_castsi256_si128(o_hi) : _mm256_extracti128_si256(o_hi, 1));
    v[q] = _mm_insert_epi64(_mm_cvtsi64_si128(static_cast<long long>(a[_mm_cvtsi128_si64(o)])),
                            static_cast<long long>(a[_mm_extract_epi64(o, 1)]), 1);
  }
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(v[0]), v[1], 1)),
                            _mm256_inserti128_si256(_mm256_castsi128_si256(v[2]), v[3], 1), 1);
}
/// Element idx[lane] of each lane = v[lane], by eight scalar stores (see load_at).
inline void store_at(u64* a, __m512i idx, __m512i v) {
  const __m512i off = _mm512_add_epi64(_mm512_slli_epi64(idx, 3), lane64());
  const __m256i o_lo = _mm512_castsi512_si256(off), o_hi = _mm512_extracti64x4_epi64(off, 1);
  const __m256i v_lo = _mm512_castsi512_si256(v), v_hi = _mm512_extracti64x4_epi64(v, 1);
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m256i oh = q < 2 ? o_lo : o_hi, vh = q < 2 ? v_lo : v_hi;
    const __m128i o = q % 2 ? _mm256_extracti128_si256(oh, 1) : _mm256_castsi256_si128(oh);
    const __m128i x = q % 2 ? _mm256_extracti128_si256(vh, 1) : _mm256_castsi256_si128(vh);
    a[_mm_cvtsi128_si64(o)] = static_cast<u64>(_mm_cvtsi128_si64(x));
    a[_mm_extract_epi64(o, 1)] = static_cast<u64>(_mm_extract_epi64(x, 1));
  }
}
inline __m256i index32(__m256i elem) {  // lane-major index of int32 element elem[lane]
  return _mm256_add_epi32(_mm256_slli_epi32(elem, 3), lane32());
}

/// Keys "larger value first, then lower index" (as the scalar desc_key): (~bits(v + 0), idx).
inline __m512i desc_keys(__m256 v, __m512i idx) {
  __m256i b = _mm256_castps_si256(_mm256_add_ps(v, _mm256_setzero_ps()));
  b = _mm256_xor_si256(b, _mm256_set1_epi32(-1));
  return _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(b), 32), idx);
}
inline __m512i low32(__m512i k) { return _mm512_and_si512(k, _mm512_set1_epi64(0xffffffffLL)); }
/// Item keys carry (position p << 16 | expert e) in their low word: p orders ties (positions
/// are distinct, so e never decides), e is what the slot gets.
inline __m512i expert_of(__m512i k) { return _mm512_and_si512(k, _mm512_set1_epi64(0xffff)); }
inline __m512i item_id(int p, __m512i e) {
  return _mm512_or_si512(_mm512_set1_epi64(static_cast<long long>(p) << 16), e);
}

// Bitonic sort, every comparator "minimum to the lower index": phase p turns sorted blocks of
// p into sorted blocks of 2p with a flip (i against 2p - 1 - i) and then half-cleaners at
// distances p/2, ..., 1. Distances below 16 stay inside aligned blocks of 16, which are run in
// registers; only the longer distances go through memory (Batcher's odd-even network, used
// first, has fewer comparators but sends every one of them through memory: slower here).
// Two key widths, one row of a register each: 64-bit keys of 8 rows (the policy's keys), and
// 32-bit keys of 16 rows (sort_keys16: twice the rows per instruction).

/// 64-bit keys, 8 lanes.
struct Wide {
  using T = u64;
  static constexpr int kStride = 8;
  static __m512i min(__m512i a, __m512i b) { return _mm512_min_epu64(a, b); }
  static __m512i max(__m512i a, __m512i b) { return _mm512_max_epu64(a, b); }
};
/// 32-bit keys, 16 lanes.
struct Narrow {
  using T = std::uint32_t;
  static constexpr int kStride = 16;
  static __m512i min(__m512i a, __m512i b) { return _mm512_min_epu32(a, b); }
  static __m512i max(__m512i a, __m512i b) { return _mm512_max_epu32(a, b); }
};

template <class W>
struct Net {
  using T = typename W::T;
  static __m512i load(const T* a, int i) { return _mm512_loadu_si512(a + i * W::kStride); }
  static void store(T* a, int i, __m512i v) { _mm512_storeu_si512(a + i * W::kStride, v); }
  static void cmpx(__m512i& a, __m512i& b) {
    const __m512i lo = W::min(a, b);
    b = W::max(a, b);
    a = lo;
  }
  static void cmpx_at(T* a, int i, int j) {
    __m512i x = load(a, i), y = load(a, j);
    cmpx(x, y);
    store(a, i, x);
    store(a, j, y);
  }
  /// Half-cleaners at distances K, K/2, ..., 1 on 16 rows in registers. Distances are
  /// template arguments so that every loop has constant bounds and unrolls completely: with
  /// run-time distances GCC kept the rows in a stack array (a load and a store around each
  /// comparator).
  template <int K>
  static void clean_from(__m512i* v) {
#pragma GCC unroll 16
    for (int x = 0; x < 16; ++x)
      if (!(x & K)) cmpx(v[x], v[x + K]);
    if constexpr (K > 1) clean_from<K / 2>(v);
  }
  /// Phases P, 2P, ..., 8 of the sort of 16 rows in registers: the flip, then half-cleaners.
  template <int P>
  static void sort16_from(__m512i* v) {
#pragma GCC unroll 16
    for (int b = 0; b < 16; b += 2 * P)
#pragma GCC unroll 8
      for (int i = 0; i < P; ++i) cmpx(v[b + i], v[b + 2 * P - 1 - i]);
    if constexpr (P > 1) clean_from<P / 2>(v);
    if constexpr (P < 8) sort16_from<2 * P>(v);
  }

  /// Rows a[0..n) sorted per lane; rows [n, sort_rows(n)] must hold the largest key (all bits
  /// set). They stay there: a comparator (i, j), i < j, with j >= n keeps both rows (min to
  /// i, and j holds the maximum), so those comparators and the blocks of 16 beyond n are
  /// skipped.
  static void sort(T* a, int n) {
    const int m = sort_rows(n);
    const int blocks_end = (n + 15) / 16 * 16;  // blocks holding a row < n
    __m512i v[16];
    for (int b = 0; b < blocks_end; b += 16) {
      for (int x = 0; x < 16; ++x) v[x] = load(a, b + x);
      sort16_from<1>(v);
      for (int x = 0; x < 16; ++x) store(a, b + x, v[x]);
    }
    for (int p = 16; p < m; p <<= 1) {
      for (int blk = 0; blk < n; blk += 2 * p)
        for (int i = imax(0, blk + 2 * p - n); i < p; ++i) cmpx_at(a, blk + i, blk + 2 * p - 1 - i);
      for (int k = p / 2; k >= 16; k >>= 1)  // pairs (x, x + k) with x & k == 0 and x + k < n
        for (int blk = 0; blk + k < n; blk += 2 * k)
          for (int x = blk, end = imin(blk + k, n - k); x < end; ++x) cmpx_at(a, x, x + k);
      for (int b = 0; b < blocks_end; b += 16) {
        for (int x = 0; x < 16; ++x) v[x] = load(a, b + x);
        clean_from<8>(v);
        for (int x = 0; x < 16; ++x) store(a, b + x, v[x]);
      }
    }
  }
};
inline void sort_lanes(u64* a, int n) { Net<Wide>::sort(a, n); }

/// A sorted list of M keys per lane in registers, minimum first; replace_front(x) with
/// x >= front is a branch-free insertion (the scalar SortedQueue, lane-wise).
template <int M>
struct VQueue {
  static constexpr bool kTree = false;
  __m512i a[M];
  __m512i front() const { return a[0]; }
  void replace_front(__m512i x, __m512i /*leaf*/) { replace_front(x); }
  void replace_front(__m512i x) {
    if constexpr (M == 1) {
      a[0] = x;
    } else {
      __m512i b[M];
      b[0] = _mm512_min_epu64(x, a[1]);
      for (int i = 1; i + 1 < M; ++i) b[i] = _mm512_min_epu64(_mm512_max_epu64(x, a[i]), a[i + 1]);
      b[M - 1] = _mm512_max_epu64(x, a[M - 1]);
      for (int i = 0; i < M; ++i) a[i] = b[i];
    }
  }
};

/// A tournament tree per lane over 2^LOG leaves (LOG > 3), for many packs, where VQueue's
/// insertion (2M min/max per step) costs more than the tree's walk. Levels 4..LOG live in
/// memory (node i of lane l at [i * 8 + l]): a step gathers the siblings on the leaf's path
/// at once (none of them changes in the step), recomputes the path with minimums and scatters
/// it back. The 8 nodes of level 3 live in registers: the path's level-3 node is replaced by
/// a blend under a compare, and the root is their minimum. Measured against the whole tree in
/// memory (Kimi-K2, 64 packs, in one process): the packing step 0.68-0.92x the time.
template <int LOG>
struct VTree {
  static_assert(LOG > 3);
  static constexpr int kLeaves = 1 << LOG;
  static constexpr int kMem = LOG - 3;  // levels in memory: 4..LOG
  static constexpr bool kTree = true;
  u64* t;
  bool scalar;     // nodes read and written by scalar loads and stores, else gathers and scatters
  __m512i top[8];  // level 3: nodes 8..15
  __m512i root;
  __m512i front() const { return root; }
  /// Leaves i < n get key(i) (a vector), the rest kNone.
  template <class KeyOf>
  void init(u64* storage, int n, bool scalar_access, KeyOf&& key_of) {
    for (int i = 0; i < n; ++i) store_row(storage, kLeaves + i, key_of(i));
    build(storage, n, scalar_access);
  }
  /// Leaves i < n already stored: the rest get kNone, the inner nodes their minimums.
  void build(u64* storage, int n, bool scalar_access) {
    t = storage;
    scalar = scalar_access;
    for (int i = n; i < kLeaves; ++i) store_row(t, kLeaves + i, _mm512_set1_epi64(kNone));
    for (int i = kLeaves - 1; i >= 16; --i)
      store_row(t, i, _mm512_min_epu64(load_row(t, 2 * i), load_row(t, 2 * i + 1)));
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) top[i] = _mm512_min_epu64(load_row(t, 16 + 2 * i), load_row(t, 17 + 2 * i));
    fold();
  }
  void fold() {
    root = _mm512_min_epu64(
        _mm512_min_epu64(_mm512_min_epu64(top[0], top[1]), _mm512_min_epu64(top[2], top[3])),
        _mm512_min_epu64(_mm512_min_epu64(top[4], top[5]), _mm512_min_epu64(top[6], top[7])));
  }
  __m512i read(__m512i idx) const { return scalar ? load_at(t, idx) : gather_at(t, idx); }
  void write(__m512i idx, __m512i v) {
    if (scalar)
      store_at(t, idx, v);
    else
      scatter_at(t, idx, v);
  }
  /// Replaces the key at `leaf` (per lane; the current minimum's leaf) by x.
  void replace_front(__m512i x, __m512i leaf) {
    const __m512i node = _mm512_add_epi64(leaf, _mm512_set1_epi64(kLeaves));
    __m512i sib[kMem];
#pragma GCC unroll 8
    for (int d = 0; d < kMem; ++d)
      sib[d] = read(_mm512_xor_si512(_mm512_srli_epi64(node, d), _mm512_set1_epi64(1)));
    __m512i v = x;
    write(node, v);
#pragma GCC unroll 8
    for (int d = 0; d + 1 < kMem; ++d) {
      v = _mm512_min_epu64(v, sib[d]);
      write(_mm512_srli_epi64(node, d + 1), v);
    }
    v = _mm512_min_epu64(v, sib[kMem - 1]);
    const __m512i n3 = _mm512_srli_epi64(node, kMem);  // 8..15
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)
      top[i] = _mm512_mask_blend_epi64(_mm512_cmpeq_epu64_mask(n3, _mm512_set1_epi64(8 + i)), top[i], v);
    fold();
  }
};

/// Adds K replicas per lane, one at a time, to the expert with the largest w / count
/// (ties: lowest index); only the Kc heaviest experts (the first Kc sorted keys) can win.
/// Queue keys carry (expert << 16 | t) in their low word, t the expert's sorted position (its
/// tree leaf); the expert decides ties, as in the sort.
template <class Q>
void replicate(Q& q, const RowShape& sh, int K, const RowBuffers& s) {
  const __m256i wbase = _mm256_mullo_epi32(lane32(), _mm256_set1_epi32(sh.n));
  const __m512i lo16 = _mm512_set1_epi64(0xffff);
  for (int t = 0; t < K; ++t) {
    const __m512i f = q.front();
    const __m512i low = low32(f);
    const __m256i e = _mm512_cvtepi64_epi32(_mm512_srli_epi64(low, 16));
    const __m256i ci = index32(e);
    const __m256i c = _mm256_add_epi32(_mm256_i32gather_epi32(s.cnt, ci, 4), _mm256_set1_epi32(1));
    _mm256_i32scatter_epi32(s.cnt, ci, c, 4);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.picks + t * kLanes), e);
    const __m256 w = _mm256_i32gather_ps(s.w, _mm256_add_epi32(wbase, e), 4);
    q.replace_front(desc_keys(_mm256_div_ps(w, _mm256_cvtepi32_ps(c)), low), _mm512_and_si512(low, lo16));
  }
}

/// The next item of the merge of the A list (s.keys from ia) and the B list (s.extra from ib),
/// read with gathers or (scalar) with scalar loads: beside a tree's scalar loads and stores the
/// scalar loads measured faster, beside a register queue the gathers (docs/BENCHMARKS.md).
inline __m512i next_item(const RowBuffers& s, __m512i& ia, __m512i& ib, bool scalar) {
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i ka = scalar ? load_at(s.keys, ia) : gather_at(s.keys, ia);
  const __m512i kb = scalar ? load_at(s.extra, ib) : gather_at(s.extra, ib);
  const __mmask8 take_a = _mm512_cmplt_epu64_mask(ka, kb);
  ia = _mm512_mask_add_epi64(ia, take_a, ia, one);
  ib = _mm512_mask_add_epi64(ib, static_cast<__mmask8>(~take_a), ib, one);
  return _mm512_mask_blend_epi64(take_a, kb, ka);
}

inline __m512i slot_base(const RowShape& sh) {
  return _mm512_mullo_epi64(lane64(), _mm512_set1_epi64(sh.slots));
}

/// Greedy LPT per lane over the merge of the A list (s.keys from ia) and the B list
/// (s.extra from ib), items `first` on: each item to the least loaded pack with room (ties:
/// lowest pack). Pack keys are (load bits, pack << 16 | fill), as in the scalar lpt_small.
template <class Q>
void pack(Q& q, const RowShape& sh, __m512i ia, __m512i ib, int first, const RowBuffers& s) {
  const int cap = sh.slots / sh.packs;
  const __m512i one = _mm512_set1_epi64(1), capv = _mm512_set1_epi64(cap);
  const __m512i obase = slot_base(sh);
  int* out = s.slot_item;
  const bool scalar = Q::kTree && s.scalar_access;  // beside the register queue gathers measured faster
  for (int t = first; t < sh.slots; ++t) {
    const __m512i item = next_item(s, ia, ib, scalar);

    const __m512i f = q.front();
    const __m512i low = low32(f);
    const __m512i pk = _mm512_srli_epi64(low, 16);
    const __m512i r1 = _mm512_add_epi64(_mm512_and_si512(low, _mm512_set1_epi64(0xffff)), one);
    const __m512i slot = _mm512_add_epi64(_mm512_mul_epu32(pk, capv), _mm512_sub_epi64(r1, one));
    _mm512_i64scatter_epi32(out, _mm512_add_epi64(obase, slot), _mm512_cvtepi64_epi32(expert_of(item)), 4);
    // load(pack) + load(item): float lanes 2i hold the values, lanes 2i+1 add 0 + 0.
    const __m512 sum = _mm512_add_ps(
        _mm512_castsi512_ps(_mm512_srli_epi64(f, 32)),
        _mm512_castsi512_ps(_mm512_srli_epi64(_mm512_xor_si512(item, _mm512_set1_epi64(kNone)), 32)));
    const __m512i key = _mm512_or_si512(_mm512_slli_epi64(_mm512_castps_si512(sum), 32),
                                        _mm512_add_epi64(low, one));
    const __mmask8 full = _mm512_cmpeq_epu64_mask(r1, capv);
    q.replace_front(_mm512_mask_blend_epi64(full, key, _mm512_set1_epi64(kNone)), pk);
  }
}

template <template <int> class F, class... Args>
void with_queue(int m, Args&&... args) {
  switch (pow2_at_least(m)) {
    case 1: return F<1>::run(args...);
    case 2: return F<2>::run(args...);
    case 4: return F<4>::run(args...);
    case 8: return F<8>::run(args...);
    case 16: return F<16>::run(args...);
    case 32: return F<32>::run(args...);
    default: return F<64>::run(args...);
  }
}
inline __m512i replicate_entry(const RowBuffers& s, int t, int Kc) {
  if (t >= Kc) return _mm512_set1_epi64(kNone);
  const __m512i k = load_row(s.keys, t);  // low word (e << 16 | e)
  return _mm512_or_si512(_mm512_andnot_si512(_mm512_set1_epi64(0xffff), k), _mm512_set1_epi64(t));
}
/// As for the packs: the sorted queue up to 16 candidates, the tree beyond.
template <int M>
struct Replicate {
  static void run(const RowShape& sh, int K, int Kc, const RowBuffers& s) {
    if constexpr (M <= 16) {
      VQueue<M> q;
      for (int i = 0; i < M; ++i) q.a[i] = replicate_entry(s, i, Kc);
      replicate(q, sh, K, s);
    } else {
      constexpr int LOG = M == 32 ? 5 : 6;
      VTree<LOG> q;
      q.init(s.tree, Kc, s.scalar_access, [&](int i) { return replicate_entry(s, i, Kc); });
      replicate(q, sh, K, s);
    }
  }
};
/// The packing's first round without the queue: while every pack is empty and the items
/// come heaviest first, item t (t < packs) goes to pack t, as long as no item of the round
/// weighs zero (then the first pack, still at zero, would win again). Writes the round's
/// slots and the packs' keys as the leaves of a tree whose leaf i is row `leaves + i` of
/// s.tree; false (nothing to keep) when a lane has a zero.
inline bool first_round(const RowShape& sh, int leaves, __m512i& ia, __m512i& ib, const RowBuffers& s) {
  const int m = sh.packs, cap = sh.slots / sh.packs;
  const __m512i obase = slot_base(sh);
  __m512i a = ia, b = ib, item = _mm512_setzero_si512();
  for (int t = 0; t < m; ++t) {
    item = next_item(s, a, b, s.scalar_access);
    _mm512_i64scatter_epi32(s.slot_item, _mm512_add_epi64(obase, _mm512_set1_epi64(static_cast<long long>(t) * cap)),
                            _mm512_cvtepi64_epi32(expert_of(item)), 4);
    // load 0 + w = w: the item's float bits, under the pack's id (t << 16 | 1 item)
    const __m512i bits = _mm512_srli_epi64(_mm512_xor_si512(item, _mm512_set1_epi64(kNone)), 32);
    store_row(s.tree, leaves + t, _mm512_or_si512(_mm512_slli_epi64(bits, 32),
                                                  _mm512_set1_epi64((static_cast<long long>(t) << 16) | 1)));
  }
  // The round's lightest item is its last: weight > 0 <=> key below 0xffffffff'00000000.
  if (_mm512_cmplt_epu64_mask(item, _mm512_set1_epi64(static_cast<long long>(0xffffffff00000000ULL))) != 0xff)
    return false;
  ia = a;
  ib = b;
  return true;
}

inline __m512i empty_pack(int i, int packs) {
  return i < packs ? _mm512_set1_epi64(static_cast<long long>(i) << 16) : _mm512_set1_epi64(kNone);
}
/// Up to 16 packs: the sorted queue in registers; more: the tree (measured on Kimi-K2, 64
/// GPUs per row, the whole policy took ~1.5x longer with the queue).
template <int M>
struct Pack {
  static void run(const RowShape& sh, __m512i ia, const RowBuffers& s) {
    if constexpr (M <= 16) {
      VQueue<M> q;
      for (int i = 0; i < M; ++i) q.a[i] = empty_pack(i, sh.packs);
      pack(q, sh, ia, _mm512_setzero_si512(), 0, s);
    } else {
      constexpr int LOG = M == 32 ? 5 : 6;
      VTree<LOG> q;
      __m512i ib = _mm512_setzero_si512();
      int first = 0;
      if (first_round(sh, VTree<LOG>::kLeaves, ia, ib, s)) {
        q.build(s.tree, sh.packs, s.scalar_access);
        first = sh.packs;
      } else {
        q.init(s.tree, sh.packs, s.scalar_access, [&](int i) { return empty_pack(i, sh.packs); });
      }
      pack(q, sh, ia, ib, first, s);
    }
  }
};

/// r[i] = row i of a 16 x 16 block of 32-bit values in, column i out.
inline void transpose16(__m512i* r) {
  __m512i t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // 128-bit lane k of t[2i]: rows 2i, 2i+1 at columns 4k, 4k+1 (interleaved); t[2i+1]: 4k+2, 4k+3.
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // 128-bit lane k of r[4i + m]: rows 4i..4i+3 at column 4k + m.
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    const __m512i a = _mm512_shuffle_i32x4(r[m], r[4 + m], 0x88), b = _mm512_shuffle_i32x4(r[m], r[4 + m], 0xdd);
    const __m512i c = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], 0x88), d = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], 0xdd);
    t[m] = _mm512_shuffle_i32x4(a, c, 0x88);
    t[8 + m] = _mm512_shuffle_i32x4(a, c, 0xdd);
    t[4 + m] = _mm512_shuffle_i32x4(b, d, 0x88);
    t[12 + m] = _mm512_shuffle_i32x4(b, d, 0xdd);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

/// r[i] = row i of an 8 x 8 block of floats in, column i out.
inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}

}  // namespace

int sort_rows(int n) { return imax(16, pow2_at_least(n)); }

void sort_keys16(const RowShape& sh, const float* w, u64* keys_lo, u64* keys_hi, std::uint32_t* k32, bool scalar) {
  const int n = sh.n, m = sort_rows(n);
  // Narrow keys: the top bits of ~bits(w) above the index's b bits, then the index. Their
  // order agrees with the wide keys' wherever the top bits differ; where they are equal it is
  // by index alone, which the wide keys may reverse (fixed below).
  int b = 0;
  while ((1 << b) < n) ++b;
  const __m512i mask = _mm512_set1_epi32((1 << b) - 1);
  const __m512i base16 = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(n));
  auto narrow = [&](__m512 v, int j) {
    const __m512i bits = _mm512_castps_si512(_mm512_add_ps(v, _mm512_setzero_ps()));  // -0 -> +0
    _mm512_storeu_si512(k32 + j * 16, _mm512_or_si512(_mm512_andnot_si512(_mm512_or_si512(bits, mask), _mm512_set1_epi32(-1)),
                                                      _mm512_set1_epi32(j)));
  };
  int j0 = 0;
  for (; j0 + 16 <= n; j0 += 16) {  // 16 x 16 blocks transposed in registers
    __m512i r[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(w + static_cast<long long>(i) * n + j0);
    transpose16(r);
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) narrow(_mm512_castsi512_ps(r[c]), j0 + c);
  }
  for (int j = j0; j < n; ++j) narrow(_mm512_i32gather_ps(_mm512_add_epi32(base16, _mm512_set1_epi32(j)), w, 4), j);
  for (int j = n; j <= m; ++j) _mm512_storeu_si512(k32 + j * 16, _mm512_set1_epi32(-1));
  Net<Narrow>::sort(k32, n);
  // Each half's wide keys (as plan_rows wants them), in the narrow order; a lane where two
  // neighbours come out of order (equal top bits) is re-sorted by insertion, which only moves
  // keys within such runs.
  for (int h = 0; h < 2; ++h) {
    u64* keys = h ? keys_hi : keys_lo;
    __m512i prev = _mm512_setzero_si512();
    __mmask8 unsorted = 0;
    const __m256i wbase = _mm256_mullo_epi32(_mm256_add_epi32(lane32(), _mm256_set1_epi32(8 * h)), _mm256_set1_epi32(n));
    const float* wr[8];  // the half's rows, for scalar loads
    for (int l = 0; l < 8; ++l) wr[l] = w + static_cast<long long>(8 * h + l) * n;
    const std::uint32_t bm = (1u << b) - 1;
    for (int t = 0; t < n; ++t) {
      const __m256i idx = _mm256_and_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k32 + t * 16 + 8 * h)), _mm512_castsi512_si256(mask));
      const std::uint32_t* kt = k32 + t * 16 + 8 * h;
      const __m256 v = scalar ? _mm256_setr_ps(wr[0][kt[0] & bm], wr[1][kt[1] & bm], wr[2][kt[2] & bm], wr[3][kt[3] & bm],
                                               wr[4][kt[4] & bm], wr[5][kt[5] & bm], wr[6][kt[6] & bm], wr[7][kt[7] & bm])
                              : _mm256_i32gather_ps(w, _mm256_add_epi32(wbase, idx), 4);
      const __m512i e = _mm512_cvtepu32_epi64(idx);
      const __m512i key = desc_keys(v, _mm512_or_si512(_mm512_slli_epi64(e, 16), e));
      unsorted |= _mm512_cmpgt_epu64_mask(prev, key);
      store_row(keys, t, key);
      prev = key;
    }
    for (int t = n; t <= m; ++t) store_row(keys, t, _mm512_set1_epi64(kNone));
    for (int l = 0; l < kLanes; ++l) {
      if (!(unsorted >> l & 1)) continue;
      u64* a = keys + l;
      for (int i = 1; i < n; ++i) {
        const u64 x = a[i * kLanes];
        int j = i;
        for (; j > 0 && a[(j - 1) * kLanes] > x; --j) a[j * kLanes] = a[(j - 1) * kLanes];
        a[j * kLanes] = x;
      }
    }
  }
}

void sort_keys8(const RowShape& sh, const float* w, u64* keys) {
  const int n = sh.n;
  const __m256i wbase = _mm256_mullo_epi32(lane32(), _mm256_set1_epi32(n));
  auto wide = [&](__m256 v, int j) {
    store_row(keys, j, desc_keys(v, _mm512_set1_epi64((static_cast<long long>(j) << 16) | j)));
  };
  int j0 = 0;
  for (; j0 + 8 <= n; j0 += 8) {  // 8 x 8 blocks transposed in registers
    __m256 r[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(w + static_cast<long long>(i) * n + j0);
    transpose8(r);
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) wide(r[c], j0 + c);
  }
  for (int j = j0; j < n; ++j) wide(_mm256_i32gather_ps(w, _mm256_add_epi32(wbase, _mm256_set1_epi32(j)), 4), j);
  for (int j = n; j <= sort_rows(n); ++j) store_row(keys, j, _mm512_set1_epi64(kNone));
  sort_lanes(keys, n);
}

void plan_rows(const RowShape& sh, const RowBuffers& s) {
  const int n = sh.n, K = sh.slots - sh.n, Kc = imin(K, n);
  u64* keys = s.keys;  // sorted (sort_keys16 or sort_keys8): every lane's experts by weight descending
  u64* extra = s.extra;
  const __m256i wbase = _mm256_mullo_epi32(lane32(), _mm256_set1_epi32(n));

  __m512i ia = _mm512_setzero_si512();
  store_row(extra, 0, _mm512_set1_epi64(kNone));
  if (K > 0) {
    for (int e = 0; e < n; ++e)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.cnt + e * kLanes), _mm256_set1_epi32(1));
    with_queue<Replicate>(Kc, sh, K, Kc, s);
    // Items: experts still at one replica keep their sorted order (the A list); the
    // replicated experts and the added replicas get their per-replica load and are sorted
    // apart (the B list); the packing merges the two.
    const __m256i one = _mm256_set1_epi32(1);
    for (int t = 0; t < Kc; ++t) {
      const __m512i k = load_row(keys, t);
      const __m256i e = _mm512_cvtepi64_epi32(expert_of(k));
      const __m256i c = _mm256_i32gather_epi32(s.cnt, index32(e), 4);
      const __m256 w = _mm256_i32gather_ps(s.w, _mm256_add_epi32(wbase, e), 4);
      const __m512i key = desc_keys(_mm256_div_ps(w, _mm256_cvtepi32_ps(c)), low32(k));
      const __mmask8 repl = _mm256_cmpgt_epi32_mask(c, one);
      store_row(extra, t, _mm512_mask_blend_epi64(repl, _mm512_set1_epi64(kNone), key));
    }
    for (int t = 0; t < K; ++t) {
      const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.picks + t * kLanes));
      const __m256i c = _mm256_i32gather_epi32(s.cnt, index32(e), 4);
      const __m256 w = _mm256_i32gather_ps(s.w, _mm256_add_epi32(wbase, e), 4);
      store_row(extra, Kc + t,
                desc_keys(_mm256_div_ps(w, _mm256_cvtepi32_ps(c)), item_id(n + t, _mm512_cvtepu32_epi64(e))));
    }
    for (int j = K + Kc; j <= sort_rows(K + Kc); ++j) store_row(extra, j, _mm512_set1_epi64(kNone));
    sort_lanes(extra, K + Kc);
    // A list: the first Kc sorted keys without the replicated experts, moved right so that
    // the list runs on into keys[Kc..n) (in place: position pos >= t was already read).
    __m512i pos = _mm512_set1_epi64(Kc - 1);
    for (int t = Kc - 1; t >= 0; --t) {
      const __m512i k = load_row(keys, t);
      const __m256i e = _mm512_cvtepi64_epi32(expert_of(k));
      const __m256i c = _mm256_i32gather_epi32(s.cnt, index32(e), 4);
      const __mmask8 single = _mm256_cmpeq_epi32_mask(c, one);
      _mm512_mask_i64scatter_epi64(keys, single, _mm512_add_epi64(_mm512_slli_epi64(pos, 3), lane64()), k, 8);
      pos = _mm512_mask_sub_epi64(pos, single, pos, _mm512_set1_epi64(1));
    }
    ia = _mm512_add_epi64(pos, _mm512_set1_epi64(1));
  }

  if (sh.slots == sh.packs) {  // one slot per pack: the reference puts item p on pack p
    for (int l = 0; l < kLanes; ++l)
      for (int j = 0; j < sh.slots; ++j)
        s.slot_item[static_cast<long long>(l) * sh.slots + j] = j < n ? j : s.picks[(j - n) * kLanes + l];
    return;
  }
  with_queue<Pack>(sh.packs, sh, ia, s);
}

void to_float(const double* src, float* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm512_cvtpd_ps(_mm512_loadu_pd(src + i)));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void group_sums(const float* w, int groups, int gs, double* out) {
  for (int g0 = 0; g0 < groups; g0 += kLanes) {
    const int m = imin(kLanes, groups - g0);
    const __mmask8 live = static_cast<__mmask8>((1u << m) - 1);
    const __m256i idx = _mm256_mullo_epi32(lane32(), _mm256_set1_epi32(gs));
    const float* base = w + static_cast<long long>(g0) * gs;
    __m512d sum = _mm512_setzero_pd();
    for (int i = 0; i < gs; ++i) {
      const __m256 v = _mm256_mmask_i32gather_ps(_mm256_setzero_ps(), live, idx, base + i, 4);
      sum = _mm512_add_pd(sum, _mm512_cvtps_pd(v));
    }
    _mm512_mask_storeu_pd(out + g0, live, sum);
  }
}

void map_slots(const int* item, const int* lid, int* out, int n) {
  int j = 0;
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_si512(out + j, _mm512_i32gather_epi32(_mm512_loadu_si512(item + j), lid, 4));
  for (; j < n; ++j) out[j] = lid[item[j]];
}

void map_slots_offset(const int* item, int first, int* out, int n) {
  const __m512i f = _mm512_set1_epi32(first);
  int j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_si512(out + j, _mm512_add_epi32(_mm512_loadu_si512(item + j), f));
  for (; j < n; ++j) out[j] = item[j] + first;
}

void lane_counts(const int* cnt, int lane, int* out, int n) {
  const __m512i step = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  int e = 0;
  for (; e + 16 <= n; e += 16) {
    const __m512i idx = _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(step, _mm512_set1_epi32(e)), 3),
                                         _mm512_set1_epi32(lane));
    _mm512_storeu_si512(out + e, _mm512_i32gather_epi32(idx, cnt, 4));
  }
  for (; e < n; ++e) out[e] = cnt[static_cast<long long>(e) * kLanes + lane];
}

bool all_in_range(const double* v, long long n, double max) {
  const __m512d zero = _mm512_setzero_pd(), mx = _mm512_set1_pd(max);
  __mmask8 ok = 0xff;
  long long i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m512d x = _mm512_loadu_pd(v + i);
    ok &= _mm512_cmp_pd_mask(x, zero, _CMP_GE_OQ) & _mm512_cmp_pd_mask(x, mx, _CMP_LE_OQ);
  }
  unsigned tail = 1;  // NaN fails both comparisons
  for (; i < n; ++i) tail &= static_cast<unsigned>(v[i] >= 0.0) & static_cast<unsigned>(v[i] <= max);
  return ok == 0xff && tail;
}

void fill_cached(int* p, long long n, int v) {
  const __m512i x = _mm512_set1_epi32(v);
  long long i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_si512(p + i, x);
  if (i < n) _mm512_mask_storeu_epi32(p + i, static_cast<__mmask16>((1u << (n - i)) - 1), x);
}

void min_max(const int* v, long long n, int& mn, int& mx) {  // n >= 16
  __m512i a = _mm512_loadu_si512(v), b = a;
  long long i = 16;
  for (; i + 16 <= n; i += 16) {
    const __m512i x = _mm512_loadu_si512(v + i);
    a = _mm512_min_epi32(a, x);
    b = _mm512_max_epi32(b, x);
  }
  const __m512i x = _mm512_loadu_si512(v + n - 16);  // the tail, overlapping
  mn = _mm512_reduce_min_epi32(_mm512_min_epi32(a, x));
  mx = _mm512_reduce_max_epi32(_mm512_max_epi32(b, x));
}

}  // namespace eplb::algo::detail::avx512
