// The routing + counting kernel against its host reference (runtime/routing.hpp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "eplb/algo/placement.hpp"
#include "eplb/comm/cuda.hpp"
#include "eplb/runtime/cuda/device_state.hpp"
#include "eplb/runtime/cuda/device_weights.hpp"
#include "eplb/runtime/pattern.hpp"
#include "eplb/runtime/routing.hpp"

namespace {
using eplb::algo::Placement;
using eplb::algo::Topology;

#define SKIP_WITHOUT_GPU()                                                         \
  if (eplb::comm::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible"

struct Case {
  int tokens, k, experts, slots, ranks;
  bool int64_ids, prefer_local, with_bad_ids;
  bool skip_negative = false;  // RuntimeConfig::skip_negative_ids
  // GoogleTest prints parameters into test listings that CTest parses: keep it plain.
  friend void PrintTo(const Case& c, std::ostream* os) {
    *os << c.tokens << "x" << c.k << "_E" << c.experts << "_R" << c.slots;
  }
};

/// Router ids in device memory, copied on `stream` (keep `ids` alive until the stream has run).
eplb::comm::DeviceBuffer ids_on_device(const std::vector<std::int32_t>& ids, eplb::comm::cuda_stream stream) {
  eplb::comm::DeviceBuffer d(ids.size() * sizeof(std::int32_t));
  eplb::comm::copy_async(d.get(), ids.data(), d.size(), stream);
  return d;
}

/// A topology, its contiguous placement, a stream and the device maps of that placement.
struct ContiguousMaps {
  explicit ContiguousMaps(const Topology& topo)
      : t(topo), p(Placement::contiguous(t)), maps(t, p, stream.get()) {}
  Topology t;
  Placement p;
  eplb::comm::CudaStream stream;
  eplb::runtime::cuda::DeviceMaps maps;
};

Placement random_placement(const Topology& t, std::mt19937& rng) {
  std::vector<int> p;
  for (int l = 0; l < t.num_layers; ++l) {
    std::vector<int> row;
    for (int e = 0; e < t.num_logical; ++e) row.push_back(e);
    // Skewed replica counts: a few experts get many replicas.
    std::geometric_distribution<int> g(0.3);
    while (static_cast<int>(row.size()) < t.num_slots) row.push_back(std::min(g(rng), t.num_logical - 1));
    std::shuffle(row.begin(), row.end(), rng);
    p.insert(p.end(), row.begin(), row.end());
  }
  return Placement(t.num_layers, t.num_logical, t.num_slots, std::move(p));
}

/// The kernel with maps of a random placement against the host reference, on layer `layer`
/// of two; `via_reset`: the maps are made for another placement first, then reset() to this
/// one (Engine::restore).
template <class Id>
void run_case(const Case& c, bool via_reset = false, int layer = 1) {
  std::mt19937 rng(c.tokens * 31 + c.experts);
  const Topology t{2, c.experts, c.slots, c.ranks, 1, 1};
  const Placement p = random_placement(t, rng);
  eplb::comm::CudaStream stream;
  eplb::runtime::cuda::DeviceMaps maps(t, via_reset ? Placement::contiguous(t) : p, stream.get());
  if (via_reset) maps.reset(p);
  eplb::runtime::cuda::DeviceLoadWindow window(2, c.experts, 1, stream.get());
  const long long n = static_cast<long long>(c.tokens) * c.k;
  std::vector<Id> ids(static_cast<std::size_t>(n));
  std::uniform_int_distribution<int> any(0, c.experts - 1);
  for (auto& v : ids) v = static_cast<Id>(any(rng));
  if (c.with_bad_ids && n > 3) {
    ids[1] = static_cast<Id>(c.experts);
    ids[n - 1] = static_cast<Id>(-2);
    ids[0] = static_cast<Id>(-1);
  }
  const int k_local = t.slots_per_rank();
  const int lb = c.prefer_local ? k_local : 0, le = c.prefer_local ? 2 * k_local : 0;

  // Host reference with the same padded maps as the device (X = placement's max).
  std::vector<int> want_slots(static_cast<std::size_t>(n));
  std::vector<std::int64_t> want_counts(static_cast<std::size_t>(c.experts), 0);
  std::int64_t want_errors = 0;
  const eplb::runtime::LayerMaps hm{
      p.log2phy().data() + static_cast<std::size_t>(layer) * c.experts * p.max_replicas(),
      p.logcnt(layer).data(), c.experts, p.max_replicas()};
  eplb::runtime::route_and_count_host<Id>(ids, hm, lb, le, want_slots, want_counts, &want_errors,
                                          c.skip_negative);

  eplb::comm::DeviceBuffer d_ids(ids.size() * sizeof(Id)), d_slots(ids.size() * sizeof(int));
  eplb::comm::copy_async(d_ids.get(), ids.data(), d_ids.size(), stream.get());
  EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_route_and_count(
      d_ids.get(), sizeof(Id) == 8, n, maps.layer(layer), lb, le, d_slots.as<int>(),
      window.counts(layer), window.errors(), stream.get(), c.skip_negative));
  std::vector<int> got_slots(ids.size());
  eplb::comm::copy_async(got_slots.data(), d_slots.get(), d_slots.size(), stream.get());
  std::vector<std::int64_t> got(static_cast<std::size_t>(2 * c.experts));
  const auto err = window.collect(got);  // synchronises
  EXPECT_EQ(got_slots, want_slots);
  const auto at = got.begin() + static_cast<std::ptrdiff_t>(layer) * c.experts;
  EXPECT_EQ(std::vector<std::int64_t>(at, at + c.experts), want_counts);
  const auto other = got.begin() + static_cast<std::ptrdiff_t>(1 - layer) * c.experts;
  for (int e = 0; e < c.experts; ++e) EXPECT_EQ(other[e], 0) << "the other layer untouched";
  EXPECT_EQ(err.has_value(), want_errors > 0);
  if (err) {
    EXPECT_NE(err->find(std::to_string(want_errors) + " expert id(s)"), std::string::npos) << *err;
  }
}

class RouteKernel : public testing::TestWithParam<Case> {};

TEST_P(RouteKernel, MatchesHostReference) {
  SKIP_WITHOUT_GPU();
  if (GetParam().int64_ids) run_case<std::int64_t>(GetParam());
  else run_case<std::int32_t>(GetParam());
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, RouteKernel,
    testing::Values(Case{1, 1, 4, 4, 1, false, false, false}, Case{256, 8, 64, 80, 8, false, false, false},
                    Case{256, 8, 64, 80, 8, true, true, false}, Case{4096, 6, 256, 288, 32, false, true, true},
                    Case{3000, 8, 384, 448, 64, true, false, true},
                    Case{100000, 8, 160, 320, 16, false, true, false},
                    Case{512, 4, 10000, 10240, 8, true, false, true},
                    Case{4096, 6, 256, 288, 32, false, true, true, true},
                    Case{3000, 8, 384, 448, 64, true, false, true, true},
                    Case{256, 8, 64, 80, 8, false, false, true, true}),
    [](const testing::TestParamInfo<Case>& i) {
      const Case& c = i.param;
      return std::to_string(c.tokens) + "x" + std::to_string(c.k) + "_E" + std::to_string(c.experts) +
             "_R" + std::to_string(c.slots) + (c.int64_ids ? "_i64" : "_i32") +
             (c.prefer_local ? "_local" : "") + (c.with_bad_ids ? "_badids" : "") +
             (c.skip_negative ? "_skipneg" : "");
    });

TEST(DeviceWindow, RouteAndCountUsesTheWindowsCountersAndSkipFlag) {
  SKIP_WITHOUT_GPU();
  ContiguousMaps on({2, 4, 8, 2, 1, 1});
  auto& [t, p, stream, maps] = on;
  const std::vector<std::int32_t> ids = {0, -1, 3, 3, 1};
  const auto d = ids_on_device(ids, stream.get());
  for (const bool skip : {false, true}) {
    eplb::runtime::cuda::DeviceLoadWindow window(2, 4, 1, stream.get(), skip);
    EXPECT_EQ(window.skips_negative_ids(), std::optional<bool>(skip));
    window.route_and_count(1, d.get(), false, static_cast<long long>(ids.size()), maps.layer(1), 0, 0, nullptr);
    std::vector<std::int64_t> got(8);
    const auto err = window.collect(got);
    EXPECT_EQ(got, (std::vector<std::int64_t>{0, 0, 0, 0, 1, 1, 0, 2})) << "skip " << skip;
    EXPECT_EQ(err.has_value(), !skip) << (err ? *err : "no error");
  }
  eplb::runtime::cuda::DeviceLoadWindow window(2, 4, 1, stream.get());
  EXPECT_THROW(window.route_and_count(2, d.get(), false, 1, maps.layer(0), 0, 0, nullptr), std::invalid_argument);
}

TEST(DeviceWindow, SumsOverTheWindowAndForgetsOldPasses) {
  SKIP_WITHOUT_GPU();
  ContiguousMaps on({1, 8, 8, 1, 1, 1});
  auto& [t, p, stream, maps] = on;
  eplb::runtime::cuda::DeviceLoadWindow window(1, 8, 2, stream.get());
  std::vector<std::int32_t> ids = {3, 3, 5};
  const auto d = ids_on_device(ids, stream.get());
  for (int pass = 0; pass < 3; ++pass) {
    EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_route_and_count(d.get(), false, 3, maps.layer(0), 0, 0, nullptr,
                                                                window.counts(0), window.errors(), stream.get()));
    std::vector<std::int64_t> sum(8);
    EXPECT_FALSE(window.collect(sum));
    EXPECT_EQ(sum[3], 2 * std::min(pass + 1, 2)) << "pass " << pass;
    EXPECT_EQ(sum[5], std::min(pass + 1, 2));
    window.end_pass();
  }
}

TEST(CopyKernel, EverySizeAndAlignment) {
  SKIP_WITHOUT_GPU();
  // Sizes around the 4- and 16-byte access widths, pointers aligned to 16, 4 and 1 bytes,
  // more ops than one launch takes (1024), through every thread count.
  std::vector<std::size_t> sizes = {0, 1, 3, 4, 15, 16, 17, 31, 1040, 1046, 4099, 262144 + 2};
  std::vector<std::size_t> offsets = {0, 4, 1};
  auto span_of = [](std::size_t s) { return (s + 64 + 63) / 64 * 64; };  // keeps 64-byte bases
  std::size_t total = 0;
  for (auto s : sizes) total += span_of(s);
  const std::size_t n_ops = sizes.size() * offsets.size();
  eplb::comm::DeviceBuffer src(total * offsets.size() + 64), dst(total * offsets.size() + 64);
  std::vector<std::uint8_t> host(src.size());
  std::mt19937 rng(5);
  for (auto& b : host) b = static_cast<std::uint8_t>(rng());
  eplb::comm::CudaStream stream;
  eplb::comm::copy_async(src.get(), host.data(), host.size(), stream.get());
  for (int threads : {256, 512, 1024}) {
    std::vector<std::uint8_t> zero(dst.size(), 0), got(dst.size());
    eplb::comm::copy_async(dst.get(), zero.data(), zero.size(), stream.get());
    std::vector<eplb::runtime::cuda::CopySpec> ops;
    std::vector<std::uint8_t> want(dst.size(), 0);
    std::size_t at = 0;
    for (auto off : offsets)
      for (auto s : sizes) {
        const std::size_t d = at + off, sfrom = at + 32 + off;  // both share the offset
        if (sfrom + s <= host.size() && d + s <= want.size()) {
          ops.push_back({static_cast<char*>(dst.get()) + d, static_cast<const char*>(src.get()) + sfrom, s});
          std::copy_n(host.begin() + static_cast<std::ptrdiff_t>(sfrom), s, want.begin() + static_cast<std::ptrdiff_t>(d));
        }
        at += span_of(s);
      }
    ASSERT_EQ(ops.size(), n_ops);
    // 1100 ops, two launches of at most 1024: empty copies first, so that every real copy is
    // in the second launch (a second launch skipped or misindexed fails the comparison).
    std::vector<eplb::runtime::cuda::CopySpec> many(1100 - ops.size(),
                                                    {dst.get(), src.get(), 0});
    many.insert(many.end(), ops.begin(), ops.end());
    EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_copy_batch(many.data(), many.size(), 7, threads, stream.get()));
    eplb::comm::copy_async(got.data(), dst.get(), got.size(), stream.get());
    stream.synchronize();
    EXPECT_EQ(got, want) << threads << " threads";
  }
}

TEST(CopyBatch, AnyStreamIncludingTheLegacyDefaultStream) {
  // comm::copy_batch_async (cudaMemcpyBatchAsync, which rejects the legacy default stream:
  // one copy at a time there) on a created stream and on the legacy default stream.
  SKIP_WITHOUT_GPU();
  constexpr std::size_t kOps = 5, kBytes = 4099;
  eplb::comm::DeviceBuffer src(kOps * kBytes), dst(kOps * kBytes);
  std::vector<std::uint8_t> host(src.size());
  std::mt19937 rng(9);
  for (auto& b : host) b = static_cast<std::uint8_t>(rng());
  eplb::comm::CudaStream created;
  for (eplb::comm::cuda_stream s : {created.get(), static_cast<eplb::comm::cuda_stream>(nullptr)}) {
    std::vector<std::uint8_t> zero(dst.size(), 0), got(dst.size());
    eplb::comm::copy_async(src.get(), host.data(), host.size(), s);
    eplb::comm::copy_async(dst.get(), zero.data(), zero.size(), s);
    std::vector<void*> d;
    std::vector<const void*> f;
    std::vector<std::size_t> n;
    for (std::size_t i = 0; i < kOps; ++i) {  // reversed order: copy i lands in slot kOps-1-i
      d.push_back(static_cast<char*>(dst.get()) + (kOps - 1 - i) * kBytes);
      f.push_back(static_cast<const char*>(src.get()) + i * kBytes);
      n.push_back(i == 2 ? 0 : kBytes);  // one empty copy
    }
    eplb::comm::copy_batch_async(d.data(), f.data(), n.data(), kOps, s);
    eplb::comm::copy_async(got.data(), dst.get(), got.size(), s);  // to pageable memory: waits
    created.synchronize();
    std::vector<std::uint8_t> want(dst.size(), 0);
    for (std::size_t i = 0; i < kOps; ++i)
      if (i != 2)
        std::copy_n(host.begin() + static_cast<std::ptrdiff_t>(i * kBytes), kBytes,
                    want.begin() + static_cast<std::ptrdiff_t>((kOps - 1 - i) * kBytes));
    EXPECT_EQ(got, want) << "stream " << s;
  }
}

TEST(DeviceMaps, ResetReplacesEveryLayer) {
  SKIP_WITHOUT_GPU();
  for (int layer : {0, 1}) {
    run_case<std::int32_t>(Case{512, 8, 64, 80, 4, false, false, false}, true, layer);
    run_case<std::int64_t>(Case{256, 4, 128, 160, 8, true, true, false}, true, layer);
  }
  const Topology other{2, 64, 96, 4, 1, 1};
  eplb::comm::CudaStream stream;
  eplb::runtime::cuda::DeviceMaps maps(Topology{2, 64, 80, 4, 1, 1},
                                       Placement::contiguous(Topology{2, 64, 80, 4, 1, 1}), stream.get());
  EXPECT_THROW(maps.reset(Placement::contiguous(other)), std::invalid_argument);
  // prepare() checked too (it wrote the pinned mirror past its end before), and the layer of
  // commit_layer(); the maps stay as they were.
  const Topology more_layers{3, 64, 80, 4, 1, 1};
  EXPECT_THROW(maps.prepare(Placement::contiguous(other)), std::invalid_argument);
  EXPECT_THROW(maps.prepare(Placement::contiguous(more_layers)), std::invalid_argument);
  EXPECT_THROW(maps.commit_layer(2), std::invalid_argument);
  EXPECT_THROW(maps.commit_layer(-1), std::invalid_argument);
  EXPECT_EQ(maps.layer(1).max_replicas, 2);  // contiguous 80 slots over 64 experts: X = 2
}

TEST(DeviceLoadWindow, DeclaresItsShape) {
  SKIP_WITHOUT_GPU();
  eplb::comm::CudaStream stream;
  eplb::runtime::cuda::DeviceLoadWindow w(3, 16, 4, stream.get());
  ASSERT_TRUE(w.layers_and_experts());
  EXPECT_EQ(*w.layers_and_experts(), (std::pair<int, int>{3, 16}));
}

TEST(DeviceMaps, PrepareAndCommitFollowEveryPlacement) {
  // A sequence of placements whose replica counts (and so their row stride X) rise and fall:
  // after each prepare + commit the committed layers' device maps are exactly the new
  // placement's (rows of its X, -1 past each expert's count), the others still the old one's.
  SKIP_WITHOUT_GPU();
  const Topology t{3, 16, 40, 4, 1, 1};
  std::mt19937 rng(21);
  eplb::comm::CudaStream stream;
  eplb::runtime::cuda::DeviceMaps maps(t, Placement::contiguous(t), stream.get());
  auto expect_layer = [&](int l, const Placement& p) {
    const auto dev = maps.layer(l);
    const int x = p.max_replicas();
    ASSERT_EQ(dev.max_replicas, x) << "layer " << l;
    std::vector<int> l2p(static_cast<std::size_t>(t.num_logical) * x), cnt(t.num_logical);
    eplb::comm::copy_async(l2p.data(), dev.log2phy, l2p.size() * sizeof(int), stream.get());
    eplb::comm::copy_async(cnt.data(), dev.logcnt, cnt.size() * sizeof(int), stream.get());
    stream.synchronize();
    for (int e = 0; e < t.num_logical; ++e) {
      EXPECT_EQ(cnt[e], p.logcnt(l)[e]) << "layer " << l << " expert " << e;
      std::vector<int> want(static_cast<std::size_t>(x), -1);
      for (int r = 0; r < p.logcnt(l)[e]; ++r) want[r] = p.log2phy(l, e)[r];
      EXPECT_TRUE(std::equal(want.begin(), want.end(), l2p.begin() + static_cast<std::ptrdiff_t>(e) * x))
          << "layer " << l << " expert " << e;
    }
  };
  Placement prev = Placement::contiguous(t);
  for (int step = 0; step < 12; ++step) {
    SCOPED_TRACE(step);
    const Placement p = step % 4 == 3 ? Placement::contiguous(t) : random_placement(t, rng);
    // Some rebalances stage a placement that is never committed (another rank's failure
    // stopped it) before the one that is.
    if (step % 3 == 1) maps.prepare(random_placement(t, rng));
    maps.prepare(p);
    // Mid-migration: layer 0 switched, the others not yet.
    maps.commit_layer(0);
    expect_layer(0, p);
    for (int l = 1; l < t.num_layers; ++l) expect_layer(l, prev);
    for (int l = 1; l < t.num_layers; ++l) maps.commit_layer(l);
    for (int l = 0; l < t.num_layers; ++l) expect_layer(l, p);
    prev = p;
  }
}

/// Holds a stream until released: a host function queued on it that waits for a flag (the
/// model's work that never ends: a stuck kernel, a collective whose peer died). It lets go by
/// itself after 20 s, so that a wait without a bound shows as a failed test, not a hung one.
class StreamBlocker {
 public:
  explicit StreamBlocker(eplb::comm::cuda_stream s) : stream_(s) {
    EPLB_CUDA_CHECK(cudaLaunchHostFunc(stream_, &StreamBlocker::hold, this));
  }
  ~StreamBlocker() { release(); }
  void release() {
    if (released_.exchange(true)) return;
    (void)cudaStreamSynchronize(stream_);
  }

 private:
  static void hold(void* self) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!static_cast<StreamBlocker*>(self)->released_.load() &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  eplb::comm::cuda_stream stream_;
  std::atomic<bool> released_{false};
};

/// EPLB_CUDA_TIMEOUT_S set for the scope (the previous value, or its absence, restored).
class CudaTimeout {
 public:
  explicit CudaTimeout(const char* s) {
    if (const char* v = std::getenv("EPLB_CUDA_TIMEOUT_S")) previous_ = v;
    setenv("EPLB_CUDA_TIMEOUT_S", s, 1);
  }
  ~CudaTimeout() {
    if (previous_) setenv("EPLB_CUDA_TIMEOUT_S", previous_->c_str(), 1);
    else unsetenv("EPLB_CUDA_TIMEOUT_S");
  }

 private:
  std::optional<std::string> previous_;
};

TEST(DeviceWindow, AStuckStreamTimesOutInsteadOfHanging) {
  SKIP_WITHOUT_GPU();
  eplb::comm::CudaStream stream;
  eplb::runtime::cuda::DeviceLoadWindow window(2, 8, 2, stream.get());
  std::vector<std::int64_t> sum(16, -1);
  ASSERT_FALSE(window.collect(sum));
  const CudaTimeout bound("0.5");
  std::vector<std::int64_t> ring(2 * 2 * 8);
  int cursor = 0;
  // Every wait on the model's stream: the rebalance's copies and the checkpoint's.
  const std::vector<std::pair<const char*, std::function<void()>>> waits = {
      {"DeviceLoadWindow::collect", [&] { (void)window.collect(sum); }},
      {"DeviceLoadWindow::reduce_on_device", [&] {
         std::optional<std::string> err;
         (void)window.reduce_on_device(err);
       }},
      {"DeviceLoadWindow::download_reduced", [&] { window.download_reduced(sum); }},
      {"DeviceLoadWindow::download_ring", [&] { window.download_ring(ring, cursor); }},
      {"DeviceLoadWindow::upload_ring", [&] { window.upload_ring(ring, 0); }},
      // The RAII handles' own waits are bounded the same way.
      {"CudaStream::synchronize", [&] { stream.synchronize(); }},
      {"CudaEvent::synchronize", [&] {
         const eplb::comm::CudaEvent event(false);
         event.record(stream.get());
         event.synchronize();
       }},
  };
  for (const auto& [name, call] : waits) {
    StreamBlocker blocked(stream.get());
    const auto t0 = std::chrono::steady_clock::now();
    try {
      call();
      ADD_FAILURE() << name << " returned while its stream was blocked";
    } catch (const eplb::CudaError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(name), std::string::npos) << what;
      EXPECT_NE(what.find("did not complete within 0.5 s"), std::string::npos) << what;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(s, 0.5) << name;
    EXPECT_LT(s, 10.0) << name;
    blocked.release();
  }
  // Once the stream moves again, so does the window.
  std::vector<std::int64_t> after(16, -1);
  EXPECT_FALSE(window.collect(after));
  EXPECT_EQ(after, std::vector<std::int64_t>(16, 0));
}

TEST(DeviceWindow, BadIdsBeforeATimedOutWaitAreReportedByTheNextRebalance) {
  // The error counter is reset only once its count has reached the host: a reset queued before
  // a wait that timed out would run when the stream moves again, and the ids would be lost.
  SKIP_WITHOUT_GPU();
  ContiguousMaps on({2, 8, 8, 1, 1, 1});
  auto& [t, p, stream, maps] = on;
  eplb::runtime::cuda::DeviceLoadWindow window(2, 8, 2, stream.get());
  const std::vector<std::int32_t> ids = {1, 9, 6, 11};  // two ids outside [0, 8)
  const auto d = ids_on_device(ids, stream.get());
  const CudaTimeout bound("0.5");
  std::vector<std::int64_t> sum(16, -1);
  for (const bool on_device : {false, true}) {
    SCOPED_TRACE(on_device ? "reduce_on_device" : "collect");
    auto take = [&]() -> std::optional<std::string> {
      if (!on_device) return window.collect(sum);
      std::optional<std::string> err;
      (void)window.reduce_on_device(err);
      return err;
    };
    EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_route_and_count(
        d.get(), false, static_cast<long long>(ids.size()), maps.layer(0), 0, 0, nullptr,
        window.counts(0), window.errors(), stream.get()));
    {
      StreamBlocker blocked(stream.get());
      EXPECT_THROW((void)take(), eplb::CudaError);
      blocked.release();
    }
    const auto err = take();  // the next rebalance
    ASSERT_TRUE(err.has_value()) << "the ids counted before the timed-out wait were lost";
    EXPECT_NE(err->find("2 expert id(s) in topk_ids outside [0, 8)"), std::string::npos) << *err;
    EXPECT_FALSE(take()) << "reported once";
  }
}

TEST(DeviceMaps, AStuckStreamTimesOutInsteadOfHanging) {
  SKIP_WITHOUT_GPU();
  ContiguousMaps on({2, 8, 8, 1, 1, 1});
  auto& [t, p, stream, maps] = on;
  const CudaTimeout bound("0.5");
  StreamBlocker blocked(stream.get());
  try {
    maps.reset(p);
    ADD_FAILURE() << "DeviceMaps::reset returned while its stream was blocked";
  } catch (const eplb::CudaError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("DeviceMaps::reset"), std::string::npos) << what;
    EXPECT_NE(what.find("did not complete within 0.5 s"), std::string::npos) << what;
  }
  blocked.release();
  maps.prepare(p);  // after the timed-out reset: waits for its queued uploads, then stages
  maps.reset(p);
}

TEST(DeviceWindow, RingRoundTripForCheckpoints) {
  SKIP_WITHOUT_GPU();
  ContiguousMaps on({2, 8, 8, 1, 1, 1});
  auto& [t, p, stream, maps] = on;
  eplb::runtime::cuda::DeviceLoadWindow a(2, 8, 3, stream.get()), b(2, 8, 3, stream.get());
  ASSERT_TRUE(a.has_ring());
  std::vector<std::int32_t> ids = {1, 6, 6, 7, 0};
  const auto d = ids_on_device(ids, stream.get());
  for (int pass = 0; pass < 4; ++pass) {  // the ring wraps: pass 3 is back in row 0
    for (int l = 0; l < 2; ++l)
      for (int rep = 0; rep <= pass + l; ++rep)
        EPLB_CUDA_CHECK(eplb::runtime::cuda::launch_route_and_count(
            d.get(), false, static_cast<long long>(ids.size()), maps.layer(l), 0, 0, nullptr,
            a.counts(l), a.errors(), stream.get()));
    if (pass < 3) a.end_pass();
  }
  std::vector<std::int64_t> ring(3 * 2 * 8, -1);
  int cursor = -1;
  a.download_ring(ring, cursor);
  EXPECT_EQ(cursor, 0);
  EXPECT_EQ(ring[(0 * 2 + 1) * 8 + 6], 2 * (3 + 1 + 1)) << "pass 3, layer 1, expert 6";
  b.upload_ring(ring, cursor);
  std::vector<std::int64_t> ring_b(ring.size(), -1);
  int cursor_b = -1;
  b.download_ring(ring_b, cursor_b);
  EXPECT_EQ(ring_b, ring);
  EXPECT_EQ(cursor_b, cursor);
  for (int pass = 0; pass < 2; ++pass) {  // both go on alike
    std::vector<std::int64_t> sa(16), sb(16);
    EXPECT_FALSE(a.collect(sa));
    EXPECT_FALSE(b.collect(sb));
    EXPECT_EQ(sa, sb) << "pass " << pass;
    a.end_pass();
    b.end_pass();
  }
  EXPECT_THROW(b.upload_ring(std::vector<std::int64_t>(5), 0), std::invalid_argument);
  EXPECT_THROW(b.upload_ring(ring, 3), std::invalid_argument);
}

// DeviceWeightSet copies through a bounded page-locked buffer, in chunks of whole slots: a
// tensor of 24 MiB slots goes two slots at a time, one of 65 MiB slots (over the bound) one
// slot at a time. One byte changed in each must be reported at its layer, slot and offset.
TEST(DeviceWeightSet, ChunkedFillAndVerifyFindOneWrongByte) {
  SKIP_WITHOUT_GPU();
  using eplb::runtime::cuda::DeviceWeightSet;
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  static_assert(DeviceWeightSet::kStagingBytes / (24 * kMiB) == 2 && DeviceWeightSet::kStagingBytes < 65 * kMiB);
  const Topology t{2, 3, 3, 1, 1, 1};
  DeviceWeightSet weights(t.num_layers, t.slots_per_rank(), {{"big", 24 * kMiB}, {"huge", 65 * kMiB}, {"scale", 100}});
  const Placement p = Placement::contiguous(t);
  weights.fill(p, 0);
  EXPECT_EQ(weights.verify(p, 0), std::vector<std::string>{});
  const auto reg = weights.registry();
  // (layer, tensor, slot, byte): the second slot of a two-slot chunk, then a one-slot chunk.
  const std::vector<std::tuple<int, int, int, std::size_t>> wrong = {{0, 0, 1, 7}, {1, 1, 2, 12345 + 64 * kMiB}};
  std::vector<std::string> expected;
  for (const auto& [l, tensor, slot, byte] : wrong) {
    const auto& view = reg.tensors(l)[static_cast<std::size_t>(tensor)];
    std::vector<std::byte> pattern(byte + 1);
    const int e = p.phy2log(l)[slot];
    eplb::runtime::fill_pattern(pattern.data(), pattern.size(), l, e, tensor);
    const int flipped = static_cast<int>(std::to_integer<unsigned>(pattern[byte]) ^ 0xffu);
    ASSERT_EQ(cudaMemset(view.slot(slot) + byte, flipped, 1), cudaSuccess);
    expected.push_back(eplb::runtime::describe_bad_slot(l, slot, view.name, static_cast<long long>(byte), e));
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(weights.verify(p, 0), expected);
  // A placement without this rank's slots is refused before any copy.
  EXPECT_THROW((void)weights.verify(p, 1), std::invalid_argument);
  EXPECT_THROW(weights.fill(Placement::contiguous({1, 3, 3, 1, 1, 1}), 0), std::invalid_argument);
}

}  // namespace

