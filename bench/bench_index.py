"""Approximate HNSW index against the exact fused top-k kernel at catalogue sizes of millions (issue 10).

For each N: a synthetic output layer W_y (N, H) float32 and b_y (N,) (item vectors drawn around 1,000
cluster centres, biases normal with sd 0.5; trained item tables are clustered like this, pure noise
vectors would be the hardest case for any graph index), and query states h = tanh(centre + noise) like
a GRU's. Then, in the same run:

- the exact fused kernel (``_core.topk`` on the packed serving table, ``--threads`` threads) per query;
- bare NumPy ``W_y @ h`` (BLAS pinned to the same threads), the product alone, no top-k;
- building the HNSW index (time, resident memory added, file size), saving and loading it;
- the index's per-query search (with exact rescoring of its candidates, as the Recommender does);
- overlap@k of the index's top k with the exact top k over all queries (the exact kernel is the oracle).

Latency repeats alternate between the sides in blocks so that a slow spell of the shared VM touches
all alike. Records go to bench/results/index.jsonl.

    python bench/bench_index.py --items 1000000             # N = 1M, H = 100, 2 threads
    python bench/bench_index.py --items 1000000 5000000     # also 5M (needs ~8 GB and a long build)
    python bench/bench_index.py --quick                     # N = 20k, a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, write_records


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic(N: int, H: int, n_queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, H)).astype(np.float32)
    W = np.empty((N, H), np.float32)
    for s in range(0, N, 500_000):
        e = min(N, s + 500_000)
        W[s:e] = centres[rng.integers(0, 1000, e - s)] * 0.3
        W[s:e] += rng.standard_normal((e - s, H), dtype=np.float32) * 0.1
    b = (rng.standard_normal(N) * 0.5).astype(np.float32)
    Q = np.tanh(centres[rng.integers(0, 1000, n_queries)]
                + rng.standard_normal((n_queries, H)).astype(np.float32)).astype(np.float32)
    return W, b, Q


def pct(xs) -> dict:
    a = np.asarray(xs) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean())}


def run(N: int, H: int, k: int, threads: int, n_queries: int, M: int, efc: int, ef_search: list,
        rounds: int = 3, space: str = "l2") -> list[dict]:
    from seqrec_fast import _core
    from seqrec_fast.serving.index import HnswIndex

    t0 = time.perf_counter()
    W, b, Q = synthetic(N, H, n_queries)
    table = _core.pack_table(W)
    print(f"N={N:,}: data in {time.perf_counter() - t0:.1f} s", flush=True)
    exact_idx, _ = _core.topk(Q, table, b, k, None, None, threads)

    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = HnswIndex.build(W, b, "bench", M=M, ef_construction=efc, num_threads=threads, space=space)
    build_s = time.perf_counter() - t0
    build_rss = rss_bytes() - rss0
    print(f"N={N:,}: index built in {build_s:.1f} s (+{build_rss / 2**20:.0f} MiB)", flush=True)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.hnsw")
        t0 = time.perf_counter()
        index.save(path)
        save_s = time.perf_counter() - t0
        file_bytes = os.path.getsize(path)
        t0 = time.perf_counter()
        index = HnswIndex.load(path, W, b, "bench", num_threads=threads)
        load_s = time.perf_counter() - t0

    lat = {"exact": [], "numpy": [], **{f"hnsw ef={e}": [] for e in ef_search}}
    overlap = {}
    for e in ef_search:
        index.ef_search = e
        approx, _ = index.search(Q, k)
        overlap[e] = float(np.mean([len(set(a.tolist()) & set(x.tolist())) / k
                                    for a, x in zip(approx, exact_idx)]))
    per_round = max(1, n_queries // rounds)
    with blas_threads(threads):
        for r in range(rounds):
            qs = Q[r * per_round: (r + 1) * per_round]
            for q in qs:
                t = time.perf_counter()
                _core.topk(q[None], table, b, k, None, None, threads)
                lat["exact"].append(time.perf_counter() - t)
            for q in qs:
                t = time.perf_counter()
                _ = W @ q
                lat["numpy"].append(time.perf_counter() - t)
            for e in ef_search:
                index.ef_search = e
                for q in qs:
                    t = time.perf_counter()
                    index.search(q[None], k)
                    lat[f"hnsw ef={e}"].append(time.perf_counter() - t)
    recs = []
    base = {"n_items": N, "hidden": H, "k": k, "threads": threads, "queries": n_queries,
            "loadavg": os.getloadavg()[0]}
    recs.append({**base, "side": "exact fused topk", **pct(lat["exact"]), "overlap": 1.0,
                 "table_bytes": int(table.nbytes)})
    recs.append({**base, "side": "numpy W_y @ h (product only)", **pct(lat["numpy"])})
    for e in ef_search:
        recs.append({**base, "side": f"hnsw {space} M={M} efc={efc} ef={e}", **pct(lat[f"hnsw ef={e}"]),
                     "overlap": overlap[e], "build_s": build_s, "build_rss_bytes": build_rss,
                     "file_bytes": file_bytes, "save_s": save_s, "load_s": load_s})
    del index, W, b, table
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=600)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--space", choices=["l2", "ip"], default="l2",
                    help="l2: inner product reduced to L2 by an extra coordinate; ip: hnswlib's ip graph")
    ap.add_argument("--quick", action="store_true", help="N=20k, 90 queries")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.queries = [20_000], 90
    out = []
    for N in args.items:
        recs = run(N, args.hidden, args.k, args.threads, args.queries, args.M, args.ef_construction,
                   args.ef_search, space=args.space)
        out += recs
        print(f"\n| N | side | p50 µs | p99 µs | overlap@{args.k} | build s | build MiB | file MiB |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in recs:
            print(f"| {N:,} | {r['side']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                  f"{r.get('overlap', float('nan')):.3f} | {r.get('build_s', float('nan')):.0f} | "
                  f"{r.get('build_rss_bytes', 0) / 2**20:.0f} | {r.get('file_bytes', 0) / 2**20:.0f} |",
                  flush=True)
        if not args.no_record:
            write_records("index", recs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
