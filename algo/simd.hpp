#pragma once
/// \file Internal: AVX-512 kernels of the algo layer, used where the CPU has AVX-512 (checked
/// at run time; scalar code elsewhere). Mainly the deepseek policy's per-row work (sort, replicate, pack) for eight rows at
/// once, one row per 64-bit lane of an AVX-512 register (docs/POLICIES.md, "Speed"). A row is
/// one (layer, node) of the hierarchical routine, or one layer of the global policy. Same
/// output as the scalar code, bit for bit; tests run both.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace eplb::algo::detail {

/// v grown to at least n elements (never shrunk: scratch keeps its storage); its data.
template <class T>
T* grow(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

/// Shape shared by the rows of a batch.
struct RowShape {
  int n = 0;    ///< experts per row (En)
  int slots = 0;  ///< replicas per row (Rn >= n)
  int packs = 0;  ///< GPUs per row (Pn); slots % packs == 0
};

/// Buffers of the batched kernel, reused across calls (lane-major: element i of lane l at
/// [i * 8 + l]).
struct SimdScratch {
  static constexpr int kLanes = 8;
  static constexpr int kRows = 2 * kLanes;  ///< rows sorted together (two batches)
  std::vector<float> w;                 ///< [row][n] the 16 rows' loads (caller fills)
  std::vector<std::uint32_t> keys32;    ///< [n + 1][16] the 16 rows' sort keys
  std::vector<std::uint64_t> keys_hi;   ///< [n + 1][8] rows 8-15's sorted expert keys
  std::vector<std::uint64_t> keys;      ///< [n + 1][8] sorted expert keys, then the A list
  std::vector<std::uint64_t> extra;     ///< [K + Kc + 1][8] replicated items (the B list)
  std::vector<std::int32_t> cnt;        ///< [n][8] replica counts
  std::vector<std::int32_t> picks;      ///< [K][8] expert of each added replica
  std::vector<std::int32_t> slot_item;  ///< [lane][slots] expert in each slot
  std::vector<std::uint64_t> tree;      ///< [2M][8] tournament tree (many packs)
};

/// Whether the batched kernel handles this shape (queues of at most 64 packs/experts).
bool simd_rows_supported(const RowShape& shape);

/// True when this build has the batched kernel and the CPU runs it (AVX-512 F, VL, DQ and BW), and
/// EPLB_DEEPSEEK_SCALAR is not set to a non-zero value.
bool simd_rows_available();

/// How the batched kernel reads and writes the tables it revisits within a batch (the
/// tournament trees of replication and packing, the packing's merge beside a tree, the sorted
/// keys' loads): true, with eight scalar loads and stores per vector; false, with gathers and
/// scatters. The results are the same either way; the speed is not. On AMD Zen 5 (family 26,
/// the development and CI machines) the scalar form measured faster, on the Intel Xeon of the
/// GPU host the gathers (docs/BENCHMARKS.md, sixteenth session; other AMD and Intel
/// generations were not measured). The default follows the CPU's vendor:
/// scalar on AMD, gathers elsewhere. EPLB_DEEPSEEK_ACCESS=scalar|gather overrides it for the
/// process (another value: std::invalid_argument from the policy call, naming the variable).
/// Read once; DeepseekPolicy::set_table_access overrides it per policy.
bool scalar_access();

/// Sorts the experts of the 16 rows whose loads are in s.w ([16][shape.n], every row filled:
/// callers pad with copies; rows 8-15 only if halves == 2); then plan_rows_simd(shape, s,
/// half) runs rows 8 * half .. + 7.
/// Afterwards s.slot_item[l * slots + j] is the expert (row-local index) in slot j of that
/// half's lane l. Require simd_rows_available().
/// `scalar`: the table access form (scalar_access()).
void sort_rows_simd(const RowShape& shape, SimdScratch& s, int halves, bool scalar);
void plan_rows_simd(const RowShape& shape, SimdScratch& s, int half, bool scalar);

/// The small loops around the rows, vectorised (require simd_rows_available()).
/// dst[i] = float(src[i]).
void to_float(const double* src, float* dst, int n);
/// out[g] = sum over i in [0, gs) of double(w[g * gs + i]), added in order of i.
void group_sums(const float* w, int groups, int gs, double* out);
/// out[j] = lid[item[j]] for j < n.
void map_slots(const int* item, const int* lid, int* out, int n);
/// out[j] = item[j] + first for j < n.
void map_slots_offset(const int* item, int first, int* out, int n);
/// out[e] = cnt[e * 8 + lane] for e < n (one lane of SimdScratch::cnt).
void lane_counts(const std::int32_t* cnt, int lane, int* out, int n);

/// p[0..n) = v: with ordinary AVX-512 stores on AMD CPUs that have it, else memset (v = -1)
/// or std::fill_n. Used for the -1 fill of a log2phy block that scattered stores then fill
/// in: on AMD (Zen 5) those stores measured slower after glibc's memset (`rep stosb` for
/// blocks this size); on the Intel Xeon of the H200 host the vector stores were the slower.
void fill_cached(int* p, std::size_t n, int v);

/// Minimum and maximum of v[0..n) (n >= 1), vectorised where the CPU has AVX-512.
void min_max(const int* v, std::size_t n, int& mn, int& mx);

/// Whether every value is in [0, max] (NaN fails; -0.0 counts as 0). Uses AVX-512 where the
/// CPU has it, a scalar loop elsewhere.
bool all_in_range(const double* v, std::size_t n, double max);

}  // namespace eplb::algo::detail
