#!/usr/bin/env bash
# Soak test on the CPU: moe_sim under mpirun with random settings (2-4 ranks, 1-2 emulated
# nodes, sticky or deepseek, aligned or not, rank-0 or split planning, small staging budgets,
# batch and pipeline sizes, padding rows), each run checking every slot's bytes after each of
# its 10 migrations. Runs for SECONDS (default 300); prints one line per failing or rejected
# run and a summary. Exit code 1 when any run failed (a rejected setting is not a failure).
# Usage: scripts/soak.sh [SECONDS] [SEED]   (builds first, like demo.sh; EPLB_BUILD_DIR)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh" || exit 1
"$root/scripts/build.sh" >/dev/null || exit 1
build=${EPLB_BUILD_DIR:-$root/build}
seconds=${1:-300}
RANDOM=${2:-$$}
flags=(--oversubscribe)
[[ $(id -u) -eq 0 ]] && flags+=(--allow-run-as-root)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
pick() { local a=("$@"); echo "${a[RANDOM % ${#a[@]}]}"; }
end=$((SECONDS + seconds)) runs=0 failed=0 rejected=0
while ((SECONDS < end)); do
  np=$((2 + RANDOM % 3)) nodes=1
  ((np % 2 == 0 && RANDOM % 2)) && nodes=2
  args=(--layers $((2 + RANDOM % 6)) --experts 32 --nodes "$nodes" --groups "$(pick 1 8)"
        --policy "$(pick sticky deepseek)" --passes 200 --interval 20 --window 40 --seed "$RANDOM"
        --tokens 64 --tensors "a:$((64 + RANDOM % 4000)),b:24"
        --max-experts-per-batch $((RANDOM % 4)) --pipeline-batches $((1 + RANDOM % 4))
        --staging-bytes $((20000 + RANDOM * 30)))
  ((RANDOM % 2)) && args+=(--no-align)
  ((RANDOM % 2)) && args+=(--rank0-planning)
  ((RANDOM % 3 == 0)) && args+=(--padded-tokens 16)
  out=$(timeout 120 mpirun "${flags[@]}" -np "$np" "$build/examples/moe_sim" "${args[@]}" 2>&1)
  rc=$?
  runs=$((runs + 1))
  if ((rc == 2)); then
    rejected=$((rejected + 1))
    echo "rejected: mpirun -np $np moe_sim ${args[*]}: $(grep -m1 -i 'error' <<<"$out")"
  elif ((rc != 0)) || ! grep -q '(0 bad slot tensors)' <<<"$out"; then
    failed=$((failed + 1))
    echo "FAILED (rc=$rc): mpirun -np $np moe_sim ${args[*]}"
    tail -5 <<<"$out"
  fi
done
echo "soak: $runs runs in ${seconds} s, $failed failed, $rejected rejected"
((failed == 0))
