// Uses the installed headers and libraries: the deepseek policy on the reference's worked
// example (docs/POLICIES.md) must give the recorded phy2log; with the runtime, a config check.
#include <cstdio>
#include <vector>

#include "eplb/algo/policy.hpp"
#include "eplb/config.hpp"
#if CONSUMER_HAS_RUNTIME
#include "eplb/runtime/config.hpp"
#endif

int main() {
  const std::vector<double> w = {90, 132, 40, 61, 104, 165, 39, 4,   73,  56,  183, 86,
                                 20, 107, 104, 64, 19,  197, 187, 157, 172, 86, 16,  27};
  const eplb::algo::Topology topo{2, 12, 16, 8, 2, 4};
  const eplb::algo::LoadView load{w, 2, 12};
  const auto p = eplb::algo::make_policy("deepseek")->rebalance(load, topo);
  const std::vector<int> expect = {5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
                                   7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1};
  if (std::vector<int>(p.phy2log().begin(), p.phy2log().end()) != expect) {
    std::printf("consumer: deepseek placement differs from the reference example\n");
    return 1;
  }
#if CONSUMER_HAS_RUNTIME
  eplb::runtime::RuntimeConfig cfg;
  cfg.topology = topo;
  cfg.validate();
#endif
  std::printf("consumer: eplb %s (MPI %d, CUDA %d, NCCL %d, HDF5 %d): reference example OK\n",
              EPLB_VERSION, EPLB_HAVE_MPI, EPLB_HAVE_CUDA, EPLB_HAVE_NCCL, EPLB_HAVE_HDF5);
  return 0;
}
