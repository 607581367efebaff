#include "eplb/algo/sticky.hpp"

#include "eplb/algo/deepseek.hpp"

#include <algorithm>
#include <bit>
#include <limits>
#include <stdexcept>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace eplb::algo {

/// A set of GPUs that one layer's replicas are packed onto independently: one node in the
/// hierarchical case (its experts are those of the groups mapped to it), else all GPUs.
struct StickyPolicy::Domain {
  int id = 0;
  int gpu0 = 0, ngpu = 0, k = 0;
  int slot0 = 0, nslots = 0;
  const int* experts = nullptr;
  int nexperts = 0;

  /// Node n's GPUs and slots (P GPUs on N nodes, k slots per GPU); experts are set by callers.
  static Domain of_node(int n, int P, int N, int k) {
    Domain d;
    d.id = n;
    d.ngpu = P / N;
    d.gpu0 = n * d.ngpu;
    d.k = k;
    d.slot0 = d.gpu0 * k;
    d.nslots = d.ngpu * k;
    return d;
  }
};

namespace {

/// Sort key "value descending, index ascending" for a non-negative double.
inline std::uint64_t desc_key(double v, int i) {
  const auto f = static_cast<float>(v);
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f + 0.0f);
  return (static_cast<std::uint64_t>(~bits) << 32) | static_cast<std::uint32_t>(i);
}

/// take ? a : b, by bit masks (the compiler keeps a branch for the plain conditional).
inline double select_bits(bool take, double a, double b) {
  const std::uint64_t ua = std::bit_cast<std::uint64_t>(a), ub = std::bit_cast<std::uint64_t>(b);
  return std::bit_cast<double>(ub ^ ((ua ^ ub) & (std::uint64_t{0} - take)));
}

/// Min-cost perfect assignment on an n x n matrix (row-major), O(n^3) (Hungarian method with
/// potentials). ans[row] = column.
void hungarian(const std::vector<long long>& a, int n, std::vector<long long>& u,
               std::vector<long long>& v, std::vector<long long>& minv, std::vector<int>& p,
               std::vector<int>& way, std::vector<char>& used, std::vector<int>& ans) {
  constexpr long long inf = std::numeric_limits<long long>::max() / 4;
  u.assign(static_cast<std::size_t>(n) + 1, 0);
  v.assign(static_cast<std::size_t>(n) + 1, 0);
  p.assign(static_cast<std::size_t>(n) + 1, 0);
  way.assign(static_cast<std::size_t>(n) + 1, 0);
  minv.resize(static_cast<std::size_t>(n) + 1);
  used.resize(static_cast<std::size_t>(n) + 1);
  for (int i = 1; i <= n; ++i) {
    p[0] = i;
    int j0 = 0;
    std::fill(minv.begin(), minv.end(), inf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[j0] = 1;
      const int i0 = p[j0];
      long long delta = inf;
      int j1 = 0;
      const long long* row = a.data() + static_cast<std::size_t>(i0 - 1) * n;
      for (int j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const long long cur = row[j - 1] - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (int j = 0; j <= n; ++j) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      const int j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0);
  }
  ans.assign(static_cast<std::size_t>(n), 0);
  for (int j = 1; j <= n; ++j) ans[p[j] - 1] = j - 1;
}

}  // namespace

StickyPolicy::StickyPolicy(StickyOptions options, std::string name)
    : opt_(options), name_(std::move(name)) {
  const auto finite_nonneg = [](double v) { return v >= 0 && v <= std::numeric_limits<double>::max(); };
  if (!finite_nonneg(opt_.tolerance) || !finite_nonneg(opt_.node_tolerance))
    throw std::invalid_argument("sticky policy: tolerance and node_tolerance must be finite and >= 0");
  if (!(opt_.max_swap_fraction >= 0 && opt_.max_swap_fraction <= 1))
    throw std::invalid_argument("sticky policy: max_swap_fraction must lie in [0, 1] (got " +
                                std::to_string(opt_.max_swap_fraction) + ")");
  if (opt_.refine_reference) reference_ = std::make_unique<DeepseekPolicy>();
}

StickyPolicy::~StickyPolicy() = default;

// ---------------------------------------------------------------------------------------
// Replica counts of one domain. cstar_: the reference's rule (one each, then one more at a
// time to the largest load per replica, ties to the lowest id); rs_ = w / cstar_. cnt_ / r_:
// the counts the repair starts with: the previous placement's when they are valid (the
// domain's slots held exactly its experts, each at least once) and their largest load per
// replica is within the tolerance of cstar_'s, else cstar_.

void StickyPolicy::star_counts(const Domain& d) {
  if (cstar_ready_) return;
  cstar_ready_ = true;
  const int extra = d.nslots - d.nexperts;
  for (int i = 0; i < d.nexperts; ++i) cstar_[d.experts[i]] = 1;
  if (extra > 0) {
    keys_.resize(static_cast<std::size_t>(d.nexperts));
    for (int i = 0; i < d.nexperts; ++i) keys_[i] = desc_key(w_[d.experts[i]], d.experts[i]);
    if (extra <= 16) {
      // Few extra replicas: a branch-free scan for the smallest key each time (the keys are
      // distinct, so the same choices as the heap below).
      std::uint64_t* kk = keys_.data();
      const int n = d.nexperts;
      for (int x = 0; x < extra; ++x) {
        std::uint64_t mk = kk[0];
        int mi = 0;
        for (int i = 1; i < n; ++i) {
          const bool take = kk[i] < mk;
          mk = take ? kk[i] : mk;
          mi = take ? i : mi;
        }
        const int e = static_cast<int>(mk & 0xffffffffu);
        ++cstar_[e];
        kk[mi] = desc_key(w_[e] / cstar_[e], e);
      }
    } else {
    auto cmp = [](std::uint64_t a, std::uint64_t b) { return a > b; };  // min-heap on keys
    std::make_heap(keys_.begin(), keys_.end(), cmp);
    for (int x = 0; x < extra; ++x) {
      std::pop_heap(keys_.begin(), keys_.end(), cmp);
      const int e = static_cast<int>(keys_.back() & 0xffffffffu);
      ++cstar_[e];
      keys_.back() = desc_key(w_[e] / cstar_[e], e);
      std::push_heap(keys_.begin(), keys_.end(), cmp);
    }
    }
  }
  for (int i = 0; i < d.nexperts; ++i) {
    const int e = d.experts[i];
    rs_[e] = w_[e] / cstar_[e];
  }
}

void StickyPolicy::choose_counts(const Domain& d, const int* prev_row) {
  cstar_ready_ = false;
  dom_load_ = 0;
  for (int i = 0; i < d.nexperts; ++i) dom_load_ += w_[d.experts[i]];
  bool valid = prev_row && opt_.keep_counts;
  if (valid) {
    for (int i = 0; i < d.nexperts; ++i) have_[d.experts[i]] = 0;
    for (int s = d.slot0; s < d.slot0 + d.nslots && valid; ++s) {
      const int e = prev_row[s];
      if (dom_of_[e] != d.id) valid = false;
      else ++have_[e];
    }
  }
  double old = 0;
  for (int i = 0; i < d.nexperts && valid; ++i) {
    const int e = d.experts[i];
    if (have_[e] == 0) valid = false;
    else old = std::max(old, w_[e] / have_[e]);
  }
  // The previous counts are kept when no replica is heavier than the domain's mean GPU load
  // (then the counts do not bound the balance) or when their heaviest replica is within the
  // tolerance of the reference rule's (cstar_).
  bool keep = valid && old <= dom_load_ / d.ngpu;
  if (!keep) {
    star_counts(d);
    double best = 0;
    for (int i = 0; i < d.nexperts; ++i) best = std::max(best, rs_[d.experts[i]]);
    keep = valid && old <= best + opt_.tolerance * mean_gpu_load_;
  }
  for (int i = 0; i < d.nexperts; ++i) {
    const int e = d.experts[i];
    cnt_[e] = keep ? have_[e] : cstar_[e];
    r_[e] = w_[e] / cnt_[e];
  }
}

// ---------------------------------------------------------------------------------------
// Fresh packing with cstar_ / rs_: greedy LPT (replicas by load descending to the least
// loaded GPU with room, ties to the lowest GPU), avoiding a GPU that already holds the
// expert while another has room. Leaves the GPU loads in gl_.

void StickyPolicy::fresh_pack(const Domain& d, int* row) {
  keys_.resize(static_cast<std::size_t>(d.nexperts));
  for (int i = 0; i < d.nexperts; ++i) keys_[i] = desc_key(rs_[d.experts[i]], d.experts[i]);
  std::sort(keys_.begin(), keys_.end());
  std::fill(gl_.begin(), gl_.begin() + d.ngpu, 0.0);
  std::fill(fill_.begin(), fill_.begin() + d.ngpu, 0);
  for (int i = 0; i < d.nexperts; ++i) {
    const int e = static_cast<int>(keys_[i] & 0xffffffffu);
    for (int c = 0; c < cstar_[e]; ++c) {
      int best = -1, best_dup = -1;
      double bl = std::numeric_limits<double>::infinity(), bd = bl;
      for (int g = 0; g < d.ngpu; ++g) {
        if (fill_[g] == d.k) continue;
        const double v = gl_[g];
        // "best < 0 ||": a GPU with room is taken even when every load is +inf (sums of
        // loads near DBL_MAX overflow), which v < inf alone would never do.
        if (gstamp_[g] == e) {
          if (best_dup < 0 || v < bd) {
            bd = v;
            best_dup = g;
          }
        } else if (best < 0 || v < bl) {
          bl = v;
          best = g;
        }
      }
      if (best < 0) best = best_dup;
      gstamp_[best] = e;
      row[d.slot0 + best * d.k + fill_[best]++] = e;
      gl_[best] += rs_[e];
    }
  }
  for (int g = 0; g < d.ngpu; ++g) gstamp_[g] = -1;
}

// ---------------------------------------------------------------------------------------
// Local search: while the most loaded GPU X is above `target`, swap one replica of X with one
// of another GPU Y so that both end strictly below X's load. With prev_row, prefer the swap
// that changes the fewest slots relative to it, then the lowest new max(X, Y); without, the
// lowest new max. Never creates a second copy of an expert on a GPU. gl_ must hold the GPU
// loads under r and is kept up to date. Returns whether the target was reached.

bool StickyPolicy::improve(const Domain& d, int* row, double target, const int* prev_row,
                           int max_swaps, const double* r) {
  const int k = d.k;
  int* base = row + d.slot0;
  const int* prev = prev_row ? prev_row + d.slot0 : nullptr;
  // Per-slot replica loads (contiguous: the pair loops below read them, not r[row[s]]).
  double* sr = sr_.data();
  for (int s = 0; s < d.nslots; ++s) sr[s] = r[base[s]];
  // The pairs of two GPUs are pre-filtered into bit masks (k <= 64; else every pair is
  // tested).
  const bool sweep = k <= 64;
  std::uint64_t* am = amask_.data();
  std::uint64_t* amo_ = amask_.data() + k;
  // Few GPUs (a node): the most / least loaded GPU is picked branch-free (the branches
  // mispredict); with many GPUs the branchy scan is faster (mostly predicted).
  const bool small = d.ngpu <= 16;
  // Above 64 slots per GPU every pair of slots is tested, k^2 per partner and swap: bounded,
  // so that a domain of thousands of slots per GPU (E = 8, R = 8000 on 2 GPUs ran for minutes)
  // ends with what it reached instead (the callers then take their fallbacks, also bounded).
  constexpr std::uint64_t kMaxPairTests = std::uint64_t{1} << 26;
  std::uint64_t pair_tests = 0;
  for (int it = 0;; ++it) {
    int X = 0;
    double LX = gl_[0];
    if (small) {
      for (int g = 1; g < d.ngpu; ++g) {  // branch-free selection
        const double v = gl_[g];
        const bool take = v > LX;
        X ^= (X ^ g) & -static_cast<int>(take);
        LX = select_bits(take, v, LX);
      }
    } else {
      for (int g = 1; g < d.ngpu; ++g)
        if (gl_[g] > gl_[X]) X = g;
      LX = gl_[X];
    }
    if (LX <= target) return true;
    if (it >= max_swaps || pair_tests > kMaxPairTests) return false;
    int* xs = base + X * k;
    // Best swap: one that brings both GPUs to the target with the fewest moves (then the
    // lowest new max); failing that, the lowest new max (then the fewest moves).
    int best_sa = -1, best_sb = -1, best_moves = 5;
    bool best_ok = false;
    double best_max = LX - LX * 1e-12;  // a swap must lower X strictly
    double best_delta = 0;
    // Partners from the least loaded up; stop after the first partner that admits a swap
    // reaching the target (further ones are more loaded: fewer such swaps).
    // (Taken one at a time in ascending (load, index) order: usually one or two are needed.)
    int Yprev = -1;
    double Lprev = 0;
    const double* sx = sr + X * k;
    const double eps = LX * 1e-9;  // > the rounding of the rearranged bounds below
    for (int yi = 0; yi < d.ngpu; ++yi) {
      if (best_ok) break;
      int Y = -1;
      double YL = 0;
      if (small) {
        for (int g = 0; g < d.ngpu; ++g) {  // branch-free selection
          const double v = gl_[g];
          const bool after = (Yprev < 0) | (v > Lprev) | ((v == Lprev) & (g > Yprev));
          const bool take = after & ((Y < 0) | (v < YL));
          Y ^= (Y ^ g) & -static_cast<int>(take);
          YL = select_bits(take, v, YL);
        }
      } else {
        for (int g = 0; g < d.ngpu; ++g) {
          const double v = gl_[g];
          if (Yprev >= 0 && (v < Lprev || (v == Lprev && g <= Yprev))) continue;
          if (Y < 0 || v < gl_[Y]) Y = g;
        }
      }
      Yprev = Y;
      Lprev = gl_[Y];
      const double LY = gl_[Y];
      const double gap = LX - LY;
      if (gap <= 0) break;  // includes Y == X and everything after it
      // No swap with Y (or a later, more loaded partner) ends below (LX + LY) / 2: when that
      // is above the best so far, nothing further can win (a swap reaching the target would
      // end at most at the target, below best_max when no such swap was found yet).
      if (0.5 * (LX + LY) > best_max) break;
      const int* ys = base + Y * k;
      const double* sy = sr + Y * k;
      // A swap that creates no second copy of an expert on X or Y.
      auto no_dup = [&](int a, int b, int ea, int eb) {
        pair_tests += static_cast<std::uint64_t>(k);  // as costly as k pair tests
        bool dup = false;
        for (int t = 0; t < k; ++t) dup |= ((t != a) & (xs[t] == eb)) | ((t != b) & (ys[t] == ea));
        return !dup;
      };
      auto moves_of = [&](int a, int b, int ea, int eb) {
        int moves = 2;
        if (prev) {
          const int sa = X * k + a, sb = Y * k + b;
          moves += (eb != prev[sa]) + (ea != prev[sb]) - (ea != prev[sa]) - (eb != prev[sb]);
        }
        return moves;
      };
      // The exact test of one pair (X's slot a, Y's slot b), in the order (a, b).
      auto consider = [&](int a, int b) {
        const double delta = sx[a] - sy[b];
        if (delta <= 0 || delta >= gap) return;
        const int ea = xs[a], eb = ys[b];
        const double nmax = std::max(LX - delta, LY + delta);
        const bool ok = nmax <= target;
        if (best_ok && !ok) return;
        const int moves = moves_of(a, b, ea, eb);
        if (ok == best_ok) {
          if (ok ? (moves > best_moves || (moves == best_moves && nmax >= best_max))
                 : (nmax > best_max || (nmax == best_max && moves >= best_moves)))
            return;
        }
        if (!no_dup(a, b, ea, eb)) return;
        best_sa = X * k + a;
        best_sb = Y * k + b;
        best_moves = moves;
        best_max = nmax;
        best_ok = ok;
        best_delta = delta;
      };
      // The same test restricted to swaps reaching the target. Once one is found every later
      // swap not reaching it loses, and any swap reaching it beats the best so far (which does
      // not): so when Y admits one, the scan of Y in (a, b) order ends with the first best of
      // them by (moves, new max), which this finds alone.
      auto consider_ok = [&](int a, int b) {
        const double delta = sx[a] - sy[b];
        if (delta <= 0 || delta >= gap) return;
        const double nmax = std::max(LX - delta, LY + delta);
        if (!(nmax <= target)) return;
        const int ea = xs[a], eb = ys[b];
        const int moves = moves_of(a, b, ea, eb);
        if (best_ok && (moves > best_moves || (moves == best_moves && nmax >= best_max))) return;
        if (!no_dup(a, b, ea, eb)) return;
        best_sa = X * k + a;
        best_sb = Y * k + b;
        best_moves = moves;
        best_max = nmax;
        best_ok = true;
        best_delta = delta;
      };
      if (!sweep) {
        for (int a = 0; a < k && pair_tests <= kMaxPairTests; ++a) {
          pair_tests += static_cast<std::uint64_t>(k);
          if (sx[a] > 0)
            for (int b = 0; b < k; ++b) consider(a, b);
        }
        if (pair_tests > kMaxPairTests) break;
        continue;
      }
      // Candidate masks (branch-free; supersets, widened by eps): for the swaps reaching the
      // target, delta in [LX - target, target - LY]; for all that can win, 0 < delta < gap
      // and new max <= max(best so far, target) (best_ok is false here).
      const double B = std::max(best_max, target);
      const double alo = std::max(0.0, LX - B) - eps, ahi = std::min(gap, B - LY) + eps;
      const double olo = std::max(0.0, LX - target) - eps, ohi = std::min(gap, target - LY) + eps;
      // (Two pairs at a time with SSE2: the same comparisons, so the same bits; sr_ has a
      // padding entry so that the last GPU's odd slot count reads in bounds.)
      const std::uint64_t kmask = k == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << k) - 1;
      auto masks = [&](double lo, double hi, std::uint64_t* out) {
        std::uint64_t any = 0;
#if defined(__SSE2__)
        const __m128d vlo = _mm_set1_pd(lo), vhi = _mm_set1_pd(hi);
#endif
        for (int a = 0; a < k; ++a) {
          const double ra = sx[a];
          std::uint64_t m = 0;
#if defined(__SSE2__)
          const __m128d vra = _mm_set1_pd(ra);
          for (int b = 0; b < k; b += 2) {
            const __m128d dl = _mm_sub_pd(vra, _mm_loadu_pd(sy + b));
            const __m128d in = _mm_and_pd(_mm_cmpgt_pd(dl, vlo), _mm_cmplt_pd(dl, vhi));
            m |= static_cast<std::uint64_t>(_mm_movemask_pd(in)) << b;
          }
          m &= kmask;
#else
          for (int b = 0; b < k; ++b) {
            const double delta = ra - sy[b];
            m |= static_cast<std::uint64_t>((delta > lo) & (delta < hi)) << b;
          }
#endif
          m &= ra > 0 ? ~std::uint64_t{0} : 0;
          out[a] = m;
          any |= m;
        }
        return any != 0;
      };
      if (olo < ohi && masks(olo, ohi, amo_)) {
        for (int a = 0; a < k; ++a)
          for (std::uint64_t m = amo_[a]; m; m &= m - 1) consider_ok(a, std::countr_zero(m));
        if (best_ok) continue;
      }
      if (alo < ahi && masks(alo, ahi, am))
        for (int a = 0; a < k; ++a)
          for (std::uint64_t m = am[a]; m; m &= m - 1) consider(a, std::countr_zero(m));
    }
    if (best_sa < 0) return false;
    std::swap(base[best_sa], base[best_sb]);
    std::swap(sr[best_sa], sr[best_sb]);
    gl_[X] -= best_delta;
    gl_[best_sb / k] += best_delta;
  }
}

// ---------------------------------------------------------------------------------------
// Repair of the previous placement: slots that keep an expert of the domain stay; surplus
// replicas (count went down, or the expert left the domain) are freed on the most loaded
// GPUs (second copies on one GPU first); missing replicas go, heaviest first, to the free
// slot of the least loaded GPU that does not hold the expert; then swaps.

bool StickyPolicy::repair(const Domain& d, const int* prev_row, int* row, double target,
                          const int* cnt, const double* r, int max_swaps) {
  place(d, prev_row, row, cnt, r);
  if (max_swaps < 0) max_swaps = static_cast<int>(opt_.max_swap_fraction * d.nslots);
  const bool ok = improve(d, row, target, prev_row, max_swaps, r);
  if (ok) dedup(d, row, target, prev_row, r);
  return ok;
}

void StickyPolicy::place(const Domain& d, const int* prev_row, int* row, const int* cnt,
                         const double* r) {
  const int k = d.k;
  for (int i = 0; i < d.nexperts; ++i) have_[d.experts[i]] = 0;
  for (int s = d.slot0; s < d.slot0 + d.nslots; ++s) {
    const int e = prev_row[s];
    if (dom_of_[e] == d.id) {
      row[s] = e;
      ++have_[e];
    } else {
      row[s] = -1;
    }
  }
  for (int g = 0; g < d.ngpu; ++g) {
    double sum = 0;
    for (int t = 0; t < k; ++t) {
      const int e = row[d.slot0 + g * k + t];
      if (e >= 0) sum += r[e];
    }
    gl_[g] = sum;
  }
  // Surplus.
  for (int i = 0; i < d.nexperts; ++i) {
    const int e = d.experts[i];
    while (have_[e] > cnt[e]) {
      int best = -1;
      bool best_dup = false;
      for (int s = d.slot0; s < d.slot0 + d.nslots; ++s) {
        if (row[s] != e) continue;
        const int g = (s - d.slot0) / k;
        int on = 0;
        for (int t = 0; t < k; ++t) on += row[d.slot0 + g * k + t] == e;
        const bool dup = on > 1;
        if (best < 0 || (dup && !best_dup) ||
            (dup == best_dup && gl_[g] > gl_[(best - d.slot0) / k])) {
          best = s;
          best_dup = dup;
        }
      }
      row[best] = -1;
      gl_[(best - d.slot0) / k] -= r[e];
      --have_[e];
    }
  }
  // Missing replicas, heaviest first.
  keys_.clear();
  for (int i = 0; i < d.nexperts; ++i) {
    const int e = d.experts[i];
    for (int c = have_[e]; c < cnt[e]; ++c) keys_.push_back(desc_key(r[e], e));
  }
  if (keys_.empty()) return;
  std::sort(keys_.begin(), keys_.end());
  if (k <= 64 && d.ngpu <= 64) {
    // Bit masks: free slots per GPU, GPUs holding each expert (same choices as the scan below).
    std::uint64_t* fm = fmask_.data();
    std::uint64_t* hm = hmask_.data();
    for (int i = 0; i < d.nexperts; ++i) hm[d.experts[i]] = 0;
    for (int g = 0; g < d.ngpu; ++g) {
      const int* gs = row + d.slot0 + g * k;
      std::uint64_t m = 0;
      for (int t = 0; t < k; ++t) {
        const int e = gs[t];
        m |= static_cast<std::uint64_t>(e < 0) << t;
        if (e >= 0) hm[e] |= std::uint64_t{1} << g;
      }
      fm[g] = m;
    }
    for (const std::uint64_t key : keys_) {
      const int e = static_cast<int>(key & 0xffffffffu);
      const std::uint64_t he = hm[e];
      int best = -1;
      bool best_holds = true;
      for (int g = 0; g < d.ngpu; ++g) {
        if (fm[g] == 0) continue;
        const bool holds = (he >> g) & 1;
        if (best < 0 || (!holds && best_holds) || (holds == best_holds && gl_[g] < gl_[best])) {
          best = g;
          best_holds = holds;
        }
      }
      const int t = std::countr_zero(fm[best]);
      fm[best] &= fm[best] - 1;
      hm[e] |= std::uint64_t{1} << best;
      row[d.slot0 + best * k + t] = e;
      gl_[best] += r[e];
    }
    return;
  }
  for (const std::uint64_t key : keys_) {
    const int e = static_cast<int>(key & 0xffffffffu);
    int best = -1;
    bool best_holds = true;
    for (int g = 0; g < d.ngpu; ++g) {
      const int* gs = row + d.slot0 + g * k;
      int free_t = -1;
      bool holds = false;
      for (int t = 0; t < k; ++t) {
        if (gs[t] < 0 && free_t < 0) free_t = t;
        holds |= gs[t] == e;
      }
      if (free_t < 0) continue;
      if (best < 0 || (!holds && best_holds) ||
          (holds == best_holds && gl_[g] < gl_[(best - d.slot0) / k])) {
        best = d.slot0 + g * k + free_t;
        best_holds = holds;
      }
    }
    row[best] = e;
    gl_[(best - d.slot0) / k] += r[e];
  }
}

// ---------------------------------------------------------------------------------------
// A GPU that holds two copies of an expert (forced by where the free slots were) swaps one
// copy with a replica of another GPU that holds neither, when the domain's most loaded GPU
// stays within max(target, its current load): fewest moves first, then the lowest new max.

bool StickyPolicy::dedup(const Domain& d, int* row, double target, const int* prev_row,
                         const double* r) {
  bool changed = false;
  const int k = d.k;
  int* base = row + d.slot0;
  const int* prev = prev_row ? prev_row + d.slot0 : nullptr;
  double cap = target;
  for (int g = 0; g < d.ngpu; ++g) cap = std::max(cap, gl_[g]);
  auto holds = [&](int g, int e, int except) {  // branch-free: no early exit
    bool h = false;
    for (int t = 0; t < k; ++t) h |= (t != except) & (base[g * k + t] == e);
    return h;
  };
  // Every swap removes one duplicate and creates none: repeat until none is possible (so
  // that a second pass over the result, as the next rebalance makes, changes nothing).
  for (bool again = true; again;) {
  again = false;
  for (int X = 0; X < d.ngpu; ++X) {
    // Skip a GPU without a second copy (swaps here never create one): one stamp per GPU.
    {
      const std::uint32_t st = ++stamp_;
      bool dup = false;
      for (int t = 0; t < k; ++t) {
        std::uint32_t& m = seen_[base[X * k + t]];
        dup |= m == st;
        m = st;
      }
      if (!dup) continue;
    }
    for (int a = 0; a < k; ++a) {
      const int ea = base[X * k + a];
      if (!holds(X, ea, a)) continue;
      int best_sb = -1, best_moves = 5;
      double best_max = 0, best_delta = 0;
      for (int Y = 0; Y < d.ngpu; ++Y) {
        if (Y == X || holds(Y, ea, -1)) continue;
        for (int b = 0; b < k; ++b) {
          const int eb = base[Y * k + b];
          if (holds(X, eb, -1)) continue;
          const double delta = r[ea] - r[eb];
          const double nmax = std::max(gl_[X] - delta, gl_[Y] + delta);
          if (nmax > cap) continue;
          int moves = 2;
          if (prev) {
            const int sa = X * k + a, sb = Y * k + b;
            moves += (eb != prev[sa]) + (ea != prev[sb]) - (ea != prev[sa]) - (eb != prev[sb]);
          }
          if (best_sb >= 0 && (moves > best_moves || (moves == best_moves && nmax >= best_max)))
            continue;
          best_sb = Y * k + b;
          best_moves = moves;
          best_max = nmax;
          best_delta = delta;
        }
      }
      if (best_sb < 0) continue;
      std::swap(base[X * k + a], base[best_sb]);
      gl_[X] -= best_delta;
      gl_[best_sb / k] += best_delta;
      again = changed = true;
    }
  }
  }
  return changed;
}

// ---------------------------------------------------------------------------------------
// Fallback: the fresh packs relabelled to GPUs by a min-cost assignment that maximises the
// replicas staying on their GPU; inside a GPU a kept expert keeps its slot.

void StickyPolicy::relabel(const Domain& d, const int* prev_row, const int* fresh, int* row) {
  const int n = d.ngpu, k = d.k;
  for (int s = d.slot0; s < d.slot0 + d.nslots; ++s) have_[prev_row[s]] = have_[fresh[s]] = 0;
  cost_.assign(static_cast<std::size_t>(n) * n, 0);
  for (int g = 0; g < n; ++g) {  // g: a GPU of the previous placement
    const int* ps = prev_row + d.slot0 + g * k;
    for (int t = 0; t < k; ++t) ++have_[ps[t]];
    for (int i = 0; i < n; ++i) {  // i: a fresh pack
      const int* fs = fresh + d.slot0 + i * k;
      long long common = 0;
      for (int t = 0; t < k; ++t)
        if (have_[fs[t]] > 0) {
          --have_[fs[t]];
          ++common;
        }
      for (int t = 0; t < k; ++t) have_[ps[t]] = 0;
      for (int t = 0; t < k; ++t) ++have_[ps[t]];
      cost_[static_cast<std::size_t>(i) * n + g] = -common;
    }
    for (int t = 0; t < k; ++t) have_[ps[t]] = 0;
  }
  hungarian(cost_, n, hu_u_, hu_v_, hu_minv_, hu_p_, hu_way_, hu_used_, hu_ans_);
  for (int i = 0; i < n; ++i) {
    const int g = hu_ans_[i];
    const int* fs = fresh + d.slot0 + i * k;
    const int* ps = prev_row + d.slot0 + g * k;
    int* out = row + d.slot0 + g * k;
    for (int t = 0; t < k; ++t) ++have_[fs[t]];
    for (int t = 0; t < k; ++t) {
      if (have_[ps[t]] > 0) {
        out[t] = ps[t];
        --have_[ps[t]];
      } else {
        out[t] = -1;
      }
    }
    int t = 0;
    for (int u = 0; u < k; ++u) {
      const int e = fs[u];
      if (have_[e] == 0) continue;
      --have_[e];
      while (out[t] >= 0) ++t;
      out[t] = e;
    }
  }
}

// ---------------------------------------------------------------------------------------

void StickyPolicy::plan_domain(const Domain& d, const int* prev_row, int* row) {
  choose_counts(d, prev_row);
  const double tol = opt_.tolerance * mean_gpu_load_;
  int* fresh = row_fresh_.data();
  double target = 0;
  if (prev_row) {
    // Cheap acceptance first: the repaired placement is within the tolerance of the lower
    // bound max(mean GPU load, heaviest replica), so also of the fresh packing (which is never
    // below that bound): the fresh packing is not needed.
    place(d, prev_row, row, cnt_.data(), r_.data());
    double lb = dom_load_ / d.ngpu;
    for (int i = 0; i < d.nexperts; ++i) lb = std::max(lb, r_[d.experts[i]]);
    const double ta = lb + tol;
    // Swaps toward the lower bound + tolerance until it is reached or no swap lowers the most
    // loaded GPU (a stuck state is stuck again at the next rebalance of the same loads).
    // Then second copies are swapped away without raising the maximum; repeat while that
    // changed something (each pass removes a second copy, so this ends).
    double mx = 0;
    for (;;) {
      if (improve(d, row, ta, prev_row, 4 * d.nslots, r_.data())) {
        dedup(d, row, ta, prev_row, r_.data());
        return;
      }
      mx = 0;
      for (int g = 0; g < d.ngpu; ++g) mx = std::max(mx, gl_[g]);
      if (!dedup(d, row, mx, prev_row, r_.data())) break;
    }
    // Stuck above the bound: the fresh packing is the yardstick.
    std::copy(gl_.begin(), gl_.begin() + d.ngpu, gl_save_.begin());
    star_counts(d);
    fresh_pack(d, fresh);
    double m = 0;
    for (int g = 0; g < d.ngpu; ++g) m = std::max(m, gl_[g]);
    target = m + tol;
    std::copy(gl_save_.begin(), gl_save_.begin() + d.ngpu, gl_.begin());
    if (mx <= target) {
      return;
    }
    bool same = true;
    for (int i = 0; i < d.nexperts && same; ++i)
      same = cnt_[d.experts[i]] == cstar_[d.experts[i]];
    if (!same && repair(d, prev_row, row, target, cstar_.data(), rs_.data())) {
      settle(d, row, prev_row, rs_.data());
      return;
    }
  } else {
    star_counts(d);
    fresh_pack(d, fresh);
    double m = 0;
    for (int g = 0; g < d.ngpu; ++g) m = std::max(m, gl_[g]);
    target = m + tol;
  }
  // The fresh packing (refined by swaps), relabelled to keep what it can.
  for (int g = 0; g < d.ngpu; ++g) {
    double s = 0;
    for (int t = 0; t < d.k; ++t) s += rs_[fresh[d.slot0 + g * d.k + t]];
    gl_[g] = s;
  }
  if (opt_.refine_fresh) {
    // Swaps until stuck or at the lower bound (nothing can be better).
    double lb = dom_load_ / d.ngpu;
    for (int i = 0; i < d.nexperts; ++i) lb = std::max(lb, rs_[d.experts[i]]);
    improve(d, fresh, lb, nullptr, 4 * d.nslots, rs_.data());
  }
  dedup(d, fresh, target, nullptr, rs_.data());
  if (prev_row)
    relabel(d, prev_row, fresh, row);
  else
    std::copy(fresh + d.slot0, fresh + d.slot0 + d.nslots, row + d.slot0);
  if (prev_row || opt_.refine_fresh) settle(d, row, prev_row, rs_.data());
}

// ---------------------------------------------------------------------------------------
// The end state of every path: swaps toward the lower bound + tolerance, and second copies
// swapped away, until the bound is reached or neither changes anything. So the next
// rebalance of the same loads, which starts with the same swaps, finds nothing to do.

void StickyPolicy::settle(const Domain& d, int* row, const int* prev_row, const double* r) {
  double lb = dom_load_ / d.ngpu;
  for (int i = 0; i < d.nexperts; ++i) lb = std::max(lb, r[d.experts[i]]);
  const double ta = lb + opt_.tolerance * mean_gpu_load_;
  for (int g = 0; g < d.ngpu; ++g) {
    double sum = 0;
    for (int t = 0; t < d.k; ++t) sum += r[row[d.slot0 + g * d.k + t]];
    gl_[g] = sum;
  }
  for (;;) {
    if (improve(d, row, ta, prev_row, 4 * d.nslots, r)) {
      dedup(d, row, ta, prev_row, r);
      return;
    }
    double mx = 0;
    for (int g = 0; g < d.ngpu; ++g) mx = std::max(mx, gl_[g]);
    if (!dedup(d, row, mx, prev_row, r)) return;
  }
}

// ---------------------------------------------------------------------------------------
// Groups to nodes (hierarchical topologies): the reference's greedy packing of group loads;
// with a previous placement, the assignment of groups to nodes (G/N each) that keeps the most
// slots is used instead when its most loaded node is within the tolerance of the fresh one,
// else the fresh node sets are relabelled to nodes to keep the most slots.

void StickyPolicy::map_groups(const Topology& topo, const int* prev_row) {
  const int E = topo.num_logical, G = topo.num_groups, N = topo.num_nodes;
  const int gs = E / G, gpn = G / N, Rn = topo.num_slots / N;
  if (N == 1) {  // every group on the one node: nothing to choose (the G x G assignment below
    // cost O(G^3) per layer: 1.2 s for 58 layers of 256 groups)
    node_of_group_.assign(static_cast<std::size_t>(G), 0);
    return;
  }
  group_load_.assign(static_cast<std::size_t>(G), 0.0);
  for (int g = 0; g < G; ++g) {
    double sum = 0;  // same order of additions as over e ascending
    for (int i = 0; i < gs; ++i) sum += w_[g * gs + i];
    group_load_[g] = sum;
  }
  // Fresh: LPT of group loads, ties as the reference (lower group first, lowest node).
  keys_.resize(static_cast<std::size_t>(G));
  for (int g = 0; g < G; ++g) keys_[g] = desc_key(group_load_[g], g);
  std::sort(keys_.begin(), keys_.end());
  node_load_.assign(static_cast<std::size_t>(N), 0.0);
  fill_.assign(std::max<std::size_t>(fill_.size(), static_cast<std::size_t>(N)), 0);
  std::fill(fill_.begin(), fill_.begin() + N, 0);
  for (int i = 0; i < G; ++i) {
    const int g = static_cast<int>(keys_[i] & 0xffffffffu);
    int best = -1;
    for (int n = 0; n < N; ++n)
      if (fill_[n] < gpn && (best < 0 || node_load_[n] < node_load_[best])) best = n;
    fresh_node_[g] = best;
    ++fill_[best];
    node_load_[best] += group_load_[g];
  }
  double fresh_max = 0;
  for (int n = 0; n < N; ++n) fresh_max = std::max(fresh_max, node_load_[n]);
  for (int g = 0; g < G; ++g) node_of_group_[g] = fresh_node_[g];
  if (!prev_row || opt_.refine_reference) return;
  // Overlap: slots of node n holding an expert of group g.
  std::vector<long long>& ov = ov_;
  ov.assign(static_cast<std::size_t>(G) * N, 0);
  for (int n = 0; n < N; ++n)  // group_of_: expert -> group, without a division per slot
    for (int s = n * Rn; s < (n + 1) * Rn; ++s)
      ++ov[static_cast<std::size_t>(group_of_[prev_row[s]]) * N + n];
  cost_.assign(static_cast<std::size_t>(G) * G, 0);
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < G; ++c) cost_[static_cast<std::size_t>(g) * G + c] = -ov[static_cast<std::size_t>(g) * N + c / gpn];
  hungarian(cost_, G, hu_u_, hu_v_, hu_minv_, hu_p_, hu_way_, hu_used_, hu_ans_);
  for (int g = 0; g < G; ++g) node_of_group_[g] = hu_ans_[g] / gpn;
  double total = 0;
  for (int g = 0; g < G; ++g) total += group_load_[g];
  const double node_target = fresh_max + opt_.node_tolerance * total / N;
  auto max_node = [&]() {
    std::fill(node_load_.begin(), node_load_.end(), 0.0);
    for (int g = 0; g < G; ++g) node_load_[node_of_group_[g]] += group_load_[g];
    double m = 0;
    for (int n = 0; n < N; ++n) m = std::max(m, node_load_[n]);
    return m;
  };
  if (max_node() <= node_target) {
    return;
  }
  // One swap of two groups between nodes that meets the target (moving a group moves all
  // its experts).
  long long best_keep = -1;
  double best_m = 0;
  int best_a = -1, best_b = -1;
  for (int a = 0; a < G; ++a)
    for (int b = a + 1; b < G; ++b) {
      const int na = node_of_group_[a], nb = node_of_group_[b];
      if (na == nb) continue;
      const double la = node_load_[na] - group_load_[a] + group_load_[b];
      const double lb = node_load_[nb] - group_load_[b] + group_load_[a];
      double m = std::max(la, lb);
      for (int n = 0; n < N && m <= node_target; ++n)
        if (n != na && n != nb) m = std::max(m, node_load_[n]);
      if (m > node_target) continue;
      const long long keep = ov[static_cast<std::size_t>(a) * N + nb] +
                             ov[static_cast<std::size_t>(b) * N + na] -
                             ov[static_cast<std::size_t>(a) * N + na] -
                             ov[static_cast<std::size_t>(b) * N + nb];
      // The most balanced swap (slack keeps the next windows from moving groups again),
      // then the one keeping the most slots.
      if (best_a < 0 || m < best_m || (m == best_m && keep > best_keep)) {
        best_m = m;
        best_keep = keep;
        best_a = a;
        best_b = b;
      }
    }
  if (best_a >= 0) {
    std::swap(node_of_group_[best_a], node_of_group_[best_b]);
    return;
  }
  cost_.assign(static_cast<std::size_t>(N) * N, 0);
  for (int g = 0; g < G; ++g)
    for (int n = 0; n < N; ++n)
      cost_[static_cast<std::size_t>(fresh_node_[g]) * N + n] -= ov[static_cast<std::size_t>(g) * N + n];
  hungarian(cost_, N, hu_u_, hu_v_, hu_minv_, hu_p_, hu_way_, hu_used_, hu_ans_);
  for (int g = 0; g < G; ++g) node_of_group_[g] = hu_ans_[fresh_node_[g]];
}

// ---------------------------------------------------------------------------------------

void StickyPolicy::rebalance_into(LoadView load, const Topology& topo, const Placement* previous,
                                  Placement& out) {
  topo.validate();
  load.validate(topo);
  if (previous) previous->check_shape(topo, "sticky policy: previous placement");
  const int L = topo.num_layers, E = topo.num_logical, R = topo.num_slots, P = topo.num_ranks;
  const int k = R / P;
  const bool hier = topo.hierarchical();
  const int N = hier ? topo.num_nodes : 1;
  const int G = hier ? topo.num_groups : 1;
  if (hier && (E % G != 0 || E % N != 0))
    throw std::invalid_argument("sticky policy: num_logical % num_groups == 0 violated");

  const auto E_ = static_cast<std::size_t>(E);
  w_.resize(E_);
  r_.resize(E_);
  rs_.resize(E_);
  cnt_.resize(E_);
  cstar_.resize(E_);
  have_.assign(E_, 0);
  seen_.assign(E_, 0);
  stamp_ = 0;
  dom_of_.assign(E_, 0);
  dom_experts_.resize(E_);
  dom_first_.resize(static_cast<std::size_t>(N) + 1);
  gl_.resize(static_cast<std::size_t>(P));
  fill_.resize(static_cast<std::size_t>(std::max(P, N)));
  gstamp_.assign(static_cast<std::size_t>(P), -1);
  node_of_group_.resize(static_cast<std::size_t>(G));
  group_of_.resize(E_);
  fmask_.resize(static_cast<std::size_t>(P));
  hmask_.resize(E_);
  for (int g = 0, gsz = E / G; g < G; ++g)
    for (int i = 0; i < gsz; ++i) group_of_[g * gsz + i] = g;
  fresh_node_.resize(static_cast<std::size_t>(G));
  row_fresh_.resize(static_cast<std::size_t>(R));
  sr_.assign(static_cast<std::size_t>(R) + 1, 0.0);  // + 1: improve reads slot pairs
  gl_save_.resize(static_cast<std::size_t>(P));
  phy2log_.resize(static_cast<std::size_t>(L) * R);
  amask_.resize(2 * static_cast<std::size_t>(k));

  if (opt_.refine_reference) {
    // The reference's placement, then swaps inside each node (groups stay on their node).
    reference_->rebalance_into(load, topo, nullptr, base_);
    std::copy(base_.phy2log().begin(), base_.phy2log().end(), phy2log_.begin());
    for (int l = 0; l < L; ++l) {
      const auto wrow = load.row(l);
      const auto cnt = base_.logcnt(l);
      for (int e = 0; e < E; ++e) r_[e] = wrow[e] / cnt[e];
      int* row = phy2log_.data() + static_cast<std::size_t>(l) * R;
      for (int n = 0; n < N; ++n) {
        Domain d = Domain::of_node(n, P, N, k);
        for (int g = 0; g < d.ngpu; ++g) {
          double s = 0;
          for (int t = 0; t < k; ++t) s += r_[row[d.slot0 + g * k + t]];
          gl_[g] = s;
        }
        improve(d, row, 0.0, nullptr, 4 * d.nslots, r_.data());
      }
    }
    out.assign(L, E, R, phy2log_);
    return;
  }

  for (int l = 0; l < L; ++l) {
    const auto wrow = load.row(l);
    double total = 0;
    for (int e = 0; e < E; ++e) total += (w_[e] = wrow[e]);
    mean_gpu_load_ = total / P;
    const int* prev_row = previous ? previous->phy2log(l).data() : nullptr;
    int* row = phy2log_.data() + static_cast<std::size_t>(l) * R;
    // Domains and their experts.
    if (hier) {
      map_groups(topo, prev_row);
      const int gs = E / G;
      std::fill(dom_first_.begin(), dom_first_.end(), 0);
      for (int g = 0; g < G; ++g) dom_first_[node_of_group_[g] + 1] += gs;
      for (int n = 0; n < N; ++n) dom_first_[n + 1] += dom_first_[n];
      for (int n = 0; n < N; ++n) fill_[n] = dom_first_[n];
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < gs; ++i) {
          const int e = g * gs + i;
          dom_of_[e] = node_of_group_[g];
          dom_experts_[fill_[node_of_group_[g]]++] = e;
        }
    } else {
      dom_first_[0] = 0;
      dom_first_[1] = E;
      for (int e = 0; e < E; ++e) dom_experts_[e] = e;
    }
    for (int n = 0; n < N; ++n) {
      Domain d = Domain::of_node(n, P, N, k);
      d.experts = dom_experts_.data() + dom_first_[n];
      d.nexperts = dom_first_[n + 1] - dom_first_[n];
      plan_domain(d, prev_row, row);
    }
  }
  out.assign(L, E, R, phy2log_);
}

}  // namespace eplb::algo
