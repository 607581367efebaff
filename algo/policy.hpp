#pragma once
/// \file The rebalance policy interface and the registry of policies by name.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/algo/load.hpp"
#include "eplb/algo/placement.hpp"
#include "eplb/algo/topology.hpp"

namespace eplb::algo {

/// A rebalance policy: load[L][E] (+ the previous placement) -> new placement.
/// A policy object keeps scratch memory between calls so that repeated rebalances do not
/// allocate in their hot loops; one object must not be used by two threads at once.
class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string_view name() const = 0;

  /// Computes the placement for `load` into `out` (storage reused when shapes repeat).
  /// `previous` may be null (first rebalance); when given it must have topo's shape.
  /// Throws std::invalid_argument on an invalid topology, a load of the wrong shape or with
  /// NaN / infinite / negative values; `out` is untouched then.
  virtual void rebalance_into(LoadView load, const Topology& topo, const Placement* previous,
                              Placement& out) = 0;

  /// Whether every expert group stays on one node in hierarchical topologies (G % N == 0).
  virtual bool keeps_groups_on_nodes() const { return true; }

  /// Threads a policy may use for one call (policies that cannot use more ignore it).
  virtual void set_threads(int /*threads*/) {}

  /// Whether each layer's placement depends only on that layer's load and previous
  /// placement: then layers [a, b) planned as a problem of their own (LoadView::layers,
  /// Placement::assign_layers, a topology of b - a layers) give exactly those layers of the
  /// whole plan, and the runtime may split the layers over the ranks (docs/DESIGN.md).
  virtual bool layers_independent() const { return false; }

  Placement rebalance(LoadView load, const Topology& topo, const Placement* previous = nullptr) {
    Placement p;
    rebalance_into(load, topo, previous, p);
    return p;
  }
};

/// Names accepted by make_policy, the default first.
std::vector<std::string> policy_names();
/// The runtime's default policy name.
std::string default_policy_name();
/// Throws std::invalid_argument listing the known names when `name` is unknown. Besides
/// policy_names(), "sticky:key=value:..." sets the sticky policy's knobs (docs/POLICIES.md).
std::unique_ptr<Policy> make_policy(std::string_view name);
/// Empty when make_policy(name) accepts `name`, else its message (for argument parsers).
std::string policy_name_error(std::string_view name);

}  // namespace eplb::algo
