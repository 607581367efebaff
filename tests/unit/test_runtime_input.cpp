// Bad input to the runtime's host-side pieces that need no MPI: the load window, the weight
// registry and the runtime configuration reject it with a message naming the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "runtime/config.hpp"
#include "runtime/load_window.hpp"
#include "runtime/weights.hpp"

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
