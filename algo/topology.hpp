#pragma once
/// \file Shape of an expert-parallel job: layers, experts, slots, GPUs, nodes, groups.
#include <string>

namespace eplb::algo {

/// The notation of docs/DESIGN.md: L layers, E logical experts, R physical slots per
/// layer spread over P GPUs (k = R / P per GPU) on N nodes; experts form G groups of
/// E / G contiguous ids (used by the hierarchical policy). Slot j lives on GPU j / k.
struct Topology {
  int num_layers = 0;   ///< L: MoE layers (>= 1)
  int num_logical = 0;  ///< E: logical experts per layer (>= 1)
  int num_slots = 0;    ///< R: physical expert slots per layer, all GPUs together (R >= E)
  int num_ranks = 0;    ///< P: GPUs / ranks (R % P == 0)
  int num_nodes = 1;    ///< N: nodes (P % N == 0); ranks r and r' share a node iff r/(P/N) equal
  int num_groups = 1;   ///< G: expert groups (>= 1); hierarchical placement needs E % G == 0

  /// Throws std::invalid_argument naming the first violated condition.
  void validate() const;

  int slots_per_rank() const { return num_slots / num_ranks; }
  int ranks_per_node() const { return num_ranks / num_nodes; }
  int rank_of_slot(int slot) const { return slot / slots_per_rank(); }
  int node_of_rank(int rank) const { return rank / ranks_per_node(); }
  /// The reference's rule: hierarchical (groups packed onto nodes) iff G % N == 0.
  bool hierarchical() const { return num_groups % num_nodes == 0; }
  /// For messages: "hierarchical" when groups are packed onto more than one node, else
  /// "global" (one node: the reference's hierarchical routine places like the global one).
  const char* kind() const { return hierarchical() && num_nodes > 1 ? "hierarchical" : "global"; }

  /// "L=26 E=64 R=72 P=8 N=1 G=1"
  std::string describe() const;

  friend bool operator==(const Topology&, const Topology&) = default;
};

}  // namespace eplb::algo
