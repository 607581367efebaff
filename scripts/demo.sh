#!/usr/bin/env bash
# Installs missing packages, builds eplb and runs the main demo: moe_sim, a synthetic
# expert-parallel MoE job on 4 MPI ranks (CPU; weights in host memory). Extra arguments go to
# moe_sim (e.g. --device cuda on a machine with 4 GPUs, --policy deepseek, --csv out.csv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >/dev/null
build=${EPLB_BUILD_DIR:-$root/build}
flags=(--oversubscribe)
[[ $(id -u) -eq 0 ]] && flags+=(--allow-run-as-root)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
exec mpirun "${flags[@]}" -np "${EPLB_DEMO_RANKS:-4}" "$build/examples/moe_sim" "$@"
