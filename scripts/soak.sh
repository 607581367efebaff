#!/usr/bin/env bash
# Soak test (on the CPU unless --device cuda is passed): moe_sim under mpirun with random settings (2-4 ranks, 1-2 emulated
# nodes, sticky or deepseek, aligned or not, rank-0 or split planning, small staging budgets,
# batch and pipeline sizes, padding rows), each run checking every slot's bytes after each of
# its 10 migrations. Runs for SECONDS (default 300); prints one line per failing or rejected
# run and a summary. Exit code 1 when any run failed (a rejected setting is not a failure).
# Usage: scripts/soak.sh [SECONDS] [SEED] [moe_sim arguments...]
#   e.g. EPLB_SOAK_RANKS=2 scripts/soak.sh 240 7 --device cuda   (2 GPUs: NCCL migration)
# Builds first, like demo.sh, into EPLB_BUILD_DIR (default build/); EPLB_SOAK_BUILD=0 uses that
# build as it is (no package check, no build). EPLB_SOAK_RANKS: the rank counts to draw from
# (default "2 3 4"; with --device cuda at most one rank per GPU). The extra moe_sim arguments
# must not repeat one the soak draws (moe_sim rejects a repeated option); --device, --skew,
# --drift, --topk or --min-gain are fine.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ ${EPLB_SOAK_BUILD:-1} != 0 ]]; then
  "$root/scripts/install-deps.sh" || exit 1
  "$root/scripts/build.sh" >/dev/null || exit 1
fi
build=${EPLB_BUILD_DIR:-$root/build}
seconds=${1:-300}
RANDOM=${2:-$$}
shift $(($# < 2 ? $# : 2))
read -r -a rank_counts <<<"${EPLB_SOAK_RANKS:-2 3 4}"
flags=(--oversubscribe)
[[ $(id -u) -eq 0 ]] && flags+=(--allow-run-as-root)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
pick() { local a=("$@"); echo "${a[RANDOM % ${#a[@]}]}"; }
end=$((SECONDS + seconds)) runs=0 failed=0 rejected=0
while ((SECONDS < end)); do
  np=$(pick "${rank_counts[@]}") nodes=1
  ((np % 2 == 0 && RANDOM % 2)) && nodes=2
  args=(--layers $((2 + RANDOM % 6)) --experts 32 --nodes "$nodes" --groups "$(pick 1 8)"
        --policy "$(pick sticky deepseek)" --passes 200 --interval 20 --window 40 --seed "$RANDOM"
        --tokens 64 --tensors "a:$((64 + RANDOM % 4000)),b:24"
        --max-experts-per-batch $((RANDOM % 4)) --pipeline-batches $((1 + RANDOM % 4))
        --staging-bytes $((20000 + RANDOM * 30)))
  ((RANDOM % 2)) && args+=(--no-align)
  ((RANDOM % 2)) && args+=(--rank0-planning)
  ((RANDOM % 3 == 0)) && args+=(--padded-tokens 16)
  args+=("$@")
  out=$(timeout 120 mpirun "${flags[@]}" -np "$np" "$build/examples/moe_sim" "${args[@]}" 2>&1)
  rc=$?
  runs=$((runs + 1))
  if ((rc == 2)); then
    rejected=$((rejected + 1))
    echo "rejected: mpirun -np $np moe_sim ${args[*]}: $(head -1 <<<"$out")"
  elif ((rc != 0)) || ! grep -q '(0 bad slot tensors)' <<<"$out"; then
    failed=$((failed + 1))
    echo "FAILED (rc=$rc): mpirun -np $np moe_sim ${args[*]}"
    tail -5 <<<"$out"
  fi
done
echo "soak: $runs runs in ${seconds} s, $failed failed, $rejected rejected"
((failed == 0))
