#!/usr/bin/env bash
# GPU validation on a machine with >= 2 NVIDIA GPUs: builds eplb, runs every test (GPU tests
# included, also under compute-sanitizer), moe_sim on 2 and 4 GPUs, and the GPU benchmarks.
# Logs go to $OUT when set (else gpu-logs/ in the repository root).
# Usage: scripts/gpu-check.sh [full|quick|bench|mig|overlap]  (quick: no benchmarks; bench:
# tests and the short benchmarks, no sanitizer/moe_sim; mig: only the migration benchmarks;
# overlap: the GPU tests, the migration tests under the sanitizer, and the migration
# benchmarks with and without overlapped steps, one device trace; single: one GPU only;
# algo: every test that runs on this machine, and the policy benchmarks, batched and scalar;
# sweep: V3/V2-Lite migration over copy-kernel blocks and threads and options; validate: the
# migration figures (aligned and not), every test, moe_sim, control path, sanitizer).
# Exit code: 1 when any step failed (summary.txt lists each step's rc), else 0.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
final=${OUT:-$root/gpu-logs}
out=$root/gpu-logs-work
rm -rf "$out" && mkdir -p "$out" "$final"
# $OUT takes few files: everything is packed into logs.tgz (plus summary.txt) at exit.
trap 'cp "$out/summary.txt" "$final/" 2>/dev/null; cp "$out"/*.csv "$out"/*.json "$final/" 2>/dev/null; tar czf "$final/logs.tgz" -C "$out" . 2>/dev/null' EXIT
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
mpirun=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH)
summary="$out/summary.txt"
: >"$summary"
failed=0  # steps that exited non-zero: the script's exit code is 1 when any did
step() {  # step NAME COMMAND...: run, log to $out/NAME.log, record status
  local name=$1; shift
  local t0=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  ((rc == 0 || rc == 77)) || failed=$((failed + 1))  # 77: a program's own "skipped"
  printf '%-28s rc=%-3d %4ds\n' "$name" "$rc" $((SECONDS - t0)) | tee -a "$summary"
  cp "$summary" "$final/" 2>/dev/null; tar czf "$final/logs.tgz" -C "$out" . 2>/dev/null  # survives a kill
  return $rc
}
{
  echo "# $(date -u) $(hostname) gpus=$ngpu"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  mpirun --version | head -1
} >>"$summary" 2>&1

build=$root/build-gpu
step configure cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 || { tail -40 "$out/configure.log"; exit 1; }
step build cmake --build "$build" -j "$(nproc)" || { grep -E 'error' "$out/build.log" | head -40; exit 1; }
cd "$build"
mode=${1:-full}
# Multi-GPU migration runs: 4 GPUs where there are, else 2; the 1 GiB pairwise peak; as many
# V3 layers as fit (weights of 20 V3 layers on 2 GPUs would not fit with staging).
np=$(( ngpu >= 4 ? 4 : 2 )) gib=1073741824
v3layers=$(( np == 4 ? 20 : 8 ))
mig() {  # mig NAME NP ARGS...: bench_migration on NP GPUs
  local name=$1 np=$2; shift 2
  [[ $ngpu -ge $np ]] && step "$name" "${mpirun[@]}" -np "$np" ./bench/bench_migration --device cuda "$@"
}
if [[ $mode == algo ]]; then  # host side: the CPU's policy kernels (any number of GPUs)
  { echo "# nproc=$(nproc)"; lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | sed 's/Flags:.*\(avx512[a-z_]*\).*/AVX-512: yes/'; } >>"$summary" 2>&1
  step ctest ctest --output-on-failure -j 4 --timeout 600
  filter='^policy/deepseek/|^probe/'
  step bench_algo_batched ./bench/bench_algo --benchmark_filter=$filter --benchmark_min_time=0.2 \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
  (export EPLB_DEEPSEEK_SCALAR=1
   step bench_algo_scalar ./bench/bench_algo --benchmark_filter=$filter --benchmark_min_time=0.2 \
     --benchmark_repetitions=5 --benchmark_report_aggregates_only=true)
  step bench_algo_batched_again ./bench/bench_algo --benchmark_filter=$filter --benchmark_min_time=0.2 \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
  step bench_algo_migration_plan ./bench/bench_algo --benchmark_filter='^migration_plan/' --benchmark_min_time=0.2
  # The numpy port of the reference on this host, when numpy is installed (same shapes).
  if python3 -c 'import numpy' 2>/dev/null; then
    step numpy_reference_check python3 "$root/bench/numpy_reference.py" --check "$root/tests/data/eplb_vectors_v1.txt"
    step numpy_reference python3 "$root/bench/numpy_reference.py" --repeat 10
    step compare_numpy python3 "$root/bench/compare_numpy.py" --bench ./bench/bench_algo --rounds 2
  fi
  # The control path on the host (4 CPU ranks: no device copy, host maps) with each policy.
  for run in 1 2 3; do  # three runs each: the host is shared, its noise is large
    for pol in sticky deepseek; do
      step bench_control_cpu_np4_${pol}_$run "${mpirun[@]}" -np 4 ./bench/bench_control --device cpu --iters 30 \
        --policy $pol --planning-threads 1
    done
  done
  cat "$summary"
  exit $((failed > 0))
fi
if [[ $mode == single ]]; then  # one GPU: kernel tests, local-only migration (copy-kernel rate)
  step ctest_gpu ctest -L gpu --output-on-failure --timeout 300
  for o in "" --no-overlap; do
    mig mig_v3_l4_np1${o:+_plain} 1 --model v3 --layers 4 --iters 4 --window-bytes 20000000000 $o
  done
  (export EPLB_COPY_KERNEL_BLOCKS=132
   step mig_v3_l4_np1_blocks132 "${mpirun[@]}" -x EPLB_COPY_KERNEL_BLOCKS -np 1 ./bench/bench_migration --device cuda \
     --model v3 --layers 4 --iters 4 --window-bytes 20000000000)
  (export EPLB_COPY_KERNEL_BLOCKS=0
   step mig_v3_l4_np1_memcpybatch "${mpirun[@]}" -x EPLB_COPY_KERNEL_BLOCKS -np 1 ./bench/bench_migration --device cuda \
     --model v3 --layers 4 --iters 4 --window-bytes 20000000000)
  (export EPLB_MIGRATION_TRACE=1
   step mig_v3_l4_np1_trace "${mpirun[@]}" -x EPLB_MIGRATION_TRACE -np 1 ./bench/bench_migration --device cuda \
     --model v3 --layers 4 --iters 1 --window-bytes 20000000000)
  step moe_sim_np1 "${mpirun[@]}" -np 1 ./examples/moe_sim --device cuda --passes 100 --interval 25 --device-allreduce \
    --no-align --policy deepseek --min-gain -1  # one GPU: only the policy's own order moves anything
  cat "$summary"
  exit $((failed > 0))
fi
if [[ $mode == sweep ]]; then  # copy-kernel shape, stream priority and overlap against NCCL's peak
  sweep() {  # sweep NAME BLOCKS THREADS ARGS...: one migration run with those copy kernels
    local name=$1 b=$2 th=$3; shift 3
    EPLB_COPY_KERNEL_BLOCKS=$b EPLB_COPY_KERNEL_THREADS=$th step "$name" "${mpirun[@]}" -x EPLB_COPY_KERNEL_BLOCKS \
      -x EPLB_COPY_KERNEL_THREADS -np $np ./bench/bench_migration --device cuda --peak-bytes $gib "$@"
    printf '%-44s %s\n' "$name" "$(grep -A1 '^ranks' "$out/$name.log" | tail -1)" >>"$out/sweep.txt"
  }
  v3=(--model v3 --layers $v3layers --window-bytes 40000000000 --iters 4)
  v2=(--model v2lite --window-bytes 16000000000 --iters 6)
  for th in 512 1024; do  # the copy kernels' shape: blocks x threads
    for b in 33 50 66 80 100 132; do
      sweep v3_b${b}_t$th $b $th "${v3[@]}"
      sweep v2lite_b${b}_t$th $b $th "${v2[@]}"
    done
  done
  for o in --no-align --overlap "--pipeline-batches 2" "--pipeline-batches 8"; do
    sweep "v3_b80${o// /}" 80 512 "${v3[@]}" $o
    sweep "v2lite_b80${o// /}" 80 512 "${v2[@]}" $o
  done
  cat "$out/sweep.txt" | tee -a "$summary"
  exit $((failed > 0))
fi
if [[ $mode == validate ]]; then  # migration figures first, then every test, sanitizer, control path
  for w in 60 40; do
    for rep in 1 2; do
      mig mig_v3_w${w}_np${np}_$rep $np --model v3 --layers $v3layers --iters 4 --window-bytes ${w}000000000 --peak-bytes $gib
    done
    mig mig_v3_w${w}_noalign_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes ${w}000000000 \
      --peak-bytes $gib --no-align
  done
  mig mig_v3_w50_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes 50000000000 --peak-bytes $gib
  mig mig_v3_w80_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes 80000000000 --peak-bytes $gib
  for rep in 1 2; do
    mig mig_v2lite_w16_np${np}_$rep $np --model v2lite --iters 6 --window-bytes 16000000000 --peak-bytes $gib
  done
  mig mig_v2lite_w16_noalign_np$np $np --model v2lite --iters 6 --window-bytes 16000000000 --peak-bytes $gib --no-align
  mig mig_v2lite_r72_np$np $np --model v2lite --slots 72 --iters 6 --window-bytes 16000000000 --peak-bytes $gib
  mig mig_v2lite_sticky_np$np $np --model v2lite --policy sticky --iters 6 --window-bytes 16000000000 --peak-bytes $gib
  step ctest ctest --output-on-failure -j 4 --timeout 600
  step moe_sim_cuda_np$np "${mpirun[@]}" -np $np ./examples/moe_sim --device cuda --passes 1000 --interval 25 \
    --tensors w13:1048576,w2:524288,scale:4096 --csv "$out/moe_sim_np$np.csv"
  for pol in sticky deepseek; do
    step bench_control_cuda_np${np}_$pol "${mpirun[@]}" -np $np ./bench/bench_control --device cuda --iters 30 \
      --policy $pol --planning-threads 1
  done
  step bench_route ./bench/bench_route --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  step sanitizer_route "$cs" --tool memcheck --report-api-errors no --error-exitcode 9 ./tests/eplb_gpu_tests
  step sanitizer_nccl_np2 "${mpirun[@]}" -np 2 "$cs" --tool memcheck --report-api-errors no --error-exitcode 9 \
    ./tests/eplb_gpu_mpi_tests --gtest_filter='-*TimesOut*'
  cat "$summary"
  exit $((failed > 0))
fi
if [[ $mode == overlap ]]; then  # most important first: a 600 s device call may end early
  step ctest_gpu ctest -L gpu --output-on-failure --timeout 300
  for w in 40000000000 60000000000; do
    mig mig_v3_w${w:0:2}_overlap_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes $w --peak-bytes $gib
    mig mig_v3_w${w:0:2}_plain_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes $w --peak-bytes $gib --no-overlap
    mig mig_v3_w${w:0:2}_overlap_pb2_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes $w --peak-bytes $gib \
      --pipeline-batches 2
  done
  mig mig_v2lite_w16_overlap_np$np $np --model v2lite --iters 6 --window-bytes 16000000000 --peak-bytes $gib
  mig mig_v2lite_w16_plain_np$np $np --model v2lite --iters 6 --window-bytes 16000000000 --peak-bytes $gib --no-overlap
  mig mig_v2lite_w16_overlap_peak256_np$np $np --model v2lite --iters 6 --window-bytes 16000000000
  step moe_sim_connect_np$np "${mpirun[@]}" -np $np ./examples/moe_sim --device cuda --passes 100 --interval 25
  step moe_sim_device_allreduce_np$np "${mpirun[@]}" -np $np ./examples/moe_sim --device cuda --passes 100 \
    --interval 25 --device-allreduce
  (export EPLB_NCCL_CONNECT=0
   step moe_sim_lazy_np$np "${mpirun[@]}" -x EPLB_NCCL_CONNECT -np $np ./examples/moe_sim --device cuda --passes 100 --interval 25)
  (export EPLB_MIGRATION_TRACE=1
   for o in "" --no-overlap; do
     step mig_v3_w40_trace${o:+_plain}_np$np "${mpirun[@]}" -x EPLB_MIGRATION_TRACE -np $np ./bench/bench_migration \
       --device cuda --model v3 --layers $v3layers --iters 1 --window-bytes 40000000000 $o
   done)
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  step sanitizer_nccl_np2 "${mpirun[@]}" -np 2 "$cs" --tool memcheck --report-api-errors no --error-exitcode 9 \
    ./tests/eplb_gpu_mpi_tests --gtest_filter='*overlapped*:*Overlapped*:*odd_sizes*'
  cat "$summary"
  exit $((failed > 0))
fi
if [[ $mode != mig ]]; then
  step ctest ctest --output-on-failure -j 4 --timeout 600
  [[ $mode == bench ]] || step ctest_gpu_verbose ctest -L gpu -V --timeout 600
fi
cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ $mode == full || $mode == quick ]]; then
  step sanitizer_route "$cs" --tool memcheck --report-api-errors no --error-exitcode 9 ./tests/eplb_gpu_tests
  step sanitizer_nccl_np2 "${mpirun[@]}" -np 2 "$cs" --tool memcheck --report-api-errors no --error-exitcode 9 ./tests/eplb_gpu_mpi_tests \
    --gtest_filter='-*TimesOut*'
  step moe_sim_cuda_np2 "${mpirun[@]}" -np 2 ./examples/moe_sim --device cuda --passes 600 --interval 30 --csv "$out/moe_sim_np2.csv"
  [[ $ngpu -ge 4 ]] && step moe_sim_cuda_np4 "${mpirun[@]}" -np 4 ./examples/moe_sim --device cuda --passes 1000 --interval 25 \
    --tensors w13:1048576,w2:524288,scale:4096 --csv "$out/moe_sim_np4.csv"
fi
[[ $mode == quick ]] && exit $((failed > 0))
if [[ $mode != mig ]]; then
{ echo "# nproc=$(nproc)"; cat /sys/fs/cgroup/cpu.max 2>/dev/null; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Socket'; } >>"$summary" 2>&1
step bench_algo ./bench/bench_algo --benchmark_filter='deepseek/|migration_plan' --benchmark_min_time=0.2
step bench_route ./bench/bench_route --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/bench_route.json"
for n in 2 4; do
  [[ $ngpu -ge $n ]] || continue
  for pol in sticky deepseek; do
    step bench_control_cuda_np${n}_$pol "${mpirun[@]}" -np $n ./bench/bench_control --device cuda --iters 30 \
      --policy $pol --planning-threads 1
    step bench_control_cuda_np${n}_${pol}_rank0 "${mpirun[@]}" -np $n ./bench/bench_control --device cuda \
      --iters 30 --policy $pol --planning-threads 1 --rank0-planning
  done
  step bench_control_cpu_np$n "${mpirun[@]}" -np $n ./bench/bench_control --device cpu --iters 30
done
fi
[[ $mode == bench ]] && exit $((failed > 0))
w2=16000000000 w3=40000000000
mig mig_v2lite_win_np$np $np --model v2lite --iters 6 --window-bytes $w2
mig mig_v3_win_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes $w3
mig mig_v2lite_win_peak1g_np$np $np --model v2lite --iters 6 --window-bytes $w2 --peak-bytes $gib
mig mig_v3_win_peak1g_np$np $np --model v3 --layers $v3layers --iters 4 --window-bytes $w3 --peak-bytes $gib
mig mig_v2lite_win_pb1_np$np $np --model v2lite --iters 6 --window-bytes $w2 --pipeline-batches 1
mig mig_v2lite_r72_win_np$np $np --model v2lite --slots 72 --iters 6 --window-bytes $w2
mig mig_v2lite_layer_np$np $np --model v2lite --iters 6
mig mig_v2lite_sticky_win_np$np $np --model v2lite --policy sticky --iters 6 --window-bytes $w2
mig mig_v2lite_per_tensor_win_np$np $np --model v2lite --iters 6 --window-bytes 12000000000 --per-tensor-messages
(export EPLB_COPY_KERNEL_BLOCKS=0  # copies through cudaMemcpyBatchAsync instead of the kernel
 step mig_v2lite_win_memcpybatch_np$np "${mpirun[@]}" -x EPLB_COPY_KERNEL_BLOCKS -np $np ./bench/bench_migration \
   --device cuda --model v2lite --iters 6 --window-bytes $w2)
cat "$summary"
exit $((failed > 0))
