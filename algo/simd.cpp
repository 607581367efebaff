// The algo layer's vector kernels: dispatch and the scalar code (see simd.hpp). Built with the
// project's ordinary flags; the AVX-512 code is in simd_avx512.cpp and runs only after
// simd_rows_available() has checked the CPU.
#include "eplb/algo/simd.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <limits>
#include <string_view>

#if defined(EPLB_HAVE_AVX512_KERNEL)
#include "eplb/algo/simd_avx512.hpp"
#endif

namespace eplb::algo::detail {
namespace {

constexpr int kLanes = SimdScratch::kLanes;
/// Rows of at least this many experts are sorted 16 at a time with narrow keys
/// (sort_keys16); shorter rows 8 at a time with wide keys, where the narrow keys' extra
/// passes cost about what their faster sort saves.
constexpr int kNarrowSortMin = 128;

bool all_in_range_scalar(const double* v, std::size_t n, double max) {
  // Branch-free (NaN fails both comparisons).
  unsigned ok = 1;
  for (std::size_t i = 0; i < n; ++i)
    ok &= static_cast<unsigned>(v[i] >= 0.0) & static_cast<unsigned>(v[i] <= max);
  return ok != 0;
}

void min_max_scalar(const int* v, std::size_t n, int& mn, int& mx) {
  int a = v[0], b = v[0];
  for (std::size_t i = 1; i < n; ++i) {
    a = std::min(a, v[i]);
    b = std::max(b, v[i]);
  }
  mn = a;
  mx = b;
}

}  // namespace

bool simd_rows_supported(const RowShape& s) {
  const int K = s.slots - s.n;
  const int Kc = std::min(K, s.n);
  // Item ids (position << 16 | expert) need slots < 2^15.
  return s.n >= 1 && s.slots < 0x8000 && s.packs >= 1 && s.packs <= 64 && Kc <= 64 &&
         s.slots % s.packs == 0 && s.slots / s.packs < 0xffff && K >= 0;
}

namespace {

/// EPLB_DEEPSEEK_ACCESS: 1 scalar, 0 gather, -1 unset; another value throws.
int access_from_env() {
  const char* e = std::getenv("EPLB_DEEPSEEK_ACCESS");
  if (!e || !*e) return -1;
  const std::string_view v(e);
  if (v == "scalar") return 1;
  if (v == "gather") return 0;
  throw std::invalid_argument("EPLB_DEEPSEEK_ACCESS must be 'scalar' or 'gather', not '" + std::string(v) + "'");
}

/// memset when every byte of v is the same (v = -1, the log2phy padding), else std::fill_n.
void fill_plain(int* p, std::size_t n, int v) {
  const auto b = static_cast<unsigned char>(v);
  if (static_cast<unsigned>(v) == b * 0x01010101u)
    std::memset(p, b, n * sizeof(int));
  else
    std::fill_n(p, n, v);
}

bool cpu_is_amd() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_is("amd") != 0;
#else
  return false;
#endif
}
}  // namespace

bool scalar_access() {
  static const bool by_default = [] {
    const int from_env = access_from_env();
    return from_env >= 0 ? from_env == 1 : cpu_is_amd();
  }();
  return by_default;
}

#if defined(EPLB_HAVE_AVX512_KERNEL)

bool simd_rows_available() {
  static const bool ok = [] {
    const char* e = std::getenv("EPLB_DEEPSEEK_SCALAR");
    if (e && *e && std::string_view(e) != "0") return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  }();
  return ok;
}

void sort_rows_simd(const RowShape& sh, SimdScratch& s, int halves, bool scalar) {
  const std::size_t rows = static_cast<std::size_t>(avx512::sort_rows(sh.n) + 1);
  grow(s.keys, rows * kLanes);
  grow(s.keys_hi, rows * kLanes);
  if (sh.n >= kNarrowSortMin) {
    grow(s.keys32, rows * SimdScratch::kRows);
    avx512::sort_keys16(sh, s.w.data(), s.keys.data(), s.keys_hi.data(), s.keys32.data(), scalar);
    return;
  }
  avx512::sort_keys8(sh, s.w.data(), s.keys.data());
  if (halves > 1) avx512::sort_keys8(sh, s.w.data() + static_cast<std::size_t>(kLanes) * sh.n, s.keys_hi.data());
}

void plan_rows_simd(const RowShape& sh, SimdScratch& s, int half, bool scalar) {
  const int n = sh.n, K = sh.slots - sh.n, Kc = std::min(K, n);
  grow(s.extra, static_cast<std::size_t>(avx512::sort_rows(K + Kc) + 1) * kLanes);
  grow(s.cnt, static_cast<std::size_t>(n) * kLanes);
  grow(s.picks, static_cast<std::size_t>(std::max(K, 1)) * kLanes);
  grow(s.slot_item, static_cast<std::size_t>(sh.slots) * kLanes);
  grow(s.tree, static_cast<std::size_t>(2 * 64) * kLanes);
  avx512::plan_rows(sh, {s.w.data() + static_cast<std::size_t>(half) * kLanes * n,
                         half ? s.keys_hi.data() : s.keys.data(), s.extra.data(), s.cnt.data(),
                         s.picks.data(), s.slot_item.data(), s.tree.data(), scalar});
}

void to_float(const double* src, float* dst, int n) { avx512::to_float(src, dst, n); }
void group_sums(const float* w, int groups, int gs, double* out) { avx512::group_sums(w, groups, gs, out); }
void map_slots(const int* item, const int* lid, int* out, int n) { avx512::map_slots(item, lid, out, n); }
void map_slots_offset(const int* item, int first, int* out, int n) {
  avx512::map_slots_offset(item, first, out, n);
}
void lane_counts(const std::int32_t* cnt, int lane, int* out, int n) { avx512::lane_counts(cnt, lane, out, n); }

bool all_in_range(const double* v, std::size_t n, double max) {
  if (!simd_rows_available()) return all_in_range_scalar(v, n, max);
  return avx512::all_in_range(v, static_cast<long long>(n), max);
}

void fill_cached(int* p, std::size_t n, int v) {
  // Vector stores on AMD (measured there: the slot stores that follow hit); elsewhere memset
  // (its `rep stosb` measured faster on the Intel Xeon of the H200 host: Kimi-K2 1.035-1.09x
  // slower with the vector stores). docs/BENCHMARKS.md.
  static const bool vector_stores = cpu_is_amd();
  if (!vector_stores || !simd_rows_available()) return fill_plain(p, n, v);
  avx512::fill_cached(p, static_cast<long long>(n), v);
}

void min_max(const int* v, std::size_t n, int& mn, int& mx) {
  if (n < 16 || !simd_rows_available()) return min_max_scalar(v, n, mn, mx);
  avx512::min_max(v, static_cast<long long>(n), mn, mx);
}

#else  // no AVX-512 kernel in this build

bool simd_rows_available() { return false; }
void sort_rows_simd(const RowShape&, SimdScratch&, int, bool) {}
void plan_rows_simd(const RowShape&, SimdScratch&, int, bool) {}
void to_float(const double*, float*, int) {}
void group_sums(const float*, int, int, double*) {}
void map_slots(const int*, const int*, int*, int) {}
void map_slots_offset(const int*, int, int*, int) {}
void lane_counts(const std::int32_t*, int, int*, int) {}
bool all_in_range(const double* v, std::size_t n, double max) { return all_in_range_scalar(v, n, max); }
void min_max(const int* v, std::size_t n, int& mn, int& mx) { min_max_scalar(v, n, mn, mx); }
void fill_cached(int* p, std::size_t n, int v) { fill_plain(p, n, v); }

#endif


}  // namespace eplb::algo::detail
