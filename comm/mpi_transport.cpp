#include "eplb/comm/mpi_transport.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <string>

namespace eplb::comm {
namespace {
constexpr std::size_t kMaxMessage = std::size_t{1} << 30;
constexpr int kTag = 0x3e9b;
}  // namespace

double host_transfer_timeout_seconds() { return seconds_from_env("EPLB_TRANSFER_TIMEOUT_S", 120.0); }

MpiHostTransport::~MpiHostTransport() {
  // Only reachable with requests in flight when an exception unwound a migration: wait for
  // them (the peers post the matching calls too), bounded; then give them up. Never throws.
  try {
    if (!requests_.empty() && !wait_bounded(requests_, recv_, false))
      detail::log_error("~MpiHostTransport: requests of an unfinished batch did not complete; released");
  } catch (const std::exception& e) {
    detail::log_error(std::string("~MpiHostTransport: ") + e.what());
  }
}

bool MpiHostTransport::wait_bounded(std::vector<MPI_Request>& reqs, const std::vector<char>& is_recv,
                                    bool throw_on_timeout) {
  // MPI_Testall in a loop (as MPI_Waitall polls internally), the clock read every 256 tests.
  const auto t0 = std::chrono::steady_clock::now();
  const int n = static_cast<int>(reqs.size());
  try {
    for (unsigned spin = 1;; ++spin) {
      int done = 0;
      EPLB_MPI_CHECK(MPI_Testall(n, reqs.data(), &done, MPI_STATUSES_IGNORE));
      if (done) return true;
      if (spin % 256 == 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s_)
        break;
    }
  } catch (...) {  // MPI_Testall failed: the requests must not outlive the error either
    release(reqs, is_recv);
    throw;
  }
  release(reqs, is_recv);  // a peer never posted its side
  if (!throw_on_timeout) return false;
  throw Error("[rank " + std::to_string(comm_.rank()) + "] MPI transfers of a migration batch did "
              "not complete within " + std::to_string(timeout_s_) + " s (a peer failed or hangs; "
              "EPLB_TRANSFER_TIMEOUT_S); the weights are partly moved");
}

void MpiHostTransport::release(std::vector<MPI_Request>& reqs, const std::vector<char>& is_recv) noexcept {
  // A receive is cancelled and then waited for, which the MPI standard makes local: afterwards
  // nothing writes into its buffer. Sends often cannot be cancelled (Open MPI): they are
  // released, and since such a send could still match a later receive of this communicator,
  // the transport refuses further batches (broken_).
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    MPI_Request& r = reqs[i];
    if (r == MPI_REQUEST_NULL) continue;
    if (is_recv[i]) {
      (void)MPI_Cancel(&r);
      (void)MPI_Wait(&r, MPI_STATUS_IGNORE);
    } else {
      (void)MPI_Request_free(&r);
    }
  }
  reqs.clear();
  broken_ = true;
  receiving_.clear();  // late delivery: this batch's receives never reach their destinations
}

void MpiHostTransport::begin_batch() {
  if (broken_)
    throw Error("MpiHostTransport: an earlier batch timed out (its unmatched sends may still "
                "arrive): this transport moves no more weights");
  if (!requests_.empty()) throw Error("MpiHostTransport: begin_batch() with a batch open");
}

void MpiHostTransport::post(bool is_send, std::byte* buf, std::size_t bytes, int peer) {
  // Messages over kMaxMessage are split (MPI counts are int); a 0-byte message is still one.
  std::size_t off = 0;
  do {
    const int n = static_cast<int>(std::min(kMaxMessage, bytes - off));
    requests_.push_back(MPI_REQUEST_NULL);
    recv_.push_back(is_send ? 0 : 1);
    if (is_send)
      EPLB_MPI_CHECK(MPI_Isend(buf + off, n, MPI_BYTE, peer, kTag, comm_.get(), &requests_.back()));
    else
      EPLB_MPI_CHECK(MPI_Irecv(buf + off, n, MPI_BYTE, peer, kTag, comm_.get(), &requests_.back()));
    off += static_cast<std::size_t>(n);
  } while (off < bytes);
}

void MpiHostTransport::send(const std::byte* buf, std::size_t bytes, int peer) {
  deliver(delivered_ + undelivered_.size());  // earlier batches' receives come first
  post(true, const_cast<std::byte*>(buf), bytes, peer);  // MPI_Isend takes const void*
}

void MpiHostTransport::recv(std::byte* buf, std::size_t bytes, int peer) {
  if (!late_delivery_) return post(false, buf, bytes, peer);
  receiving_.push_back({buf, std::vector<std::byte>(bytes)});
  post(false, receiving_.back().bytes.data(), bytes, peer);
}

void MpiHostTransport::end_batch() {
  // The request lists are emptied on every path (a timeout releases the requests and
  // throws) and keep their storage for the next batch.
  try {
    if (!requests_.empty()) (void)wait_bounded(requests_, recv_, true);
  } catch (...) {
    requests_.clear();
    recv_.clear();
    throw;
  }
  requests_.clear();
  recv_.clear();
  if (late_delivery_) undelivered_.push_back(std::move(receiving_));
  receiving_.clear();
}

void MpiHostTransport::reserve(std::size_t messages, std::size_t /*copies*/, std::size_t /*marks*/) {
  requests_.reserve(messages);
  recv_.reserve(messages);
}

void MpiHostTransport::deliver(std::size_t upto) {
  while (delivered_ < upto && !undelivered_.empty()) {
    for (auto& d : undelivered_.front()) std::memcpy(d.dst, d.bytes.data(), d.bytes.size());
    undelivered_.erase(undelivered_.begin());
    ++delivered_;
  }
}

void MpiHostTransport::copy(std::byte* dst, const std::byte* src, std::size_t bytes, Lane lane) {
  if (defer_ && lane == Lane::copy) {
    deferred_.push_back({dst, src, bytes});
    return;
  }
  if (lane == Lane::transfer) deliver(delivered_ + undelivered_.size());  // lane order
  std::memmove(dst, src, bytes);
}

void MpiHostTransport::copy_all(std::span<const CopyOp> ops, Lane lane) {
  if (!defer_) return Transport::copy_all(ops, lane);
  for (auto it = ops.rbegin(); it != ops.rend(); ++it) copy(it->dst, it->src, it->bytes, lane);
}

Transport::Mark MpiHostTransport::mark(Lane lane) {
  // A copy-lane mark is the number of copy-lane copies issued so far; a transfer-lane mark
  // the number of batches ended so far (complete at once unless delivered late).
  if (lane == Lane::copy) return static_cast<Mark>(deferred_done_ + deferred_.size());
  return static_cast<Mark>(delivered_ + undelivered_.size());
}

void MpiHostTransport::wait(Lane lane, Mark m) {
  if (lane == Lane::transfer)
    run_deferred(static_cast<std::size_t>(m));
  else
    deliver(static_cast<std::size_t>(m));
}

void MpiHostTransport::synchronize() {
  deliver(delivered_ + undelivered_.size());
  run_deferred(deferred_done_ + deferred_.size());
}

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
