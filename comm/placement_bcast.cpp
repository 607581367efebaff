#include "comm/placement_bcast.hpp"

#include <cstring>
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

template <class T>
void pack(std::span<const int> src, unsigned char* dst) {
  for (std::size_t i = 0; i < src.size(); ++i) {
    const T v = static_cast<T>(src[i]);
    std::memcpy(dst + i * sizeof(T), &v, sizeof(T));
  }
}

template <class T>
void unpack(const unsigned char* src, std::vector<int>& dst) {
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
  std::vector<unsigned char> buf(sizeof(Header) + count * ib, 0);
  Header h{};
  if (comm.rank() == root) {
    h.epoch = msg.epoch;
    h.status = static_cast<std::int32_t>(msg.status);
    h.index_bytes = ib;
    h.count = static_cast<std::int64_t>(count);
    std::snprintf(h.note, sizeof h.note, "%s", msg.note.c_str());
    unsigned char* payload = buf.data() + sizeof(Header);
    if (msg.status == PlanStatus::ok) {
      msg.placement.check_shape(topo, "broadcast_placement");
      if (ib == 2) pack<std::int16_t>(msg.placement.phy2log(), payload);
      else pack<std::int32_t>(msg.placement.phy2log(), payload);
    }
    h.checksum = fnv1a(payload, count * ib, fnv1a(&h.epoch, sizeof h.epoch));
    std::memcpy(buf.data(), &h, sizeof h);
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
    } else if (h.checksum != fnv1a(payload, count * ib, fnv1a(&h.epoch, sizeof h.epoch))) {
      problem = "placement message checksum mismatch (epoch " + std::to_string(h.epoch) + ")";
    } else if (h.epoch != expected_epoch) {
      problem = "placement message for epoch " + std::to_string(h.epoch) + ", expected " +
                std::to_string(expected_epoch);
    } else if (h.status < 0 || h.status > 2) {
      problem = "placement message has unknown status " + std::to_string(h.status);
    } else {
      got.epoch = h.epoch;
      got.status = static_cast<PlanStatus>(h.status);
      got.note = h.note;
      if (got.status == PlanStatus::ok) {
        std::vector<int> p(count);
        if (ib == 2) unpack<std::int16_t>(payload, p);
        else unpack<std::int32_t>(payload, p);
        try {
          got.placement = algo::Placement(topo.num_layers, topo.num_logical, topo.num_slots,
                                          std::move(p));
        } catch (const std::invalid_argument& e) {
          problem = std::string("received placement is invalid: ") + e.what();
        }
      }
    }
  }
  throw_if_any_failed<Error>(comm, problem);
  if (comm.rank() != root) msg = std::move(got);
  if (msg.status == PlanStatus::error) throw InvalidInput("[rank " + std::to_string(root) +
                                                         "] rebalance planning failed: " + msg.note);
}

}  // namespace eplb::comm
