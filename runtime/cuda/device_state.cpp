#include "eplb/runtime/cuda/device_state.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace eplb::runtime::cuda {

DeviceLoadWindow::DeviceLoadWindow(int num_layers, int num_logical, int window_passes,
                                   comm::cuda_stream stream, bool skip_negative_ids)
    : layers_(num_layers), logical_(num_logical), window_(window_passes), stream_(stream),
      skip_negative_(skip_negative_ids) {
  if (num_layers < 1 || num_logical < 1 || window_passes < 1)
    throw std::invalid_argument("DeviceLoadWindow: num_layers, num_logical, window_passes must be >= 1");
  const std::size_t n = static_cast<std::size_t>(layers_) * logical_;
  ring_ = comm::DeviceBuffer(n * window_ * sizeof(unsigned long long));
  errors_ = comm::DeviceBuffer(sizeof(unsigned long long));
  sum_ = comm::DeviceBuffer((n + 1) * sizeof(long long));
  host_ = comm::PinnedBuffer((n + 1) * sizeof(long long));
  comm::memset_async(ring_.get(), 0, ring_.size(), stream_);
  comm::memset_async(errors_.get(), 0, errors_.size(), stream_);
}

unsigned long long* DeviceLoadWindow::counts(int layer) const {
  return ring_.as<unsigned long long>() +
         (static_cast<std::size_t>(cursor_) * layers_ + layer) * logical_;
}

void DeviceLoadWindow::route_and_count(int layer, const void* topk_ids, bool ids_are_int64,
                                       long long n, const DeviceLayerMaps& maps, int local_begin,
                                       int local_end, int* slots_out) const {
  if (layer < 0 || layer >= layers_)
    throw std::invalid_argument("DeviceLoadWindow::route_and_count: layer " + std::to_string(layer) +
                                " outside [0, " + std::to_string(layers_) + ")");
  if (maps.num_logical != logical_)
    throw std::invalid_argument("DeviceLoadWindow::route_and_count: maps of " +
                                std::to_string(maps.num_logical) + " experts, the window counts " +
                                std::to_string(logical_));
  EPLB_CUDA_CHECK(launch_route_and_count(topk_ids, ids_are_int64, n, maps, local_begin, local_end,
                                         slots_out, counts(layer), errors(), stream_, skip_negative_));
}

void DeviceLoadWindow::reset_errors() {
  // Only once the count has reached the host: after a wait that timed out, the counter keeps
  // its ids for the next rebalance to report (a reset queued before the wait would run once
  // the stream moves again, and those ids would be lost). Every kernel queued before is done,
  // and nothing is queued in between (one thread), so no id is counted twice or dropped.
  comm::memset_async(errors_.get(), 0, sizeof(unsigned long long), stream_);
}

std::optional<std::string> DeviceLoadWindow::collect(std::span<std::int64_t> out) {
  const std::size_t n = static_cast<std::size_t>(layers_) * logical_;
  if (out.size() != n) throw std::invalid_argument("DeviceLoadWindow::collect: output is not [L][E]");
  auto* sum = sum_.as<long long>();
  EPLB_CUDA_CHECK(launch_window_sum(ring_.as<unsigned long long>(), window_,
                                    static_cast<long long>(n), sum, stream_));
  comm::copy_async(sum + n, errors_.get(), sizeof(long long), stream_);
  comm::copy_async(host_.get(), sum, (n + 1) * sizeof(long long), stream_);  // the one D2H copy
  comm::wait_stream(stream_, "DeviceLoadWindow::collect (the window's sum and its copy to the host)");
  reset_errors();
  const auto* h = host_.as<long long>();
  std::copy(h, h + n, out.begin());
  if (h[n] != 0)
    return std::to_string(h[n]) + " expert id(s) in topk_ids outside [0, " +
           std::to_string(logical_) + ") since the last rebalance (device error counter); they "
           "were not counted";
  return std::nullopt;
}

std::int64_t* DeviceLoadWindow::reduce_on_device(std::optional<std::string>& error) {
  const std::size_t n = static_cast<std::size_t>(layers_) * logical_;
  auto* sum = sum_.as<long long>();
  EPLB_CUDA_CHECK(launch_window_sum(ring_.as<unsigned long long>(), window_,
                                    static_cast<long long>(n), sum, stream_));
  comm::copy_async(host_.as<long long>() + n, errors_.get(), sizeof(long long), stream_);
  comm::wait_stream(stream_, "DeviceLoadWindow::reduce_on_device (the window's sum)");  // complete before MPI reads it
  reset_errors();
  const long long bad = host_.as<long long>()[n];
  if (bad != 0)
    error = std::to_string(bad) + " expert id(s) in topk_ids outside [0, " +
            std::to_string(logical_) + ") since the last rebalance (device error counter); they "
            "were not counted";
  return reinterpret_cast<std::int64_t*>(sum);
}

void DeviceLoadWindow::download_reduced(std::span<std::int64_t> out) {
  const std::size_t n = static_cast<std::size_t>(layers_) * logical_;
  if (out.size() != n) throw std::invalid_argument("DeviceLoadWindow::download_reduced: output is not [L][E]");
  // Through the pinned buffer: cudaMemcpyAsync into pageable memory returns only when the copy
  // has run, so a stuck stream would hold the host there, out of reach of the bounded wait.
  comm::copy_async(host_.get(), sum_.get(), n * sizeof(long long), stream_);
  comm::wait_stream(stream_, "DeviceLoadWindow::download_reduced (the reduced load's copy to the host)");
  std::memcpy(out.data(), host_.get(), n * sizeof(long long));
}

void DeviceLoadWindow::end_pass() {
  cursor_ = (cursor_ + 1) % window_;
  comm::memset_async(counts(0), 0,
                     static_cast<std::size_t>(layers_) * logical_ * sizeof(unsigned long long), stream_);
}

void DeviceLoadWindow::download_ring(std::span<std::int64_t> ring, int& cursor) const {
  const std::size_t n = static_cast<std::size_t>(layers_) * logical_;
  if (ring.size() != static_cast<std::size_t>(window_) * n)
    throw std::invalid_argument("DeviceLoadWindow::download_ring: wrong size");
  // One pass at a time through the pinned buffer (see download_reduced); a checkpoint's cost.
  for (int w = 0; w < window_; ++w) {
    comm::copy_async(host_.get(), ring_.as<unsigned long long>() + w * n, n * sizeof(long long), stream_);
    comm::wait_stream(stream_, "DeviceLoadWindow::download_ring (the counters' copy to the host)");
    std::memcpy(ring.data() + w * n, host_.get(), n * sizeof(long long));
  }
  cursor = cursor_;
}

void DeviceLoadWindow::upload_ring(std::span<const std::int64_t> ring, int cursor) {
  const std::size_t n = static_cast<std::size_t>(layers_) * logical_;
  if (ring.size() != static_cast<std::size_t>(window_) * n)
    throw std::invalid_argument("DeviceLoadWindow::upload_ring: wrong size");
  if (cursor < 0 || cursor >= window_)
    throw std::invalid_argument("DeviceLoadWindow::upload_ring: cursor outside [0, W)");
  // Counts are >= 0 (checked by the engine), so their int64 bytes are the uint64 counters'.
  // One pass at a time through the pinned buffer, each copy complete before the buffer is
  // refilled (and before the caller's buffer may go away). First, copies into the buffer that
  // a timed-out wait left queued must be done before the host writes it.
  comm::wait_stream(stream_, "DeviceLoadWindow::upload_ring (work queued before it)");
  for (int w = 0; w < window_; ++w) {
    std::memcpy(host_.get(), ring.data() + w * n, n * sizeof(long long));
    comm::copy_async(ring_.as<unsigned long long>() + w * n, host_.get(), n * sizeof(long long), stream_);
    comm::wait_stream(stream_, "DeviceLoadWindow::upload_ring (the counters' copy to the device)");
  }
  cursor_ = cursor;
}

DeviceMaps::DeviceMaps(const algo::Topology& topo, const algo::Placement& initial,
                       comm::cuda_stream stream)
    : layers_(topo.num_layers),
      logical_(topo.num_logical),
      xcap_(topo.num_slots - topo.num_logical + 1),
      stride_(static_cast<std::size_t>(topo.num_layers), 1),
      stream_(stream) {
  initial.check_shape(topo, "DeviceMaps");
  const std::size_t le = static_cast<std::size_t>(layers_) * logical_;
  log2phy_ = comm::DeviceBuffer(le * xcap_ * sizeof(int));
  logcnt_ = comm::DeviceBuffer(le * sizeof(int));
  host_log2phy_ = comm::PinnedBuffer(le * xcap_ * sizeof(int));
  host_logcnt_ = comm::PinnedBuffer(le * sizeof(int));
  reset(initial);
}

void DeviceMaps::reset(const algo::Placement& placement) {
  check_shape(placement, "DeviceMaps::reset");
  stuck_ = true;  // until both waits below have returned
  comm::wait_stream(stream_, "DeviceMaps::reset (earlier map uploads)");  // copies out of the pinned mirror are done
  stage(placement);
  for (int l = 0; l < layers_; ++l) commit_layer(l);
  comm::wait_stream(stream_, "DeviceMaps::reset (the maps' upload)");
  stuck_ = false;
}

DeviceLayerMaps DeviceMaps::layer(int l) const {
  return {log2phy_.as<int>() + static_cast<std::size_t>(l) * logical_ * xcap_,
          logcnt_.as<int>() + static_cast<std::size_t>(l) * logical_, logical_,
          stride_[static_cast<std::size_t>(l)]};
}

void DeviceMaps::stage(const algo::Placement& p) {
  // The pinned mirror is only rewritten after the previous migration's copies completed
  // (execute_migration ends with a stream synchronisation). The placement's own log2phy
  // rows (stride X, -1 padded) are copied as they are: for V3 (X = 9 against Xcap = 33) a
  // quarter of the bytes of a full-capacity mirror, written in order.
  const int X = p.max_replicas();
  const std::size_t row = static_cast<std::size_t>(logical_) * X;
  int* l2p = host_log2phy_.as<int>();
  for (int l = 0; l < layers_; ++l) {
    const int* from = p.log2phy().data() + static_cast<std::size_t>(l) * row;
    std::copy(from, from + row, l2p + static_cast<std::size_t>(l) * logical_ * xcap_);
  }
  std::copy(p.logcnt().begin(), p.logcnt().end(), host_logcnt_.as<int>());
  staged_x_ = X;
}

void DeviceMaps::check_shape(const algo::Placement& p, const char* what) const {
  if (p.num_layers() != layers_ || p.num_logical() != logical_ || p.num_slots() != xcap_ + logical_ - 1)
    throw std::invalid_argument(std::string(what) + ": placement shape L=" + std::to_string(p.num_layers()) +
                                " E=" + std::to_string(p.num_logical()) + " R=" + std::to_string(p.num_slots()) +
                                " differs from the maps' L=" + std::to_string(layers_) + " E=" +
                                std::to_string(logical_) + " R=" + std::to_string(xcap_ + logical_ - 1));
}

void DeviceMaps::prepare(const algo::Placement& next) {
  check_shape(next, "DeviceMaps::prepare");  // before the pinned mirror is written
  if (stuck_) {  // after a timed-out reset(): its copies out of the mirror may still be queued
    comm::wait_stream(stream_, "DeviceMaps::prepare (map uploads queued before a timed-out reset)");
    stuck_ = false;
  }
  stage(next);
}

void DeviceMaps::commit_layer(int l) {
  if (l < 0 || l >= layers_)
    throw std::invalid_argument("DeviceMaps::commit_layer: layer " + std::to_string(l) +
                                " outside [0, " + std::to_string(layers_) + ")");
  // Kernels enqueued after this copy (same stream) read the new rows with the new stride;
  // those enqueued before it read the old ones.
  const std::size_t off = static_cast<std::size_t>(l) * logical_;
  comm::copy_async(log2phy_.as<int>() + off * xcap_, host_log2phy_.as<int>() + off * xcap_,
                   static_cast<std::size_t>(logical_) * staged_x_ * sizeof(int), stream_);
  comm::copy_async(logcnt_.as<int>() + off, host_logcnt_.as<int>() + off,
                   static_cast<std::size_t>(logical_) * sizeof(int), stream_);
  stride_[static_cast<std::size_t>(l)] = staged_x_;
}

}  // namespace eplb::runtime::cuda
