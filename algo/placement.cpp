#include "eplb/algo/placement.hpp"

#include "eplb/algo/simd.hpp"

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
  derive(false);
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
  derive(false);
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

void Placement::derive(bool counted) {
  try {
    derive_maps(counted);
  } catch (...) {  // the new shape and arrays are in, the maps half rebuilt: leave it empty
    layers_ = logical_ = slots_ = max_replicas_ = 0;
    phy2log_.clear();
    logcnt_.clear();
    log2phy_.clear();
    throw;
  }
}

void Placement::derive_maps(bool counted) {
  if (layers_ < 0 || logical_ < 1 || slots_ < logical_)
    throw std::invalid_argument("placement: bad shape L=" + std::to_string(layers_) +
                                " E=" + std::to_string(logical_) + " R=" + std::to_string(slots_) +
                                " (need E >= 1, R >= E)");
  // Validity is checked with branch-free passes; on a failure the layer-by-layer walk in
  // throw_first_error_of() names the same first problem as a sequential check would.
  if (!phy2log_.empty()) {
    int lo = 0, hi = 0;
    detail::min_max(phy2log_.data(), phy2log_.size(), lo, hi);
    if (lo < 0 || hi >= logical_) throw_first_error_of(phy2log_, layers_, logical_, slots_);
  }
  if (!counted) {
    logcnt_.assign(static_cast<std::size_t>(layers_) * logical_, 0);
    for (int l = 0; l < layers_; ++l) {
      int* cnt = logcnt_.data() + static_cast<std::size_t>(l) * logical_;
      const int* row = phy2log_.data() + static_cast<std::size_t>(l) * slots_;
      for (int j = 0; j < slots_; ++j) ++cnt[row[j]];
    }
  }
  int min_cnt = 1, max_cnt = 0;
  if (layers_ > 0) detail::min_max(logcnt_.data(), logcnt_.size(), min_cnt, max_cnt);
  if (min_cnt <= 0) {
    if (counted) throw std::logic_error("placement: a given replica count is < 1");
    throw_first_error_of(phy2log_, layers_, logical_, slots_);
  }
  max_replicas_ = max_cnt;
  const std::size_t X = static_cast<std::size_t>(max_replicas_);
  log2phy_.resize(static_cast<std::size_t>(layers_) * logical_ * X);
  // Slots are visited in ascending order, so each expert's list comes out ascending. A
  // layer's block is padded with -1 right before it is filled (while it is in cache). The fill
  // positions must end equal to the counts (given counts may be wrong); a position past the
  // expert's last entry is clamped to it, so wrong counts never write outside the expert's row.
  scratch_.resize(static_cast<std::size_t>(logical_));
  int* pos = scratch_.data();
  for (int l = 0; l < layers_; ++l) {
    const int* row = phy2log_.data() + static_cast<std::size_t>(l) * slots_;
    const int* cnt = logcnt_.data() + static_cast<std::size_t>(l) * logical_;
    int* base = log2phy_.data() + static_cast<std::size_t>(l) * logical_ * X;
    std::fill_n(pos, logical_, 0);
    detail::fill_cached(base, logical_ * X, -1);
    for (int j = 0; j < slots_; ++j) {
      const int e = row[j];
      const int c = pos[e];
      base[static_cast<std::size_t>(e) * X + std::min(c, max_replicas_ - 1)] = j;
      pos[e] = c + 1;
    }
    unsigned bad = 0;
    for (int e = 0; e < logical_; ++e) bad |= static_cast<unsigned>(pos[e] != cnt[e]);
    if (bad)
      throw std::logic_error("placement: layer " + std::to_string(l) +
                             ": replica counts disagree with phy2log");
  }
}

void Placement::set_counted_shape(int num_layers, int num_logical, int num_slots,
                                  std::size_t phy2log_size, std::size_t logcnt_size) {
  if (phy2log_size != static_cast<std::size_t>(num_layers) * std::max(num_slots, 0) ||
      logcnt_size != static_cast<std::size_t>(num_layers) * std::max(num_logical, 0))
    throw std::invalid_argument("placement: phy2log or logcnt has the wrong size");
  layers_ = num_layers;
  logical_ = num_logical;
  slots_ = num_slots;
}

void Placement::adopt_counted(int num_layers, int num_logical, int num_slots,
                              std::vector<int>& phy2log, std::vector<int>& logcnt) {
  set_counted_shape(num_layers, num_logical, num_slots, phy2log.size(), logcnt.size());
  phy2log_.swap(phy2log);
  logcnt_.swap(logcnt);
  derive(true);
}

void Placement::assign_counted(int num_layers, int num_logical, int num_slots,
                               std::span<const int> phy2log, std::span<const int> logcnt) {
  set_counted_shape(num_layers, num_logical, num_slots, phy2log.size(), logcnt.size());
  phy2log_.assign(phy2log.begin(), phy2log.end());
  logcnt_.assign(logcnt.begin(), logcnt.end());
  derive(true);
}

}  // namespace eplb::algo
