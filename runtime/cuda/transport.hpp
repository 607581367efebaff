#pragma once
/// \file The NCCL weight transport with eplb's batched-copy kernel for its copies.
#include <memory>

#include "eplb/comm/nccl.hpp"

namespace eplb::runtime::cuda {

/// Thread blocks of each batched-copy kernel: EPLB_COPY_KERNEL_BLOCKS, default 3/5 of the
/// device's SMs, rounded up (80 on an H200; with 512 threads, 80 blocks beat 33-66 and
/// 100-132 on 2 H200s, docs/BENCHMARKS.md), leaving the rest to NCCL; 0 = use
/// cudaMemcpyBatchAsync.
int copy_kernel_blocks();
/// Threads per block of those kernels: EPLB_COPY_KERNEL_THREADS (256, 512 or 1024; default
/// 512: with NCCL transfers beside them, 66 x 512 reached 86 % of the pairwise peak on 2
/// H200s against 75 % for 66 x 1024, docs/BENCHMARKS.md).
int copy_kernel_threads();

/// comm::NcclTransport (collective over `mpi`) whose copies run as kernels of
/// copy_kernel_blocks() blocks: one launch per phase instead of one copy call per tensor
/// per expert, whose host cost held back migration (docs/MIGRATION.md). Connects every
/// peer before returning (NcclTransport::connect_peers) unless EPLB_NCCL_CONNECT=0. The
/// transport works on `stream`, which must outlive it (and so the Engine that owns it).
std::unique_ptr<comm::NcclTransport> make_nccl_transport(const comm::MpiComm& mpi,
                                                         comm::cuda_stream stream);

}  // namespace eplb::runtime::cuda
