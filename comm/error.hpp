#pragma once
/// \file eplb's error model: typed exceptions and the checked-call helpers behind the
/// EPLB_*_CHECK macros. See docs/DESIGN.md "Errors".
#include <stdexcept>
#include <string>

namespace eplb {

/// A failure of a library eplb calls (MPI, NCCL, CUDA, HDF5) or of eplb itself.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class MpiError : public Error {
 public:
  using Error::Error;
};
class NcclError : public Error {
 public:
  using Error::Error;
};
class CudaError : public Error {
 public:
  using Error::Error;
};

/// Bad input detected on some rank and agreed on by all ranks (every rank throws it).
class InvalidInput : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
/// "[rank 3] MPI_Allreduce(...) failed: <lib message> (comm/mpi.cpp:88)"
std::string format_failure(int rank, const char* call, const std::string& lib_message,
                           const char* file, int line);
/// The calling process's rank in MPI_COMM_WORLD, or -1 before MPI_Init / after finalize.
int world_rank_or_minus_one();
/// Writes "eplb: <message>" to stderr; for destructors, which must not throw.
void log_error(const std::string& message) noexcept;
}  // namespace detail

}  // namespace eplb
