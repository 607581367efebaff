#!/usr/bin/env bash
# Builds eplb and its tests with AddressSanitizer and UndefinedBehaviorSanitizer (Debug) and
# runs ctest. UBSan stops at its first report (halt_on_error): otherwise a report inside a
# test that passes would go unseen. Leak detection is off: MPI and the CUDA runtime keep
# allocations until exit. GPU tests skip without a GPU, as in CI.
# Usage: scripts/sanitize.sh [ctest arguments, e.g. -L mpi]
# (EPLB_BUILD_DIR, default build-asan; EPLB_JOBS, default 2; installs missing packages first)
set -euo pipefail
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${EPLB_BUILD_DIR:-$root/build-asan}
jobs=${EPLB_JOBS:-2}
"$root/scripts/install-deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DEPLB_BUILD_BENCH=OFF
cmake --build "$build" -j "$jobs"
cd "$build"
export ASAN_OPTIONS=detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}
ctest --output-on-failure -j "$jobs" --timeout 900 "$@"
