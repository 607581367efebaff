#include "algo/policy.hpp"

#include <stdexcept>

#include "algo/deepseek.hpp"

namespace eplb::algo {

std::vector<std::string> policy_names() { return {"deepseek"}; }

std::string default_policy_name() { return policy_names().front(); }

std::unique_ptr<Policy> make_policy(std::string_view name) {
  if (name == "deepseek") return std::make_unique<DeepseekPolicy>();
  std::string known;
  for (const auto& n : policy_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown policy '" + std::string(name) + "' (known: " + known + ")");
}

}  // namespace eplb::algo
