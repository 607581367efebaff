#pragma once
/// \file "hierarchical-spill": the hierarchical reference placement, except that redundant
/// replicas of hot experts may use another node's slots. The reference gives every node the
/// same R/N slots whatever its groups' load, so with one group per node (DeepSeek-V3 on 8
/// nodes) the hot node stays hot; here each expert keeps one replica on its group's node and
/// the extra replicas go to the least loaded node with a free slot. The price is token traffic
/// that leaves the group's node: node_local_traffic() measures it.
#include <vector>

#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/policy.hpp"

namespace eplb::algo {

class SpillPolicy final : public Policy {
 public:
  std::string_view name() const override { return "hierarchical-spill"; }
  void rebalance_into(LoadView load, const Topology& topo, const Placement* previous,
                      Placement& out) override;
  bool keeps_groups_on_nodes() const override { return false; }
  bool layers_independent() const override { return true; }
  void set_threads(int threads) override { reference_.set_threads(threads); }

 private:
  /// Kept between calls, so that a call with the shape of the previous one allocates nothing.
  struct Scratch {
    std::vector<int> phy2log, node_of_group, group_rank, cnt, free_slots, gpu_of, extra, order, fill;
    std::vector<float> gload_f;
    std::vector<double> node_load, item_w, pack_load;
    std::vector<std::vector<int>> node_items;  ///< per node: experts, one per replica
    detail::PackScratch pack;
  };
  Scratch s_;
  DeepseekPolicy reference_;  ///< topologies with nothing to spill
};

/// Fraction of the load served on the node that holds most of the expert's group (its home),
/// with tokens spread evenly over an expert's replicas: sum_e load_e * replicas_home(e) /
/// replicas(e), over the total load. 1 for placements that keep groups on one node. Topologies
/// without groups (G = 1) count each expert's home as the node with most of its replicas.
double node_local_traffic(LoadView load, const Placement& placement, const Topology& topo);

}  // namespace eplb::algo
