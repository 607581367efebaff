#include "eplb/comm/placement_bcast.hpp"

#include <climits>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace eplb::comm {
namespace {

struct Header {
  std::int64_t epoch;
  std::int32_t status;
  std::int32_t index_bytes;
  std::int64_t count;
  std::uint64_t checksum;
  char note[512];
};

/// FNV-1a over the header with its checksum field zeroed, then the payload: a damaged status,
/// note or size fails the check as a damaged index does.
std::uint64_t message_checksum(Header h, const unsigned char* payload, std::size_t payload_bytes) {
  h.checksum = 0;
  return fnv1a(payload, payload_bytes, fnv1a(&h, sizeof h));
}

template <class T>
void pack(std::span<const int> src, unsigned char* dst) {
  for (std::size_t i = 0; i < src.size(); ++i) {
    const T v = static_cast<T>(src[i]);
    std::memcpy(dst + i * sizeof(T), &v, sizeof(T));
  }
}

template <class T>
void unpack(const unsigned char* src, std::span<int> dst) {
  for (std::size_t i = 0; i < dst.size(); ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = v;
  }
}

}  // namespace

int placement_index_bytes(int num_logical) { return num_logical <= 32767 ? 2 : 4; }

void broadcast_placement(const MpiComm& comm, int root, const algo::Topology& topo,
                         std::int64_t expected_epoch, PlacementMessage& msg) {
  const int ib = placement_index_bytes(topo.num_logical);
  const std::size_t count = static_cast<std::size_t>(topo.num_layers) * topo.num_slots;
  // Every rank's buffer exists before the broadcast: a rank that failed to allocate it must
  // not leave the others in MPI_Bcast.
  std::vector<unsigned char> buf;
  std::optional<std::string> alloc_error;
  capture(alloc_error, "broadcast_placement: allocating the message failed: ", [&] {
    const std::size_t bytes = sizeof(Header) + count * ib;
    if (bytes > static_cast<std::size_t>(INT_MAX))  // MPI_Bcast takes an int count
      throw std::length_error("a message of " + std::to_string(bytes) + " bytes is more than one MPI_Bcast carries");
    buf.assign(bytes, 0);
  });
  throw_if_any_failed<Error>(comm, alloc_error);
  Header h{};
  if (comm.rank() == root) {
    if (msg.status == PlanStatus::ok) {
      try {  // a root-only throw here would leave the others in the broadcast: send it instead
        msg.placement.check_shape(topo, "broadcast_placement");
      } catch (const std::exception& e) {
        msg.status = PlanStatus::error;
        msg.note = e.what();
      }
    }
    h.epoch = msg.epoch;
    h.status = static_cast<std::int32_t>(msg.status);
    h.index_bytes = ib;
    h.count = static_cast<std::int64_t>(count);
    std::snprintf(h.note, sizeof h.note, "%s", msg.note.c_str());
    unsigned char* payload = buf.data() + sizeof(Header);
    if (msg.status == PlanStatus::ok) {
      if (ib == 2) pack<std::int16_t>(msg.placement.phy2log(), payload);
      else pack<std::int32_t>(msg.placement.phy2log(), payload);
    }
    h.checksum = message_checksum(h, payload, count * ib);
    std::memcpy(buf.data(), &h, sizeof h);
    msg.note.resize(std::strlen(h.note));  // as the others read it (a prefix: no allocation)
  }
  EPLB_MPI_CHECK(MPI_Bcast(buf.data(), static_cast<int>(buf.size()), MPI_BYTE, root, comm.get()));

  std::optional<std::string> problem;
  PlacementMessage got;
  if (comm.rank() != root) {
    std::memcpy(&h, buf.data(), sizeof h);
    h.note[sizeof h.note - 1] = '\0';
    const unsigned char* payload = buf.data() + sizeof(Header);
    if (h.index_bytes != ib || h.count != static_cast<std::int64_t>(count)) {
      problem = "placement message has " + std::to_string(h.count) + " indices of " +
                std::to_string(h.index_bytes) + " bytes, expected " + std::to_string(count) +
                " of " + std::to_string(ib);
    } else if (h.checksum != message_checksum(h, payload, count * ib)) {
      problem = "placement message checksum mismatch (epoch " + std::to_string(h.epoch) + ")";
    } else if (h.epoch != expected_epoch) {
      problem = "placement message for epoch " + std::to_string(h.epoch) + ", expected " +
                std::to_string(expected_epoch);
    } else if (h.status < 0 || h.status > 2) {
      problem = "placement message has unknown status " + std::to_string(h.status);
    } else {
      got.epoch = h.epoch;
      got.status = static_cast<PlanStatus>(h.status);
      try {  // everything that allocates: a std::bad_alloc is agreed on like the rest
        got.note = h.note;
        if (got.status == PlanStatus::ok) {
          std::vector<int> p(count);
          if (ib == 2) unpack<std::int16_t>(payload, p);
          else unpack<std::int32_t>(payload, p);
          got.placement = algo::Placement(topo.num_layers, topo.num_logical, topo.num_slots,
                                          std::move(p));
        }
      } catch (const std::invalid_argument& e) {
        problem = std::string("received placement is invalid: ") + e.what();
      } catch (const std::exception& e) {
        problem = std::string("unpacking the received placement failed: ") + e.what();
      }
    }
  }
  throw_if_any_failed<Error>(comm, problem);
  if (comm.rank() != root) msg = std::move(got);
  if (msg.status == PlanStatus::error) throw InvalidInput("[rank " + std::to_string(root) +
                                                         "] rebalance planning failed: " + msg.note);
}

LayerShare layer_share(int num_layers, int rank, int size) {
  const auto L = static_cast<long long>(num_layers);
  return {static_cast<int>(L * rank / size), static_cast<int>(L * (rank + 1) / size)};
}

void allgather_placement(const MpiComm& comm, const algo::Topology& topo,
                         std::span<const int> slice, const char* error, algo::Placement& out) {
  struct SliceHeader {
    std::int32_t failed;
    char note[508];
  };
  const int P = comm.size(), me = comm.rank(), ib = placement_index_bytes(topo.num_logical);
  const auto R = static_cast<std::size_t>(topo.num_slots);
  // Every allocation before the collective is agreed on (see broadcast_placement): the sizes'
  // arrays too, and the planning error arrives as text, not as a string to copy.
  std::vector<int> counts, displs;
  std::vector<unsigned char> send, recv;
  std::size_t total = 0;
  bool too_large = false;  // the same on every rank (sizes follow from the topology)
  std::optional<std::string> alloc_error;
  capture(alloc_error, "allgather_placement: allocating the buffers failed: ", [&] {
    counts.resize(static_cast<std::size_t>(P));
    displs.resize(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r) {
      const auto s = layer_share(topo.num_layers, r, P);
      const std::size_t bytes = sizeof(SliceHeader) + static_cast<std::size_t>(s.last - s.first) * R * ib;
      if (total + bytes > static_cast<std::size_t>(INT_MAX)) {
        too_large = true;
        return;
      }
      counts[r] = static_cast<int>(bytes);
      displs[r] = static_cast<int>(total);
      total += bytes;
    }
    send.assign(static_cast<std::size_t>(counts[me]), 0);
    recv.resize(total);
  });
  throw_if_any_failed<Error>(comm, alloc_error);
  if (too_large) throw InvalidInput("allgather_placement: placement too large for one MPI_Allgatherv");
  const auto mine = layer_share(topo.num_layers, me, P);
  const std::size_t my_count = static_cast<std::size_t>(mine.last - mine.first) * R;
  SliceHeader h{};
  if (error)
    std::snprintf(h.note, sizeof h.note, "%s", error);
  else if (slice.size() != my_count)  // sent like a planning error: no rank-local throw
    std::snprintf(h.note, sizeof h.note, "allgather_placement: this rank has %zu indices, its layers need %zu",
                  slice.size(), my_count);
  h.failed = error || slice.size() != my_count ? 1 : 0;
  std::memcpy(send.data(), &h, sizeof h);
  if (!h.failed) {
    if (ib == 2) pack<std::int16_t>(slice, send.data() + sizeof h);
    else pack<std::int32_t>(slice, send.data() + sizeof h);
  }
  EPLB_MPI_CHECK(MPI_Allgatherv(send.data(), counts[me], MPI_BYTE, recv.data(), counts.data(),
                                displs.data(), MPI_BYTE, comm.get()));
  // Everything below sees the same gathered bytes on every rank, so a planning failure or an
  // invalid placement is found on all of them; a rank-local failure (std::bad_alloc) is agreed
  // on first, so that no rank throws alone.
  std::optional<std::string> planning_error, local_error;
  auto unpack_share = [&](int r, std::span<int> dst) {  // rank r's slice: its layers' R entries
    const unsigned char* payload = recv.data() + displs[r] + sizeof(SliceHeader);
    if (ib == 2) unpack<std::int16_t>(payload, dst);
    else unpack<std::int32_t>(payload, dst);
  };
  try {
    std::vector<int> all(static_cast<std::size_t>(topo.num_layers) * R);
    std::size_t at = 0;
    for (int r = 0; r < P && !planning_error; ++r) {
      SliceHeader hr;
      std::memcpy(&hr, recv.data() + displs[r], sizeof hr);
      hr.note[sizeof hr.note - 1] = '\0';
      if (hr.failed) {
        planning_error = "[rank " + std::to_string(r) + "] rebalance planning failed: " + hr.note;
        break;
      }
      const auto s = layer_share(topo.num_layers, r, P);
      const std::span<int> part(all.data() + at, static_cast<std::size_t>(s.last - s.first) * R);
      unpack_share(r, part);
      at += part.size();
    }
    if (!planning_error) {
      try {  // into a new placement, so that `out` stays as it was on an error
        out = algo::Placement(topo.num_layers, topo.num_logical, topo.num_slots, std::move(all));
      } catch (const std::invalid_argument& e) {
        // Whose slice: each checked alone (this error path only), the first invalid one named.
        planning_error = std::string("gathered placement is invalid: ") + e.what();
        for (int r = 0; r < P; ++r) {
          const auto s = layer_share(topo.num_layers, r, P);
          if (s.last == s.first) continue;
          std::vector<int> part(static_cast<std::size_t>(s.last - s.first) * R);  // `all` was moved
          unpack_share(r, part);
          try {
            (void)algo::Placement(s.last - s.first, topo.num_logical, topo.num_slots, std::move(part));
          } catch (const std::invalid_argument& bad) {
            planning_error = "[rank " + std::to_string(r) + "] planned an invalid placement for layers " +
                             std::to_string(s.first) + "-" + std::to_string(s.last - 1) +
                             " (counted from its first layer below): " + bad.what();
            break;
          }
        }
      }
    }
  } catch (const std::exception& e) {
    local_error = std::string("allgather_placement: unpacking failed: ") + e.what();
  }
  throw_if_any_failed<Error>(comm, local_error);
  if (planning_error) throw InvalidInput(*planning_error);
}

}  // namespace eplb::comm
