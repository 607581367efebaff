#include "eplb/algo/topology.hpp"

#include <stdexcept>

namespace eplb::algo {
namespace {
[[noreturn]] void fail(const std::string& condition, const Topology& t) {
  throw std::invalid_argument("invalid topology: " + condition + " (" + t.describe() + ")");
}
}  // namespace

void Topology::validate() const {
  if (num_layers < 1) fail("num_layers >= 1 violated", *this);
  if (num_logical < 1) fail("num_logical >= 1 violated", *this);
  if (num_ranks < 1) fail("num_ranks >= 1 violated", *this);
  if (num_nodes < 1) fail("num_nodes >= 1 violated", *this);
  if (num_groups < 1) fail("num_groups >= 1 violated", *this);
  if (num_slots < num_logical)
    fail("num_slots >= num_logical violated: every logical expert needs a slot", *this);
  if (num_slots % num_ranks != 0)
    fail("num_slots % num_ranks == 0 violated: every GPU must hold the same number of slots",
         *this);
  if (num_ranks % num_nodes != 0)
    fail("num_ranks % num_nodes == 0 violated: every node must hold the same number of GPUs",
         *this);
  if (hierarchical() && num_logical % num_groups != 0)
    fail("num_logical % num_groups == 0 violated: hierarchical placement (num_groups % "
         "num_nodes == 0) needs equal expert groups",
         *this);
}

std::string Topology::describe() const {
  return "L=" + std::to_string(num_layers) + " E=" + std::to_string(num_logical) +
         " R=" + std::to_string(num_slots) + " P=" + std::to_string(num_ranks) +
         " N=" + std::to_string(num_nodes) + " G=" + std::to_string(num_groups);
}

}  // namespace eplb::algo
