#include "eplb/runtime/cuda/transport.hpp"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "eplb/runtime/cuda/kernels.hpp"

namespace eplb::runtime::cuda {
namespace {

int copy_with_kernel(std::span<const comm::Transport::CopyOp> ops, comm::cuda_stream stream) {
  thread_local std::vector<CopySpec> specs;
  specs.clear();
  for (const auto& op : ops)
    if (op.bytes) specs.push_back({op.dst, op.src, op.bytes});
  return launch_copy_batch(specs.data(), specs.size(), copy_kernel_blocks(), copy_kernel_threads(),
                           stream);
}

}  // namespace

int copy_kernel_blocks() {
  static const int blocks = [] {
    const char* v = std::getenv("EPLB_COPY_KERNEL_BLOCKS");
    if (!v || !*v) return std::max(1, (comm::cuda_sm_count() * 3 + 4) / 5);  // ceil(3/5 of the SMs)
    const int b = std::atoi(v);
    return b < 0 ? 0 : b;
  }();
  return blocks;
}

int copy_kernel_threads() {
  static const int threads = [] {
    const char* v = std::getenv("EPLB_COPY_KERNEL_THREADS");
    const int t = v && *v ? std::atoi(v) : 512;
    return t == 256 || t == 1024 ? t : 512;
  }();
  return threads;
}

std::unique_ptr<comm::NcclTransport> make_nccl_transport(const comm::MpiComm& mpi,
                                                         comm::cuda_stream stream) {
  // Rank-local steps (the SM count behind copy_kernel_blocks() asks the device) before any
  // collective; a failure goes into the transport's first agreement, thrown on every rank.
  comm::NcclTransport::CopyBatchFn copy = nullptr;
  std::optional<std::string> setup_error;
  try {
    if (copy_kernel_blocks() > 0) copy = &copy_with_kernel;
  } catch (const std::exception& e) {
    setup_error = std::string("sizing the copy kernel failed: ") + e.what();
  }
  auto t = std::make_unique<comm::NcclTransport>(mpi, stream, copy, std::move(setup_error));
  // Point-to-point connections now rather than in the first migration (EPLB_NCCL_CONNECT=0:
  // lazily, as NCCL does by itself; docs/ENVIRONMENT.md).
  // Agreed (MIN): an environment that differs between ranks must not send some into the
  // connection exchange alone.
  const char* v = std::getenv("EPLB_NCCL_CONNECT");
  int connect = !v || std::string(v) != "0" ? 1 : 0;
  EPLB_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &connect, 1, MPI_INT, MPI_MIN, mpi.get()));
  if (connect) t->connect_peers();
  return t;
}

}  // namespace eplb::runtime::cuda
