// Checkpoint and resume across ranks: a resumed run ends exactly like an uninterrupted one,
// and a bad file is reported on every rank without touching the running engine.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "mpi_test_util.hpp"
#include "../checkpoint_files.hpp"
#include "eplb/runtime/engine_checkpoint.hpp"
#include "eplb/runtime/pattern.hpp"

namespace {
namespace fs = std::filesystem;
using eplb::algo::Topology;
using eplb::runtime::CheckpointStatsRow;
using eplb::runtime::Engine;
using eplb::runtime::RuntimeConfig;
using eplb::runtime::WeightRegistry;

using eplb::test::world_rank;
using eplb::test::world_size;

/// A directory made by rank 0 and known to every rank; removed at the end.
struct SharedDir {
  fs::path path;
  SharedDir() {
    char buf[256] = {};
    if (world_rank() == 0) {
      std::string t = (fs::temp_directory_path() / "eplb_ckpt_mpi_XXXXXX").string();
      if (!mkdtemp(t.data())) t.clear();
      std::snprintf(buf, sizeof buf, "%s", t.c_str());
    }
    MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
    path = buf;
  }
  ~SharedDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(path);
  }
  std::string file(const char* name) const { return (path / name).string(); }
};

Topology topology() {
  const int P = world_size();
  const int k = (10 + P - 1) / P;
  return Topology{3, 8, k * P, P, 1, 2};
}

RuntimeConfig config() {
  RuntimeConfig c;
  c.topology = topology();
  c.window_passes = 4;
  c.rebalance_interval = 3;
  c.first_rebalance = 3;
  c.staging_bytes = 1 << 16;
  return c;
}

/// Host weights of this rank, and an engine over them.
struct Job {
  std::vector<std::vector<std::byte>> buffers;
  std::unique_ptr<Engine> engine;
  explicit Job(RuntimeConfig cfg = config()) {
    const auto& t = cfg.topology;
    WeightRegistry reg(t.num_layers, t.slots_per_rank());
    for (int l = 0; l < t.num_layers; ++l)
      for (std::size_t bytes : {96u, 40u}) {
        buffers.emplace_back(bytes * t.slots_per_rank());
        std::string name = "t";
        name += std::to_string(bytes);
        reg.add(l, name, buffers.back().data(), bytes);
      }
    const auto initial = eplb::algo::Placement::contiguous(t);
    eplb::runtime::fill_slots(reg, initial, world_rank());
    engine = std::make_unique<Engine>(MPI_COMM_WORLD, cfg, std::move(reg), initial);
  }
};

/// The loads of one pass on one rank: a pure function of (pass, rank), drifting with pass.
void record_pass(Engine& e) {
  const auto& t = e.config().topology;
  const std::int64_t pass = e.pass() + 1;
  std::mt19937_64 rng(static_cast<std::uint64_t>(pass) * 7919 + world_rank());
  std::lognormal_distribution<double> d(0.0, 1.3);
  std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical));
  for (int l = 0; l < t.num_layers; ++l) {
    for (int x = 0; x < t.num_logical; ++x)
      c[x] = static_cast<std::int64_t>(50 * d(rng) * (1 + ((x + pass / 4 + l) % 5)));
    ASSERT_TRUE(e.window().add_counts(l, c));
  }
}

void run_passes(Engine& e, int n) {
  for (int i = 0; i < n; ++i) {
    record_pass(e);
    (void)e.step();
  }
}

std::size_t bad_slots_anywhere(const Engine& e) {
  const auto bad = eplb::runtime::verify_slots(e.weights(), e.placement(), world_rank());
  unsigned long long n = bad.size(), total = 0;
  MPI_Allreduce(&n, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  return total;
}

/// Everything but the timings.
void expect_same_rows(const std::vector<CheckpointStatsRow>& a,
                      const std::vector<CheckpointStatsRow>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE("row " + std::to_string(i));
    EXPECT_EQ(a[i].epoch, b[i].epoch);
    EXPECT_EQ(a[i].pass, b[i].pass);
    EXPECT_EQ(a[i].skipped, b[i].skipped);
    EXPECT_EQ(a[i].skip_reason, b[i].skip_reason);
    EXPECT_EQ(a[i].balancedness_before, b[i].balancedness_before);
    EXPECT_EQ(a[i].balancedness_after, b[i].balancedness_after);
    EXPECT_EQ(a[i].imbalance_before, b[i].imbalance_before);
    EXPECT_EQ(a[i].imbalance_after, b[i].imbalance_after);
    EXPECT_EQ(a[i].slots_changed, b[i].slots_changed);
    EXPECT_EQ(a[i].remote_units, b[i].remote_units);
    EXPECT_EQ(a[i].local_units, b[i].local_units);
    EXPECT_EQ(a[i].fanout_copies, b[i].fanout_copies);
    EXPECT_EQ(a[i].total_remote_bytes, b[i].total_remote_bytes);
    EXPECT_EQ(a[i].total_local_bytes, b[i].total_local_bytes);
    EXPECT_EQ(a[i].migration_rounds, b[i].migration_rounds);
  }
}

TEST(CheckpointResume, HalfRunPlusResumeEqualsFullRun) {
  constexpr int N = 10;  // rebalances at passes 3, 6, 9 | 12, 15, 18
  SharedDir dir;
  const auto path = dir.file("state.h5");

  Job full;
  run_passes(*full.engine, 2 * N);
  const auto full_state = eplb::runtime::snapshot(*full.engine);

  {
    Job first;
    run_passes(*first.engine, N);
    eplb::runtime::save_checkpoint(*first.engine, path);
  }  // the job ends: every rank forgets its state

  Job second;
  eplb::runtime::CheckpointSchedule schedule(path);
  schedule.resume(*second.engine, path);
  EXPECT_EQ(second.engine->pass(), N);
  EXPECT_EQ(second.engine->epoch(), 3);
  eplb::runtime::fill_slots(second.engine->weights(), second.engine->placement(), world_rank());
  for (int i = 0; i < N; ++i) {
    record_pass(*second.engine);
    const auto st = second.engine->step();
    schedule.after_step(*second.engine, st.has_value());
  }
  EXPECT_EQ(bad_slots_anywhere(*second.engine), 0u);

  EXPECT_EQ(second.engine->placement(), full.engine->placement());
  EXPECT_EQ(second.engine->epoch(), full.engine->epoch());
  EXPECT_EQ(second.engine->pass(), full.engine->pass());
  const auto resumed_state = eplb::runtime::snapshot(*second.engine, schedule.earlier());
  EXPECT_EQ(resumed_state.window, full_state.window);
  EXPECT_EQ(resumed_state.window_cursor, full_state.window_cursor);
  if (world_rank() == 0) {
    ASSERT_EQ(full_state.stats.size(), 6u);
    long long changed = 0;  // one GPU is always balanced: nothing to move at 1 rank
    for (std::size_t i = 3; i < 6; ++i) changed += full_state.stats[i].slots_changed;
    if (world_size() > 1) {
      EXPECT_GT(changed, 0) << "the resumed half moved nothing";
    }
    expect_same_rows(resumed_state.stats, full_state.stats);
    // The periodic checkpoint of the last rebalance (pass 18) holds the whole history.
    const auto last = eplb::runtime::read_checkpoint(path);
    EXPECT_EQ(last.pass, 18);
    expect_same_rows(last.stats, full_state.stats);
  }
}

TEST(CheckpointResume, ScheduleWritesEveryKthRebalance) {
  SharedDir dir;
  const auto path = dir.file("periodic.h5");
  Job job;
  eplb::runtime::CheckpointSchedule every2(path, 2);
  std::vector<std::int64_t> written_at;
  for (int i = 0; i < 13; ++i) {  // rebalances at 3, 6, 9, 12 -> epochs 1..4
    record_pass(*job.engine);
    const auto st = job.engine->step();
    if (every2.after_step(*job.engine, st.has_value())) written_at.push_back(job.engine->pass());
  }
  EXPECT_EQ(written_at, (std::vector<std::int64_t>{6, 12}));
  if (world_rank() == 0) {
    EXPECT_EQ(eplb::runtime::read_checkpoint(path).epoch, 4);
  }
  EXPECT_THROW(eplb::runtime::CheckpointSchedule("x.h5", 0), std::invalid_argument);
}

TEST(CheckpointResume, ScheduleThatDiffersBetweenRanksIsRejectedEverywhere) {
  // A schedule with a path on rank 0 only would run save_checkpoint's collectives on rank 0
  // alone (paired with the others' next rebalance); it is stopped at the first rebalance.
  SharedDir dir;
  const auto path = dir.file("rank0_only.h5");
  Job job;
  eplb::runtime::CheckpointSchedule schedule(world_rank() == 0 ? path : std::string());
  eplb::runtime::CheckpointSchedule period(path, world_rank() == world_size() - 1 ? 3 : 1);
  record_pass(*job.engine);
  const auto st = job.engine->rebalance();
  for (auto* s : {&schedule, &period}) {
    try {
      (void)s->after_step(*job.engine, true);
      if (world_size() > 1) ADD_FAILURE() << "a schedule that differs between ranks was accepted";
    } catch (const eplb::InvalidInput& e) {
      EXPECT_GT(world_size(), 1);
      EXPECT_NE(std::string(e.what()).find("checkpoint"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(st.epoch, 1);
  EXPECT_EQ(job.engine->epoch(), 1);  // nothing else changed; the job goes on
  record_pass(*job.engine);
  EXPECT_NO_THROW(job.engine->rebalance());
  // save() on demand (e.g. at the end of a job shorter than the first rebalance) checks too.
  eplb::runtime::CheckpointSchedule at_end(world_rank() == 0 ? path : std::string());
  try {
    at_end.save(*job.engine);
    if (world_size() > 1) ADD_FAILURE() << "save() with a path on rank 0 only was accepted";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint schedule writes"), std::string::npos) << e.what();
  }
}

TEST(CheckpointResume, SaveAtDifferentPassesIsRejectedEverywhere) {
  // The last rank ran one pass more: its window's passes are not the others', and the file
  // would record rank 0's pass for a ring summed over both.
  SharedDir dir;
  const auto path = dir.file("skewed.h5");
  Job job;
  run_passes(*job.engine, 1);
  if (world_rank() == world_size() - 1) run_passes(*job.engine, 1);  // pass 2: no rebalance due
  try {
    eplb::runtime::save_checkpoint(*job.engine, path);
    if (world_size() > 1) ADD_FAILURE() << "saved a checkpoint of ranks at different passes";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_GT(world_size(), 1);
    EXPECT_NE(std::string(e.what()).find("pass (Engine::pass)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(world_size() == 1, fs::exists(path));
}

TEST(CheckpointResume, PlacementOnlyFileChangesThePlacementAlone) {
  SharedDir dir;
  const auto path = dir.file("plan.h5");
  Job job;
  run_passes(*job.engine, 4);
  const auto t = topology();
  std::vector<std::int32_t> p(static_cast<std::size_t>(t.num_layers) * t.num_slots);
  for (int l = 0; l < t.num_layers; ++l)
    for (int j = 0; j < t.num_slots; ++j)
      p[static_cast<std::size_t>(l) * t.num_slots + j] = (j + 3 * l + 1) % t.num_logical;
  if (world_rank() == 0) {
    eplb::runtime::Checkpoint c;
    c.writer = eplb::runtime::kWriterPlan;
    c.config.topology = t;
    c.config.policy = "deepseek";
    c.phy2log = p;
    eplb::runtime::write_checkpoint(path, c);
  }
  const auto ring_before = std::vector<std::int64_t>(job.engine->window().ring().begin(),
                                                     job.engine->window().ring().end());
  eplb::runtime::resume_from_checkpoint(*job.engine, path);
  EXPECT_EQ(std::vector<int>(job.engine->placement().phy2log().begin(),
                             job.engine->placement().phy2log().end()),
            std::vector<int>(p.begin(), p.end()));
  EXPECT_EQ(job.engine->pass(), 4);
  EXPECT_EQ(job.engine->epoch(), 1);
  EXPECT_EQ(std::vector<std::int64_t>(job.engine->window().ring().begin(),
                                      job.engine->window().ring().end()),
            ring_before);
}

/// A load source on the host standing in for the device window: its own ring of W passes,
/// which the engine reads instead of window() (the host window stays all zeros).
class RingSource final : public eplb::runtime::LoadSource {
 public:
  RingSource(int layers, int logical, int window, bool keeps_ring)
      : le_(static_cast<std::size_t>(layers) * logical), w_(window), keeps_ring_(keeps_ring),
        ring_(le_ * window, 0) {}
  std::optional<std::string> collect(std::span<std::int64_t> out) override {
    std::fill(out.begin(), out.end(), 0);
    for (int p = 0; p < w_; ++p)
      for (std::size_t i = 0; i < le_; ++i) out[i] += ring_[p * le_ + i];
    return std::nullopt;
  }
  void end_pass() override {
    cursor_ = (cursor_ + 1) % w_;
    std::fill_n(ring_.begin() + static_cast<std::ptrdiff_t>(cursor_ * le_), le_, 0);
  }
  bool has_ring() const override { return keeps_ring_; }
  int window_passes() const override { return w_; }
  void download_ring(std::span<std::int64_t> ring, int& cursor) const override {
    std::copy(ring_.begin(), ring_.end(), ring.begin());
    cursor = cursor_;
  }
  void upload_ring(std::span<const std::int64_t> ring, int cursor) override {
    ring_.assign(ring.begin(), ring.end());
    cursor_ = cursor;
  }
  /// Adds this pass's counts of one layer.
  void add(int layer, std::span<const std::int64_t> c) {
    std::copy(c.begin(), c.end(), ring_.begin() + static_cast<std::ptrdiff_t>(cursor_ * le_ + layer * c.size()));
  }
  const std::vector<std::int64_t>& ring() const { return ring_; }
  int cursor() const { return cursor_; }

 private:
  std::size_t le_;
  int w_, cursor_ = 0;
  bool keeps_ring_;
  std::vector<std::int64_t> ring_;
};

/// record_pass's loads, into a load source instead of the engine's host window.
void run_passes(Engine& e, RingSource& src, int n) {
  const auto& t = e.config().topology;
  for (int i = 0; i < n; ++i) {
    const std::int64_t pass = e.pass() + 1;
    std::mt19937_64 rng(static_cast<std::uint64_t>(pass) * 7919 + world_rank());
    std::vector<std::int64_t> c(static_cast<std::size_t>(t.num_logical));
    for (int l = 0; l < t.num_layers; ++l) {
      for (auto& x : c) x = static_cast<std::int64_t>(rng() % 1000);
      src.add(l, c);
    }
    (void)e.step();
  }
}

std::vector<std::int64_t> summed_over_ranks(const std::vector<std::int64_t>& v) {
  std::vector<std::int64_t> out(v.size());
  MPI_Allreduce(v.data(), out.data(), static_cast<int>(v.size()), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  return out;
}

TEST(CheckpointResume, LoadSourceWindowIsSavedAndRestored) {
  SharedDir dir;
  const auto path = dir.file("source.h5");
  const auto cfg = config();
  const auto& t = cfg.topology;
  Job first;
  RingSource src(t.num_layers, t.num_logical, cfg.window_passes, true);
  first.engine->set_load_source(&src);
  run_passes(*first.engine, src, 5);  // one rebalance (pass 3), cursor at 5 % 4 = 1
  const auto saved = summed_over_ranks(src.ring());
  ASSERT_GT(*std::max_element(saved.begin(), saved.end()), 0);
  const auto c = eplb::runtime::snapshot(*first.engine);
  EXPECT_EQ(c.window, saved) << "the checkpoint holds the host window, not the source's";
  EXPECT_EQ(c.window_cursor, src.cursor());
  eplb::runtime::save_checkpoint(*first.engine, path);

  Job second;
  RingSource fresh(t.num_layers, t.num_logical, cfg.window_passes, true);
  second.engine->set_load_source(&fresh);
  eplb::runtime::resume_from_checkpoint(*second.engine, path);
  EXPECT_EQ(summed_over_ranks(fresh.ring()), saved);
  EXPECT_EQ(fresh.cursor(), src.cursor());
  EXPECT_EQ(second.engine->placement(), first.engine->placement());
  // Both jobs go on alike: the next rebalance (pass 6) plans from the same window.
  eplb::runtime::fill_slots(second.engine->weights(), second.engine->placement(), world_rank());
  run_passes(*first.engine, src, 1);
  run_passes(*second.engine, fresh, 1);
  EXPECT_EQ(second.engine->epoch(), first.engine->epoch());
  EXPECT_EQ(second.engine->placement(), first.engine->placement());
  EXPECT_EQ(bad_slots_anywhere(*second.engine), 0u);
}

/// Records what Engine::restore hands the map listener (the device maps' stand-in).
struct RecordingListener final : eplb::runtime::MapListener {
  std::vector<std::vector<int>> resets;
  void prepare(const eplb::algo::Placement&) override {}
  void commit_layer(int) override {}
  void reset(const eplb::algo::Placement& p) override {
    resets.emplace_back(p.phy2log().begin(), p.phy2log().end());
  }
};

TEST(CheckpointResume, RestoreResetsTheMapListener) {
  SharedDir dir;
  const auto path = dir.file("maps.h5");
  Job first;
  run_passes(*first.engine, 7);  // two rebalances: not the contiguous placement
  eplb::runtime::save_checkpoint(*first.engine, path);
  const std::vector<int> saved(first.engine->placement().phy2log().begin(),
                               first.engine->placement().phy2log().end());
  Job second;
  RecordingListener maps;
  second.engine->set_map_listener(&maps);
  eplb::runtime::resume_from_checkpoint(*second.engine, path);
  ASSERT_EQ(maps.resets.size(), 1u) << "routing maps left at the old placement after a resume";
  EXPECT_EQ(maps.resets[0], saved);
  second.engine->set_map_listener(nullptr);
}

/// A map listener whose reset() fails while `fail` is set (a CUDA error on one rank's GPU).
struct FailingResetListener final : eplb::runtime::MapListener {
  bool fail = false;
  int resets = 0;
  void prepare(const eplb::algo::Placement&) override {}
  void commit_layer(int) override {}
  void reset(const eplb::algo::Placement&) override {
    if (fail) throw std::runtime_error("maps upload failed (simulated)");
    ++resets;
  }
};

TEST(CheckpointResume, RestoreFailingPartWayStopsRebalancesUntilARestoreSucceeds) {
  SharedDir dir;
  const auto path = dir.file("partway.h5");
  Job first;
  run_passes(*first.engine, 4);
  eplb::runtime::save_checkpoint(*first.engine, path);
  Job second;
  FailingResetListener maps;
  maps.fail = world_rank() == world_size() - 1;
  second.engine->set_map_listener(&maps);
  const auto before = second.engine->placement();
  try {
    eplb::runtime::resume_from_checkpoint(*second.engine, path);
    ADD_FAILURE() << "a restore whose map update failed on one rank succeeded";
  } catch (const eplb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("maps upload failed (simulated)"), std::string::npos) << e.what();
  }
  // The other ranks' maps were reset to the file's placement, the engine's placement was not:
  // no rank may plan or move from that state (a hang here would be one rank going on alone).
  EXPECT_EQ(second.engine->placement(), before);
  EXPECT_EQ(maps.resets, world_rank() == world_size() - 1 ? 0 : 1);
  record_pass(*second.engine);
  try {
    (void)second.engine->rebalance();
    ADD_FAILURE() << "rebalanced after a restore that failed part-way";
  } catch (const eplb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("the last restore failed part-way"), std::string::npos) << e.what();
  }
  // Nor save a checkpoint of it (some ranks' windows may be the file's, the placement is not).
  try {
    eplb::runtime::save_checkpoint(*second.engine, dir.file("mixed.h5"));
    ADD_FAILURE() << "saved a checkpoint after a restore that failed part-way";
  } catch (const eplb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("the last restore failed part-way"), std::string::npos) << e.what();
  }
  // A restore that succeeds clears it.
  maps.fail = false;
  eplb::runtime::resume_from_checkpoint(*second.engine, path);
  EXPECT_EQ(second.engine->placement(), first.engine->placement());
  eplb::runtime::fill_slots(second.engine->weights(), second.engine->placement(), world_rank());
  record_pass(*second.engine);
  EXPECT_NO_THROW((void)second.engine->rebalance());
  EXPECT_EQ(bad_slots_anywhere(*second.engine), 0u);
  second.engine->set_map_listener(nullptr);
}

/// A job four passes in, with a good checkpoint of that state.
struct SavedJob {
  SharedDir dir;
  std::string good = dir.file("good.h5");
  Job job;
  SavedJob() {
    run_passes(*job.engine, 4);
    eplb::runtime::save_checkpoint(*job.engine, good);
  }
};

TEST(CheckpointResume, SourceOfAnotherWindowLengthIsRejectedEverywhere) {
  SavedJob saved;
  auto& job = saved.job;
  const auto& good = saved.good;
  const auto& cfg = job.engine->config();
  // Only the last rank's source is misconfigured: every rank must still fail, none hang.
  const int w = world_rank() == world_size() - 1 ? cfg.window_passes + 1 : cfg.window_passes;
  RingSource src(cfg.topology.num_layers, cfg.topology.num_logical, w, true);
  job.engine->set_load_source(&src);
  const auto placement = job.engine->placement();
  const std::string why = "window of " + std::to_string(cfg.window_passes + 1) + " passes";
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      if (attempt == 0)
        job.engine->rebalance();
      else
        eplb::runtime::resume_from_checkpoint(*job.engine, good);
      ADD_FAILURE() << "accepted a load source whose window has another length";
    } catch (const eplb::InvalidInput& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
    EXPECT_EQ(job.engine->placement(), placement);
  }
  EXPECT_EQ(src.cursor(), 0) << "restore touched the source";
}

TEST(CheckpointResume, SourceWithoutRingFailsOnEveryRankAndChangesNothing) {
  SavedJob saved;
  auto& job = saved.job;
  const auto& good = saved.good;
  const auto& dir = saved.dir;
  const auto& t = job.engine->config().topology;
  RingSource src(t.num_layers, t.num_logical, job.engine->config().window_passes, false);
  job.engine->set_load_source(&src);
  try {
    eplb::runtime::save_checkpoint(*job.engine, dir.file("never.h5"));
    ADD_FAILURE() << "saved a checkpoint whose window the engine does not use";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("has_ring"), std::string::npos) << e.what();
  }
  const auto placement = job.engine->placement();
  const auto epoch = job.engine->epoch(), pass = job.engine->pass();
  try {
    eplb::runtime::resume_from_checkpoint(*job.engine, good);
    ADD_FAILURE() << "restored a window into a source that keeps none";
  } catch (const eplb::InvalidInput& e) {
    EXPECT_NE(std::string(e.what()).find("has_ring"), std::string::npos) << e.what();
  }
  EXPECT_EQ(job.engine->placement(), placement);
  EXPECT_EQ(job.engine->epoch(), epoch);
  EXPECT_EQ(job.engine->pass(), pass);
  if (world_rank() == 0) {
    EXPECT_FALSE(fs::exists(dir.file("never.h5")));
  }
}

/// Bad files: each case damages a copy of a good checkpoint on rank 0, then every rank
/// resumes from it and must get InvalidInput naming the problem with the engine untouched.
class CheckpointBadFile : public testing::Test {
 protected:
  void SetUp() override {
    run_passes(*job.engine, 7);  // two rebalances: a non-trivial placement
    good = dir.file("good.h5");
    bad = dir.file("bad.h5");
    eplb::runtime::save_checkpoint(*job.engine, good);
    run_passes(*job.engine, 3);  // the running state moves on past the checkpoint
  }

  /// Rank 0 runs `damage` on a fresh copy of the good file; then every rank resumes.
  template <class F>
  void expect_rejected(F damage, std::initializer_list<const char*> words) {
    if (world_rank() == 0) {
      fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
      damage();
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const auto placement = job.engine->placement();
    const auto epoch = job.engine->epoch(), pass = job.engine->pass();
    const std::vector<std::int64_t> ring(job.engine->window().ring().begin(),
                                         job.engine->window().ring().end());
    const int cursor = job.engine->window().cursor();
    try {
      eplb::runtime::resume_from_checkpoint(*job.engine, bad);
      ADD_FAILURE() << "resumed from a bad checkpoint";
    } catch (const eplb::InvalidInput& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("[rank 0]"), std::string::npos) << w;
      EXPECT_NE(w.find(bad), std::string::npos) << w;
      for (const char* s : words) EXPECT_NE(w.find(s), std::string::npos) << w;
    }
    EXPECT_EQ(job.engine->placement(), placement);
    EXPECT_EQ(job.engine->epoch(), epoch);
    EXPECT_EQ(job.engine->pass(), pass);
    EXPECT_EQ(job.engine->window().cursor(), cursor);
    EXPECT_TRUE(std::equal(ring.begin(), ring.end(), job.engine->window().ring().begin()));
    // The engine still works.
    run_passes(*job.engine, 3);
    EXPECT_EQ(bad_slots_anywhere(*job.engine), 0u);
  }

  SharedDir dir;
  Job job;
  std::string good, bad;
};

TEST_F(CheckpointBadFile, Missing) {
  expect_rejected([&] { fs::remove(bad); }, {"no such file"});
}
TEST_F(CheckpointBadFile, Truncated) {
  expect_rejected([&] { eplb::test::truncate_to_half(bad); }, {"truncated"});
}
TEST_F(CheckpointBadFile, FlippedByteInPlacement) {
  expect_rejected(
      [&] { eplb::test::flip_byte(bad, eplb::test::first_chunk_offset(bad, "phy2log") + 1); },
      {"dataset 'phy2log' is corrupt", "Fletcher32"});
}
TEST_F(CheckpointBadFile, FlippedByteInWindow) {
  expect_rejected(
      [&] { eplb::test::flip_byte(bad, eplb::test::first_chunk_offset(bad, "window") + 9); },
      {"dataset 'window' is corrupt", "Fletcher32"});
}
TEST_F(CheckpointBadFile, NewerFormatVersion) {
  expect_rejected([&] { eplb::test::set_int_attr(bad, "format_version", 7); },
                  {"format version 7 is not supported"});
}
TEST_F(CheckpointBadFile, MissingDataset) {
  expect_rejected([&] { eplb::test::delete_link(bad, "phy2log"); }, {"missing dataset 'phy2log'"});
}
TEST_F(CheckpointBadFile, WrongShape) {
  const auto t = topology();
  expect_rejected(
      [&] {
        eplb::test::replace_dataset(bad, "window", H5T_STD_I64LE,
                                    {5, hsize_t(t.num_layers), hsize_t(t.num_logical)});
      },
      {"dataset 'window' has shape [5][3][8], expected [4][3][8] (W x L x E)"});
}
TEST_F(CheckpointBadFile, WrongDtype) {
  const auto t = topology();
  expect_rejected(
      [&] {
        eplb::test::replace_dataset(bad, "phy2log", H5T_STD_I16LE,
                                    {hsize_t(t.num_layers), hsize_t(t.num_slots)});
      },
      {"dataset 'phy2log' has dtype int16, expected int32"});
}
TEST_F(CheckpointBadFile, OtherTopologyAndSettings) {
  expect_rejected(
      [&] {
        auto c = eplb::runtime::read_checkpoint(good);
        c.config.topology.num_groups = 4;
        c.config.rebalance_interval = 99;
        eplb::runtime::write_checkpoint(bad, c);
      },
      {"does not match the running job", "num_groups (file 4, running 2)",
       "rebalance_interval (file 99, running 3)"});
}

}  // namespace
