// The host routing reference (runtime/routing.hpp), which the GPU kernel's test compares
// against: checked here on its own, on the CPU, by properties rather than by its formula.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include "eplb/algo/placement.hpp"
#include "eplb/runtime/routing.hpp"

namespace {
using eplb::algo::Placement;
using eplb::runtime::LayerMaps;
using eplb::runtime::route_and_count_host;

// One layer, E = 4, R = 8 on 2 GPUs of 4 slots: expert 0 has 3 replicas (slots 1, 4, 6),
// expert 1 has 2 (slots 0, 7), expert 2 one (slot 2), expert 3 two (slots 3, 5).
const Placement kPlacement(1, 4, 8, {1, 0, 2, 3, 0, 3, 0, 1});

LayerMaps maps_of(const Placement& p) {
  return {p.log2phy().data(), p.logcnt().data(), p.num_logical(), p.max_replicas()};
}

struct Routed {
  std::vector<int> slots;
  std::vector<std::int64_t> counts;
  std::int64_t errors = 0;
};

template <class Id>
Routed route(const std::vector<Id>& ids, int lb, int le, bool skip_negative = false) {
  Routed r{std::vector<int>(ids.size(), -7), std::vector<std::int64_t>(4, 0), 0};
  route_and_count_host<Id>(ids, maps_of(kPlacement), lb, le, r.slots, r.counts, &r.errors, skip_negative);
  return r;
}

TEST(RoutingHost, EveryTokenGoesToASlotOfItsExpertAndIsCounted) {
  std::vector<std::int32_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back((i * 7 + i / 3) % 4);
  const auto r = route(ids, 0, 0);
  EXPECT_EQ(r.errors, 0);
  std::vector<std::int64_t> want(4, 0);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ASSERT_GE(r.slots[i], 0);
    ASSERT_LT(r.slots[i], 8);
    EXPECT_EQ(kPlacement.phy2log(0)[r.slots[i]], ids[i]) << "token " << i;
    ++want[ids[i]];
  }
  EXPECT_EQ(r.counts, want);
}

TEST(RoutingHost, WithoutALocalRangeTheReplicasShareTheTokensEvenly) {
  const std::vector<std::int32_t> ids(300, 0);  // expert 0: 3 replicas
  const auto r = route(ids, 0, 0);
  std::map<int, int> per_slot;
  for (int s : r.slots) ++per_slot[s];
  ASSERT_EQ(per_slot.size(), 3u);
  for (const auto& [slot, n] : per_slot) EXPECT_EQ(n, 100) << "slot " << slot;
}

TEST(RoutingHost, ALocalReplicaIsPreferredWhenThereIsOne) {
  // GPU 1 holds slots [4, 8): expert 0 at 4 and 6 (the first, 4, is taken), expert 1 at 7,
  // expert 3 at 5; expert 2 has no replica there and keeps its only slot, 2.
  const std::vector<std::int64_t> ids = {0, 1, 2, 3, 0, 1, 2, 3};
  const auto r = route(ids, 4, 8);
  EXPECT_EQ(r.slots, (std::vector<int>{4, 7, 2, 5, 4, 7, 2, 5}));
  EXPECT_EQ(r.counts, (std::vector<std::int64_t>{2, 2, 2, 2}));
}

TEST(RoutingHost, IdsOutsideTheExpertsAreCountedAsErrorsAndRouteNowhere) {
  const std::vector<std::int64_t> ids = {-1, 4, std::numeric_limits<std::int64_t>::max(), 3,
                                         std::numeric_limits<std::int64_t>::min()};
  const auto r = route(ids, 0, 0);
  EXPECT_EQ(r.errors, 4);
  EXPECT_EQ(r.slots, (std::vector<int>{-1, -1, -1, 5, -1}));  // token 3: replica 3 % 2 of {3, 5}
  EXPECT_EQ(r.counts, (std::vector<std::int64_t>{0, 0, 0, 1}));
}

TEST(RoutingHost, WithSkipNegativeIdsNegativeIdsRouteNowhereWithoutAnError) {
  const std::vector<std::int32_t> ids = {-1, 4, 2, std::numeric_limits<std::int32_t>::min(), 3};
  const auto r = route(ids, 0, 0, true);
  EXPECT_EQ(r.errors, 1);  // only the 4 (>= E) is an error
  EXPECT_EQ(r.slots, (std::vector<int>{-1, -1, 2, -1, 3}));  // entry 4: replica 4 % 2 of {3, 5}
  EXPECT_EQ(r.counts, (std::vector<std::int64_t>{0, 0, 1, 1}));
}

}  // namespace
