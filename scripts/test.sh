#!/usr/bin/env bash
# Installs missing packages, builds eplb and runs every test (ctest; GPU tests skip without a GPU).
set -euo pipefail
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # every program the tests start (NVLink multicast off)
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
cd "${EPLB_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j "${EPLB_JOBS:-2}" --timeout 600
