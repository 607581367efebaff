#pragma once
// Small helpers shared by the multi-rank tests.
#include <mpi.h>

namespace eplb::test {

inline int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

}  // namespace eplb::test
