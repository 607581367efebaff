#include "eplb/runtime/load_window.hpp"

#include <climits>
#include <cmath>
#include <stdexcept>

namespace eplb::runtime {

LoadWindow::LoadWindow(int num_layers, int num_logical, int window_passes, bool skip_negative_ids)
    : layers_(num_layers), logical_(num_logical), window_(window_passes), skip_negative_(skip_negative_ids) {
  if (num_layers < 1 || num_logical < 1 || window_passes < 1)
    throw std::invalid_argument("LoadWindow: num_layers, num_logical and window_passes must be >= 1");
  const std::size_t wl = static_cast<std::size_t>(window_) * static_cast<std::size_t>(layers_);  // < 2^62
  if (wl > ring_.max_size() / static_cast<std::size_t>(logical_))
    throw std::invalid_argument("LoadWindow: window_passes x num_layers x num_logical (" +
                                std::to_string(window_) + " x " + std::to_string(layers_) + " x " +
                                std::to_string(logical_) + ") counters are more than memory can hold");
  ring_.assign(wl * static_cast<std::size_t>(logical_), 0);
}

bool LoadWindow::accept_call(int layer, std::size_t size, std::size_t expected, const char* what) {
  if (layer < 0 || layer >= layers_) {
    reject(std::string(what) + ": layer " + std::to_string(layer) + " outside [0, " +
           std::to_string(layers_) + "); nothing was counted");
    return false;
  }
  if (expected != 0 && size != expected) {
    reject(std::string(what) + ": " + std::to_string(size) + " counts for layer " +
           std::to_string(layer) + ", expected E = " + std::to_string(expected) +
           "; nothing was counted");
    return false;
  }
  return true;
}

void LoadWindow::reject(std::string message) {
  if (!error_) error_ = std::move(message);
}

template <class T>
int LoadWindow::record_impl(int layer, std::span<const T> ids) {
  if (!accept_call(layer, ids.size(), 0, "LoadWindow::record")) return -1;
  long long bad = 0, skipped = 0;
  std::size_t first_bad = 0;
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= logical_) {
      if (skip_negative_ && ids[i] < 0) ++skipped;
      else if (bad++ == 0) first_bad = i;
    }
  if (bad) {
    reject("topk_ids of layer " + std::to_string(layer) + ": " + std::to_string(bad) +
           " expert id(s) outside [0, " + std::to_string(logical_) + "), first " +
           std::to_string(static_cast<long long>(ids[first_bad])) + " at flat index " +
           std::to_string(first_bad) + "; the batch was not counted");
    return bad < INT_MAX ? static_cast<int>(bad) : INT_MAX;
  }
  std::int64_t* c = current(layer);
  if (skipped) {
    for (const T id : ids)
      if (id >= 0) ++c[id];
  } else {
    for (const T id : ids) ++c[id];
  }
  return 0;
}

int LoadWindow::record(int layer, std::span<const std::int32_t> ids) { return record_impl(layer, ids); }
int LoadWindow::record(int layer, std::span<const std::int64_t> ids) { return record_impl(layer, ids); }

bool LoadWindow::add_counts(int layer, std::span<const std::int64_t> counts) {
  if (!accept_call(layer, counts.size(), static_cast<std::size_t>(logical_), "LoadWindow::add_counts"))
    return false;
  std::int64_t* c = current(layer);
  for (std::size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] < 0) {
      reject("negative load " + std::to_string(counts[e]) + " for layer " + std::to_string(layer) +
             ", expert " + std::to_string(e) + "; the counts were not added");
      return false;
    }
    if (!fits(c[e], counts[e], layer, e)) return false;
  }
  for (std::size_t e = 0; e < counts.size(); ++e) c[e] += counts[e];
  return true;
}

bool LoadWindow::fits(std::int64_t have, std::int64_t add, int layer, std::size_t e) {
  if (add <= kMaxCount - have) return true;  // have <= kMaxCount: no overflow
  reject("load " + std::to_string(add) + " for layer " + std::to_string(layer) + ", expert " +
         std::to_string(e) + " would take this pass's count past 2^62 (" + std::to_string(have) +
         " so far); the counts were not added");
  return false;
}

bool LoadWindow::add_counts(int layer, std::span<const double> counts) {
  if (!accept_call(layer, counts.size(), static_cast<std::size_t>(logical_), "LoadWindow::add_counts"))
    return false;
  for (std::size_t e = 0; e < counts.size(); ++e) {
    const double v = counts[e];
    if (!std::isfinite(v) || v < 0 || v > static_cast<double>(kMaxCount)) {
      const char* what = std::isnan(v) ? "NaN" : (std::isinf(v) ? "infinite" : (v < 0 ? "negative" : "too large"));
      reject(std::string(what) + " load " + std::to_string(v) + " for layer " +
             std::to_string(layer) + ", expert " + std::to_string(e) +
             "; the counts were not added");
      return false;
    }
  }
  std::int64_t* c = current(layer);
  for (std::size_t e = 0; e < counts.size(); ++e)
    if (!fits(c[e], std::llround(counts[e]), layer, e)) return false;
  for (std::size_t e = 0; e < counts.size(); ++e) c[e] += std::llround(counts[e]);
  return true;
}

void LoadWindow::end_pass() {
  cursor_ = (cursor_ + 1) % window_;
  std::int64_t* c = ring_.data() + static_cast<std::size_t>(cursor_) * layers_ * logical_;
  std::fill(c, c + static_cast<std::size_t>(layers_) * logical_, 0);
}

void LoadWindow::sum(std::span<std::int64_t> out) const {
  const std::size_t n = static_cast<std::size_t>(layers_) * logical_;
  if (out.size() != n) throw std::invalid_argument("LoadWindow::sum: output is not [L][E]");
  std::fill(out.begin(), out.end(), 0);
  for (int w = 0; w < window_; ++w) {
    const std::int64_t* c = ring_.data() + static_cast<std::size_t>(w) * n;
    for (std::size_t i = 0; i < n; ++i) out[i] = algo::saturating_count_sum(out[i], c[i]);
  }
}

std::optional<std::string> LoadWindow::take_error() {
  auto e = std::move(error_);
  error_.reset();
  return e;
}

void LoadWindow::restore(std::span<const std::int64_t> ring, int cursor) {
  if (ring.size() != ring_.size())
    throw std::invalid_argument("LoadWindow::restore: window has " + std::to_string(ring.size()) +
                                " counts, expected W*L*E = " + std::to_string(ring_.size()));
  if (cursor < 0 || cursor >= window_)
    throw std::invalid_argument("LoadWindow::restore: cursor " + std::to_string(cursor) +
                                " outside [0, " + std::to_string(window_) + ")");
  if (const auto e = algo::check_count_ring(ring, static_cast<std::size_t>(window_),
                                             static_cast<std::size_t>(layers_), static_cast<std::size_t>(logical_)))
    throw std::invalid_argument("LoadWindow::restore: " + *e);
  ring_.assign(ring.begin(), ring.end());
  cursor_ = cursor;
}

}  // namespace eplb::runtime
