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

namespace {
/// The first invalid entry of phy2log, layer by layer (values outside [0, E) in slot order,
/// then experts without a replica), as std::invalid_argument.
[[noreturn]] void throw_first_error_of(const std::vector<int>& phy2log, int layers, int logical,
                                       int slots) {
  std::vector<int> cnt(static_cast<std::size_t>(logical));
  for (int l = 0; l < layers; ++l) {
    std::fill(cnt.begin(), cnt.end(), 0);
    const int* row = phy2log.data() + static_cast<std::size_t>(l) * slots;
    for (int j = 0; j < slots; ++j) {
      const int e = row[j];
      if (e < 0 || e >= logical)
        throw std::invalid_argument("placement: phy2log[" + std::to_string(l) + "][" +
                                    std::to_string(j) + "] = " + std::to_string(e) +
                                    " is outside [0, " + std::to_string(logical) + ")");
      ++cnt[e];
    }
    for (int e = 0; e < logical; ++e)
      if (cnt[e] == 0)
        throw std::invalid_argument("placement: layer " + std::to_string(l) +
                                    " has no replica of logical expert " + std::to_string(e));
  }
  throw std::logic_error("placement: validity check disagrees with itself");
}
}  // namespace

void Placement::derive() {
  if (layers_ < 0 || logical_ < 1 || slots_ < logical_)
    throw std::invalid_argument("placement: bad shape L=" + std::to_string(layers_) +
                                " E=" + std::to_string(logical_) + " R=" + std::to_string(slots_) +
                                " (need E >= 1, R >= E)");
  // Validity is checked with branch-free passes; on a failure the layer-by-layer walk in
  // throw_first_error_of() names the same first problem as a sequential check would.
  // Two passes over phy2log in all: range check + counts, then the log2phy fill.
  unsigned out_of_range = 0;
  for (const int e : phy2log_)
    out_of_range |= static_cast<unsigned>(e) >= static_cast<unsigned>(logical_);
  if (out_of_range) throw_first_error_of(phy2log_, layers_, logical_, slots_);
  logcnt_.assign(static_cast<std::size_t>(layers_) * logical_, 0);
  for (int l = 0; l < layers_; ++l) {
    int* cnt = logcnt_.data() + static_cast<std::size_t>(l) * logical_;
    const int* row = phy2log_.data() + static_cast<std::size_t>(l) * slots_;
    for (int j = 0; j < slots_; ++j) ++cnt[row[j]];
  }
  int min_cnt = layers_ ? logcnt_[0] : 1, max_cnt = 0;
  for (const int c : logcnt_) {
    min_cnt = std::min(min_cnt, c);
    max_cnt = std::max(max_cnt, c);
  }
  if (min_cnt == 0) throw_first_error_of(phy2log_, layers_, logical_, slots_);
  max_replicas_ = max_cnt;
  const std::size_t X = static_cast<std::size_t>(max_replicas_);
  log2phy_.resize(static_cast<std::size_t>(layers_) * logical_ * X);
  // Slots are visited in ascending order, so each expert's list comes out ascending. A
  // layer's block is padded with -1 right before it is filled (while it is in cache);
  // fill positions live in a small per-layer array.
  fill_.resize(static_cast<std::size_t>(logical_));
  for (int l = 0; l < layers_; ++l) {
    const int* row = phy2log_.data() + static_cast<std::size_t>(l) * slots_;
    int* base = log2phy_.data() + static_cast<std::size_t>(l) * logical_ * X;
    std::fill_n(base, logical_ * X, -1);
    std::fill(fill_.begin(), fill_.end(), 0);
    int* pos = fill_.data();
    for (int j = 0; j < slots_; ++j) {
      const int e = row[j];
      base[static_cast<std::size_t>(e) * X + pos[e]++] = j;
    }
  }
}

}  // namespace eplb::algo
