// The rebalance loop across ranks: collectives, migration with byte checks, bad input.
#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "mpi_test_util.hpp"
#include "eplb/comm/mpi_transport.hpp"
#include "eplb/comm/placement_bcast.hpp"
#include "eplb/runtime/engine.hpp"
#include "eplb/runtime/migrate.hpp"
#include "eplb/algo/policy.hpp"
#include "eplb/runtime/pattern.hpp"

namespace {
using eplb::algo::Topology;
using eplb::runtime::Engine;
using eplb::runtime::LoadWindow;
using eplb::runtime::RuntimeConfig;
using eplb::runtime::WeightRegistry;

using eplb::test::bad_slots_anywhere_in;
using eplb::test::HostWeights;
using eplb::test::world_rank;
using eplb::test::world_size;

RuntimeConfig config_for(Topology t, std::size_t staging = std::size_t{1} << 20) {
  RuntimeConfig c;
  c.topology = t;
  c.window_passes = 4;
  c.rebalance_interval = 0;
  c.staging_bytes = staging;
  c.min_gain = -1;  // never skip on gain: every rebalance migrates
  return c;
}

/// Random drifting loads, different on every rank.
void add_random_loads(Engine& engine, std::mt19937_64& rng, double skew) {
  const auto& t = engine.config().topology;
  std::lognormal_distribution<double> d(0.0, skew);
  std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical));
  for (int l = 0; l < t.num_layers; ++l) {
    for (auto& v : c) v = static_cast<std::int64_t>(100 * d(rng));
    ASSERT_TRUE(engine.window().add_counts(l, c));
  }
}

std::size_t bad_slots_anywhere(const Engine& e) { return bad_slots_anywhere_in(e.weights(), e.placement()); }

struct Shape {
  const char* name;
  int layers, experts, slots_per_rank, nodes, groups;
  std::vector<std::size_t> tensors;
  std::size_t staging;  // bytes
  const char* policy;
  int max_experts_per_batch = 0;
  int max_layers_per_window = 1;
  bool coalesce = true;
  eplb::comm::HostLanes lanes = eplb::comm::HostLanes::synchronous;  ///< late modes: ordering checks
  int pipeline_batches = 4;
  bool distributed_planning = true;
  /// RuntimeConfig::align_slots. Off in most shapes: the policy's own slot order moves many
  /// experts inside a GPU (local copies, staged cycles), which these byte checks are for.
  bool align = false;
};
void PrintTo(const Shape& s, std::ostream* os) { *os << s.name; }
constexpr auto kSync = eplb::comm::HostLanes::synchronous;
constexpr auto kLateCopy = eplb::comm::HostLanes::late_copy_lane;
constexpr auto kLateTransfer = eplb::comm::HostLanes::late_transfer_lane;

class ConsecutiveRebalances : public testing::TestWithParam<Shape> {};

TEST_P(ConsecutiveRebalances, EveryByteLandsWhereThePlacementSays) {
  const Shape& s = GetParam();
  const int P = world_size();
  Topology t{s.layers, s.experts, s.slots_per_rank * P, P, 1, s.groups};
  if (P % s.nodes == 0) t.num_nodes = s.nodes;
  if (t.num_slots < t.num_logical) t.num_logical = t.num_slots;
  if (t.hierarchical() && t.num_logical % t.num_groups) t.num_groups = 1;
  auto cfg = config_for(t, s.staging);
  cfg.policy = s.policy;
  cfg.max_experts_per_batch = s.max_experts_per_batch;
  cfg.max_layers_per_window = s.max_layers_per_window;
  cfg.coalesce_messages = s.coalesce;
  cfg.pipeline_batches = s.pipeline_batches;
  cfg.distributed_planning = s.distributed_planning;
  cfg.align_slots = s.align;
  HostWeights w(t, s.tensors, 40);
  const auto initial = eplb::algo::Placement::contiguous(t);
  eplb::runtime::fill_slots(w.registry, initial, world_rank());
  eplb::runtime::TransportFactory transport;
  if (s.lanes != eplb::comm::HostLanes::synchronous)
    transport = [lanes = s.lanes](const eplb::comm::MpiComm& c) {
      return std::make_unique<eplb::comm::MpiHostTransport>(c, lanes);
    };
  Engine engine(MPI_COMM_WORLD, cfg, std::move(w.registry), initial, transport);
  std::mt19937_64 rng(1234 + world_rank());
  long long moved = 0;
  for (int r = 0; r < 15; ++r) {
    for (int p = 0; p < 2; ++p) {
      add_random_loads(engine, rng, 1.0 + 0.1 * r);
      (void)engine.step();
    }
    const auto st = engine.rebalance();
    EXPECT_EQ(st.epoch, r + 1);
    EXPECT_GE(st.balancedness_after, st.balancedness_before - 1e-12) << "round " << r;
    moved += st.plan.remote_units + st.plan.local_units;
    ASSERT_EQ(bad_slots_anywhere(engine), 0u) << "after rebalance " << r;
  }
  if (t.num_slots > t.num_logical || P > 1) {
    EXPECT_GT(moved, 0) << "nothing ever moved";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ConsecutiveRebalances,
    testing::Values(
        Shape{"uneven_tensors", 3, 12, 4, 1, 1, {1000, 37, 4099}, 1 << 20, "deepseek"},
        Shape{"staging_smaller_than_layer", 2, 16, 6, 1, 4, {512, 96}, 700, "deepseek"},
        Shape{"batches_of_two_experts", 2, 16, 6, 1, 1, {512, 96}, 4096, "deepseek", 2},
        Shape{"all_layers_in_one_window", 4, 16, 6, 1, 1, {512, 96}, 1 << 22, "deepseek", 0, 0},
        Shape{"windows_of_two_layers_in_batches", 5, 16, 6, 1, 1, {800}, 1 << 22, "deepseek", 3, 2},
        Shape{"per_tensor_messages", 3, 12, 4, 1, 1, {1000, 37, 4099}, 1 << 20, "deepseek", 0, 1, false},
        Shape{"per_tensor_messages_batched_windows", 4, 16, 6, 1, 1, {512, 96}, 1 << 22, "deepseek", 3, 0, false},
        Shape{"two_nodes_hierarchical", 2, 16, 5, 2, 4, {256, 8}, 1 << 20, "deepseek"},
        Shape{"default_policy", 3, 20, 6, 1, 1, {300, 301}, 2048, ""},
        Shape{"no_pipeline", 3, 12, 4, 1, 1, {1000, 37, 4099}, 1 << 20, "deepseek", 0, 1, true,
              kSync, 1},
        Shape{"deferred_copy_lane", 3, 12, 4, 1, 1, {1000, 37, 4099}, 1 << 20, "deepseek", 0, 1,
              true, kLateCopy},
        Shape{"late_transfer_lane", 3, 12, 4, 1, 1, {1000, 37, 4099}, 1 << 20, "deepseek", 0, 1,
              true, kLateTransfer},
        Shape{"late_transfer_lane_per_tensor_messages", 4, 16, 6, 1, 1, {512, 96}, 700,
              "deepseek", 3, 0, false, kLateTransfer},
        Shape{"deferred_copy_lane_staging_smaller_than_layer", 2, 16, 6, 1, 4, {512, 96}, 700,
              "deepseek", 0, 1, true, kLateCopy},
        Shape{"deferred_copy_lane_windows_in_batches", 5, 16, 6, 1, 1, {800}, 1 << 22, "deepseek",
              3, 2, true, kLateCopy, 3},
        Shape{"deferred_copy_lane_many_pipeline_batches", 4, 16, 6, 1, 1, {512, 96}, 1 << 22,
              "deepseek", 0, 0, true, kLateCopy, 16},
        Shape{"rank0_plans_and_broadcasts", 3, 12, 4, 1, 1, {1000, 37, 4099}, 1 << 20, "deepseek",
              0, 1, true, kSync, 4, false},
        Shape{"rank0_plans_and_broadcasts_sticky", 5, 20, 6, 2, 4, {300, 301}, 2048, "sticky", 0,
              1, true, kSync, 4, false},
        Shape{"aligned_slots_windows", 4, 16, 6, 1, 1, {512, 96}, 4096, "deepseek", 0, 0, true,
              kLateCopy, 4, true, true},
        Shape{"aligned_slots_rank0_planning", 3, 12, 4, 2, 4, {1000, 37, 4099}, 1 << 20, "deepseek",
              0, 1, true, kLateTransfer, 4, false, true}),
    [](const testing::TestParamInfo<Shape>& i) { return std::string(i.param.name); });

TEST(MigrationWindows, FewestAndEvenWithinTheBudget) {
  // 8 layers that each need the same staging b (every layer swaps the two ranks' experts).
  // Greedy windows under a budget of 5b..7b would be 5..7 layers + the rest, the largest
  // 5b..7b; the executor forms 4 + 4 (largest 4b); with room for all, one window of 8b.
  const Topology t{8, 16, 16, 2, 1, 1};
  HostWeights w(t, {512, 96});
  std::vector<int> to;
  for (int l = 0; l < t.num_layers; ++l)
    for (int s = 0; s < t.num_slots; ++s) to.push_back((s + 8) % 16);
  const auto plan = eplb::algo::plan_migration(eplb::algo::Placement::contiguous(t),
                                               eplb::algo::Placement(8, 16, 16, to), t);
  const std::size_t b = eplb::runtime::staging_bytes_needed(plan, w.registry, {0, 1, 0, true, 4, false});
  ASSERT_GT(b, 0u);
  for (std::size_t k : {5, 6, 7})
    EXPECT_EQ(eplb::runtime::staging_bytes_needed(plan, w.registry, {0, 0, k * b, true, 4, false}), 4 * b)
        << "budget " << k << " layers";
  EXPECT_EQ(eplb::runtime::staging_bytes_needed(plan, w.registry, {0, 0, 8 * b, true, 4, false}), 8 * b);
  EXPECT_EQ(eplb::runtime::staging_bytes_needed(plan, w.registry, {0, 0, 3 * b, true, 4, false}), 3 * b);
  // A layer cap keeps greedy windows: 3 + 3 + 2.
  EXPECT_EQ(eplb::runtime::staging_bytes_needed(plan, w.registry, {0, 3, 100 * b, true, 4, false}), 3 * b);
}

TEST(EngineAlign, AlignedSlotsBalanceTheSameAndCopyLess) {
  // Two engines on the same loads, with and without align_slots: same balance after every
  // rebalance, never more slots changed or local copies, and the bytes where the placement says.
  const int P = world_size();
  const Topology t{3, 16, (P == 1 ? 20 : 10) * P, P, 1, 1};
  long long changed[2] = {0, 0}, local[2] = {0, 0};
  std::vector<double> balance[2];
  for (int align = 0; align < 2; ++align) {
    auto cfg = config_for(t);
    cfg.policy = "deepseek";
    cfg.align_slots = align == 1;
    HostWeights w(t, {256, 40});
    const auto initial = eplb::algo::Placement::contiguous(t);
    eplb::runtime::fill_slots(w.registry, initial, world_rank());
    Engine engine(MPI_COMM_WORLD, cfg, std::move(w.registry), initial);
    std::mt19937_64 rng(77 + world_rank());
    for (int r = 0; r < 6; ++r) {
      add_random_loads(engine, rng, 1.2);
      const auto st = engine.rebalance();
      balance[align].push_back(st.balancedness_after);
      changed[align] += st.plan.slots_changed;
      local[align] += st.plan.local_units + st.plan.fanout_copies;
      ASSERT_EQ(bad_slots_anywhere(engine), 0u) << "align " << align << ", rebalance " << r;
    }
  }
  for (std::size_t r = 0; r < balance[0].size(); ++r) EXPECT_NEAR(balance[1][r], balance[0][r], 1e-12) << r;
  EXPECT_LT(changed[1], changed[0]);
  EXPECT_LE(local[1], local[0]);
}

class EngineBadInput : public testing::Test {
 protected:
  Topology t{2, 8, 3 * world_size(), world_size(), 1, 1};
  void SetUp() override {
    if (t.num_slots < t.num_logical) t.num_logical = t.num_slots;
    weights = std::make_unique<HostWeights>(t, std::vector<std::size_t>{64, 24});
    const auto initial = eplb::algo::Placement::contiguous(t);
    eplb::runtime::fill_slots(weights->registry, initial, world_rank());
    // The reference policy in its own slot order: it re-sorts even a single rank's slots, so
    // the first rebalance below changes the placement at every rank count (sticky, or the
    // default alignment to the previous slots, would keep it at one rank).
    auto cfg = config_for(t);
    cfg.policy = "deepseek";
    cfg.align_slots = false;
    engine = std::make_unique<Engine>(MPI_COMM_WORLD, cfg, std::move(weights->registry), initial);
    std::mt19937_64 rng(7 + world_rank());
    add_random_loads(*engine, rng, 1.5);
    const auto st = engine->rebalance();  // a first real placement
    ASSERT_FALSE(st.skipped);
    add_random_loads(*engine, rng, 1.5);
  }
  /// Rebalances expecting every rank to throw InvalidInput whose text has all `words`,
  /// and checks that placement, epoch and weights did not change.
  void expect_rejected(std::initializer_list<const char*> words) {
    const auto before = engine->placement();
    const auto epoch = engine->epoch();
    try {
      engine->rebalance();
      ADD_FAILURE() << "rebalance accepted bad input";
    } catch (const eplb::InvalidInput& e) {
      for (const char* w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
    EXPECT_EQ(engine->placement(), before);
    EXPECT_EQ(engine->epoch(), epoch);
    EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
    // The next rebalance works again.
    EXPECT_NO_THROW(engine->rebalance());
    EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
  }
  std::unique_ptr<HostWeights> weights;
  std::unique_ptr<Engine> engine;
};

TEST_F(EngineBadInput, OutOfRangeExpertIdOnLastRank) {
  std::vector<std::int32_t> ids = {0, 1, 0, 1};
  if (world_rank() == world_size() - 1) ids[2] = t.num_logical + 5;
  EXPECT_EQ(engine->window().record(1, ids), world_rank() == world_size() - 1 ? 1 : 0);
  const std::string who = "[rank " + std::to_string(world_size() - 1) + "]";
  expect_rejected({who.c_str(), "outside [0, ", "layer 1"});
}

TEST_F(EngineBadInput, NegativeInt64IdOnRankZero) {
  std::vector<std::int64_t> ids = {0, 1};
  if (world_rank() == 0) ids[1] = -1;
  (void)engine->window().record(0, ids);
  expect_rejected({"[rank 0]", "outside"});
}

TEST_F(EngineBadInput, NanCountsOnOneRank) {
  std::vector<double> c(static_cast<std::size_t>(t.num_logical), 1.0);
  const int bad = world_size() / 2;
  if (world_rank() == bad) c[1] = std::numeric_limits<double>::quiet_NaN();
  (void)engine->window().add_counts(1, c);
  const std::string who = "[rank " + std::to_string(bad) + "]";
  expect_rejected({who.c_str(), "NaN", "expert 1"});
}

TEST_F(EngineBadInput, InfiniteNegativeAndTooLargeDoubleCountsOnOneRank) {
  const int bad = world_size() - 1;
  const std::string who = "[rank " + std::to_string(bad) + "]";
  const struct {
    double value;
    const char* word;
  } cases[] = {{std::numeric_limits<double>::infinity(), "infinite"},
               {-0.5, "negative"},
               {1e19, "too large"}};
  for (const auto& k : cases) {
    SCOPED_TRACE(k.word);
    std::vector<double> c(static_cast<std::size_t>(t.num_logical), 1.0);
    if (world_rank() == bad) c[2] = k.value;
    EXPECT_EQ(engine->window().add_counts(0, c), world_rank() != bad);
    expect_rejected({who.c_str(), k.word, "expert 2"});
  }
}

TEST_F(EngineBadInput, CountsWhoseSumOverTheRanksWouldWrapAreRejected) {
  // Each value fits int64 and 2^62, but the P of them do not: the allreduce wrapped (two ranks
  // at 5e18 gave -8.4e18), and the rebalance failed later with an unrelated Error. Now the sum
  // saturates and every rank rejects it alike. (One rank: the window itself rejects the call.)
  const int P = world_size();
  std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical), 1);
  c[2] = LoadWindow::kMaxCount / P + 1;
  (void)engine->window().add_counts(0, c);
  const auto before = engine->placement();
  try {
    engine->rebalance();
    ADD_FAILURE() << "rebalance accepted counts whose sum over the ranks does not fit";
  } catch (const eplb::InvalidInput& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("expert 2"), std::string::npos) << w;
    EXPECT_NE(w.find(P > 1 ? "summed over the ranks' windows is more than 2^62"
                           : "would take this pass's count past 2^62"),
              std::string::npos)
        << w;
  }
  EXPECT_EQ(engine->placement(), before);
}

TEST_F(EngineBadInput, OneRankHoldingMostOfTheBoundIsAccepted) {
  // After a resume, rank 0 holds the whole saved window (up to 2^62) and the others little:
  // only the sum over the ranks is bounded, not each rank's share of it.
  std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical), 1);
  if (world_rank() == 0) c[2] = LoadWindow::kMaxCount / 2;
  ASSERT_TRUE(engine->window().add_counts(0, c));
  EXPECT_NO_THROW(engine->rebalance());
  EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
}

TEST_F(EngineBadInput, NegativeCountsOnOneRank) {
  std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical), 1);
  if (world_rank() == 0) c[0] = -7;
  (void)engine->window().add_counts(0, c);
  expect_rejected({"negative", "-7"});
}

/// Runs f(), which must throw eplb::Error on every rank with `words` in its text.
template <class F>
void expect_error_everywhere(F f, const std::string& words) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << words;
  } catch (const eplb::Error& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

/// A load source that fails (as a CUDA error would) on one rank only: in collect(), or in
/// its window_passes() hook after collect() succeeded, or in collect() and end_pass().
class FailingSource final : public eplb::runtime::LoadSource {
 public:
  enum class Where { collect, hook, collect_and_end_pass };
  explicit FailingSource(bool fail, Where where = Where::collect) : fail_(fail), where_(where) {}
  std::optional<std::string> collect(std::span<std::int64_t> out) override {
    if (fail_ && where_ != Where::hook) throw std::runtime_error("device lost (simulated)");
    std::fill(out.begin(), out.end(), 1);
    return std::nullopt;
  }
  void end_pass() override {
    if (fail_ && where_ == Where::collect_and_end_pass) throw std::runtime_error("end_pass failed (simulated)");
  }
  int window_passes() const override {
    if (fail_ && where_ == Where::hook) throw std::runtime_error("hook failed (simulated)");
    return 0;
  }

 private:
  bool fail_;
  Where where_;
};

TEST_F(EngineBadInput, LoadSourceFailingOnOneRankReachesEveryRank) {
  const int bad = world_size() - 1;
  FailingSource src(world_rank() == bad);
  engine->set_load_source(&src);
  const auto before = engine->placement();
  const auto epoch = engine->epoch();
  // A hang here is the bug: the test's timeout catches it.
  expect_error_everywhere([&] { engine->rebalance(); },
                          "[rank " + std::to_string(bad) + "] collecting this rank's load failed: "
                          "device lost (simulated)");
  EXPECT_EQ(engine->placement(), before);
  EXPECT_EQ(engine->epoch(), epoch);
  engine->set_load_source(nullptr);
  EXPECT_NO_THROW(engine->rebalance());
  EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
}

/// A small engine (3 slots per rank, 64-byte experts) from the contiguous placement that
/// step() rebalances every `interval` passes, from pass `interval` on.
struct SteppedJob {
  Topology t;
  HostWeights w;  // the slots' memory, for the engine's whole life
  eplb::algo::Placement initial;
  std::unique_ptr<Engine> engine;
  static Topology topology() {
    Topology t{2, 8, 3 * world_size(), world_size(), 1, 1};
    if (t.num_slots < t.num_logical) t.num_logical = t.num_slots;
    return t;
  }
  explicit SteppedJob(int interval) : t(topology()), w(t, {64}) {
    initial = eplb::algo::Placement::contiguous(t);
    eplb::runtime::fill_slots(w.registry, initial, world_rank());
    auto cfg = config_for(t);
    cfg.rebalance_interval = interval;
    cfg.first_rebalance = interval;
    engine = std::make_unique<Engine>(MPI_COMM_WORLD, cfg, std::move(w.registry), initial);
  }
};

TEST(EngineStep, AFailureEndingThePassDoesNotReplaceTheAgreedError) {
  SteppedJob job(1);  // step() rebalances at every pass
  auto& engine = *job.engine;
  const auto& initial = job.initial;
  const int bad = world_size() - 1;
  FailingSource src(world_rank() == bad, FailingSource::Where::collect_and_end_pass);
  engine.set_load_source(&src);
  // Every rank, the failing one included, reports the agreed collect failure (not the
  // failing rank's own end_pass error, which is only logged).
  expect_error_everywhere([&] { (void)engine.step(); },
                          "[rank " + std::to_string(bad) + "] collecting this rank's load failed: "
                          "device lost (simulated)");
  EXPECT_EQ(engine.placement(), initial);
}

/// Uniform counts; end_pass() throws once, at the `fail_at`-th call (never when 0).
class PassFailingSource final : public eplb::runtime::LoadSource {
 public:
  explicit PassFailingSource(int fail_at) : fail_at_(fail_at) {}
  std::optional<std::string> collect(std::span<std::int64_t> out) override {
    std::fill(out.begin(), out.end(), 1);
    return std::nullopt;
  }
  void end_pass() override {
    if (++calls_ == fail_at_) throw std::runtime_error("stream fault (simulated)");
  }

 private:
  int fail_at_, calls_ = 0;
};

TEST(EngineStep, AFailureEndingAPassOnOneRankFailsTheNextRebalanceEverywhere) {
  SteppedJob job(4);
  auto& engine = *job.engine;
  const auto& initial = job.initial;
  const int bad = world_size() - 1;
  PassFailingSource src(world_rank() == bad ? 2 : 0);
  engine.set_load_source(&src);
  (void)engine.step();  // pass 1
  // Pass 2: only the bad rank's step() throws (its own error; no collective is involved).
  if (world_rank() == bad)
    EXPECT_THROW((void)engine.step(), std::runtime_error);
  else
    EXPECT_NO_THROW((void)engine.step());
  (void)engine.step();  // pass 3
  // Pass 4 rebalances: every rank hears of the bad rank's pass 2, nothing changes. A rank that
  // went on alone here would hang the others (the test's timeout catches it).
  expect_error_everywhere([&] { (void)engine.step(); },
                          "[rank " + std::to_string(bad) + "] collecting this rank's load failed: "
                          "ending pass 2 failed on this rank: stream fault (simulated)");
  EXPECT_EQ(engine.placement(), initial);
  EXPECT_EQ(engine.pass(), 4);
  // Reported once: the next rebalance runs (the same pass count on every rank).
  for (int p = 5; p <= 8; ++p) {
    std::optional<eplb::runtime::RebalanceStats> st;
    ASSERT_NO_THROW(st = engine.step());
    EXPECT_EQ(st.has_value(), p == 8);
  }
  EXPECT_EQ(engine.history().size(), 1u);
  EXPECT_EQ(bad_slots_anywhere(engine), 0u);
}

/// A load source (uniform counts) that declares whether it skips negative ids and its shape.
class DeclaringSource final : public eplb::runtime::LoadSource {
 public:
  explicit DeclaringSource(bool skips, std::optional<std::pair<int, int>> shape = std::nullopt)
      : skips_(skips), shape_(shape) {}
  std::optional<std::string> collect(std::span<std::int64_t> out) override {
    std::fill(out.begin(), out.end(), 1);
    return std::nullopt;
  }
  void end_pass() override {}
  std::optional<bool> skips_negative_ids() const override { return skips_; }
  std::optional<std::pair<int, int>> layers_and_experts() const override { return shape_; }

 private:
  bool skips_;
  std::optional<std::pair<int, int>> shape_;
};

/// Sets `src` (which does not fit the engine on one rank), expects InvalidInput holding `want`
/// from rebalance() on every rank with the placement untouched, then rebalances without it.
void expect_source_rejected(eplb::runtime::Engine& engine, eplb::runtime::LoadSource& src,
                            const std::string& want) {
  engine.set_load_source(&src);
  const auto before = engine.placement();
  try {
    engine.rebalance();
    ADD_FAILURE() << "rebalance accepted a source that does not fit; expected: " << want;
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.placement(), before);
  engine.set_load_source(nullptr);
  EXPECT_NO_THROW(engine.rebalance());
  EXPECT_EQ(bad_slots_anywhere(engine), 0u);
}

TEST_F(EngineBadInput, LoadSourceSkippingNegativeIdsUnlikeTheConfigIsRejected) {
  // The fixture's config has skip_negative_ids = false; one rank's source skips them.
  const int bad = world_size() - 1;
  DeclaringSource src(world_rank() == bad);
  expect_source_rejected(*engine, src, "[rank " + std::to_string(bad) +
                         "] the load source skips negative ids, RuntimeConfig::skip_negative_ids is false");
}

TEST_F(EngineBadInput, LoadSourceHookThrowingOnOneRankReachesEveryRank) {
  const int bad = world_size() - 1;
  FailingSource src(world_rank() == bad, FailingSource::Where::hook);
  engine->set_load_source(&src);
  const auto before = engine->placement();
  // Before, the hook ran outside the agreement: that rank threw while the others waited in the
  // next allreduce (a hang; the test's timeout catches it).
  expect_error_everywhere([&] { engine->rebalance(); },
                          "[rank " + std::to_string(bad) + "] collecting this rank's load failed: "
                          "hook failed (simulated)");
  EXPECT_EQ(engine->placement(), before);
  engine->set_load_source(nullptr);
  EXPECT_NO_THROW(engine->rebalance());
}

TEST_F(EngineBadInput, LoadSourceOfAnotherShapeIsRejectedBeforeAnyCollective) {
  // One rank's source counts one layer too many (a device window built for another model): its
  // buffers must not reach the allreduce (the device path hands MPI the source's buffer).
  const int bad = world_size() - 1;
  const auto& topo = engine->config().topology;
  DeclaringSource src(false, world_rank() == bad ? std::pair{topo.num_layers + 1, topo.num_logical}
                                                 : std::pair{topo.num_layers, topo.num_logical});
  expect_source_rejected(*engine, src, "[rank " + std::to_string(bad) + "] the load source counts " +
                         std::to_string(topo.num_layers + 1) + " layers x " +
                         std::to_string(topo.num_logical) + " experts, the topology has");
}

/// A map listener that fails (as a CUDA error would) on one rank, in prepare or in commit.
struct FailingListener final : eplb::runtime::MapListener {
  bool fail_prepare = false, fail_commit = false;
  int commits = 0;
  void prepare(const eplb::algo::Placement&) override {
    if (fail_prepare) throw std::runtime_error("no memory for the maps (simulated)");
  }
  void commit_layer(int) override {
    ++commits;
    if (fail_commit) throw std::runtime_error("map copy failed (simulated)");
  }
};

TEST_F(EngineBadInput, ListenerPrepareFailingOnOneRankChangesNothing) {
  const int bad = world_size() / 2;
  FailingListener maps;
  maps.fail_prepare = world_rank() == bad;
  engine->set_map_listener(&maps);
  const auto before = engine->placement();
  const auto epoch = engine->epoch();
  expect_error_everywhere([&] { engine->rebalance(); },
                          "[rank " + std::to_string(bad) + "] preparing the migration");
  EXPECT_EQ(engine->placement(), before);
  EXPECT_EQ(engine->epoch(), epoch);
  EXPECT_EQ(maps.commits, 0);
  EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
  engine->set_map_listener(nullptr);
}

TEST_F(EngineBadInput, ListenerCommitFailingOnOneRankEndsTheMigrationEverywhere) {
  const int bad = world_size() - 1;
  FailingListener maps;
  maps.fail_commit = world_rank() == bad;
  engine->set_map_listener(&maps);
  const auto before = engine->placement();
  const auto epoch = engine->epoch();
  expect_error_everywhere([&] { engine->rebalance(); },
                          "[rank " + std::to_string(bad) + "] switching the maps");
  // The weights moved on every rank: the engine follows them, and they match its placement.
  EXPECT_EQ(engine->epoch(), epoch + 1);
  EXPECT_NE(engine->placement(), before);
  EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
  engine->set_map_listener(nullptr);
  EXPECT_NO_THROW(engine->rebalance());
}

/// Forwards to MpiHostTransport (waits bounded by `timeout_s`); on one rank, fails either at
/// synchronize() (the end of a migration, where a device transport finds a faulted copy
/// kernel) once every transfer has completed, or at its first send, before posting it (as an
/// MPI error would), leaving its peers waiting for that message.
class FailingAtSyncTransport final : public eplb::comm::Transport {
 public:
  FailingAtSyncTransport(const eplb::comm::MpiComm& c, bool fail, bool at_first_send = false,
                         double timeout_s = 120)
      : inner_(c, eplb::comm::HostLanes::synchronous, timeout_s), fail_(fail),
        at_first_send_(at_first_send) {}
  std::string_view name() const override { return "failing-at-sync"; }
  eplb::comm::MemorySpace memory_space() const override { return inner_.memory_space(); }
  void begin_batch() override { inner_.begin_batch(); }
  void send(const std::byte* b, std::size_t n, int peer) override {
    if (fail_ && at_first_send_) throw eplb::MpiError("MPI_Isend failed (simulated)");
    inner_.send(b, n, peer);
  }
  void recv(std::byte* b, std::size_t n, int peer) override { inner_.recv(b, n, peer); }
  void end_batch() override { inner_.end_batch(); }
  using Lane = eplb::comm::Lane;
  void copy(std::byte* d, const std::byte* s, std::size_t n, Lane lane) override { inner_.copy(d, s, n, lane); }
  Mark mark(Lane lane) override { return inner_.mark(lane); }
  void wait(Lane lane, Mark m) override { inner_.wait(lane, m); }
  void synchronize() override {
    inner_.synchronize();
    if (fail_ && !at_first_send_) throw eplb::CudaError("copy kernel faulted (simulated)");
  }
  eplb::comm::Buffer allocate(std::size_t bytes) override { return inner_.allocate(bytes); }

 private:
  eplb::comm::MpiHostTransport inner_;
  bool fail_, at_first_send_;
};

/// An engine over host weights (deepseek in its own slot order, so the first rebalance moves
/// experts at every rank count) whose transport fails on the last rank: FailingAtSyncTransport.
struct FailingMigrationJob {
  Topology t;
  HostWeights w;
  eplb::algo::Placement initial;
  std::unique_ptr<Engine> engine;
  FailingMigrationJob(bool at_first_send, double timeout_s, unsigned seed)
      : t(topology()), w(t, {64, 24}), initial(eplb::algo::Placement::contiguous(t)) {
    eplb::runtime::fill_slots(w.registry, initial, world_rank());
    auto cfg = config_for(t);
    cfg.policy = "deepseek";
    cfg.align_slots = false;
    const int bad = world_size() - 1;
    engine = std::make_unique<Engine>(
        MPI_COMM_WORLD, cfg, std::move(w.registry), initial,
        [=](const eplb::comm::MpiComm& c) -> std::unique_ptr<eplb::comm::Transport> {
          return std::make_unique<FailingAtSyncTransport>(c, c.rank() == bad, at_first_send, timeout_s);
        });
    std::mt19937_64 rng(seed + world_rank());
    add_random_loads(*engine, rng, 1.5);
  }
  static Topology topology() {
    Topology t{2, 8, 3 * world_size(), world_size(), 1, 1};
    t.num_logical = std::min(t.num_logical, t.num_slots);
    return t;
  }
};

/// Every rank reaches this point (no rank left in a collective).
void expect_ranks_in_step() {
  int one = 1, sum = 0;
  MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_EQ(sum, world_size());
}

TEST(EngineMigrationFailure, TransportFailingOnOneRankAfterItsTransfersFailsEverywhere) {
  // Before the engine agreed on migration failures, the other ranks adopted the placement and
  // waited forever for the failing rank in their next collective (the test's timeout).
  FailingMigrationJob job(false, 120, 11);
  Engine& engine = *job.engine;
  expect_error_everywhere([&] { engine.rebalance(); },
                          "[rank " + std::to_string(world_size() - 1) + "] moving the weights failed");
  // The collective steps ended on every rank: the engine follows the executed plan (on the
  // host the bytes did move) and the ranks are still in step.
  EXPECT_EQ(engine.epoch(), 1);
  EXPECT_NE(engine.placement(), job.initial);
  EXPECT_EQ(bad_slots_anywhere(engine), 0u);
  // No further rebalance on any rank (no collective: all ranks know from the agreement).
  expect_error_everywhere([&] { engine.rebalance(); }, "an earlier migration failed");
  expect_ranks_in_step();
}

TEST(EngineMigrationFailure, RankFailingBeforeItsSendsLeavesNoPeerWaitingForever) {
  // The failing rank goes on to the error agreement at once; the peers wait for its message
  // only as long as the host transport's bound (1 s here), then agree too: every rank throws.
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  FailingMigrationJob job(true, 1.0, 13);
  // The lowest failing rank's message wins: the failing rank's own, or a peer's timeout.
  expect_error_everywhere([&] { job.engine->rebalance(); }, "moving the weights failed");
  expect_error_everywhere([&] { job.engine->rebalance(); }, "an earlier migration failed");
  expect_ranks_in_step();
}

TEST_F(EngineBadInput, ExpertOfLocalSlotOutOfRangeIsInvalidArgument) {
  EXPECT_THROW((void)engine->expert_of_local_slot(t.num_layers, 0), std::invalid_argument);
  EXPECT_THROW((void)engine->expert_of_local_slot(0, t.slots_per_rank()), std::invalid_argument);
  EXPECT_THROW((void)engine->expert_of_local_slot(0, -1), std::invalid_argument);
  EXPECT_NO_THROW((void)engine->expert_of_local_slot(t.num_layers - 1, t.slots_per_rank() - 1));
}

TEST_F(EngineBadInput, RecordOnABadLayerOnOneRankIsReportedEverywhere) {
  const std::vector<std::int32_t> ids = {0, 1};
  const int bad_layer = world_rank() == 0 ? t.num_layers : 0;  // rank 0 only: no throw there
  (void)engine->window().record(bad_layer, ids);
  expect_rejected({"[rank 0]", "outside [0, "});
}

TEST_F(EngineBadInput, PassCountsDifferingBetweenRanksAreRejectedEverywhere) {
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  // One extra step() on the last rank (the interval is 0: step() never rebalances here).
  if (world_rank() == world_size() - 1) {
    EXPECT_FALSE(engine->step());
  }
  const auto before = engine->placement();
  try {
    engine->rebalance();
    ADD_FAILURE() << "rebalance accepted ranks at different passes";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("different passes (0 to 1)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine->placement(), before);
  EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
  // In step again: rebalancing works.
  if (world_rank() != world_size() - 1) {
    EXPECT_FALSE(engine->step());
  }
  EXPECT_NO_THROW(engine->rebalance());
  EXPECT_EQ(bad_slots_anywhere(*engine), 0u);
}

/// An engine whose transport factory does on_bad() on the last rank (and makes an MPI host
/// transport elsewhere) fails on every rank with an eplb::Error that contains `words`.
void expect_transport_failure_everywhere(
    const std::function<std::unique_ptr<eplb::comm::Transport>()>& on_bad, const char* words) {
  const Topology t{2, 4, 4 * world_size(), world_size(), 1, 1};
  HostWeights host(t, {64});
  const int bad = world_size() - 1;
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(host.registry), {},
             [&](const eplb::comm::MpiComm& c) -> std::unique_ptr<eplb::comm::Transport> {
               if (c.rank() == bad) return on_bad();
               return std::make_unique<eplb::comm::MpiHostTransport>(c);
             });
    ADD_FAILURE() << "the engine started without a transport on rank " << bad;
  } catch (const eplb::Error& e) {
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

TEST(EngineConfig, TransportFactoryReturningNothingIsAnErrorEverywhere) {
  expect_transport_failure_everywhere([] { return std::unique_ptr<eplb::comm::Transport>(); },
                                      "returned no transport");
}

TEST(EngineConfig, TransportFailingOnOneRankFailsEverywhere) {
  expect_transport_failure_everywhere(
      []() -> std::unique_ptr<eplb::comm::Transport> { throw std::runtime_error("no NCCL here (simulated)"); },
      "no NCCL here (simulated)");
}

TEST(EngineConfig, TransportOfAnotherKindOnOneRankIsRejectedEverywhere) {
  const Topology t{2, 4, 4 * world_size(), world_size(), 1, 1};
  HostWeights host(t, {64});
  const int odd = world_size() - 1;
  auto factory = [&](const eplb::comm::MpiComm& c) -> std::unique_ptr<eplb::comm::Transport> {
    if (c.rank() == odd && c.size() > 1) return std::make_unique<FailingAtSyncTransport>(c, false);
    return std::make_unique<eplb::comm::MpiHostTransport>(c);
  };
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(host.registry), {}, factory);
    EXPECT_EQ(world_size(), 1) << "ranks with different transports started an engine";
  } catch (const eplb::InvalidInput& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("weight transport"), std::string::npos) << w;
    EXPECT_NE(w.find("failing-at-sync"), std::string::npos) << w;
  }
}

TEST_F(EngineBadInput, SkipBelowMinGainKeepsPlacement) {
  // A fresh engine that skips unless the gain is impossible to reach.
  HostWeights host(t, {64});
  auto cfg = config_for(t);
  cfg.min_gain = 2.0;
  cfg.policy = "deepseek";  // changes the placement at every rank count (see the fixture)
  cfg.align_slots = false;
  const auto initial = eplb::algo::Placement::contiguous(t);
  eplb::runtime::fill_slots(host.registry, initial, world_rank());
  Engine e(MPI_COMM_WORLD, cfg, std::move(host.registry), initial);
  std::mt19937_64 rng(3);
  add_random_loads(e, rng, 2.0);
  const auto st = e.rebalance();
  EXPECT_TRUE(st.skipped);
  EXPECT_NE(st.skip_reason.find("min_gain"), std::string::npos) << st.skip_reason;
  EXPECT_EQ(e.placement(), initial);
  EXPECT_EQ(st.plan.slots_changed, 0);
}

TEST(EngineConfig, MismatchNamesTheField) {
  const int P = world_size();
  Topology t{2, 8, 2 * P, P, 1, world_rank() == P - 1 && P > 1 ? 2 : 1};
  if (t.num_slots < t.num_logical) t.num_logical = t.num_slots;
  if (t.num_logical % 2) t.num_logical -= 1;
  HostWeights w(t, {32});
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(w.registry));
    if (P > 1) ADD_FAILURE() << "accepted mismatched configs";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_GT(P, 1);
    EXPECT_NE(std::string(e.what()).find("num_groups"), std::string::npos) << e.what();
  }
}

TEST(EngineConfig, PolicyAndMinGainMismatchShowEachRanksValue) {
  const int P = world_size();
  if (P < 2) GTEST_SKIP() << "needs two ranks";
  const Topology t{2, 4, 4 * P, P, 1, 1};
  HostWeights w(t, {32});
  auto cfg = config_for(t);
  const bool odd = world_rank() == P - 1;
  cfg.policy = odd ? "deepseek" : "sticky";
  cfg.min_gain = odd ? 0.01 : 0.0;
  try {
    Engine e(MPI_COMM_WORLD, cfg, std::move(w.registry));
    ADD_FAILURE() << "accepted mismatched configs";
  } catch (const eplb::InvalidInput& e) {
    // The same text on every rank: each distinct value with the first rank that has it.
    std::string want = "policy ('sticky' on rank 0, 'deepseek' on rank ";
    want += std::to_string(P - 1);
    want += ')';
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    want = "min_gain (0 on rank 0, 0.01 on rank ";
    want += std::to_string(P - 1);
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

TEST(EngineConfig, WeightLayoutMismatchNamesTheField) {
  const int P = world_size();
  Topology t{2, 2, 2 * P, P, 1, 1};
  HostWeights w(t, {32, world_rank() == 0 ? std::size_t{16} : std::size_t{17}});
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(w.registry));
    if (P > 1) ADD_FAILURE() << "accepted mismatched weight layouts";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("weight layout"), std::string::npos) << e.what();
  }
}

TEST(EngineConfig, InvalidTopologyOnOneRankFailsEverywhere) {
  const int P = world_size();
  Topology t{2, 2, 2 * P, P, 1, 1};
  if (world_rank() == 0) t.num_groups = 0;  // invalid on rank 0 only
  HostWeights w(Topology{2, 2, 2 * P, P, 1, 1}, {8});
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(w.registry));
    ADD_FAILURE() << "accepted an invalid topology";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("[rank 0]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("num_groups >= 1"), std::string::npos) << e.what();
  }
}

TEST(EngineConfig, RankCountDifferentFromTheCommunicatorIsRejected) {
  const int P = world_size();
  const Topology t{2, 4, 4 * (P + 1), P + 1, 1, 1};
  HostWeights w(t, {8});
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(w.registry));
    ADD_FAILURE() << "accepted a topology for " << P + 1 << " ranks on " << P;
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("num_ranks = " + std::to_string(P + 1)), std::string::npos)
        << e.what();
  }
}

TEST(EngineConfig, WeightRegistryOfAnotherShapeOnOneRankFailsEverywhere) {
  const int P = world_size();
  const Topology t{2, 4, 4 * P, P, 1, 1};
  const int bad = P - 1;
  // One layer short on one rank.
  HostWeights w(world_rank() == bad ? Topology{1, 4, 4 * P, P, 1, 1} : t, {8});
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(w.registry));
    ADD_FAILURE() << "accepted a weight registry of another shape";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("[rank " + std::to_string(bad) + "] weight registry has 1 layers"),
              std::string::npos) << e.what();
  }
}

TEST(EngineConfig, ExpertCountOrInitialPlacementDifferingOnOneRankIsNamed) {
  // num_logical sets the size of the load allreduce: a rank that differs must be stopped in
  // the constructor, not left to a mismatched collective.
  const int P = world_size();
  if (P < 2) GTEST_SKIP() << "needs two ranks";
  Topology t{2, 4, 4 * P, P, 1, 1};
  if (world_rank() == 1) t.num_logical = 3;
  {
    HostWeights w(t, {8});
    try {
      Engine e(MPI_COMM_WORLD, config_for(t), std::move(w.registry));
      ADD_FAILURE() << "accepted differing expert counts";
    } catch (const eplb::InvalidInput& e) {
      EXPECT_NE(std::string(e.what()).find("num_logical"), std::string::npos) << e.what();
    }
  }
  t.num_logical = 4;
  HostWeights w(t, {8});
  auto initial = eplb::algo::Placement::contiguous(t);
  if (world_rank() == 1) {  // swap two slots' experts on rank 1 only
    std::vector<int> p(initial.phy2log().begin(), initial.phy2log().end());
    std::swap(p[0], p[1]);
    initial = eplb::algo::Placement(t.num_layers, t.num_logical, t.num_slots, p);
  }
  try {
    Engine e(MPI_COMM_WORLD, config_for(t), std::move(w.registry), initial);
    ADD_FAILURE() << "accepted differing initial placements";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("initial placement"), std::string::npos) << e.what();
  }
}

TEST(EngineLoop, StepTriggersAtTheInterval) {
  const int P = world_size();
  Topology t{1, 2, 2 * P, P, 1, 1};
  HostWeights w(t, {16});
  auto cfg = config_for(t);
  cfg.rebalance_interval = 8;
  cfg.first_rebalance = -1;  // interval / 4 = 2
  const auto initial = eplb::algo::Placement::contiguous(t);
  eplb::runtime::fill_slots(w.registry, initial, world_rank());
  Engine e(MPI_COMM_WORLD, cfg, std::move(w.registry), initial);
  std::vector<int> at;
  std::mt19937_64 rng(5);
  for (int p = 1; p <= 20; ++p) {
    add_random_loads(e, rng, 1.0);
    if (e.step()) at.push_back(p);
  }
  EXPECT_EQ(at, (std::vector<int>{2, 10, 18}));
  EXPECT_EQ(bad_slots_anywhere(e), 0u);
}

TEST(Collectives, AllreduceAndErrorAgreement) {
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  constexpr std::int64_t kMax = eplb::comm::kMaxCount;
  std::vector<std::int64_t> v = {1, comm.rank(), kMax, kMax / 2};
  eplb::comm::allreduce_sum(comm, v, v);
  const int P = comm.size();
  // Counts: a sum past 2^62 saturates at 2^62 + 1 instead of wrapping.
  EXPECT_EQ(v, (std::vector<std::int64_t>{P, P * (P - 1) / 2, P == 1 ? kMax : kMax + 1,
                                          P <= 2 ? P * (kMax / 2) : kMax + 1}));
  std::vector<std::int64_t> negative = {-3};  // every rank: every rank throws, none waits
  EXPECT_THROW(eplb::comm::allreduce_sum(comm, negative, negative), std::invalid_argument);
  EXPECT_FALSE(eplb::comm::agree_on_error(comm, std::nullopt));
  std::optional<std::string> mine;
  if (comm.rank() == P - 1) mine = "boom";
  const auto e = eplb::comm::agree_on_error(comm, mine);
  ASSERT_TRUE(e);
  EXPECT_EQ(*e, "[rank " + std::to_string(P - 1) + "] boom");
}

TEST(Collectives, PlacementAllgatherAssemblesTheSharesOrFailsEverywhere) {
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  const int P = comm.size();
  // Layer counts below, equal to and above the rank count; int16 and int32 indices.
  for (const Topology t : {Topology{1, 3, 4 * P, P, 1, 1}, Topology{P, 2, 2 * P, P, 1, 1},
                           Topology{2 * P + 1, 3, 3 * P, P, 1, 1},
                           Topology{2, 40000, 40000 * P, P, 1, 1}}) {
    SCOPED_TRACE(t.describe());
    // A valid placement with distinct layers: slot j of layer l holds (j + l) % E.
    std::vector<int> full(static_cast<std::size_t>(t.num_layers) * t.num_slots);
    for (int l = 0; l < t.num_layers; ++l)
      for (int j = 0; j < t.num_slots; ++j)
        full[static_cast<std::size_t>(l) * t.num_slots + j] = (j + l) % t.num_logical;
    const auto share = eplb::comm::layer_share(t.num_layers, comm.rank(), P);
    const std::span<const int> mine(full.data() + static_cast<std::size_t>(share.first) * t.num_slots,
                                    static_cast<std::size_t>(share.last - share.first) * t.num_slots);
    eplb::algo::Placement out;
    eplb::comm::allgather_placement(comm, t, mine, std::nullopt, out);
    EXPECT_TRUE(std::equal(full.begin(), full.end(), out.phy2log().begin(), out.phy2log().end()));
    // The last rank's planning failed: every rank throws its message, `out` is unchanged.
    std::optional<std::string> err;
    if (comm.rank() == P - 1) err = "policy exploded";
    const auto kept = out;
    try {
      eplb::comm::allgather_placement(comm, t, err ? std::span<const int>{} : mine, err, out);
      ADD_FAILURE() << "no error";
    } catch (const eplb::InvalidInput& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("[rank " + std::to_string(P - 1) + "]"), std::string::npos) << what;
      EXPECT_NE(what.find("policy exploded"), std::string::npos) << what;
    }
    EXPECT_EQ(out, kept);
    // The last rank passes a slice of the wrong size (a caller's bug, not a planning error):
    // sent like one, so every rank throws instead of that rank alone leaving the allgather.
    std::vector<int> longer(mine.begin(), mine.end());
    if (comm.rank() == P - 1) longer.push_back(0);
    try {
      eplb::comm::allgather_placement(comm, t, longer, std::nullopt, out);
      ADD_FAILURE() << "a slice of the wrong size was accepted";
    } catch (const eplb::InvalidInput& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("[rank " + std::to_string(P - 1) + "]"), std::string::npos) << what;
      EXPECT_NE(what.find("its layers need"), std::string::npos) << what;
    }
    EXPECT_EQ(out, kept);
    // The last rank's slice is not a valid placement (an expert id out of range): every rank
    // throws, naming that rank.
    const auto last = eplb::comm::layer_share(t.num_layers, P - 1, P);
    std::vector<int> broken(mine.begin(), mine.end());
    if (comm.rank() == P - 1 && !broken.empty()) broken.back() = t.num_logical;
    try {
      eplb::comm::allgather_placement(comm, t, broken, std::nullopt, out);
      if (last.last > last.first) ADD_FAILURE() << "an invalid slice was accepted";
    } catch (const eplb::InvalidInput& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("[rank " + std::to_string(P - 1) + "] planned an invalid placement"), std::string::npos)
          << what;
    }
    EXPECT_EQ(out, kept);
  }
}

TEST(Collectives, PlacementBroadcastVerifiesEpoch) {
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  EXPECT_EQ(eplb::comm::placement_index_bytes(40000), 4);
  EXPECT_EQ(eplb::comm::placement_index_bytes(32767), 2);
  const Topology small{2, 2, 2 * comm.size(), comm.size(), 1, 1};
  eplb::comm::PlacementMessage msg;
  if (comm.rank() == 0) {
    msg.epoch = 5;
    msg.status = eplb::comm::PlanStatus::ok;
    msg.placement = eplb::algo::Placement::contiguous(small);
  }
  eplb::comm::broadcast_placement(comm, 0, small, 5, msg);
  EXPECT_EQ(msg.placement, eplb::algo::Placement::contiguous(small));
  // A rank that expects another epoch makes every rank fail.
  if (comm.size() > 1) {
    eplb::comm::PlacementMessage m2;
    if (comm.rank() == 0) m2 = msg;
    try {
      eplb::comm::broadcast_placement(comm, 0, small, comm.rank() == 1 ? 6 : 5, m2);
      ADD_FAILURE() << "a rank expecting another epoch accepted the message";
    } catch (const eplb::Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("[rank 1]"), std::string::npos) << w;
      EXPECT_NE(w.find("epoch 5, expected 6"), std::string::npos) << w;
    }
  }
  // A rank that cannot allocate the message buffer (here the last rank, given a topology
  // whose message is larger than any vector: std::length_error) makes every rank fail before
  // the broadcast, instead of leaving the others in it.
  if (comm.size() > 1) {
    const Topology huge{INT_MAX, 40000, INT_MAX, 1, 1, 1};
    eplb::comm::PlacementMessage m4;
    if (comm.rank() == 0) m4 = msg;
    const int last = comm.size() - 1;
    try {
      eplb::comm::broadcast_placement(comm, 0, comm.rank() == last ? huge : small, 5, m4);
      ADD_FAILURE() << "a rank without a message buffer took part in the broadcast";
    } catch (const eplb::Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("[rank " + std::to_string(last) + "]"), std::string::npos) << w;
      EXPECT_NE(w.find("allocating the message failed"), std::string::npos) << w;
    }
  }
  // A root whose placement does not fit the topology sends the error instead of throwing
  // alone (which would leave the others in the broadcast).
  eplb::comm::PlacementMessage m3;
  if (comm.rank() == 0) {
    m3.epoch = 6;
    m3.status = eplb::comm::PlanStatus::ok;
    m3.placement = eplb::algo::Placement::contiguous(Topology{3, 2, 2 * comm.size(), comm.size(), 1, 1});
  }
  try {
    eplb::comm::broadcast_placement(comm, 0, small, 6, m3);
    ADD_FAILURE() << "a placement of the wrong shape was broadcast";
  } catch (const eplb::InvalidInput& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("[rank 0] rebalance planning failed"), std::string::npos) << w;
    EXPECT_NE(w.find("broadcast_placement"), std::string::npos) << w;
  }
}

TEST(Migration, HostTransportWaitsForAMissingPeerOnlyAsLongAsItsTimeout) {
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
  // Rank 1 expects a message that rank 0 never sends.
  eplb::comm::MpiHostTransport transport(comm, eplb::comm::HostLanes::synchronous, 0.5);
  std::vector<std::byte> buf(64);
  transport.begin_batch();
  if (comm.rank() == 1) transport.recv(buf.data(), buf.size(), 0);
  if (comm.rank() == 1) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      transport.end_batch();
      ADD_FAILURE() << "a receive without a sender completed";
    } catch (const eplb::Error& e) {
      EXPECT_NE(std::string(e.what()).find("did not complete within"), std::string::npos) << e.what();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(s, 0.5);
    EXPECT_LT(s, 30.0);
  } else {
    transport.end_batch();
  }
  // The timed-out rank's transport refuses further batches (an unmatched send of that batch
  // could otherwise match a later receive); the others' works on.
  if (comm.rank() == 1) {
    EXPECT_THROW(transport.begin_batch(), eplb::Error);
  } else {
    transport.begin_batch();
    transport.end_batch();
  }
  // The cancelled receive is gone: a message sent once rank 1 has given up (the barrier) is
  // the next one rank 1 receives (on a fresh transport of the same communicator).
  MPI_Barrier(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport fresh(comm, eplb::comm::HostLanes::synchronous, 30.0);
  std::vector<std::byte> out(64, std::byte{7}), in(64, std::byte{0});
  fresh.begin_batch();
  if (comm.rank() == 0) fresh.send(out.data(), out.size(), 1);
  if (comm.rank() == 1) fresh.recv(in.data(), in.size(), 0);
  fresh.end_batch();
  if (comm.rank() == 1) {
    EXPECT_EQ(in, out);
    EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{0}; }))
        << "the cancelled receive's buffer was written";
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Migration, ThrowingLayerCallbackOnOneRankDoesNotStopTheOthers) {
  // Rank 0's callback throws at the first layer: its part of the migration must still run
  // (the other ranks wait for its sends), and the exception comes back at the end.
  const int P = world_size(), me = world_rank();
  Topology t{4, 8, 8 * P, P, 1, 1};
  HostWeights w(t, {256, 40});
  const auto a = eplb::algo::Placement::contiguous(t);
  eplb::runtime::fill_slots(w.registry, a, me);
  std::vector<int> p2l(a.phy2log().begin(), a.phy2log().end());
  std::mt19937 rng(3);  // same on every rank
  for (int l = 0; l < t.num_layers; ++l)
    std::shuffle(p2l.begin() + l * t.num_slots, p2l.begin() + (l + 1) * t.num_slots, rng);
  const eplb::algo::Placement b(t.num_layers, t.num_logical, t.num_slots, p2l);
  const auto plan = eplb::algo::plan_migration(a, b, t, eplb::algo::MigrationOptions{2});
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport transport(comm);
  const eplb::runtime::ExecOptions opt{0, 1, 0, true, 2, true};  // layer by layer, overlapped
  const std::size_t need = eplb::runtime::staging_bytes_needed(plan, w.registry, opt);
  auto staging = transport.allocate(need);
  int reported = 0;
  bool threw = false;
  try {
    eplb::runtime::execute_migration(plan, w.registry, transport, me, {staging.get(), need},
                                     [&](int) {
                                       ++reported;
                                       if (me == 0) throw std::runtime_error("callback failed");
                                     },
                                     opt);
  } catch (const std::runtime_error& e) {
    threw = true;
    EXPECT_STREQ(e.what(), "callback failed");
  }
  EXPECT_EQ(threw, me == 0);
  EXPECT_EQ(reported, me == 0 ? 1 : t.num_layers) << "layers reported after the failure";
  EXPECT_EQ(bad_slots_anywhere_in(w.registry, b), 0u) << "the migration did not complete";
}

TEST(Migration, StagingSmallerThanTheOptionsNeedIsRejectedBeforeAnythingMoves) {
  // Staging sized with the default options, then run with the engine's (whole-budget windows):
  // the executor would write past its end. Every rank sees the same sizes, so every rank
  // throws, before any transfer.
  const int P = world_size(), me = world_rank();
  Topology t{4, 8, 8 * P, P, 1, 1};
  HostWeights w(t, {1024});
  const auto a = eplb::algo::Placement::contiguous(t);
  eplb::runtime::fill_slots(w.registry, a, me);
  std::vector<int> p2l(a.phy2log().begin(), a.phy2log().end());
  for (int l = 0; l < t.num_layers; ++l) std::swap(p2l[l * t.num_slots], p2l[l * t.num_slots + 1]);
  const eplb::algo::Placement b(t.num_layers, t.num_logical, t.num_slots, p2l);
  const auto plan = eplb::algo::plan_migration(a, b, t);
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport transport(comm);
  const std::size_t small = eplb::runtime::staging_bytes_needed(plan, w.registry);
  const eplb::runtime::ExecOptions engine_like{0, 0, std::size_t{256} << 20, true, 4, false};
  const std::size_t need = eplb::runtime::staging_bytes_needed(plan, w.registry, engine_like);
  ASSERT_GT(need, small);
  auto staging = transport.allocate(need);
  try {
    (void)eplb::runtime::execute_migration(plan, w.registry, transport, me, {staging.get(), small}, {},
                                           engine_like);
    ADD_FAILURE() << "ran with " << small << " bytes of staging where " << need << " are needed";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("needs " + std::to_string(need) + " bytes of staging"),
              std::string::npos) << e.what();
  }
  EXPECT_EQ(bad_slots_anywhere_in(w.registry, a), 0u) << "weights moved before the check";
  EXPECT_THROW((void)eplb::runtime::execute_migration(plan, w.registry, transport, P, {staging.get(), need}, {},
                                                      engine_like),
               std::invalid_argument);  // a rank outside the plan's topology
  (void)eplb::runtime::execute_migration(plan, w.registry, transport, me, {staging.get(), need}, {}, engine_like);
  EXPECT_EQ(bad_slots_anywhere_in(w.registry, b), 0u);
}

/// execute_migration directly, steps overlapping (the next step packs and sends before this
/// one unpacks, on the other staging region): several rounds per layer (a staging bound in
/// the plan, no budget for the executor), several windows, through the synchronous and the
/// deferred host transport. Every slot is checked after every migration, and each layer's
/// slots when layer_done(layer) reports it (the synchronous transport has run everything
/// issued by then).
struct OverlapCase {
  const char* name;
  int staged_slots;           // plan bound (0: one round per layer)
  int max_layers_per_window;  // 1: layer by layer
  std::size_t budget;         // executor staging budget (0: none)
  eplb::comm::HostLanes lanes;
  int pipeline_batches;
  bool windows = false;       // expect windows of several layers
  int unchanged_layer = -1;   // a layer whose placement never changes (no step)
};
void PrintTo(const OverlapCase& c, std::ostream* os) { *os << c.name; }

class OverlappedSteps : public testing::TestWithParam<OverlapCase> {};

TEST_P(OverlappedSteps, EveryByteLandsAndLayersCompleteInOrder) {
  const auto& c = GetParam();
  const int P = world_size(), me = world_rank();
  eplb::test::MigrationSetup s(99);
  const auto& t = s.t;
  auto& w = s.w;
  auto& a = s.a;
  eplb::comm::MpiComm comm(MPI_COMM_WORLD);
  eplb::comm::MpiHostTransport transport(comm, c.lanes);
  const eplb::runtime::ExecOptions opt{0, c.max_layers_per_window, c.budget, true, c.pipeline_batches,
                                       true};
  auto plain = opt;
  plain.overlap_steps = false;
  int overlapped = 0, shared_steps = 0;
  for (int it = 0; it < 6; ++it) {
    auto b = s.next();
    if (c.unchanged_layer >= 0) {
      std::vector<int> p2l(b.phy2log().begin(), b.phy2log().end());
      const auto al = a.phy2log(c.unchanged_layer);
      std::copy(al.begin(), al.end(), p2l.begin() + static_cast<std::ptrdiff_t>(c.unchanged_layer) * t.num_slots);
      b.assign(t.num_layers, t.num_logical, t.num_slots, p2l);
    }
    eplb::algo::MigrationOptions mo;
    mo.max_staged_slots_per_rank = c.staged_slots;
    const auto plan = eplb::algo::plan_migration(a, b, t, mo);
    const std::size_t need = eplb::runtime::staging_bytes_needed(plan, w.registry, opt);
    const std::size_t need_plain = eplb::runtime::staging_bytes_needed(plan, w.registry, plain);
    if (need > need_plain) ++overlapped;  // two regions in use
    std::size_t layer_rounds = 0;
    for (int l = 0; l < t.num_layers; ++l) layer_rounds += plan.layer(l).rounds.size();
    auto staging = transport.allocate(need);
    std::vector<int> done;
    const auto counters = eplb::runtime::execute_migration(
        plan, w.registry, transport, me, {staging.get(), need},
        [&](int l) {
          done.push_back(l);
          // The lanes have joined (deferred copies included): layer l is complete.
          eplb::algo::Placement layer_view = a;  // layer l as in b, the rest as before
          std::vector<int> p2l(a.phy2log().begin(), a.phy2log().end());
          const auto bl = b.phy2log(l);
          std::copy(bl.begin(), bl.end(), p2l.begin() + static_cast<std::ptrdiff_t>(l) * t.num_slots);
          layer_view.assign(t.num_layers, t.num_logical, t.num_slots, p2l);
          for (const auto& bad : eplb::runtime::verify_slots(w.registry, layer_view, me))
            if (bad.find("layer " + std::to_string(l) + " ") != std::string::npos)
              ADD_FAILURE() << "at layer_done(" << l << "): " << bad;
        },
        opt);
    EXPECT_EQ(counters.staging_bytes, need);
    if (counters.rounds < static_cast<int>(layer_rounds)) ++shared_steps;  // layers sharing steps
    std::vector<int> all(static_cast<std::size_t>(t.num_layers));
    for (int l = 0; l < t.num_layers; ++l) all[static_cast<std::size_t>(l)] = l;
    EXPECT_EQ(done, all);
    ASSERT_EQ(bad_slots_anywhere_in(w.registry, b), 0u) << "migration " << it;
    a = b;
  }
  if (P > 1) {
    EXPECT_GT(overlapped, 0) << "no migration used two staging regions";
    if (c.windows) {
      EXPECT_GT(shared_steps, 0) << "no window of several layers";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, OverlappedSteps,
    testing::Values(OverlapCase{"rounds", 1, 1, 0, kSync, 4},
                    OverlapCase{"rounds_deferred", 1, 1, 0, kLateCopy, 4},
                    OverlapCase{"rounds_late_transfers", 1, 1, 0, kLateTransfer, 4},
                    OverlapCase{"rounds_deferred_unpipelined", 2, 1, 0, kLateCopy, 1},
                    OverlapCase{"windows", 0, 2, 400000, kSync, 3, true},
                    OverlapCase{"windows_deferred", 0, 2, 400000, kLateCopy, 3, true},
                    OverlapCase{"windows_late_transfers", 0, 2, 400000, kLateTransfer, 3, true},
                    OverlapCase{"windows_by_budget_deferred", 0, 0, 100000, kLateCopy, 2, true},
                    OverlapCase{"windows_of_several_rounds_deferred", 1, 0, 400000, kLateCopy, 3, true},
                    OverlapCase{"windows_of_several_rounds_late_transfers", 1, 0, 400000, kLateTransfer, 3, true},
                    OverlapCase{"unchanged_layer", 0, 1, 0, kSync, 4, false, 2},
                    OverlapCase{"unchanged_layer_in_windows_deferred", 1, 2, 400000, kLateCopy, 2, true, 0}),
    [](const testing::TestParamInfo<OverlapCase>& i) { return std::string(i.param.name); });

}  // namespace
