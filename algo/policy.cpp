#include "eplb/algo/policy.hpp"

#include <charconv>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

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
    const std::string whole(name);
    auto bad = [&](const std::string& why) { return std::invalid_argument("policy '" + whole + "': " + why); };
    std::string_view rest = name.substr(7);
    if (rest.empty()) throw bad("no knob after 'sticky:' (use 'sticky' for the defaults)");
    std::vector<std::string> seen;
    while (true) {
      const auto colon = rest.find(':');
      const std::string_view kv = rest.substr(0, colon);
      const auto eq = kv.find('=');
      const std::string key(kv.substr(0, eq));
      const std::string val(eq == std::string_view::npos ? "" : kv.substr(eq + 1));
      // from_chars: locale-independent, and the whole value must be a number (no "0.5x").
      double v = 0;
      const char* first = val.data() + (!val.empty() && val[0] == '+');  // from_chars takes no '+'
      const auto [end, ec] = std::from_chars(first, val.data() + val.size(), v);
      if (first == val.data() + val.size() || ec != std::errc() || end != val.data() + val.size())  // inf, nan: the policy says
        throw bad("'" + std::string(kv) + "' is not key=number");
      for (const auto& k : seen)
        if (k == key) throw bad("knob '" + key + "' is given twice");
      seen.push_back(key);
      auto flag = [&] {
        if (v != 0 && v != 1) throw bad("'" + key + "' is 0 or 1, not " + val);
        return v == 1;
      };
      if (key == "tolerance") o.tolerance = v;
      else if (key == "node_tolerance") o.node_tolerance = v;
      else if (key == "max_swap_fraction") o.max_swap_fraction = v;
      else if (key == "keep_counts") o.keep_counts = flag();
      else if (key == "refine_fresh") o.refine_fresh = flag();
      else
        throw bad("unknown knob '" + key +
                  "' (tolerance, node_tolerance, max_swap_fraction, keep_counts, refine_fresh)");
      if (colon == std::string_view::npos) break;
      rest = rest.substr(colon + 1);
      if (rest.empty()) throw bad("empty knob after the last ':'");
    }
    return std::make_unique<StickyPolicy>(o, whole);
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
