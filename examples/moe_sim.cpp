// moe_sim: a synthetic expert-parallel MoE job. Every rank routes tokens with a drifting skew,
// records the load, rebalances through eplb every `interval` passes and, after every
// migration, checks that every local slot holds exactly its expert's bytes.
//
//   mpirun -np 4 moe_sim [--layers 12 --experts 64 --passes 600 --interval 50 ...]
#include <CLI/CLI.hpp>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>

#include "eplb/algo/policy.hpp"
#include "eplb/comm/mpi.hpp"
#include "eplb/config.hpp"
#include "eplb/runtime/engine.hpp"
#include "cli_util.hpp"
#include "sim_backend.hpp"
#if EPLB_HAVE_HDF5
#include "eplb/runtime/engine_checkpoint.hpp"
#endif

namespace {

/// Exit code when the requested device does not exist (CTest's SKIP_RETURN_CODE).
constexpr int kExitSkipped = 77;

struct Options {
  int layers = 12, experts = 64, slots = 0, nodes = 1, groups = 8, topk = 6, tokens = 256;
  int padded_tokens = 0;  // the last ones of each pass: every top-k entry -1 (DeepEP's padding)
  int passes = 600, interval = 50, window = 100;
  unsigned seed = 1;
  double skew = 1.2, drift = 0.15, min_gain = 0.0;
  std::string policy, csv, device = "cpu", tensors = "w13:12288,w2:6144,scale:80";
  std::size_t staging_bytes = std::size_t{64} << 20;
  std::string checkpoint, resume;
  int max_experts_per_batch = 0;
  int pipeline_batches = 4;
  bool rank0_planning = false;
  bool align = true;
  bool device_allreduce = false;
  int checkpoint_every = 1;
};

#if EPLB_HAVE_HDF5
using Checkpoints = eplb::runtime::CheckpointSchedule;
#else
/// Built without HDF5: --checkpoint / --resume are refused, the rest runs as usual.
struct Checkpoints {
  Checkpoints(const std::string& path, int) {
    if (!path.empty()) throw std::invalid_argument("--checkpoint: eplb was built without HDF5");
  }
  void resume(eplb::runtime::Engine&, const std::string&) {
    throw std::invalid_argument("--resume: eplb was built without HDF5");
  }
  bool after_step(const eplb::runtime::Engine&, bool) { return false; }
  void save(const eplb::runtime::Engine&) {}
};
#endif

using eplb::sim::TensorSpec;

std::vector<TensorSpec> parse_tensors(const std::string& text) {
  std::vector<TensorSpec> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto colon = item.find(':');
    if (colon == std::string::npos || colon == 0)
      throw std::invalid_argument("--tensors: '" + item + "' is not NAME:BYTES");
    const std::string digits = item.substr(colon + 1);
    constexpr std::size_t kMaxBytes = std::size_t{1} << 40;  // 1 TiB per expert and tensor
    std::size_t bytes = 0;
    try {
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
        throw std::invalid_argument(digits);
      bytes = std::stoull(digits);
    } catch (const std::exception&) {
      throw std::invalid_argument("--tensors: '" + item + "' has no byte count (digits only)");
    }
    if (bytes == 0 || bytes > kMaxBytes)
      throw std::invalid_argument("--tensors: '" + item + "' needs 1 to 2^40 bytes");
    out.push_back({item.substr(0, colon), bytes});
  }
  if (out.empty()) throw std::invalid_argument("--tensors: no tensor given");
  return out;
}

/// The router's settings, which a checkpoint does not hold (it holds the engine's): rank 0
/// writes them beside a checkpoint (PATH.moe_sim) and --resume compares them, so that a
/// continuation routes the traffic the run that wrote the checkpoint would have routed.
std::string router_settings(const Options& o) {
  char b[256];
  std::snprintf(b, sizeof b, "seed %u\nskew %.17g\ndrift %.17g\ntokens %d\ntopk %d\npadded-tokens %d\n", o.seed,
                o.skew, o.drift, o.tokens, o.topk, o.padded_tokens);
  return b;
}

void write_router_settings(const Options& o, int rank) {
  if (o.checkpoint.empty() || rank != 0) return;
  std::ofstream f(o.checkpoint + ".moe_sim", std::ios::trunc);
  f << "# moe_sim router settings of the run that writes " << o.checkpoint << " (read by --resume)\n"
    << router_settings(o);
  if (!f.flush())
    std::fprintf(stderr, "moe_sim: note: could not write %s.moe_sim; --resume from this checkpoint will not "
                 "check the router's settings\n", o.checkpoint.c_str());
}

/// --resume: the options of this run that differ from those recorded beside the checkpoint
/// (rank 0 reads; every rank throws alike). No record: a note, and the run goes on.
void check_router_settings(const Options& o, int rank) {
  if (o.resume.empty()) return;
  char diff[512] = {};
  if (rank == 0) {
    std::ifstream f(o.resume + ".moe_sim");
    if (!f) {
      std::fprintf(stderr, "moe_sim: note: no %s.moe_sim beside the checkpoint: cannot check that --seed, "
                   "--skew, --drift, --tokens, --topk and --padded-tokens match the run that wrote it\n",
                   o.resume.c_str());
    } else {
      std::istringstream mine(router_settings(o));
      std::string line, want, key, theirs, ours;
      while (std::getline(f, line)) {
        if (line.empty() || line[0] == '#') continue;
        if (!std::getline(mine, want)) break;
        if (line == want) continue;
        std::istringstream a(line), b(want);
        a >> key >> theirs;
        b >> key >> ours;
        const std::size_t used = std::strlen(diff);
        std::snprintf(diff + used, sizeof diff - used, "%s--%s %s (this run: %s)", used ? ", " : "", key.c_str(),
                      theirs.c_str(), ours.c_str());
      }
    }
  }
  MPI_Bcast(diff, sizeof diff, MPI_CHAR, 0, MPI_COMM_WORLD);
  diff[sizeof diff - 1] = '\0';
  if (diff[0])
    throw std::invalid_argument("--resume " + o.resume + ": the run that wrote it had " + diff +
                                "; the router would not continue its traffic (use the same options)");
}

/// Rank 0 checks that a file can be created beside `path` (option `opt`; a probe, so that an
/// existing file is not truncated). Every rank learns the answer, so a bad path fails on all
/// of them alike, before the simulation rather than at its end.
void check_writable(const char* opt, const std::string& path, int rank) {
  if (path.empty()) return;
  char why[512] = {};  // rank 0's reason; empty = writable
  if (rank == 0) {
    try {
      eplb::tools::require_writable(opt, path);
    } catch (const std::invalid_argument& e) {
      std::snprintf(why, sizeof why, "%s", e.what());
    }
  }
  MPI_Bcast(why, sizeof why, MPI_CHAR, 0, MPI_COMM_WORLD);
  why[sizeof why - 1] = '\0';
  if (why[0]) throw std::invalid_argument(why);
}

/// Router whose expert popularity drifts: per-layer logits follow a mean-reverting random
/// walk shared by all ranks (same seed); each rank draws its own tokens.
class Router {
 public:
  Router(const Options& o, int rank)
      : o_(o), rank_(rank), z_(static_cast<std::size_t>(o.layers) * o.experts),
        cdf_(static_cast<std::size_t>(o.experts)) {
    std::mt19937_64 rng(o.seed);
    std::normal_distribution<double> n(0.0, o.skew);
    for (auto& v : z_) v = n(rng);
  }

  /// Advances the drift (identical on every rank) and draws this rank's routing of one pass.
  void next_pass(int pass) {
    std::mt19937_64 shared(o_.seed * 1000003ull + static_cast<unsigned>(pass));
    std::normal_distribution<double> n(0.0, o_.drift);
    const double keep = 1.0 - 0.5 * o_.drift * o_.drift / (o_.skew * o_.skew + 1e-12);
    for (auto& v : z_) v = keep * v + n(shared);
    rng_.seed((o_.seed * 7919ull + static_cast<unsigned>(rank_)) * 1000003ull +
              static_cast<unsigned>(pass));
  }

  /// topk_ids[tokens][k] for one layer.
  void route(int layer, std::vector<std::int32_t>& ids) {
    const double* z = z_.data() + static_cast<std::size_t>(layer) * o_.experts;
    const double zmax = *std::max_element(z, z + o_.experts);
    double acc = 0;
    for (int e = 0; e < o_.experts; ++e) cdf_[e] = acc += std::exp(z[e] - zmax);
    std::uniform_real_distribution<double> u(0.0, acc);
    ids.resize(static_cast<std::size_t>(o_.tokens) * o_.topk);
    for (int t = 0; t < o_.tokens; ++t) {
      std::int32_t* row = ids.data() + static_cast<std::size_t>(t) * o_.topk;
      if (t >= o_.tokens - o_.padded_tokens) {  // padding rows: no expert selected
        std::fill(row, row + o_.topk, -1);
        continue;
      }
      for (int k = 0; k < o_.topk; ++k) {
        std::int32_t e = 0;
        // Distinct experts per token; a popularity so skewed that draws keep repeating falls
        // back to the lowest unused id after 64 tries instead of looping for ever.
        for (int attempt = 0;; ++attempt) {
          e = static_cast<std::int32_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u(rng_)) - cdf_.begin());
          e = std::min(e, o_.experts - 1);
          if (std::find(row, row + k, e) == row + k) break;
          if (attempt == 64) {
            for (e = 0; std::find(row, row + k, e) != row + k;) ++e;
            break;
          }
        }
        row[k] = e;
      }
    }
  }

 private:
  const Options& o_;
  int rank_;
  std::vector<double> z_, cdf_;
  std::mt19937_64 rng_;
};

struct Row {
  long long step;
  eplb::runtime::RebalanceStats s;
  double t_max[6];  // max over ranks: collect, policy, bcast, plan, migrate, total
  long long bad;    // slot tensors that failed verification after this rebalance, all ranks
};

const char* human(double bytes, char* buf, std::size_t n) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (bytes >= 1024 && i < 4) {
    bytes /= 1024;
    ++i;
  }
  std::snprintf(buf, n, "%.1f %s", bytes, unit[i]);
  return buf;
}

int run(int argc, char** argv, int rank, int size) {
  Options o;
  CLI::App app{"moe_sim: synthetic expert-parallel MoE job balanced by eplb (run under mpirun)"};
  app.add_option("--layers", o.layers, "MoE layers")->capture_default_str();
  app.add_option("--experts", o.experts, "logical experts per layer")->capture_default_str();
  app.add_option("--slots", o.slots, "physical slots per layer (0: ~1.25 x experts, a multiple of ranks)");
  app.add_option("--nodes", o.nodes, "nodes the ranks are spread over (emulated)")->capture_default_str();
  app.add_option("--groups", o.groups, "expert groups (hierarchical policy; must divide --experts, e.g. --groups 1)")->capture_default_str();
  app.add_option("--topk", o.topk, "experts per token")->capture_default_str();
  app.add_option("--tokens", o.tokens, "tokens per rank per pass")->capture_default_str();
  app.add_option("--padded-tokens", o.padded_tokens,
                 "of those, padding rows routed to -1 (skip_negative_ids on when > 0)")
      ->capture_default_str();
  app.add_option("--passes", o.passes, "forward passes to simulate")->capture_default_str();
  app.add_option("--interval", o.interval, "passes between rebalances (0: never rebalance)")->capture_default_str();
  app.add_option("--window", o.window, "passes in the load window")->capture_default_str();
  app.add_option("--seed", o.seed, "random seed")->capture_default_str();
  app.add_option("--skew", o.skew, "std-dev of expert popularity logits")->capture_default_str();
  app.add_option("--drift", o.drift, "per-pass drift of the logits")->capture_default_str();
  app.add_option("--policy", o.policy, "placement policy (default: " + eplb::algo::default_policy_name() + ")")
      ->check(eplb::algo::policy_name_error, "POLICY");
  app.add_option("--min-gain", o.min_gain, "skip rebalances whose balancedness gain is below this")
      ->capture_default_str();
  app.add_option("--staging-bytes", o.staging_bytes, "migration staging budget per rank")
      ->check(eplb::tools::not_negative, "BYTES")
      ->capture_default_str();
  app.add_option("--tensors", o.tensors, "tensors per expert, NAME:BYTES,...")->capture_default_str();
  app.add_option("--device", o.device,
                 "where weights live: cpu (host memory, MPI transport) or cuda (one GPU per rank, "
                 "routing kernel, NCCL transport)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_flag("--device-allreduce", o.device_allreduce,
               "with --device cuda and a CUDA-aware MPI, allreduce the device window directly");
  app.add_option("--max-experts-per-batch", o.max_experts_per_batch,
                 "experts per NCCL group / MPI batch during migration (0: a whole round)")
      ->capture_default_str();
  app.add_option("--pipeline-batches", o.pipeline_batches,
                 "batches per migration round, pipelined with packing and unpacking (1: none)")
      ->capture_default_str()
      ->check(eplb::tools::kAtLeastOne);
  app.add_flag("!--no-align", o.align,
               "keep the policy's slot order (RuntimeConfig::align_slots off: more local copies)");
  app.add_flag("--rank0-planning", o.rank0_planning,
               "rank 0 plans every layer and broadcasts (default: the ranks split the layers)");
  app.add_option("--csv", o.csv, "write one row per rebalance to this CSV file (rank 0)");
  app.add_option("--checkpoint", o.checkpoint,
                 "HDF5 checkpoint written after every K-th rebalance and at the end");
  app.add_option("--checkpoint-every", o.checkpoint_every, "K for --checkpoint")
      ->check(eplb::tools::kAtLeastOne)
      ->capture_default_str();
  app.add_option("--resume", o.resume,
                 "continue from this checkpoint (same ranks and settings) for --passes more passes");
  std::optional<CLI::ParseError> parse_error;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    parse_error = e;
  }
  // An MPMD launch (mpirun ... : ...) can give ranks different options; every check below
  // assumes that all ranks fail or pass it alike. So agree first: on the parse outcome and on
  // every option's value (a hash of them all), before any rank can stop on its own.
  {
    const int rc = parse_error ? (parse_error->get_exit_code() == 0 ? 0 : 2) : -1;
    const std::string text = parse_error ? std::string() : app.config_to_str(true, false);
    bool same = true;
    try {
      eplb::comm::check_config_agreement(
          eplb::comm::MpiComm(MPI_COMM_WORLD),
          {{"parse outcome", static_cast<std::uint64_t>(rc + 1)},
           {"options (hash)", eplb::comm::fnv1a(text.data(), text.size())}});
    } catch (const eplb::InvalidInput&) {
      same = false;
    }
    if (parse_error && (rank == 0 || !same)) app.exit(*parse_error);
    if (!same)
      throw std::invalid_argument("the ranks were started with different options (an MPMD launch?); "
                                  "moe_sim needs the same options on every rank");
    if (parse_error) return rc;
  }

  // Options that do nothing in this combination: said once, not an error.
  auto note_unused = [&](const char* opt, const char* why) {
    if (rank == 0) std::fprintf(stderr, "moe_sim: note: %s has no effect %s\n", opt, why);
  };
  if (app.count("--checkpoint-every") && o.checkpoint.empty())
    note_unused("--checkpoint-every", "without --checkpoint");
  if (o.device_allreduce && o.device != "cuda") note_unused("--device-allreduce", "without --device cuda");

  const auto specs = parse_tensors(o.tensors);
  // Every rank parsed the same options: these checks fail on all of them alike.
  if (!(o.skew > 0 && o.skew <= 1e3) || !(o.drift >= 0 && o.drift < 2 * o.skew))
    throw std::invalid_argument("need 0 < --skew <= 1000 and 0 <= --drift < 2 x skew (a stationary "
                                "drift); got --skew " + std::to_string(o.skew) + " --drift " +
                                std::to_string(o.drift));
  if (o.slots < 0) throw std::invalid_argument("--slots must be >= 0 (0: about 1.25 x experts)");

  const long long auto_slots = (static_cast<long long>(o.experts) * 5 / 4 + size - 1) / size * size;
  if (o.slots == 0 && auto_slots > 1 << 30)
    throw std::invalid_argument("--experts " + std::to_string(o.experts) + " is too large");
  eplb::runtime::RuntimeConfig cfg;
  auto& t = cfg.topology;
  t.num_layers = o.layers;
  t.num_logical = o.experts;
  t.num_ranks = size;
  t.num_nodes = o.nodes;
  t.num_groups = o.groups;
  t.num_slots = o.slots > 0 ? o.slots : static_cast<int>(auto_slots);
  cfg.policy = o.policy;
  cfg.window_passes = o.window;
  cfg.rebalance_interval = o.interval;
  cfg.first_rebalance = o.interval;
  cfg.min_gain = o.min_gain;
  cfg.staging_bytes = o.staging_bytes;
  cfg.max_experts_per_batch = o.max_experts_per_batch;
  cfg.pipeline_batches = o.pipeline_batches;
  cfg.distributed_planning = !o.rank0_planning;
  cfg.align_slots = o.align;
  cfg.device_allreduce = o.device_allreduce;
  cfg.skip_negative_ids = o.padded_tokens > 0;
  t.validate();
  if (o.topk < 1 || o.topk > o.experts || o.tokens < 1 || o.passes < 0)
    throw std::invalid_argument("need 1 <= topk <= experts, tokens >= 1, passes >= 0");
  if (o.padded_tokens < 0 || o.padded_tokens >= o.tokens)
    throw std::invalid_argument("need 0 <= --padded-tokens < --tokens");
  check_writable("--csv", o.csv, rank);
  check_writable("--checkpoint", o.checkpoint, rank);
  check_router_settings(o, rank);
  write_router_settings(o, rank);

  if (o.device == "cuda") {
    // One GPU per rank: every node needs at least as many devices as it has ranks. Decided
    // together (MIN over ranks), so that no rank goes on alone.
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    int local_ranks = 1, local_rank = 0;
    MPI_Comm_size(node, &local_ranks);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
    const int devices = eplb::sim::cuda_devices();
    int enough = devices >= local_ranks ? 1 : 0, all_enough = 0;
    MPI_Allreduce(&enough, &all_enough, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_enough) {
      if (!enough && local_rank == 0)
        std::fprintf(stderr, "moe_sim: SKIPPED: --device cuda needs one GPU per rank; rank %d sees %d "
                     "CUDA device(s) for %d rank(s) on its node\n", rank, devices, local_ranks);
      return kExitSkipped;
    }
  }
  // Weights: one buffer per (layer, tensor) holding this rank's k slots, on the host or GPU.
  auto backend = o.device == "cuda" ? eplb::sim::make_cuda_backend(t, specs, o.window, rank, cfg.skip_negative_ids)
                                    : eplb::sim::make_host_backend(t, specs);
  const auto initial = eplb::algo::Placement::contiguous(t);
  backend->fill(initial, rank);
  eplb::runtime::Engine engine(MPI_COMM_WORLD, cfg, backend->registry(), initial, backend->transport());
  backend->attach(engine);
  Checkpoints checkpoints(o.checkpoint, o.checkpoint_every);
  if (!o.resume.empty()) {
    checkpoints.resume(engine, o.resume);
    backend->fill(engine.placement(), rank);  // load the weights of the restored placement
    backend->attach(engine);
  }
  if (engine.pass() > INT_MAX / 2 || o.passes > INT_MAX / 2 - engine.pass())
    throw std::invalid_argument("passes done (" + std::to_string(engine.pass()) + ") + --passes " +
                                std::to_string(o.passes) + " is more than this simulation counts");
  // The router's drift is replayed pass by pass up to the checkpoint (~0.2 us per layer and
  // expert, progress shown below): refuse only what would take hours (a damaged pass count).
  const double replay_steps = static_cast<double>(engine.pass()) * t.num_layers * t.num_logical;
  if (replay_steps > 2e10)
    throw std::invalid_argument("--resume: the checkpoint is at pass " + std::to_string(engine.pass()) +
                                "; replaying the router's drift up to it (passes x layers x experts > "
                                "2e10) would take hours");
  const int first_pass = static_cast<int>(engine.pass()) + 1;

  std::size_t expert_bytes = 0;
  for (const auto& s : specs) expert_bytes += s.bytes;
  if (rank == 0) {
    char b[32];
    std::printf("moe_sim (eplb %s): %d ranks, %s (%s), policy %s, top-%d, %d tokens/rank/pass\n",
                EPLB_VERSION, size, t.describe().c_str(), t.kind(),
                cfg.policy_name().c_str(), o.topk, o.tokens);
    std::printf("  %zu tensors per expert (%s per expert), %d passes, rebalance every %d, window %d\n"
                "  weights: %s; MPI CUDA-aware: %s%s\n\n",
                specs.size(), human(static_cast<double>(expert_bytes), b, sizeof b), o.passes,
                o.interval, o.window, backend->name(), engine.mpi_is_cuda_aware() ? "yes" : "no",
                o.device_allreduce && engine.mpi_is_cuda_aware() ? " (device allreduce on)" : "");
    std::printf("%6s %5s  %-17s %-17s %7s %7s %6s %11s %11s  %7s %7s %7s %7s %8s %8s\n", "pass",
                "epoch", "balancedness", "max/mean", "changed", "remote", "local", "remote B",
                "local B", "collect", "policy", "bcast", "plan", "migrate", "total ms");
    if (!o.resume.empty())
      std::printf("%6d %5lld  resumed from %s\n", first_pass - 1,
                  static_cast<long long>(engine.epoch()), o.resume.c_str());
  }

  Router router(o, rank);
  for (int pass = 1; pass < first_pass; ++pass) {  // replay the drift
    router.next_pass(pass);
    if (rank == 0 && replay_steps > 2e8 && pass % std::max(1, first_pass / 10) == 0)
      std::printf("  replaying the router's drift: pass %d of %d\n", pass, first_pass - 1);
  }
  std::vector<std::int32_t> ids;
  std::vector<Row> rows;
  long long verify_failures = 0;
  for (int pass = first_pass; pass < first_pass + o.passes; ++pass) {
    router.next_pass(pass);
    for (int l = 0; l < t.num_layers; ++l) {
      router.route(l, ids);
      backend->record(engine, l, ids);
    }
    auto st = engine.step();
    checkpoints.after_step(engine, st.has_value());
    if (!st) continue;
    // Verify every slot's bytes on every rank; agree on the outcome.
    const auto bad = backend->verify(engine.placement(), rank);
    for (std::size_t i = 0; i < bad.size() && i < 5; ++i)
      std::fprintf(stderr, "[rank %d] verification failed at pass %d: %s\n", rank, pass, bad[i].c_str());
    long long nbad = static_cast<long long>(bad.size()), total_bad = 0;
    MPI_Allreduce(&nbad, &total_bad, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    verify_failures += total_bad;
    Row row{pass, *st, {st->t_collect_ms, st->t_policy_ms, st->t_broadcast_ms, st->t_plan_ms,
                        st->t_migrate_ms, st->t_total_ms}, total_bad};
    MPI_Allreduce(MPI_IN_PLACE, row.t_max, 6, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    rows.push_back(row);
    if (rank == 0) {
      char rb[32], lb[32], bal[32], imb[32];
      std::snprintf(bal, sizeof bal, "%.3f -> %.3f", st->balancedness_before, st->balancedness_after);
      std::snprintf(imb, sizeof imb, "%.3f -> %.3f", st->imbalance_before, st->imbalance_after);
      if (st->skipped) {
        std::printf("%6d %5lld  %-17s %-17s  skipped: %s\n", pass, static_cast<long long>(st->epoch),
                    bal, imb, st->skip_reason.c_str());
      } else {
        std::printf("%6d %5lld  %-17s %-17s %7lld %7lld %6lld %11s %11s  %7.3f %7.3f %7.3f %7.3f %8.3f %8.3f%s\n",
                    pass, static_cast<long long>(st->epoch), bal, imb, st->plan.slots_changed,
                    st->plan.remote_units, st->plan.local_units + st->plan.fanout_copies,
                    human(static_cast<double>(st->moved.total_remote_bytes), rb, sizeof rb),
                    human(static_cast<double>(st->moved.total_local_bytes), lb, sizeof lb),
                    row.t_max[0], row.t_max[1], row.t_max[2], row.t_max[3], row.t_max[4], row.t_max[5],
                    total_bad ? "  VERIFY FAILED" : "");
      }
      std::fflush(stdout);
    }
  }

  checkpoints.save(engine);
  if (rank == 0) {
    long long done = 0, skipped = 0;
    double remote = 0, local = 0, bb = 0, ba = 0, tmig = 0, ttot = 0, tctl = 0;
    for (const auto& r : rows) {
      if (r.s.skipped) {
        ++skipped;
        continue;
      }
      ++done;
      remote += static_cast<double>(r.s.moved.total_remote_bytes);
      local += static_cast<double>(r.s.moved.total_local_bytes);
      bb += r.s.balancedness_before;
      ba += r.s.balancedness_after;
      tmig += r.t_max[4];
      ttot += r.t_max[5];
      tctl += r.t_max[5] - r.t_max[4];
    }
    char b1[32], b2[32], b3[32];
    std::printf("\nsummary: %lld rebalances (%lld skipped) in %d passes\n", done + skipped, skipped, o.passes);
    if (done) {
      std::printf("  balancedness before -> after (mean): %.4f -> %.4f\n", bb / done, ba / done);
      std::printf("  bytes moved per rebalance: %s remote, %s local (total remote %s)\n",
                  human(remote / done, b1, sizeof b1), human(local / done, b2, sizeof b2),
                  human(remote, b3, sizeof b3));
      std::printf("  time per rebalance (max over ranks): control %.3f ms, migration %.3f ms, total %.3f ms\n",
                  tctl / done, tmig / done, ttot / done);
    }
    std::printf("  verification: %s (%lld bad slot tensors)\n", verify_failures ? "FAILED" : "every slot holds its expert's bytes",
                verify_failures);
    if (!o.csv.empty()) {
      eplb::tools::write_file_atomically("--csv", o.csv, [&](std::ostream& f) {
        f << "pass,epoch,skipped,balancedness_before,balancedness_after,imbalance_before,imbalance_after,"
             "slots_changed,remote_transfers,local_copies,bytes_remote,bytes_local,t_collect_ms,"
             "t_policy_ms,t_broadcast_ms,t_plan_ms,t_migrate_ms,t_total_ms,verify_failures\n";
        for (const auto& r : rows)
          f << r.step << ',' << r.s.epoch << ',' << r.s.skipped << ',' << r.s.balancedness_before << ','
            << r.s.balancedness_after << ',' << r.s.imbalance_before << ',' << r.s.imbalance_after << ','
            << r.s.plan.slots_changed << ',' << r.s.plan.remote_units << ','
            << r.s.plan.local_units + r.s.plan.fanout_copies << ',' << r.s.moved.total_remote_bytes << ','
            << r.s.moved.total_local_bytes << ',' << r.t_max[0] << ',' << r.t_max[1] << ','
            << r.t_max[2] << ',' << r.t_max[3] << ',' << r.t_max[4] << ',' << r.t_max[5] << ',' << r.bad << '\n';
      });
    }
  }
  return verify_failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;  // eplb's planning threads make no MPI calls: FUNNELED is enough
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rc = 0;
  try {
    rc = run(argc, argv, rank, size);
  } catch (const std::invalid_argument& e) {
    // Bad input is agreed on by every rank: each reports it and exits normally.
    std::fprintf(stderr, "moe_sim [rank %d]: error: %s\n", rank, e.what());
    rc = 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_sim [rank %d]: fatal: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
