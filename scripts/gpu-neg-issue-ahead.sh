#!/usr/bin/env bash
# Usage (GPU machine, 2 GPUs, repository root): bash scripts/gpu-neg-issue-ahead.sh; logs in $OUT.
# GPU check of the bounded issue-ahead: the timeout tests, then a negative control built with
# the bound disabled (the test must then hang: timeout rc 124).
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
root=$(pwd)
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH -np 2)
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > $OUT/cfg.log 2>&1
cmake --build build-gpu -j $(nproc) --target eplb_gpu_mpi_tests > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
(cd build-gpu && timeout 120 "${mpi[@]}" ./tests/eplb_gpu_mpi_tests --gtest_filter='NcclTimeout*' > $OUT/timeout_tests.log 2>&1; echo "timeout tests rc=$?")
grep -E "OK|FAILED|Failure|did not|SKIPPED" $OUT/timeout_tests.log | head -12
rm -rf /tmp/neg && mkdir /tmp/neg && git ls-files -z | xargs -0 cp --parents -t /tmp/neg && cp -r .deps /tmp/neg/ 2>/dev/null
sed -i 's/kIssueAhead = 128;/kIssueAhead = std::size_t{1} << 40;/' /tmp/neg/comm/nccl.hpp
grep -n "kIssueAhead =" /tmp/neg/comm/nccl.hpp
cmake -S /tmp/neg -B /tmp/neg/b -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > $OUT/neg_cfg.log 2>&1
cmake --build /tmp/neg/b -j $(nproc) --target eplb_gpu_mpi_tests > $OUT/neg_build.log 2>&1 || { tail -30 $OUT/neg_build.log; exit 1; }
(cd /tmp/neg/b && timeout 60 "${mpi[@]}" ./tests/eplb_gpu_mpi_tests --gtest_filter='NcclTimeout.APeerThatStopsPosting*' > $OUT/neg_test.log 2>&1; echo "negative control rc=$? (124: hung until killed)")
tail -5 $OUT/neg_test.log
