#pragma once
/// \file Internal: the AVX-512 kernels (algo/simd_avx512.cpp, the only file built with
/// AVX-512 flags). Callers in simd.cpp check the CPU first; buffers are sized by the caller.
#include <cstdint>

#include "eplb/algo/simd.hpp"

namespace eplb::algo::detail::avx512 {

/// Buffers of one batch, lane-major (element i of lane l at [i * 8 + l]) unless noted.
struct RowBuffers {
  const float* w;             ///< [lane][n] loads
  std::uint64_t* keys;        ///< [sort_rows(n) + 1][8], sorted by sort_keys16 or sort_keys8
  std::uint64_t* extra;       ///< [sort_rows(K + Kc) + 1][8]
  std::int32_t* cnt;          ///< [n][8]
  std::int32_t* picks;        ///< [max(K, 1)][8]
  std::int32_t* slot_item;    ///< [lane][slots]
  std::uint64_t* tree;        ///< [2 * 64][8]
  bool scalar_access;         ///< the trees and their merge: scalar loads/stores (scalar_access())
};

/// Rows a sort of n keys per lane uses (padded to a power of two, at least 16).
int sort_rows(int n);
/// Sorts the experts of 16 rows (w: [16][n] loads) by weight descending, ties by lower index:
/// the keys of rows 0-7 go to keys_lo, of rows 8-15 to keys_hi (each [sort_rows(n) + 1][8],
/// the rows beyond n set to the largest key). k32: [sort_rows(n) + 1][16] scratch. scalar: the
/// sorted keys' loads are read with scalar loads instead of gathers (scalar_access()).
void sort_keys16(const RowShape& shape, const float* w, std::uint64_t* keys_lo, std::uint64_t* keys_hi,
                 std::uint32_t* k32, bool scalar);
/// The same for the 8 rows of w ([8][n]) into keys, with wide keys throughout.
void sort_keys8(const RowShape& shape, const float* w, std::uint64_t* keys);
/// The rest of the policy's per-row work for 8 rows whose keys sort_keys16 or sort_keys8 wrote.
void plan_rows(const RowShape& shape, const RowBuffers& buffers);
void to_float(const double* src, float* dst, int n);
void group_sums(const float* w, int groups, int gs, double* out);
void map_slots(const int* item, const int* lid, int* out, int n);
void map_slots_offset(const int* item, int first, int* out, int n);
void lane_counts(const int* cnt, int lane, int* out, int n);
bool all_in_range(const double* v, long long n, double max);
void fill_cached(int* p, long long n, int v);
/// n >= 16.
void min_max(const int* v, long long n, int& mn, int& mx);

}  // namespace eplb::algo::detail::avx512
