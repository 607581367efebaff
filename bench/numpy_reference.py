#!/usr/bin/env python3
"""A numpy port of the reference placement policy (DeepSeek's eplb.py, as vLLM runs it with
numpy), for timing it on the same machine, in the same run, as eplb's C++ policy.

The issue's speed target for the `deepseek` policy is a ratio: at most 1 % of the fastest
published Python implementation. On a shared VM both programs' times swing from minute to
minute (not always together: docs/BENCHMARKS.md, eighth session), so bench/compare_numpy.py
times this port and bench_algo back to back, pair by pair; this file is the Python side. It
follows docs/POLICIES.md / the reference specification step by step (float32 loads, stable
descending sorts, first index on ties) and is checked against the `exact` cases of tests/data/eplb_vectors_v1.txt with --check.

    python3 bench/numpy_reference.py --check tests/data/eplb_vectors_v1.txt
    python3 bench/numpy_reference.py --shape V3/N4 --repeat 20
    python3 bench/numpy_reference.py --packing argmin   # an earlier, slower published loop
"""
import argparse
import heapq
import statistics
import sys
import time

import numpy as np

# Same shapes as bench/shapes.hpp: name -> (L, E, R, P, N, G).
SHAPES = {
    "V2-Lite": (26, 64, 72, 8, 1, 1),
    "V3/N4": (58, 256, 288, 32, 4, 8),
    "V3/N8": (58, 256, 320, 64, 8, 8),
    "Qwen3-235B": (94, 128, 136, 8, 1, 1),
    "Kimi-K2": (61, 384, 448, 64, 8, 1),
}


def balanced_packing(w, m):
    """Rows of w (float32 [X][n]) packed into m packs of n/m items: heaviest item first
    (ties: lower index), each to the lightest pack with room (ties: lower pack). The packs
    are a binary heap of (load, pack) tuples (heapq), the fastest way found to run this
    greedy loop in Python; loads add up in double (the vector file's exact cases agree)."""
    rows, n = w.shape
    cap = n // m
    if cap == 1:
        return np.tile(np.arange(n), (rows, 1)), np.zeros((rows, n), dtype=np.int64)
    order = np.argsort(-w, axis=-1, kind="stable").tolist()
    wl = w.tolist()
    pack = [[0] * n for _ in range(rows)]
    rank = [[0] * n for _ in range(rows)]
    for i in range(rows):
        heap = [(0.0, p) for p in range(m)]  # sorted, so already a heap
        items = [0] * m
        wi, pi, ri = wl[i], pack[i], rank[i]
        for g in order[i]:
            load, p = heap[0]
            c = items[p]
            pi[g] = p
            ri[g] = c
            items[p] = c + 1
            if c + 1 < cap:
                heapq.heapreplace(heap, (load + wi[g], p))
            else:
                heapq.heappop(heap)
    return np.array(pack, dtype=np.int64), np.array(rank, dtype=np.int64)


def balanced_packing_argmin(w, m):
    """The same packing as balanced_packing, with the pack chosen per item by np.argmin over
    the pack loads (full packs set to +inf), as an earlier published numpy version did; the
    fastest way found was the heap above (docs/BENCHMARKS.md, ninth session)."""
    rows, n = w.shape
    cap = n // m
    if cap == 1:
        return np.tile(np.arange(n), (rows, 1)), np.zeros((rows, n), dtype=np.int64)
    order = np.argsort(-w, axis=-1, kind="stable")
    pack = np.empty((rows, n), dtype=np.int64)
    rank = np.empty((rows, n), dtype=np.int64)
    for i in range(rows):
        loads = np.zeros(m)  # float64, as the heap's sums
        items = np.zeros(m, dtype=np.int64)
        for g in order[i]:
            p = int(np.argmin(loads))  # first minimum: lowest pack on ties
            pack[i, g] = p
            rank[i, g] = items[p]
            items[p] += 1
            loads[p] = np.inf if items[p] == cap else loads[p] + w[i, g]
    return pack, rank


PACKINGS = {"heap": balanced_packing, "argmin": balanced_packing_argmin}


def replicate_experts(w, r):
    """r - n extra replicas per row, each to the expert with the largest load per replica."""
    rows, n = w.shape
    phy2log = np.tile(np.arange(r), (rows, 1))
    rank = np.zeros((rows, r), dtype=np.int64)
    cnt = np.ones((rows, n), dtype=np.float32)  # small integers, exact in float32
    at = np.arange(rows)
    for i in range(n, r):
        e = np.argmax(w / cnt, axis=-1)
        phy2log[:, i] = e
        rank[:, i] = cnt[at, e]
        cnt[at, e] += 1
    return phy2log, rank, cnt.astype(np.int64)


def inverse(perm):
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def hierarchical(w, R, G, N, P, packing=balanced_packing):
    L, E = w.shape
    gs, gpn, k = E // G, G // N, R // P
    group_pack, group_rank = packing(w.reshape(L, G, gs).sum(-1, dtype=np.float32), N)
    log2mlog = (((group_pack * gpn + group_rank) * gs)[:, :, None] + np.arange(gs)).reshape(L, E)
    mlog2log = inverse(log2mlog)
    per_mlog = np.take_along_axis(w, mlog2log, -1).reshape(-1, E // N)
    phy2mlog, phyrank, mlogcnt = replicate_experts(per_mlog, R // N)
    per_phy = np.take_along_axis(per_mlog / mlogcnt.astype(np.float32), phy2mlog, -1)
    pack, rank = packing(per_phy, P // N)
    pphy2phy = inverse(pack * k + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, -1)
    pphy2mlog = (pphy2mlog.reshape(L, N, -1) + np.arange(0, E, E // N)[None, :, None]).reshape(L, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, -1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, -1).reshape(L, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(L, -1), log2mlog, -1)
    return pphy2log, pphyrank, logcnt


def rebalance(weight, R, G, N, P, packing=balanced_packing):
    """phy2log [L][R], log2phy [L][E][R-E+1], logcnt [L][E], as the reference returns them."""
    w = np.asarray(weight, dtype=np.float32)
    L, E = w.shape
    if G % N == 0:
        phy2log, phyrank, logcnt = hierarchical(w, R, G, N, P, packing)
    else:
        phy2log, phyrank, logcnt = hierarchical(w, R, 1, 1, P, packing)
    X = R - E + 1
    log2phy = np.full((L, E * X), -1, dtype=np.int64)
    np.put_along_axis(log2phy, phy2log * X + phyrank, np.broadcast_to(np.arange(R), (L, R)), axis=1)
    return phy2log, log2phy.reshape(L, E, X), logcnt


def lognormal_load(L, E, seed):
    """Lognormal token counts (sigma 1.0 around 1000 tokens), as bench/shapes.hpp (another
    generator, so other numbers; the numpy time does not depend on them)."""
    rng = np.random.default_rng(seed)
    return np.floor(rng.lognormal(np.log(1000.0), 1.0, size=(L, E)))


def time_shape(name, repeat, packing=balanced_packing):
    L, E, R, P, N, G = SHAPES[name]
    w = lognormal_load(L, E, 42)
    rebalance(w, R, G, N, P, packing)  # warm
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        rebalance(w, R, G, N, P, packing)
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def check(path, packing=balanced_packing):
    """Every exact case of the vector file: identical phy2log and logcnt."""
    tokens = []
    with open(path) as f:
        for line in f:
            if not tokens and line.startswith("#"):
                continue
            tokens.extend(line.split())
    pos, checked, failed = 0, 0, 0

    def rows(n_rows, n_cols, conv):
        nonlocal pos
        out = [[conv(t) for t in tokens[pos + r * n_cols: pos + (r + 1) * n_cols]] for r in range(n_rows)]
        pos += n_rows * n_cols
        return out

    while pos < len(tokens):
        assert tokens[pos] == "case", f"expected 'case' at token {pos}, got {tokens[pos]!r}"
        name, kind = tokens[pos + 1], tokens[pos + 2]
        L, E, R, G, N, P = (int(t) for t in tokens[pos + 3: pos + 9])
        pos += 10
        data = {}
        while tokens[pos] != "end":
            key = tokens[pos]
            pos += 1
            if key == "weights":
                data[key] = rows(L, E, float)
            elif key == "phy2log":
                data[key] = rows(L, R, int)
            elif key == "logcnt":
                data[key] = rows(L, E, int)
            elif key == "maxload":
                data[key] = rows(1, L, float)
            else:
                raise ValueError(f"unknown section {key!r} in case {name}")
        pos += 1
        if kind != "exact":
            continue
        phy2log, _, logcnt = rebalance(data["weights"], R, G, N, P, packing)
        ok = phy2log.tolist() == data["phy2log"] and logcnt.tolist() == data["logcnt"]
        checked += 1
        failed += not ok
        if not ok:
            print(f"case {name}: numpy port differs from the recorded reference", file=sys.stderr)
    print(f"numpy port: {checked - failed} of {checked} exact cases identical")
    return failed == 0 and checked > 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", metavar="VECTORS", help="compare with the exact cases of this file")
    ap.add_argument("--shape", action="append", choices=list(SHAPES), help="shape(s) to time (default: all)")
    ap.add_argument("--repeat", type=int, default=10, help="timed calls per shape (median printed)")
    ap.add_argument("--packing", choices=list(PACKINGS), default="heap",
                    help="the packing loop: heap (heapq, the fastest found; default) or argmin "
                         "(np.argmin per item, an earlier published version)")
    args = ap.parse_args()
    packing = PACKINGS[args.packing]
    if args.check:
        return 0 if check(args.check, packing) else 1
    for name in args.shape or SHAPES:
        print(f"{name} numpy_ms={1e3 * time_shape(name, args.repeat, packing):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
