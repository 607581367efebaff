#include "eplb/algo/policy.hpp"

#include <stdexcept>
#include <string>

#include "eplb/algo/deepseek.hpp"
#include "eplb/algo/spill.hpp"
#include "eplb/algo/sticky.hpp"

namespace eplb::algo {

std::vector<std::string> policy_names() {
  // The default first: sticky meets issue #6's targets (docs/BENCHMARKS.md); the reference
  // stays selectable by name everywhere.
  return {"sticky", "deepseek", "deepseek-refined", "hierarchical-spill"};
}

std::string default_policy_name() { return policy_names().front(); }

std::unique_ptr<Policy> make_policy(std::string_view name) {
  if (name == "deepseek") return std::make_unique<DeepseekPolicy>();
  if (name == "sticky") return std::make_unique<StickyPolicy>();
  if (name == "hierarchical-spill") return std::make_unique<SpillPolicy>();
  if (name.substr(0, 7) == "sticky:") {
    // "sticky:tolerance=0.005:node_tolerance=0.02...": the sticky policy with its knobs set.
    StickyOptions o;
    std::string_view rest = name.substr(7);
    while (!rest.empty()) {
      const auto comma = rest.find(':');
      const std::string_view kv = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      const auto eq = kv.find('=');
      const std::string key(kv.substr(0, eq));
      const std::string val(eq == std::string_view::npos ? "" : kv.substr(eq + 1));
      double v = 0;
      try {
        std::size_t used = 0;
        v = std::stod(val, &used);
        if (used != val.size()) throw std::invalid_argument(val);
      } catch (const std::exception&) {
        throw std::invalid_argument("policy '" + std::string(name) + "': '" + std::string(kv) +
                                    "' is not key=number");
      }
      if (key == "tolerance") o.tolerance = v;
      else if (key == "node_tolerance") o.node_tolerance = v;
      else if (key == "max_swap_fraction") o.max_swap_fraction = v;
      else if (key == "keep_counts") o.keep_counts = v != 0;
      else if (key == "refine_fresh") o.refine_fresh = v != 0;
      else
        throw std::invalid_argument("policy '" + std::string(name) + "': unknown knob '" + key +
                                    "' (tolerance, node_tolerance, max_swap_fraction, "
                                    "keep_counts, refine_fresh)");
    }
    return std::make_unique<StickyPolicy>(o, std::string(name));
  }
  if (name == "deepseek-refined") {
    StickyOptions o;
    o.refine_reference = true;
    return std::make_unique<StickyPolicy>(o, "deepseek-refined");
  }
  std::string known;
  for (const auto& n : policy_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown policy '" + std::string(name) + "' (known: " + known + ")");
}

std::string policy_name_error(std::string_view name) {
  try {
    (void)make_policy(name);
    return {};
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
}

}  // namespace eplb::algo
