#pragma once
// Helpers of the multi-rank benchmarks: max over ranks, medians, a '#' header.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "eplb/config.hpp"

namespace eplb::bench {

inline double max_over_ranks(double v) {
  double m = v;
  MPI_Allreduce(MPI_IN_PLACE, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// main() of a multi-rank benchmark: MPI_Init, run, MPI_Finalize; an exception aborts the job
/// (only main decides to MPI_Abort).
template <class Run>
int mpi_main(int argc, char** argv, const char* program, Run run) {
  int provided = 0;  // eplb's planning threads make no MPI calls: FUNNELED is enough
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}

inline void print_header(const char* program, const std::string& config) {
  int size = 1, len = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char lib[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  MPI_Get_library_version(lib, &len);
  std::string mpi(lib);
  mpi = mpi.substr(0, mpi.find('\n'));
  std::printf("# %s (eplb %s), %d ranks, MPI: %s\n# %s\n", program, EPLB_VERSION, size,
              mpi.c_str(), config.c_str());
}

}  // namespace eplb::bench
