// The deepseek policy against the reference vectors (tests/data/eplb_vectors_v1.txt).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "eplb/algo/deepseek.hpp"
#include "vectors.hpp"

namespace {
using eplb::test::VectorCase;

const std::vector<VectorCase>& all_cases() {
  static const auto cases = eplb::test::load_vectors(EPLB_TEST_DATA_DIR "/eplb_vectors_v1.txt");
  return cases;
}

std::vector<VectorCase> cases_of(const std::string& kind) {
  std::vector<VectorCase> out;
  for (const auto& c : all_cases())
    if (c.kind == kind) out.push_back(c);
  return out;
}

std::string case_name(const testing::TestParamInfo<VectorCase>& info) { return info.param.name; }

eplb::algo::LoadView view_of(const VectorCase& c) {
  return {c.weights, c.topo.num_layers, c.topo.num_logical};
}

TEST(DeepseekVectors, FileHasAllKinds) {
  EXPECT_EQ(all_cases().size(), 40u);
  EXPECT_EQ(cases_of("exact").size(), 26u);
  EXPECT_EQ(cases_of("quality").size(), 10u);
  EXPECT_EQ(cases_of("error").size(), 4u);
}

class Exact : public testing::TestWithParam<VectorCase> {};
TEST_P(Exact, Phy2logAndLogcntMatchReference) {
  const auto& c = GetParam();
  EXPECT_EQ(c.topo.hierarchical(), c.policy == "hierarchical");
  eplb::algo::DeepseekPolicy policy;
  const auto p = policy.rebalance(view_of(c), c.topo);
  ASSERT_EQ(p.phy2log().size(), c.phy2log.size());
  EXPECT_TRUE(std::equal(c.phy2log.begin(), c.phy2log.end(), p.phy2log().begin()))
      << "phy2log differs";
  ASSERT_EQ(p.logcnt().size(), c.logcnt.size());
  EXPECT_TRUE(std::equal(c.logcnt.begin(), c.logcnt.end(), p.logcnt().begin()))
      << "logcnt differs";
}
INSTANTIATE_TEST_SUITE_P(Vectors, Exact, testing::ValuesIn(cases_of("exact")), case_name);

TEST_P(Exact, SameResultWithPlanningThreads) {
  const auto& c = GetParam();
  eplb::algo::DeepseekPolicy one, many;
  many.set_threads(7);
  EXPECT_EQ(one.rebalance(view_of(c), c.topo), many.rebalance(view_of(c), c.topo));
}

class Quality : public testing::TestWithParam<VectorCase> {};
TEST_P(Quality, MaxGpuLoadWithinReference) {
  const auto& c = GetParam();
  eplb::algo::DeepseekPolicy policy;
  const auto p = policy.rebalance(view_of(c), c.topo);
  const auto report = eplb::algo::evaluate(view_of(c), p, c.topo);
  for (int l = 0; l < c.topo.num_layers; ++l)
    EXPECT_LE(report.layers[l].max_load, c.maxload[l] * (1 + 1e-9)) << "layer " << l;
}
INSTANTIATE_TEST_SUITE_P(Vectors, Quality, testing::ValuesIn(cases_of("quality")), case_name);

// The exact cases' recorded maxload agrees with our metric on the reference output.
TEST(DeepseekVectors, MaxloadMetricMatchesRecorded) {
  for (const auto& c : cases_of("exact")) {
    eplb::algo::Placement ref(c.topo.num_layers, c.topo.num_logical, c.topo.num_slots,
                              c.phy2log);
    const auto report = eplb::algo::evaluate(view_of(c), ref, c.topo);
    for (int l = 0; l < c.topo.num_layers; ++l)
      EXPECT_NEAR(report.layers[l].max_load, c.maxload[l], 1e-9 * c.maxload[l]) << c.name;
  }
}

class Error : public testing::TestWithParam<VectorCase> {};
TEST_P(Error, RejectedNamingTheCondition) {
  const auto& c = GetParam();
  // Each error case's name says which precondition it violates.
  std::string expected;
  if (c.name.find("replicas_not_multiple_of_gpus") != std::string::npos)
    expected = "num_slots % num_ranks == 0";
  else if (c.name.find("experts_not_multiple_of_groups") != std::string::npos)
    expected = "num_logical % num_groups == 0";
  else if (c.name.find("gpus_not_multiple_of_nodes") != std::string::npos)
    expected = "num_ranks % num_nodes == 0";
  else if (c.name.find("fewer_replicas_than_experts") != std::string::npos)
    expected = "num_slots >= num_logical";
  ASSERT_FALSE(expected.empty()) << "unknown error case " << c.name;
  eplb::algo::DeepseekPolicy policy;
  try {
    (void)policy.rebalance(view_of(c), c.topo);
    FAIL() << "accepted an invalid topology";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}
INSTANTIATE_TEST_SUITE_P(Vectors, Error, testing::ValuesIn(cases_of("error")), case_name);

}  // namespace
