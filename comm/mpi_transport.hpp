#pragma once
/// \file Host-memory transport over MPI non-blocking point-to-point.
#include <vector>

#include "eplb/comm/mpi.hpp"
#include "eplb/comm/transport.hpp"

namespace eplb::comm {

/// How MpiHostTransport runs its two lanes. Tests use the late modes so that a missing
/// mark()/wait() shows up as wrong bytes on the host, as it would on a GPU.
enum class HostLanes {
  /// Everything at once, in issue order: end_batch() waits for its messages.
  synchronous,
  /// Copy-lane copies run as late as the lane ordering allows (when the transfer lane waits
  /// for them, or at synchronize()); the copies of one copy_all() in reverse order.
  late_copy_lane,
  /// Received bytes land as late as the ordering allows: a batch's receives go to private
  /// buffers and reach their destinations only when the copy lane waits for that batch,
  /// before a later send or transfer-lane copy (lane order), or at synchronize(). Copies
  /// run at once. So a copy that reads received bytes without waiting reads stale ones.
  late_transfer_lane,
};

/// Seconds the MPI host transport waits for one batch's messages before giving up
/// (EPLB_TRANSFER_TIMEOUT_S, default 120; docs/ENVIRONMENT.md).
double host_transfer_timeout_seconds();

/// Isend/Irecv on the library's own communicator; end_batch() waits for all of them, for at
/// most `timeout_s`: a peer that failed before posting its side (and went on to the engine's
/// error agreement) makes the others throw Error after that long instead of waiting forever.
/// The batch's receives are then cancelled, its sends released, and the transport refuses
/// further batches: the weights are partly moved, and the job should end (MPI_Abort). Messages over 1 GiB are split. Receives match
/// sends by order per peer (one tag). Copies run at once, on either lane (synchronous mode).
class MpiHostTransport final : public Transport {
 public:
  /// Borrows comm (must outlive the transport).
  explicit MpiHostTransport(const MpiComm& comm, HostLanes lanes = HostLanes::synchronous,
                            double timeout_s = host_transfer_timeout_seconds())
      : comm_(comm), timeout_s_(timeout_s), defer_(lanes == HostLanes::late_copy_lane),
        late_delivery_(lanes == HostLanes::late_transfer_lane) {}
  ~MpiHostTransport() override;

  std::string_view name() const override { return "mpi-host"; }
  MemorySpace memory_space() const override { return MemorySpace::host; }
  void begin_batch() override;
  void send(const std::byte* buf, std::size_t bytes, int peer) override;
  void recv(std::byte* buf, std::size_t bytes, int peer) override;
  void end_batch() override;
  using Transport::copy;
  void copy(std::byte* dst, const std::byte* src, std::size_t bytes, Lane lane) override;
  /// In late_copy_lane mode the copies of one call run in reverse order (they are
  /// independent), so a dependency inside a call shows up too.
  void copy_all(std::span<const CopyOp> ops, Lane lane) override;
  Mark mark(Lane lane) override;
  void wait(Lane lane, Mark m) override;
  void synchronize() override;
  /// Room for `messages` requests per batch (a message over 1 GiB counts once per GiB), so
  /// that batches allocate nothing; the late-copy and late-delivery test modes still do.
  void reserve(std::size_t messages, std::size_t copies, std::size_t marks) override;
  Buffer allocate(std::size_t bytes) override;

 private:
  void post(bool is_send, std::byte* buf, std::size_t bytes, int peer);
  /// Waits for `reqs` (bounded by timeout_s_; is_recv[i]: reqs[i] is a receive); on timeout
  /// cancels the receives, releases the sends, marks the transport broken and throws Error
  /// (returns false instead when `throw_on_timeout` is false).
  bool wait_bounded(std::vector<MPI_Request>& reqs, const std::vector<char>& is_recv,
                    bool throw_on_timeout);
  /// Cancels and completes the receives, frees the sends, marks the transport broken.
  void release(std::vector<MPI_Request>& reqs, const std::vector<char>& is_recv) noexcept;

  void run_deferred(std::size_t upto);  // copy-lane copies issued before `upto`
  void deliver(std::size_t upto);       // late_transfer_lane: receives of batches before `upto`

  struct Copy {
    std::byte* dst;
    const std::byte* src;
    std::size_t bytes;
  };
  const MpiComm& comm_;
  double timeout_s_;
  std::vector<MPI_Request> requests_;
  std::vector<char> recv_;  ///< per request: 1 for a receive
  bool broken_ = false;     ///< a batch timed out: no further batches
  bool defer_ = false;
  std::vector<Copy> deferred_;  // copy-lane copies not run yet
  std::size_t deferred_done_ = 0;  // copy-lane copies issued and run before deferred_[0]
  bool late_delivery_ = false;
  struct Delivery {
    std::byte* dst;
    std::vector<std::byte> bytes;
  };
  std::vector<Delivery> receiving_;               // this batch's receives (late delivery)
  std::vector<std::vector<Delivery>> undelivered_;  // ended batches, not delivered yet
  std::size_t delivered_ = 0;  // batches delivered before undelivered_[0]
};

}  // namespace eplb::comm
