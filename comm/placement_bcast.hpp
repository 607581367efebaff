#pragma once
/// \file Broadcast of a placement from the rank that planned it, as a compact index array.
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "eplb/algo/placement.hpp"
#include "eplb/comm/mpi.hpp"

namespace eplb::comm {

/// What the planning rank decided.
enum class PlanStatus : std::int32_t {
  ok = 0,     ///< a new placement follows
  skip = 1,   ///< keep the current placement (note says why)
  error = 2,  ///< planning failed (note has the message); every rank throws InvalidInput
};

struct PlacementMessage {
  std::int64_t epoch = 0;
  PlanStatus status = PlanStatus::skip;
  std::string note;            ///< reason for skip / error text (at most 511 bytes travel)
  algo::Placement placement;   ///< status == ok only
};

/// Bytes per index on the wire: 2 when E <= 32767 (int16), else 4.
int placement_index_bytes(int num_logical);

/// Collective over comm: one MPI_Bcast from `root` of a header (epoch, status, checksum,
/// note) and phy2log[L][R] packed as int16 or int32, then one small allreduce in which every
/// rank reports whether the message verified (epoch == expected_epoch, checksum, indices in
/// range, every expert present). On root, `msg` is the input (placement needed when ok); on
/// other ranks it is overwritten. Throws on every rank if any rank fails to verify, or
/// InvalidInput with root's note when status == error. The caller's state is untouched then.
void broadcast_placement(const MpiComm& comm, int root, const algo::Topology& topo,
                         std::int64_t expected_epoch, PlacementMessage& msg);

/// The layers rank `rank` of `size` plans when the layers are split over the ranks:
/// [first, last) = [L * rank / size, L * (rank + 1) / size).
struct LayerShare {
  int first = 0, last = 0;
};
LayerShare layer_share(int num_layers, int rank, int size);

/// Collective over comm, for planning split over the ranks: every rank contributes phy2log of
/// its layer_share() (`slice`, L_share * R entries) or the text of its planning error. One
/// MPI_Allgatherv of fixed-size headers and the slices packed as int16/int32 (sizes follow
/// from the topology, so no size exchange); then, on every rank alike: InvalidInput naming
/// the lowest failing rank's error if any rank failed, else `out` = the whole placement
/// (InvalidInput if it is not a valid placement: the same on every rank). A rank-local failure
/// (an allocation) is agreed on first and thrown as Error on every rank.
/// `error`: this rank's planning error, or nullptr (text, so that reporting a std::bad_alloc
/// needs no allocation).
void allgather_placement(const MpiComm& comm, const algo::Topology& topo,
                         std::span<const int> slice, const char* error, algo::Placement& out);
inline void allgather_placement(const MpiComm& comm, const algo::Topology& topo,
                                std::span<const int> slice, const std::optional<std::string>& error,
                                algo::Placement& out) {
  allgather_placement(comm, topo, slice, error ? error->c_str() : nullptr, out);
}

}  // namespace eplb::comm
