#pragma once
/// \file The runtime's configuration: a plain struct, validated once.
#include <cstddef>
#include <string>

#include "eplb/algo/topology.hpp"

namespace eplb::runtime {

struct RuntimeConfig {
  /// Job shape. num_ranks must equal the communicator's size; slot j lives on rank j / (R/P).
  algo::Topology topology;
  /// Placement policy name (algo::policy_names()); empty = algo::default_policy_name().
  std::string policy;
  /// W: forward passes kept in the load window (ring buffer). >= 1. Memory: W x L x E x 8
  /// bytes per rank (host window; the device window the same in GPU memory): 119 MB for
  /// W = 1000, L = 58, E = 256.
  int window_passes = 1000;
  /// Passes between automatic rebalances; 0 = only when rebalance() is called.
  int rebalance_interval = 3000;
  /// Pass of the first automatic rebalance; -1 = rebalance_interval / 4 (what peers do; if
  /// that is 0, rebalance_interval); 0 = rebalance_interval.
  int first_rebalance = -1;
  /// Skip a rebalance whose predicted balancedness gain (after - before, see
  /// algo::BalanceReport::balancedness) is below this. 0 = skip only when nothing improves
  /// or the placement would not change; negative = never skip.
  double min_gain = 0.0;
  /// Staging memory per rank for migration (bytes). Layers whose moves need more run in
  /// several rounds; moves that depend on each other in a cycle may exceed it (reported).
  std::size_t staging_bytes = std::size_t{256} << 20;
  /// Most experts moved in one NCCL group / MPI batch (0 = a whole round). See ExecOptions.
  int max_experts_per_batch = 0;
  /// Consecutive layers migrated in one batch while their staging fits staging_bytes
  /// (1 = layer by layer, 0 = no limit but the budget). See ExecOptions.
  int max_layers_per_window = 0;
  /// Threads the planning rank may use for the policy (layers are independent; the result
  /// does not depend on it). 0 = min(8, hardware threads / ranks). Default 1: on the H200
  /// machine more threads did not shorten the policy (docs/BENCHMARKS.md).
  int planning_threads = 1;
  /// One message per peer and batch (packing through staging) instead of one per tensor per
  /// expert. See ExecOptions::coalesce.
  bool coalesce_messages = true;
  /// With coalesce_messages: batches per round, pipelined so that packing and unpacking
  /// overlap the transfers (>= 1). See ExecOptions::pipeline_batches.
  int pipeline_batches = 4;
  /// With coalesce_messages: the next window's (or round's) packs and transfers are issued
  /// before this one's unpacks, on a second staging region within staging_bytes. See
  /// ExecOptions::overlap_steps.
  bool overlap_steps = false;
  /// Reorder each new placement within every GPU so that experts the GPU already holds keep
  /// their slots (algo::align_slots): same balance, far fewer local copies in the migration.
  /// Off gives the policy's slot order unchanged (e.g. to compare with the reference).
  bool align_slots = true;
  /// When the policy plans each layer on its own (algo::Policy::layers_independent), every
  /// rank plans its share of the layers and one allgather assembles the placement, instead
  /// of rank 0 planning all layers and broadcasting (docs/DESIGN.md). Same placement.
  bool distributed_planning = true;
  /// With a device load source and a CUDA-aware MPI (comm::mpi_cuda_aware(), checked at run
  /// time), allreduce the device buffer directly instead of copying it to the host first.
  /// Off by default: the host path is the tested one.
  bool device_allreduce = false;
  /// Negative expert ids in the router output are padding, not errors: a top-k entry that
  /// selects no expert (DeepEP's -1) or a padded token. The host window's record() skips
  /// them; give the flag to a cuda::DeviceLoadWindow too (checked at every rebalance), whose
  /// route_and_count() passes it to the kernel. Off: any id outside [0, E) is an
  /// error (catches garbage ids): the host window drops its whole batch, the device kernel
  /// only that id; either way the next rebalance fails on every rank.
  bool skip_negative_ids = false;

  /// Throws std::invalid_argument naming the first bad field.
  void validate() const;
  std::string policy_name() const;
};

}  // namespace eplb::runtime
