#pragma once
/// \file Deterministic expert contents for demos and tests: the bytes of (layer, logical
/// expert, tensor) are a pure function of those ids, so after any migration every slot can be
/// checked against the expert the placement says it holds.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/runtime/weights.hpp"

namespace eplb::runtime {

/// Writes the pattern of (layer, expert, tensor) into dst[0, bytes) (host memory).
void fill_pattern(std::byte* dst, std::size_t bytes, int layer, int expert, int tensor);
/// Index of the first byte that differs from the pattern, or -1.
long long check_pattern(const std::byte* src, std::size_t bytes, int layer, int expert, int tensor);

/// Throws std::invalid_argument (naming `what`) unless slots rank * k .. rank * k + k - 1 of
/// every layer of the registry exist in the placement (same layer count).
void check_slots_fit(const WeightRegistry& weights, const algo::Placement& placement, int rank, const char* what);
/// The line verify_slots reports for a bad slot: "layer L slot S tensor 'name': byte B
/// differs from expert E's pattern".
std::string describe_bad_slot(int layer, int slot, const std::string& tensor, long long byte, int expert);

/// Fills every local slot of this rank (host weights) with its expert's pattern.
void fill_slots(const WeightRegistry& weights, const algo::Placement& placement, int rank);
/// Checks every local slot; returns one line per bad (layer, slot, tensor), empty when all
/// hold exactly their expert's bytes.
std::vector<std::string> verify_slots(const WeightRegistry& weights,
                                      const algo::Placement& placement, int rank);

}  // namespace eplb::runtime
