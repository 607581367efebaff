// Bad input to the runtime's host-side pieces that need no MPI: the load window, the weight
// registry and the runtime configuration reject it with a message naming the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <string>
#include <limits>
#include <vector>

#include "eplb/runtime/config.hpp"
#include "eplb/runtime/load_window.hpp"
#include "eplb/runtime/weights.hpp"

namespace {
using eplb::runtime::LoadWindow;

TEST(LoadWindowInput, BadLayerOrLengthIsRejectedForTheNextRebalance) {
  LoadWindow w(2, 4, 3);
  const std::vector<std::int32_t> ids = {0, 1, 3};
  EXPECT_EQ(w.record(2, ids), -1);  // kept for the next rebalance, not thrown on this rank
  auto e = w.take_error();
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("layer 2 outside [0, 2)"), std::string::npos) << *e;
  EXPECT_FALSE(w.add_counts(-1, std::vector<std::int64_t>(4, 1)));
  EXPECT_FALSE(w.add_counts(0, std::vector<double>(3, 1.0)));
  e = w.take_error();
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("layer -1 outside"), std::string::npos) << *e;  // the first one is kept
  EXPECT_FALSE(w.add_counts(0, std::vector<std::int64_t>(5, 1)));
  e = w.take_error();
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("5 counts for layer 0, expected E = 4"), std::string::npos) << *e;
  std::vector<std::int64_t> sum(8, -1);
  w.sum(sum);
  EXPECT_EQ(sum, std::vector<std::int64_t>(8, 0)) << "a rejected call counted something";
  EXPECT_EQ(w.record(1, ids), 0);
  w.sum(sum);
  EXPECT_EQ(sum[4 + 3], 1);
}

TEST(LoadWindowInput, CountsThatWouldSumPast2To62AreRejectedNotWrapped) {
  // Each call was checked on its own: INT64_MAX added twice summed to -2 (and three times to a
  // positive number), which the rebalance then planned from.
  constexpr std::int64_t kMax = LoadWindow::kMaxCount;
  LoadWindow w(1, 2, 3);
  EXPECT_FALSE(w.add_counts(0, std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::max(), 0}));
  auto e = w.take_error();
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("would take this pass's count past 2^62"), std::string::npos) << *e;
  EXPECT_TRUE(w.add_counts(0, std::vector<std::int64_t>{kMax - 1, 0}));
  EXPECT_TRUE(w.add_counts(0, std::vector<std::int64_t>{1, 5}));  // exactly 2^62
  EXPECT_FALSE(w.add_counts(0, std::vector<std::int64_t>{1, 5}));  // one more: rejected whole
  EXPECT_FALSE(w.add_counts(0, std::vector<double>{1.0, 0.0}));
  EXPECT_FALSE(w.add_counts(0, std::vector<double>{9.0e18, 0.0}));  // the old bound, above 2^62
  e = w.take_error();
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("expert 0"), std::string::npos) << *e;
  std::vector<std::int64_t> sum(2);
  w.sum(sum);
  EXPECT_EQ(sum, (std::vector<std::int64_t>{kMax, 5})) << "a rejected call counted something";
  // Passes that each hold 2^62 sum past it: the sum saturates at 2^62 + 1 instead of wrapping
  // (the engine rejects it as input, naming the layer and expert).
  w.end_pass();
  EXPECT_TRUE(w.add_counts(0, std::vector<std::int64_t>{kMax, 0}));
  w.end_pass();
  EXPECT_TRUE(w.add_counts(0, std::vector<std::int64_t>{kMax, 0}));
  w.sum(sum);
  EXPECT_EQ(sum[0], kMax + 1);
  EXPECT_EQ(sum[1], 5);
  // A ring to restore is held to the same bound (a checkpoint's).
  LoadWindow r(1, 2, 2);
  EXPECT_THROW(r.restore(std::vector<std::int64_t>{kMax, 0, 1, 0}, 0), std::invalid_argument);
  EXPECT_NO_THROW(r.restore(std::vector<std::int64_t>{kMax - 1, 0, 1, 0}, 1));
}

TEST(LoadWindowInput, NegativeIdsAreSkippedOnlyWhenAskedTo) {
  const std::vector<std::int64_t> ids = {2, -1, 3, -1, 2};
  std::vector<std::int64_t> sum(4);
  LoadWindow strict(1, 4, 2);
  EXPECT_EQ(strict.record(0, ids), 2);
  const auto e = strict.take_error();
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("2 expert id(s) outside [0, 4), first -1 at flat index 1"), std::string::npos) << *e;
  strict.sum(sum);
  EXPECT_EQ(sum, (std::vector<std::int64_t>{0, 0, 0, 0})) << "the batch was counted";

  LoadWindow padded(1, 4, 2, /*skip_negative_ids=*/true);
  EXPECT_EQ(padded.record(0, ids), 0);
  EXPECT_FALSE(padded.take_error());
  padded.sum(sum);
  EXPECT_EQ(sum, (std::vector<std::int64_t>{0, 0, 2, 1}));
  // Ids >= E are still errors, and their batch is not counted.
  EXPECT_EQ(padded.record(0, std::vector<std::int64_t>{-1, 4, 1}), 1);
  ASSERT_TRUE(padded.take_error());
  padded.sum(sum);
  EXPECT_EQ(sum, (std::vector<std::int64_t>{0, 0, 2, 1}));
}

TEST(LoadWindowInput, ShapeThatCannotBeAllocatedIsRejected) {
  const int big = std::numeric_limits<int>::max();
  try {
    LoadWindow w(big, big, big);
    ADD_FAILURE() << "a window of 2^93 counters was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("more than memory can hold"), std::string::npos) << e.what();
  }
}

TEST(WeightRegistryInput, LayerOutsideTheRegistryIsRejected) {
  eplb::runtime::WeightRegistry r(2, 4);
  std::vector<std::byte> buf(64);
  r.add(0, "w", buf.data(), 16);
  EXPECT_EQ(r.tensors(0).size(), 1u);
  EXPECT_THROW((void)r.tensors(2), std::invalid_argument);
  EXPECT_THROW((void)r.tensors(-1), std::invalid_argument);
  EXPECT_THROW((void)r.bytes_per_expert(5), std::invalid_argument);
}

TEST(WeightRegistryInput, TensorsEndingPastTheAddressSpaceAreRejected) {
  // A negative size cast to size_t: the slot's end wrapped below its start, the overlap check
  // passed, and the first migration copied ~2^64 bytes.
  std::vector<std::byte> mem(64);
  eplb::runtime::WeightRegistry r(1, 4);
  try {
    r.add(0, "neg", mem.data(), static_cast<std::size_t>(-64));
    ADD_FAILURE() << "a tensor of 2^64 - 64 bytes per slot was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("past the end of the address space"), std::string::npos) << e.what();
  }
  EXPECT_THROW(r.add(0, "stride", mem.data(), 16, std::numeric_limits<std::size_t>::max() / 2), std::invalid_argument);
  EXPECT_TRUE(r.tensors(0).empty());
  EXPECT_NO_THROW(r.add(0, "ok", mem.data(), 16));
}

TEST(WeightRegistryInput, SlotsSharingMemoryAreRejectedInterleavedTensorsAccepted) {
  std::vector<std::byte> mem(1024);
  // Two tensors interleaved in one buffer (w1 and w3 of a slot side by side): fine.
  eplb::runtime::WeightRegistry ok(2, 4);
  for (int l = 0; l < 2; ++l) {
    ok.add(l, "w1", mem.data() + l * 256, 16, 32);
    ok.add(l, "w3", mem.data() + l * 256 + 16, 16, 32);
  }
  EXPECT_NO_THROW(ok.validate());
  // The same buffer registered for two layers.
  eplb::runtime::WeightRegistry twice(2, 4);
  twice.add(0, "w", mem.data(), 64);
  twice.add(1, "w", mem.data() + 192, 64);  // slot 0 of layer 1 = slot 3 of layer 0
  try {
    twice.validate();
    ADD_FAILURE() << "overlapping slots accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("layer 0 tensor 'w' slot 3 and layer 1 tensor 'w' slot 0 overlap"),
              std::string::npos) << e.what();
  }
  // Two tensors of one layer offset by less than their extent: b's slot 0 lies in a's slot 1.
  eplb::runtime::WeightRegistry shifted(1, 2);
  shifted.add(0, "a", mem.data(), 64);
  shifted.add(0, "b", mem.data() + 100, 64);
  EXPECT_THROW(shifted.validate(), std::invalid_argument);
}

TEST(RuntimeConfigInput, NanMinGainIsRejected) {
  eplb::runtime::RuntimeConfig c;
  c.topology = {2, 4, 8, 2, 1, 1};
  EXPECT_NO_THROW(c.validate());
  c.min_gain = std::nan("");
  try {
    c.validate();
    ADD_FAILURE() << "min_gain = NaN was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("min_gain is NaN"), std::string::npos) << e.what();
  }
}

}  // namespace
