#!/usr/bin/env bash
# Configures and builds eplb into ${EPLB_BUILD_DIR:-build} (Release, -j${EPLB_JOBS:-2}).
set -euo pipefail
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # gtest discovery runs the test binaries
root=$(cd "$(dirname "$0")/.." && pwd)
build=${EPLB_BUILD_DIR:-$root/build}
build=${build%/}
mkdir -p "$(dirname "$build")"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=${EPLB_BUILD_TYPE:-Release} "$@" >"$build.configure.log" 2>&1 \
  || { cat "$build.configure.log" >&2; exit 1; }
grep -E '^-- eplb ' "$build.configure.log" >&2 || true
cmake --build "$build" -j "${EPLB_JOBS:-2}"
