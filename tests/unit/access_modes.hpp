#pragma once
// The batched deepseek kernel's two ways of reading and writing its per-lane tables (scalar
// loads and stores, or gathers and scatters; detail::scalar_access()). Both must give the same
// placements as the scalar path on every CPU, whichever one the CPU's default picks.
#include "eplb/algo/simd.hpp"

namespace eplb::test {

/// Forces one access mode for its lifetime (1: scalar, 0: gathers), then restores the default.
class ForcedAccess {
 public:
  explicit ForcedAccess(int mode) { eplb::algo::detail::set_scalar_access(mode); }
  ~ForcedAccess() { eplb::algo::detail::set_scalar_access(-1); }
  ForcedAccess(const ForcedAccess&) = delete;
  ForcedAccess& operator=(const ForcedAccess&) = delete;
};

inline const char* access_name(int mode) { return mode ? "scalar table access" : "gather table access"; }

}  // namespace eplb::test
