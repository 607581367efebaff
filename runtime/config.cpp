#include "eplb/runtime/config.hpp"

#include <cmath>
#include <stdexcept>

#include "eplb/algo/policy.hpp"

namespace eplb::runtime {

void RuntimeConfig::validate() const {
  topology.validate();
  if (window_passes < 1) throw std::invalid_argument("runtime config: window_passes >= 1 violated");
  if (rebalance_interval < 0)
    throw std::invalid_argument("runtime config: rebalance_interval >= 0 violated");
  if (first_rebalance < -1)
    throw std::invalid_argument("runtime config: first_rebalance >= -1 violated");
  if (planning_threads < 0)
    throw std::invalid_argument("runtime config: planning_threads >= 0 violated");
  if (max_layers_per_window < 0)
    throw std::invalid_argument("runtime config: max_layers_per_window >= 0 violated");
  if (max_experts_per_batch < 0)
    throw std::invalid_argument("runtime config: max_experts_per_batch >= 0 violated");
  if (pipeline_batches < 1)
    throw std::invalid_argument("runtime config: pipeline_batches >= 1 violated");
  if (staging_bytes == 0) throw std::invalid_argument("runtime config: staging_bytes > 0 violated");
  if (std::isnan(min_gain)) throw std::invalid_argument("runtime config: min_gain is NaN");
  (void)algo::make_policy(policy_name());  // throws listing the known names
}

std::string RuntimeConfig::policy_name() const {
  return policy.empty() ? algo::default_policy_name() : policy;
}

}  // namespace eplb::runtime
