// eplb-eval: runs a sequence of load windows through one or more policies, each rebalance
// starting from the placement of the previous window, and reports balance, weight movement
// and planning time per policy.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.hpp"
#include "eplb/algo/io.hpp"
#include "eplb/algo/migration.hpp"
#include "eplb/algo/policy.hpp"
#include "bench/shapes.hpp"
#include "eplb/algo/spill.hpp"
#include "eplb/config.hpp"

namespace {

using eplb::algo::LoadMatrix;
using eplb::algo::Placement;
using eplb::algo::Topology;

struct Row {
  std::string policy;
  int window = 0;
  double imbalance_mean = 0, imbalance_worst = 0;
  double slots_changed_frac = 0, remote_frac = 0, same_node_remote_frac = 0;
  double node_local_traffic = 1;
  double bytes_moved = 0;
  double plan_us = 0;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) v.push_back(item);
  return v;
}

/// CPU time of the calling thread in microseconds: planning time on one core, not inflated
/// when other processes share the machine.
double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "eplb-eval: run load windows through policies (each rebalance starts from the previous "
      "window's placement) and report balance, weights moved and planning time"};
  Topology topo;
  std::string shape_name, policies_arg, csv_path, gen = "lognormal";
  std::vector<std::string> load_paths;
  int windows = 8, repeat = 1, rotate = 4;
  double noise = 0.2, bytes_per_expert = 0;
  unsigned seed = 1;
  std::string shape_help = "model shape (sets L, E, R, P, N, G; flags given too override):";
  for (const auto& s : eplb::bench::shapes()) shape_help += std::string(" ") + s.name;
  app.add_option("--shape", shape_name, shape_help);
  app.add_option("--num-layers", topo.num_layers, "L: layers (generated windows)");
  app.add_option("--num-experts", topo.num_logical, "E: logical experts (generated windows)");
  app.add_option("--num-slots", topo.num_slots, "R: physical expert slots per layer");
  app.add_option("--num-gpus", topo.num_ranks, "P: GPUs (ranks)");
  app.add_option("--num-nodes", topo.num_nodes, "N: nodes");
  app.add_option("--num-groups", topo.num_groups, "G: expert groups");
  std::string all_policies;
  for (const auto& n : eplb::algo::policy_names()) all_policies += (all_policies.empty() ? "" : ",") + n;
  app.add_option("--policy", policies_arg,
                 "comma-separated policies to compare (default: all: " + all_policies + ")");
  app.add_option("--loads", load_paths,
                 "load windows from files ([L][E] matrices in eplb-plan's format), in order")
      ->expected(1, -1);
  app.add_option("--gen", gen, "generator when no --loads: lognormal, zipf or burst")
      ->check(CLI::IsMember({"lognormal", "zipf", "burst"}))
      ->capture_default_str();
  app.add_option("--windows", windows, "generated windows")
      ->check(eplb::tools::kAtLeastOne)
      ->capture_default_str();
  app.add_option("--noise", noise, "multiplicative noise a: every load times U(1-a, 1+a)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--rotate", rotate, "zipf: ranks the hot set rotates by per window")
      ->capture_default_str();
  app.add_option("--seed", seed, "generator seed")->capture_default_str();
  app.add_option("--bytes-per-expert", bytes_per_expert,
                 "bytes of one expert's weights (bytes moved = remote transfers x this)")
      ->capture_default_str();
  app.add_option("--repeat", repeat, "time each rebalance N times, report the median")
      ->check(eplb::tools::kAtLeastOne)
      ->capture_default_str();
  bool align = true;
  app.add_flag("!--no-align", align,
               "keep each policy's slot order (default: aligned to the previous placement within "
               "every GPU, as the engine does; the changed column then counts only real moves)");
  app.add_option("--csv", csv_path, "write one row per (policy, window) to FILE");
  if (const auto rc = eplb::tools::parse_or_exit(app, argc, argv)) return *rc;

  return eplb::tools::run_reporting_errors("eplb-eval", [&]() -> int {
    if (!(noise >= 0 && noise <= 1))  // CLI::Range lets NaN through
      throw std::invalid_argument("--noise must lie in [0, 1]");
    if (rotate < 0 || rotate > 1000000) throw std::invalid_argument("--rotate must lie in [0, 10^6]");
    if (!(bytes_per_expert >= 0 && bytes_per_expert <= 1e18))
      throw std::invalid_argument("--bytes-per-expert must lie in [0, 1e18]");
    eplb::tools::require_writable("--csv", csv_path);
    // Topology: a named shape, then explicit flags on top.
    Topology t;
    if (!shape_name.empty()) {
      const auto& all = eplb::bench::shapes();
      const auto it = std::find_if(all.begin(), all.end(),
                                   [&](const auto& s) { return shape_name == s.name; });
      if (it == all.end()) throw std::invalid_argument("unknown --shape '" + shape_name + "'");
      t = it->topo;
    }
    if (topo.num_layers) t.num_layers = topo.num_layers;
    if (topo.num_logical) t.num_logical = topo.num_logical;
    if (topo.num_slots) t.num_slots = topo.num_slots;
    if (topo.num_ranks) t.num_ranks = topo.num_ranks;
    if (app.count("--num-nodes")) t.num_nodes = topo.num_nodes;
    if (app.count("--num-groups")) t.num_groups = topo.num_groups;

    std::vector<LoadMatrix> loads;
    if (!load_paths.empty()) {
      for (const auto& p : load_paths) loads.push_back(eplb::algo::read_load_csv_file(p));
      for (std::size_t i = 1; i < loads.size(); ++i)
        if (loads[i].num_layers != loads[0].num_layers ||
            loads[i].num_logical != loads[0].num_logical)
          throw std::invalid_argument("'" + load_paths[i] + "' has shape [" +
                                      std::to_string(loads[i].num_layers) + "][" +
                                      std::to_string(loads[i].num_logical) + "], '" +
                                      load_paths[0] + "' has [" +
                                      std::to_string(loads[0].num_layers) + "][" +
                                      std::to_string(loads[0].num_logical) + "]");
      t.num_layers = loads[0].num_layers;
      t.num_logical = loads[0].num_logical;
      t.validate();
      for (const char* opt : {"--num-layers", "--gen", "--windows", "--seed", "--noise", "--rotate"})
        if (app.count(opt))
          std::fprintf(stderr, "eplb-eval: note: %s has no effect with --loads (the files give the windows)\n", opt);
    } else {
      t.validate();
      const auto kind = gen == "zipf"    ? eplb::bench::WindowKind::zipf
                        : gen == "burst" ? eplb::bench::WindowKind::burst
                                         : eplb::bench::WindowKind::lognormal;
      loads = eplb::bench::load_windows(t, kind, windows, noise, seed, rotate);
    }

    std::vector<std::string> names =
        policies_arg.empty() ? eplb::algo::policy_names() : split_list(policies_arg);
    if (names.empty()) throw std::invalid_argument("--policy: no policy named");
    for (std::size_t i = 0; i < names.size(); ++i)  // rows are keyed by name: two would merge
      for (std::size_t j = 0; j < i; ++j)
        if (names[i] == names[j]) throw std::invalid_argument("--policy: '" + names[i] + "' is listed twice");
    std::vector<std::unique_ptr<eplb::algo::Policy>> policies;
    for (const auto& n : names) policies.push_back(eplb::algo::make_policy(n));

    const double slots = static_cast<double>(t.num_layers) * t.num_slots;
    std::vector<Row> rows;
    for (std::size_t pi = 0; pi < policies.size(); ++pi) {
      auto& policy = *policies[pi];
      // A job starts with the contiguous layout; every rebalance starts from the last one.
      Placement prev = Placement::contiguous(t), next;
      for (std::size_t w = 0; w < loads.size(); ++w) {
        std::vector<double> times;
        for (int i = 0; i < repeat; ++i) {
          const double t0 = thread_cpu_us();
          policy.rebalance_into(loads[w].view(), t, &prev, next);
          times.push_back(thread_cpu_us() - t0);
        }
        if (align) eplb::algo::align_slots(prev, next, t);  // not timed: the engine's step after the policy
        const auto bal = eplb::algo::evaluate(loads[w].view(), next, t);
        const auto st = eplb::algo::plan_migration(prev, next, t).stats();
        Row r;
        r.policy = names[pi];
        r.window = static_cast<int>(w);
        r.imbalance_mean = bal.imbalance_mean();
        r.imbalance_worst = bal.imbalance_worst();
        r.slots_changed_frac = static_cast<double>(st.slots_changed) / slots;
        r.remote_frac = static_cast<double>(st.remote_units) / slots;
        r.same_node_remote_frac = static_cast<double>(st.same_node_remote) / slots;
        r.node_local_traffic = eplb::algo::node_local_traffic(loads[w].view(), next, t);
        r.bytes_moved = static_cast<double>(st.remote_units) * bytes_per_expert;
        r.plan_us = median(times);
        rows.push_back(r);
        std::swap(prev, next);
      }
    }

    if (!csv_path.empty()) {
      eplb::tools::write_file_atomically("--csv", csv_path, [&](std::ostream& f) {
        f << "policy,window,imbalance_mean,imbalance_worst,slots_changed_frac,remote_frac,"
             "same_node_remote_frac,bytes_moved,plan_us,node_local_traffic\n";
        char buf[256];
        for (const auto& r : rows) {
          std::snprintf(buf, sizeof buf, "%s,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.0f,%.2f,%.6f\n",
                        r.policy.c_str(), r.window, r.imbalance_mean, r.imbalance_worst,
                        r.slots_changed_frac, r.remote_frac, r.same_node_remote_frac,
                        r.bytes_moved, r.plan_us, r.node_local_traffic);
          f << buf;
        }
      });
    }

    // Summary: balance over all windows; moves per rebalance over windows 1.. (window 0
    // moves from the contiguous start layout and is shown separately).
    std::printf("eplb-eval %s: %s (%s), %zu windows (%s)\n", EPLB_VERSION, t.describe().c_str(),
                t.kind(), loads.size(),
                load_paths.empty()
                    ? (gen + ", noise " + std::to_string(noise).substr(0, 4) + ", seed " +
                       std::to_string(seed))
                          .c_str()
                    : "files");
    std::printf("%-18s %9s %9s %9s %9s %9s %12s %9s %9s %10s %10s\n", "policy", "imb_mean",
                "imb_worst", "changed", "remote", "remote/ref", "bytes/rebal", "remote@0",
                "plan_us", "plan_max", "node_local");
    const bool steady = loads.size() > 1;
    double ref_remote = -1;
    for (const auto& n : names) {
      double im = 0, iw = 0, ch = 0, rm = 0, by = 0, rm0 = 0, pmax = 0, local = 0;
      int nw = 0, nm = 0;
      std::vector<double> plan;
      for (const auto& r : rows) {
        if (r.policy != n) continue;
        im += r.imbalance_mean;
        local += r.node_local_traffic;
        iw = std::max(iw, r.imbalance_worst);
        ++nw;
        plan.push_back(r.plan_us);
        pmax = std::max(pmax, r.plan_us);
        if (r.window == 0) rm0 = r.remote_frac;
        if (!steady || r.window > 0) {
          ch += r.slots_changed_frac;
          rm += r.remote_frac;
          by += r.bytes_moved;
          ++nm;
        }
      }
      rm /= nm;
      if (ref_remote < 0) ref_remote = rm;
      char ratio[32];  // n/a when the first policy moved nothing (0 would read "moves nothing")
      if (ref_remote > 0) std::snprintf(ratio, sizeof ratio, "%.3f", rm / ref_remote);
      else std::snprintf(ratio, sizeof ratio, "n/a");
      std::printf("%-18s %9.4f %9.4f %9.4f %9.4f %9s %12.4g %9.4f %9.1f %10.1f %10.4f\n",
                  n.c_str(), im / nw, iw, ch / nm, rm, ratio, by / nm, rm0, median(plan), pmax,
                  local / nw);
    }
    std::printf(
        "imb = per-layer max/mean GPU load (mean over layers and windows; worst layer of any "
        "window); changed, remote = slots changed and remote transfers per rebalance as a "
        "fraction of L*R (mean over windows %s); remote/ref = remote relative to the first "
        "policy listed (n/a when that one moved nothing); remote@0 = window 0 from the contiguous start; plan_us = median "
        "planning time (CPU time of the planning thread), plan_max = the largest; node_local = "
        "fraction of the load served on its group's home node (algo::node_local_traffic).\n",
        steady ? "1.." : "0");
    return 0;
  });
}
