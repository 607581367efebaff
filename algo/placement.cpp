#include "algo/placement.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace eplb::algo {

Placement::Placement(int num_layers, int num_logical, int num_slots, std::vector<int> phy2log) {
  if (phy2log.size() != static_cast<std::size_t>(num_layers) * std::max(num_slots, 0))
    throw std::invalid_argument("placement: phy2log has " + std::to_string(phy2log.size()) +
                                " entries, expected num_layers*num_slots = " +
                                std::to_string(static_cast<long long>(num_layers) * num_slots));
  layers_ = num_layers;
  logical_ = num_logical;
  slots_ = num_slots;
  phy2log_ = std::move(phy2log);
  derive();
}

Placement Placement::contiguous(const Topology& topo) {
  topo.validate();
  std::vector<int> p(static_cast<std::size_t>(topo.num_layers) * topo.num_slots);
  for (int l = 0; l < topo.num_layers; ++l)
    for (int j = 0; j < topo.num_slots; ++j)
      p[static_cast<std::size_t>(l) * topo.num_slots + j] = j % topo.num_logical;
  return Placement(topo.num_layers, topo.num_logical, topo.num_slots, std::move(p));
}

void Placement::assign(int num_layers, int num_logical, int num_slots,
                       std::span<const int> phy2log) {
  if (phy2log.size() != static_cast<std::size_t>(num_layers) * std::max(num_slots, 0))
    throw std::invalid_argument("placement: phy2log has " + std::to_string(phy2log.size()) +
                                " entries, expected num_layers*num_slots");
  layers_ = num_layers;
  logical_ = num_logical;
  slots_ = num_slots;
  phy2log_.assign(phy2log.begin(), phy2log.end());
  derive();
}

void Placement::check_shape(const Topology& topo, const char* what) const {
  if (layers_ != topo.num_layers || logical_ != topo.num_logical || slots_ != topo.num_slots)
    throw std::invalid_argument(std::string(what) + ": placement shape L=" +
                                std::to_string(layers_) + " E=" + std::to_string(logical_) +
                                " R=" + std::to_string(slots_) + " does not match topology " +
                                topo.describe());
}

void Placement::derive() {
  if (layers_ < 0 || logical_ < 1 || slots_ < logical_)
    throw std::invalid_argument("placement: bad shape L=" + std::to_string(layers_) +
                                " E=" + std::to_string(logical_) + " R=" + std::to_string(slots_) +
                                " (need E >= 1, R >= E)");
  logcnt_.assign(static_cast<std::size_t>(layers_) * logical_, 0);
  for (int l = 0; l < layers_; ++l) {
    int* cnt = logcnt_.data() + static_cast<std::size_t>(l) * logical_;
    const int* row = phy2log_.data() + static_cast<std::size_t>(l) * slots_;
    for (int j = 0; j < slots_; ++j) {
      const int e = row[j];
      if (e < 0 || e >= logical_)
        throw std::invalid_argument("placement: phy2log[" + std::to_string(l) + "][" +
                                    std::to_string(j) + "] = " + std::to_string(e) +
                                    " is outside [0, " + std::to_string(logical_) + ")");
      ++cnt[e];
    }
    for (int e = 0; e < logical_; ++e)
      if (cnt[e] == 0)
        throw std::invalid_argument("placement: layer " + std::to_string(l) +
                                    " has no replica of logical expert " + std::to_string(e));
  }
  max_replicas_ = layers_ ? *std::max_element(logcnt_.begin(), logcnt_.end()) : 0;
  log2phy_.assign(static_cast<std::size_t>(layers_) * logical_ * max_replicas_, -1);
  for (int l = 0; l < layers_; ++l) {
    const int* row = phy2log_.data() + static_cast<std::size_t>(l) * slots_;
    int* base = log2phy_.data() + static_cast<std::size_t>(l) * logical_ * max_replicas_;
    // Slots are visited in ascending order, so each expert's list comes out ascending;
    // the running fill count reuses the -1 padding as "end of list".
    for (int j = 0; j < slots_; ++j) {
      int* list = base + static_cast<std::size_t>(row[j]) * max_replicas_;
      int n = 0;
      while (list[n] != -1) ++n;
      list[n] = j;
    }
  }
}

}  // namespace eplb::algo
