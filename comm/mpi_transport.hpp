#pragma once
/// \file Host-memory transport over MPI non-blocking point-to-point.
#include <vector>

#include "comm/mpi.hpp"
#include "comm/transport.hpp"

namespace eplb::comm {

/// Isend/Irecv on the library's own communicator; end_batch() waits for all of them.
/// Messages over 1 GiB are split. Receives match sends by order per peer (one tag).
class MpiHostTransport final : public Transport {
 public:
  /// Borrows comm (must outlive the transport).
  explicit MpiHostTransport(const MpiComm& comm) : comm_(comm) {}
  ~MpiHostTransport() override;

  std::string_view name() const override { return "mpi-host"; }
  MemorySpace memory_space() const override { return MemorySpace::host; }
  void begin_batch() override;
  void send(const std::byte* buf, std::size_t bytes, int peer) override;
  void recv(std::byte* buf, std::size_t bytes, int peer) override;
  void end_batch() override;
  void copy(std::byte* dst, const std::byte* src, std::size_t bytes) override;
  void synchronize() override {}
  Buffer allocate(std::size_t bytes) override;

 private:
  void post(bool is_send, std::byte* buf, std::size_t bytes, int peer);

  const MpiComm& comm_;
  std::vector<MPI_Request> requests_;
};

}  // namespace eplb::comm
