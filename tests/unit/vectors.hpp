#pragma once
// Reader of tests/data/eplb_vectors_v1.txt (format in the file's header).
#include <fstream>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "eplb/algo/topology.hpp"

namespace eplb::test {

struct VectorCase {
  std::string name, kind, policy;
  algo::Topology topo;
  std::vector<double> weights;   // [L][E]
  std::vector<int> phy2log;      // [L][R], exact only
  std::vector<int> logcnt;       // [L][E], exact only
  std::vector<double> maxload;   // [L], exact and quality

  // GoogleTest prints parameters into test listings that CTest parses: keep it a plain name.
  friend void PrintTo(const VectorCase& c, std::ostream* os) { *os << c.name; }
};

inline std::vector<VectorCase> load_vectors(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string line, body;
  while (std::getline(f, line))
    if (line.empty() || line[0] != '#') body += line + "\n";
  std::istringstream in(body);
  std::vector<VectorCase> cases;
  std::string tok;
  auto read_n = [&](auto& v, std::size_t n) {
    v.resize(n);
    for (auto& x : v)
      if (!(in >> x)) throw std::runtime_error("vectors: truncated data");
  };
  while (in >> tok) {
    if (tok != "case") throw std::runtime_error("vectors: expected 'case', got " + tok);
    VectorCase c;
    auto& t = c.topo;
    in >> c.name >> c.kind >> t.num_layers >> t.num_logical >> t.num_slots >> t.num_groups >>
        t.num_nodes >> t.num_ranks >> c.policy;
    const std::size_t L = t.num_layers, E = t.num_logical, R = t.num_slots;
    while (in >> tok && tok != "end") {
      if (tok == "weights") read_n(c.weights, L * E);
      else if (tok == "phy2log") read_n(c.phy2log, L * R);
      else if (tok == "logcnt") read_n(c.logcnt, L * E);
      else if (tok == "maxload") read_n(c.maxload, L);
      else throw std::runtime_error("vectors: unknown section " + tok);
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

}  // namespace eplb::test
