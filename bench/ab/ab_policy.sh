#!/usr/bin/env bash
# In-process A/B of the deepseek policy between a git revision (old) and the working tree
# (new): builds both algo layers into build-ab/ (old namespace renamed to eplb_old) and runs
# build-ab/ab. Needs g++ with C++20 and git; x86-64 with AVX-512 for the batched kernel.
# Usage: bench/ab/ab_policy.sh REV [calls per side] [shape substring]
#   e.g. bench/ab/ab_policy.sh HEAD~1 300 Kimi
# REV may also be a directory holding an exported tree (its algo/ and bench/shapes.hpp), for a
# machine without the repository's history (the GPU host gets a copy of the working tree only):
#   git archive REV algo bench/shapes.hpp | tar -x -C DIR
set -euo pipefail
rev=${1:?usage: ab_policy.sh REV [calls] [shape]}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/build-ab
mkdir -p "$out"
rm -rf "$out/old-src" && mkdir -p "$out/old-src"
if [[ -d $rev ]]; then
  cp -r "$rev/algo" "$out/old-src/" && mkdir -p "$out/old-src/bench" && cp "$rev/bench/shapes.hpp" "$out/old-src/bench/"
else
  git -C "$root" archive "$rev" algo bench/shapes.hpp | tar -x -C "$out/old-src"
fi
flags=(-O3 -DNDEBUG -std=c++20 -DEPLB_HAVE_AVX512_KERNEL)
avx=(-mavx512f -mavx512vl -mavx512dq -mavx512bw)
for side in old new; do
  src=$root rename=()
  [[ $side == old ]] && src=$out/old-src rename=(-Deplb=eplb_old)
  # Headers are included as "eplb/algo/..." (older revisions: "algo/...", found through -I$src).
  rm -rf "$out/inc-$side" && mkdir -p "$out/inc-$side/eplb" && ln -s "$src/algo" "$out/inc-$side/eplb/algo"
  objs=()
  for f in "$src"/algo/*.cpp; do
    b=$(basename "$f" .cpp) extra=()
    [[ $b == simd_avx512 ]] && extra=("${avx[@]}")
    g++ "${flags[@]}" "${rename[@]}" "${extra[@]}" -I"$out/inc-$side" -I"$src" -c "$f" -o "$out/${side}_$b.o"
    objs+=("$out/${side}_$b.o")
  done
  g++ "${flags[@]}" "${rename[@]}" -DSIDE=${side}_ -I"$out/inc-$side" -I"$src" -c "$root/bench/ab/side.cpp" -o "$out/${side}_side.o"
  rm -f "$out/lib_$side.a" && ar rcs "$out/lib_$side.a" "${objs[@]}" "$out/${side}_side.o"
done
g++ -O2 -std=c++20 "$root/bench/ab/main.cpp" -Wl,--start-group "$out/lib_old.a" "$out/lib_new.a" -Wl,--end-group -o "$out/ab"
"$out/ab" "${@:2}"
