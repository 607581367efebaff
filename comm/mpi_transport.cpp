#include "comm/mpi_transport.hpp"

#include <algorithm>
#include <cstring>
#include <new>

namespace eplb::comm {
namespace {
constexpr std::size_t kMaxMessage = std::size_t{1} << 30;
constexpr int kTag = 0x3e9b;
}  // namespace

MpiHostTransport::~MpiHostTransport() {
  // Only reachable with requests in flight when an exception unwound a migration: cancel is
  // not reliable for sends, so wait (the peers post the matching calls too).
  if (!requests_.empty() &&
      MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE) !=
          MPI_SUCCESS)
    detail::log_error("MPI_Waitall failed in ~MpiHostTransport");
}

void MpiHostTransport::begin_batch() {
  if (!requests_.empty()) throw Error("MpiHostTransport: begin_batch() with a batch open");
}

void MpiHostTransport::post(bool is_send, std::byte* buf, std::size_t bytes, int peer) {
  // Messages over kMaxMessage are split (MPI counts are int); a 0-byte message is still one.
  std::size_t off = 0;
  do {
    const int n = static_cast<int>(std::min(kMaxMessage, bytes - off));
    requests_.push_back(MPI_REQUEST_NULL);
    if (is_send)
      EPLB_MPI_CHECK(MPI_Isend(buf + off, n, MPI_BYTE, peer, kTag, comm_.get(), &requests_.back()));
    else
      EPLB_MPI_CHECK(MPI_Irecv(buf + off, n, MPI_BYTE, peer, kTag, comm_.get(), &requests_.back()));
    off += static_cast<std::size_t>(n);
  } while (off < bytes);
}

void MpiHostTransport::send(const std::byte* buf, std::size_t bytes, int peer) {
  post(true, const_cast<std::byte*>(buf), bytes, peer);  // MPI_Isend takes const void*
}

void MpiHostTransport::recv(std::byte* buf, std::size_t bytes, int peer) { post(false, buf, bytes, peer); }

void MpiHostTransport::end_batch() {
  std::vector<MPI_Request> reqs;
  reqs.swap(requests_);
  if (!reqs.empty())
    EPLB_MPI_CHECK(MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
}

void MpiHostTransport::copy(std::byte* dst, const std::byte* src, std::size_t bytes, Lane lane) {
  if (defer_ && lane == Lane::copy)
    deferred_.push_back({dst, src, bytes});
  else
    std::memmove(dst, src, bytes);
}

void MpiHostTransport::copy_all(std::span<const CopyOp> ops, Lane lane) {
  if (!defer_) return Transport::copy_all(ops, lane);
  for (auto it = ops.rbegin(); it != ops.rend(); ++it) copy(it->dst, it->src, it->bytes, lane);
}

Transport::Mark MpiHostTransport::mark(Lane lane) {
  // Transfer-lane work is complete when issued (end_batch waits); a copy-lane mark is the
  // number of copy-lane copies issued so far.
  return lane == Lane::copy ? static_cast<Mark>(deferred_done_ + deferred_.size()) : 0;
}

void MpiHostTransport::wait(Lane lane, Mark m) {
  if (lane == Lane::transfer) run_deferred(static_cast<std::size_t>(m));
}

void MpiHostTransport::synchronize() { run_deferred(deferred_done_ + deferred_.size()); }

void MpiHostTransport::run_deferred(std::size_t upto) {
  if (upto <= deferred_done_) return;
  const std::size_t n = std::min(upto - deferred_done_, deferred_.size());
  for (std::size_t i = 0; i < n; ++i) std::memmove(deferred_[i].dst, deferred_[i].src, deferred_[i].bytes);
  deferred_.erase(deferred_.begin(), deferred_.begin() + static_cast<std::ptrdiff_t>(n));
  deferred_done_ += n;
}

Buffer MpiHostTransport::allocate(std::size_t bytes) {
  auto* p = static_cast<std::byte*>(::operator new(bytes ? bytes : 1, std::align_val_t{256}));
  return Buffer(p, [](std::byte* q) { ::operator delete(q, std::align_val_t{256}); });
}

}  // namespace eplb::comm
