#!/usr/bin/env python3
"""eplb's deepseek policy against the numpy port of the reference, same machine, same minutes.

On a shared VM a program's speed changes by up to 2x from one minute to the next, so a time
measured today cannot be set against one published earlier. This script alternates, shape by
shape and round by round, the numpy port (bench/numpy_reference.py, thread CPU time, median of
--repeat calls) and bench_algo's `policy/deepseek/<shape>` (CPU time, median of
--benchmark_repetitions), and prints eplb's time as a percentage of the port's for each pair:
both sides of a pair ran within seconds of each other. The last column sets the same eplb time
against the issue's published numpy figure (bench/shapes.hpp's numpy_ms).

    python3 bench/compare_numpy.py [--bench build/bench/bench_algo] [--rounds 3] [--shape Kimi-K2]

Needs numpy (Debian: python3-numpy) and bench_algo (scripts/test.sh builds it into build/).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import numpy_reference  # noqa: E402  (the port)
except ImportError as e:
    sys.exit(f"compare_numpy.py: {e}; install numpy (Debian: apt-get install python3-numpy)")


def eplb_us(bench, shape, reps):
    """Median CPU time per call (µs), the published numpy ms and the source revision
    bench_algo was built from, from its JSON."""
    filt = "^policy/deepseek/" + shape + "$"
    out = subprocess.run(
        [bench, f"--benchmark_filter={filt}", "--benchmark_min_time=0.2",
         f"--benchmark_repetitions={reps}", "--benchmark_report_aggregates_only=true",
         "--benchmark_format=json"],
        check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    revision = doc.get("context", {}).get("eplb_revision", "not printed")
    runs = doc["benchmarks"]
    med = [r for r in runs if r.get("aggregate_name") == "median"]
    if not med:
        raise RuntimeError(f"bench_algo printed no median for {shape!r} (filter {filt})")
    r = med[0]
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[r["time_unit"]]
    return r["cpu_time"] * scale, r["numpy_ms"], revision


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "bench",
                                 "bench_algo")
    ap.add_argument("--bench", default=os.path.normpath(default_bench),
                    help="path to bench_algo (default: build/bench/bench_algo)")
    ap.add_argument("--rounds", type=int, default=3, help="pairs per shape (default 3)")
    ap.add_argument("--repeat", type=int, default=10, help="numpy calls per pair (median)")
    ap.add_argument("--reps", type=int, default=5, help="bench_algo repetitions per pair")
    ap.add_argument("--shape", action="append", choices=list(numpy_reference.SHAPES),
                    help="shape(s) (default: all)")
    args = ap.parse_args()
    if not os.access(args.bench, os.X_OK):
        ap.error(f"--bench {args.bench}: not an executable file")
    shapes = args.shape or list(numpy_reference.SHAPES)
    print(f"{'shape':<12} {'round':>5} {'numpy port ms':>14} {'eplb us':>9} "
          f"{'eplb/port':>10} {'eplb/published':>15}", flush=True)
    worst = {}
    for rnd in range(1, args.rounds + 1):
        for shape in shapes:
            port_ms = 1e3 * numpy_reference.time_shape(shape, args.repeat)
            us, published_ms, revision = eplb_us(args.bench, shape, args.reps)
            pct_port = 100.0 * us / (1e3 * port_ms)
            pct_pub = 100.0 * us / (1e3 * published_ms)
            worst[shape] = max(worst.get(shape, 0.0), pct_port)
            print(f"{shape:<12} {rnd:>5} {port_ms:>14.2f} {us:>9.1f} {pct_port:>9.2f}% "
                  f"{pct_pub:>14.2f}%", flush=True)
    print(f"bench_algo built from: {revision}")
    print("worst eplb/port per shape: " +
          ", ".join(f"{s} {worst[s]:.2f}%" for s in shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
