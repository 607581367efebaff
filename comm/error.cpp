#include "eplb/comm/error.hpp"

#include <mpi.h>

#include <cstdio>

namespace eplb::detail {

std::string format_failure(int rank, const char* call, const std::string& lib_message,
                           const char* file, int line) {
  return "[rank " + std::to_string(rank) + "] " + call + " failed: " + lib_message + " (" +
         file + ":" + std::to_string(line) + ")";
}

int world_rank_or_minus_one() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init || fin) return -1;
  int r = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

void log_error(const std::string& message) noexcept {
  std::fprintf(stderr, "eplb: %s\n", message.c_str());
}

}  // namespace eplb::detail
