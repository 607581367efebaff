// eplb-plan: offline planner. Reads a load matrix (CSV, or the window of an HDF5 checkpoint),
// runs a policy, writes phy2log (CSV, or an HDF5 checkpoint holding the placement).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include "cli_util.hpp"
#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/io.hpp"
#include "eplb/algo/policy.hpp"
#include "eplb/config.hpp"
#if EPLB_PLAN_CHECKPOINTS
#include "eplb/runtime/checkpoint.hpp"
#endif

namespace {

bool has_hdf5_extension(const std::string& path) {
  for (const char* ext : {".h5", ".hdf5"}) {
    const std::size_t n = std::strlen(ext);
    if (path.size() > n && path.compare(path.size() - n, n, ext) == 0) return true;
  }
  return false;
}

/// An HDF5 file by name (.h5 / .hdf5) or, for a regular file, by its 8-byte signature at
/// offset 0. Anything else (a pipe, /dev/stdin from a pipe) is read as CSV without a look
/// ahead: the bytes a probe read from a pipe would be gone for the CSV reader.
bool is_hdf5_path(const std::string& path) {
  if (has_hdf5_extension(path)) return true;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::ifstream f(path, std::ios::binary);
  char sig[8] = {};
  return f.read(sig, sizeof sig) && std::memcmp(sig, "\x89HDF\r\n\x1a\n", 8) == 0;
}

#if EPLB_PLAN_CHECKPOINTS
/// The checkpoint's load window summed over its W passes.
eplb::algo::LoadMatrix read_checkpoint_load(const std::string& path) {
  const auto c = eplb::runtime::read_checkpoint(path);
  const auto& t = c.config.topology;
  if (c.config.window_passes == 0)
    throw std::invalid_argument("checkpoint '" + path + "' holds no load window (W = 0)");
  eplb::algo::LoadMatrix m{t.num_layers, t.num_logical, {}};
  m.values.assign(static_cast<std::size_t>(t.num_layers) * t.num_logical, 0.0);
  for (std::size_t i = 0; i < c.window.size(); ++i)
    m.values[i % m.values.size()] += static_cast<double>(c.window[i]);
  return m;
}

/// The placement as a checkpoint: writer eplb-plan, no window (W = 0), no history.
void write_checkpoint_placement(const std::string& path, const eplb::algo::Topology& topo,
                                std::string_view policy, const eplb::algo::Placement& p) {
  eplb::runtime::Checkpoint c;
  c.writer = eplb::runtime::kWriterPlan;
  c.config.topology = topo;
  c.config.policy = std::string(policy);
  c.phy2log.assign(p.phy2log().begin(), p.phy2log().end());
  eplb::runtime::write_checkpoint(path, c);
}
#else
eplb::algo::LoadMatrix read_checkpoint_load(const std::string& path) {
  throw std::invalid_argument("'" + path + "' is HDF5, but eplb-plan was built without HDF5");
}
void write_checkpoint_placement(const std::string& path, const eplb::algo::Topology&,
                                std::string_view, const eplb::algo::Placement&) {
  throw std::invalid_argument("'" + path + "' asks for HDF5, but eplb-plan was built without HDF5");
}
#endif

void print_summary(const eplb::algo::Topology& topo, std::string_view policy,
                   const eplb::algo::BalanceReport& before, const eplb::algo::BalanceReport& after,
                   double plan_us, std::string_view path) {
  std::fprintf(stderr,
               "eplb-plan %s: policy=%.*s %s (%s)\n"
               "  max/mean GPU load per layer  before (contiguous, no replicas): mean %.4f "
               "worst %.4f\n"
               "                               after:  mean %.4f worst %.4f\n"
               "  planning time: %.1f us%s%.*s\n",
               EPLB_VERSION, static_cast<int>(policy.size()), policy.data(),
               topo.describe().c_str(), topo.kind(),
               before.imbalance_mean(), before.imbalance_worst(), after.imbalance_mean(),
               after.imbalance_worst(), plan_us, path.empty() ? "" : ", ",
               static_cast<int>(path.size()), path.data());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"eplb-plan: compute an expert placement (phy2log) from a load matrix"};
  std::string load_path, out_path, policy_name = eplb::algo::default_policy_name();
  eplb::algo::Topology topo;
  int repeat = 1;
  app.add_option("--load", load_path,
                 "load matrix: one line per layer, E numbers (commas and/or spaces), lines starting with # skipped; "
                 "or an HDF5 checkpoint (its window summed over passes)")
      ->required();
  app.add_option("--num-slots", topo.num_slots, "R: physical expert slots per layer")->required();
  app.add_option("--num-gpus", topo.num_ranks, "P: GPUs (ranks)")->required();
  app.add_option("--num-nodes", topo.num_nodes, "N: nodes")->capture_default_str();
  app.add_option("--num-groups", topo.num_groups, "G: expert groups")->capture_default_str();
  app.add_option("--policy", policy_name, "placement policy")
      ->check(eplb::algo::policy_name_error, "POLICY")
      ->capture_default_str();
  app.add_option("--out", out_path,
                 "write phy2log here instead of stdout: CSV, or an HDF5 checkpoint if it ends in .h5");
  app.add_option("--repeat", repeat, "run the policy N times; report the median time")
      ->check(eplb::tools::kAtLeastOne)
      ->capture_default_str();
  if (const auto rc = eplb::tools::parse_or_exit(app, argc, argv)) return *rc;

  return eplb::tools::run_reporting_errors("eplb-plan", [&]() -> int {
    eplb::tools::require_writable("--out", out_path);
    const auto load = is_hdf5_path(load_path) ? read_checkpoint_load(load_path)
                                              : eplb::algo::read_load_csv_file(load_path);
    topo.num_layers = load.num_layers;
    topo.num_logical = load.num_logical;
    topo.validate();
    auto policy = eplb::algo::make_policy(policy_name);

    eplb::algo::Placement placement;
    std::vector<double> times_us;
    for (int i = 0; i < repeat; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      policy->rebalance_into(load.view(), topo, nullptr, placement);
      const auto t1 = std::chrono::steady_clock::now();
      times_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(times_us.begin(), times_us.end());
    const double median_us = times_us[times_us.size() / 2];

    if (out_path.empty()) {
      eplb::algo::write_placement_csv(std::cout, placement);
    } else if (has_hdf5_extension(out_path)) {
      write_checkpoint_placement(out_path, topo, policy->name(), placement);
    } else {
      eplb::tools::write_file_atomically("--out", out_path, [&](std::ostream& f) {
        eplb::algo::write_placement_csv(f, placement);
      });
    }
    // Which implementation ran (the deepseek policy has a batched AVX-512 path).
    std::string_view path;
    if (const auto* d = dynamic_cast<const eplb::algo::DeepseekPolicy*>(policy.get()))
      path = d->batched_for(topo) ? "batched AVX-512 kernel" : "scalar code";
    print_summary(topo, policy->name(), eplb::algo::evaluate_contiguous(load.view(), topo),
                  eplb::algo::evaluate(load.view(), placement, topo), median_us, path);
    if (repeat > 1) std::fprintf(stderr, "time_us=%.3f\n", median_us);
    return 0;
  });
}
