"""In-process serving latency and throughput (issue 5, benchmarks 4a and 4b).

(a) Single events: ``Recommender.recommend(session, item, k=20)`` (one GRU step + top 20 over N items,
    one C++ call) for N = 3k, 40k, 100k, 1M at H = 100, with 1 and 2 kernel threads, float32 / bfloat16 /
    int8 scoring tables; also the bare kernel ``_core.topk(h, packed_table, b_y, 20, None, scales, nt)``.
(b) ``recommend_batch`` of 512 sessions at N = 40k: events/s at 1 and 2 threads, float32 and int8.

Baselines in the same run, thread counts pinned on every side:
- PyTorch eager: ``nn.GRUCell`` step + ``F.linear(h, E, b)`` (= ``h @ E.T + b``) + ``torch.topk``, under
  ``torch.set_num_threads(n)``, in a separate process (torch's wheel ships its own libgomp.so.1 under the
  same soname as the one seqrec_fast uses; see bench_train.py). Skipped with a note if torch is missing.
- NumPy: GRU step + ``E @ h + b`` + ``np.argpartition`` + sort of the k (BLAS pinned by threadpoolctl);
  and the bare ``E @ h`` pass as the memory-bandwidth yardstick.

Validation before timing: the seqrec float32 top-20 equals the exact (float64 NumPy) top-20, ties aside,
for a few real ``recommend`` calls and bare-kernel queries at every N (and torch's top-20 likewise, in
its process); reduced precision reports overlap@20 against float32 on 200 random states, on states the
model reaches, and on real prefixes (a GRU fitted for one epoch on rsc15_100k, test-set prefixes).

Latency samples are single calls (perf_counter); p50/p90/p99 are over all samples of a case, which are
taken in several rounds interleaved with the other sides of the same (N, threads), and the spread of
the per-round p50s is reported as the noise. Weights are random (latency does not depend on them).

    python bench/bench_serving.py            # full run (~5 min), table + bench/results/serving.jsonl
    python bench/bench_serving.py --quick    # N <= 100k, fewer samples (< 1 min)
    pytest bench/bench_serving.py --benchmark-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, cpu_model, write_records

# seqrec_fast and torch are imported lazily: the torch worker (--torch-worker) must never load
# seqrec_fast's OpenMP runtime, and the main process never imports torch.

H = 100
K = 20
BATCH = 512
BATCH_N = 40_000
SIZES = (3_000, 40_000, 100_000, 1_000_000)
PRECISIONS = ("float32", "bfloat16", "int8")
WORKER_TAG = "@@bench_serving@@"
ROOT = Path(__file__).resolve().parents[1]
RSC15 = Path(os.environ.get("SEQREC_DATA_DIR", ROOT.parent / "shared" / "data" / "rsc15_100k_sessionrec"))


# ---------------------------------------------------------------------------------------------------
# sampling helpers
# ---------------------------------------------------------------------------------------------------
def n_samples(N: int, quick: bool) -> int:
    """Single-call samples per case and round (3 rounds): about 0.3-1 s per case."""
    if N <= 3_000:
        n = 1500
    elif N <= 40_000:
        n = 600
    elif N <= 100_000:
        n = 300
    else:
        n = 25
    return max(10, n // 4) if quick else n


ROUNDS = 3
GAP_S = 0.15


def summarize(rounds: list[list[float]]) -> dict:
    """p50/p90/p99 (µs) over all samples; the per-round p50s as the noise."""
    a = np.concatenate([np.asarray(r) for r in rounds]) * 1e6
    per_round = [float(np.percentile(np.asarray(r) * 1e6, 50)) for r in rounds]
    return {"p10_us": float(np.percentile(a, 10)), "p50_us": float(np.percentile(a, 50)), "p90_us": float(np.percentile(a, 90)),
            "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean()), "n": int(a.size),
            "round_p50_us": per_round,
            "round_p50_spread": (max(per_round) - min(per_round)) / statistics.median(per_round)}


def time_calls(fn: Callable[[int], object], n: int, warmup: int = 5, pause: bool = True) -> list[float]:
    """n single-call wall times (s) of fn(j), j = 0..n-1, after a pause and a warm-up. The pause lets
    the previous case's thread pool (OpenBLAS, libgomp) stop spinning: on 2 cores a spinning idle
    worker of another pool otherwise shows up as this case's tail latency (p99 of 8 ms seen)."""
    if pause:
        time.sleep(GAP_S)
    for j in range(warmup):
        fn(j)
    out = []
    pc = time.perf_counter
    for j in range(n):
        t0 = pc()
        fn(j)
        out.append(pc() - t0)
    return out


def interleaved(cases: dict[str, Callable[[int], object]], n: int, rounds: int = ROUNDS) -> dict:
    """Times every case in `rounds` rounds, cases interleaved within a round; name -> summary."""
    got: dict[str, list] = {name: [] for name in cases}
    prev = None
    for _ in range(rounds):
        for name, fn in cases.items():
            family = name.split()[0]  # seqrec (libgomp) / numpy (OpenBLAS) / torch: pause on a switch
            got[name].append(time_calls(fn, n, pause=family != prev))
            prev = family
    return {name: summarize(r) for name, r in got.items()}


def exact_topk(E: np.ndarray, b: np.ndarray, h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (float64, stable: ties to the lower index) of E @ h + b; (idx, scores)."""
    s = E.astype(np.float64) @ h.astype(np.float64) + b
    idx = np.argsort(-s, kind="stable")[:k]
    return idx, s


def same_topk(got: np.ndarray, ref_idx: np.ndarray, s: np.ndarray, rtol: float = 1e-5) -> tuple[bool, bool]:
    """(identical lists, equal ties aside): every item got is scored within float32 rounding of the
    exact k-th score, and the k exact scores of got, in order, match the exact top k."""
    got = np.asarray(got, np.int64)
    if np.array_equal(got, ref_idx):
        return True, True
    tol = rtol * (np.abs(s[ref_idx]).max() + 1.0)
    ok = len(got) == len(ref_idx) and np.allclose(s[got], s[ref_idx], rtol=0, atol=tol)
    return False, bool(ok)


# ---------------------------------------------------------------------------------------------------
# PyTorch side (separate process)
# ---------------------------------------------------------------------------------------------------
def torch_worker(sizes, threads, quick: bool, batch_threads) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_interop_threads(1)
    out = {"torch": torch.__version__, "single": [], "batch": [], "checks": []}
    with torch.inference_mode():
        for N in sizes:
            rng = np.random.default_rng(N)
            E_np = (rng.normal(size=(N, H)) * np.sqrt(2.0 / (N + H))).astype(np.float32)
            b_np = rng.normal(0, 0.1, N).astype(np.float32)
            E, b = torch.from_numpy(E_np), torch.from_numpy(b_np)
            torch.manual_seed(0)
            cell = torch.nn.GRUCell(H, H)
            items = rng.integers(0, N, size=4096)
            # validate: torch's top 20 after a step equals the exact top 20 (ties aside)
            h = torch.zeros(1, H)
            ok = same = 0
            for j in range(5):
                h = cell(E[int(items[j])][None], h)
                _, ix = torch.topk(F.linear(h, E, b), K)
                ref_idx, s = exact_topk(E_np, b_np.astype(np.float64), h[0].numpy(), K)
                a, o = same_topk(ix[0].numpy(), ref_idx, s)
                same += a
                ok += o
            out["checks"].append({"side": "torch", "n_items": N, "queries": 5, "identical": same,
                                  "equal_ties_aside": ok})
            if ok != 5:
                raise AssertionError(f"torch top-{K} differs from the exact top-{K} at N={N}")
            for nt in threads:
                torch.set_num_threads(nt)
                state = [torch.zeros(1, H)]

                def step(j, state=state, cell=cell, E=E, b=b, items=items):
                    h = cell(E[int(items[j % 4096])][None], state[0])
                    state[0] = h
                    sc, ix = torch.topk(F.linear(h, E, b), K)
                    return ix[0].numpy(), sc[0].numpy()

                res = interleaved({"torch": step}, n_samples(N, quick))["torch"]
                out["single"].append({"side": "torch eager", "n_items": N, "threads": nt, **res})
                print(f"  torch N={N} threads={nt}: p50 {res['p50_us']:.0f} µs", file=sys.stderr)
            if N == BATCH_N:
                for nt in batch_threads:
                    torch.set_num_threads(nt)
                    hb = [torch.zeros(BATCH, H)]

                    def bstep(j, hb=hb, cell=cell, E=E, b=b, items=items):
                        x = E[torch.from_numpy(items[(j * 7) % 3000: (j * 7) % 3000 + BATCH])]
                        hb[0] = cell(x, hb[0])
                        sc, ix = torch.topk(F.linear(hb[0], E, b), K, dim=1)
                        return ix.numpy(), sc.numpy()

                    lat = []
                    for _ in range(ROUNDS):
                        lat.append(time_calls(bstep, 4 if quick else 12, warmup=2))
                    res = summarize(lat)
                    out["batch"].append({"side": "torch eager", "n_items": N, "batch": BATCH,
                                         "threads": nt, "precision": "float32", **res,
                                         "events_per_s": BATCH / (res["p50_us"] * 1e-6)})
    return out


def run_torch(sizes, threads, quick, batch_threads) -> Optional[dict]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("NOTE: torch is not installed; the PyTorch baseline is skipped "
              "(pip install torch==2.13.0)", file=sys.stderr)
        return None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker",
           "--sizes", *map(str, sizes), "--threads", *map(str, threads),
           "--batch-threads", *map(str, batch_threads)] + (["--quick"] if quick else [])
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"torch worker failed (exit {p.returncode})")
    line = next(x for x in reversed(p.stdout.splitlines()) if x.startswith(WORKER_TAG))
    return json.loads(line[len(WORKER_TAG):])


# ---------------------------------------------------------------------------------------------------
# seqrec_fast and NumPy sides
# ---------------------------------------------------------------------------------------------------
def build_model(n_items: int, seed: int = 0):
    from bench_serving_http import build_model as _build

    return _build(n_items, H, seed)


class NumpyServing:
    """The NumPy baseline: a GRU step (the same equations as the reference) + E @ h + b +
    argpartition + sort of the k. State per session kept as a (H,) float32 array."""

    def __init__(self, model):
        names = list(model.param_names_)
        P = {n: np.ascontiguousarray(p, np.float32) for n, p in zip(names, model.params_)}
        self.W_x, self.W_h, self.b = P["layer0.W_x"], P["layer0.W_h"], P["layer0.b"]
        self.E, self.b_y = P["W_y"], P["b_y"]  # constrained embedding: the input is a row of W_y
        self.h = np.zeros(H, np.float32)

    def step(self, item: int) -> np.ndarray:
        from seqrec_fast import reference as ref

        h_new, _ = ref.gru_forward(self.E[item][None], self.h[None], self.W_x, self.W_h, self.b)
        self.h = np.asarray(h_new[0], np.float32)
        return self.h

    def topk(self, h: np.ndarray, k: int = K):
        s = self.E @ h
        s += self.b_y
        idx = np.argpartition(-s, k)[:k]
        idx = idx[np.argsort(-s[idx], kind="stable")]
        return idx, s[idx]

    def recommend(self, item: int, k: int = K):
        return self.topk(self.step(item), k)


def validate_seqrec(model, recs: dict, nt: int) -> list[dict]:
    """seqrec float32 recommend and the bare kernel vs the exact top 20, before anything is timed."""
    from seqrec_fast import _core

    E = model.params_[model.param_names_.index("W_y")]
    b = model.params_[model.param_names_.index("b_y")].astype(np.float64)
    rec = recs["float32"]
    rng = np.random.default_rng(7)
    checks = []
    same = ok = 0
    for j in range(5):
        ids, _ = rec.recommend("validate", int(rng.integers(1, model.n_items + 1)), k=K)
        h = rec.store.get("validate").h[-1][0]
        ref_idx, s = exact_topk(E, b, h, K)
        a, o = same_topk(np.asarray(ids) - 1, ref_idx, s)  # ids are 1..N
        same += a
        ok += o
    rec.reset("validate")
    checks.append({"side": "seqrec recommend float32", "queries": 5, "identical": same,
                   "equal_ties_aside": ok})
    same2 = ok2 = 0
    Hs = np.tanh(rng.normal(size=(5, H))).astype(np.float32)
    idx, _ = _core.topk(Hs, rec._table, rec._b_y, K, None, None, nt)
    for q in range(5):
        ref_idx, s = exact_topk(E, b, Hs[q], K)
        a, o = same_topk(idx[q], ref_idx, s)
        same2 += a
        ok2 += o
    checks.append({"side": "seqrec kernel float32", "queries": 5, "identical": same2,
                   "equal_ties_aside": ok2})
    if ok != 5 or ok2 != 5:
        raise AssertionError(f"seqrec float32 top-{K} differs from the exact top-{K}: {checks}")
    # the NumPy baseline too
    npb = NumpyServing(model)
    idx3, _ = npb.topk(Hs[0].astype(np.float32))
    ref_idx, s = exact_topk(E, b, Hs[0], K)
    if not same_topk(idx3, ref_idx, s)[1]:
        raise AssertionError("NumPy baseline top-k differs from the exact top-k")
    return checks


def overlap_random(model, recs: dict, n_states: int = 200) -> dict:
    """overlap@20 of each reduced table vs float32: random states in (-1, 1) and model states (the
    states reached after random item prefixes of length 1-10)."""
    rng = np.random.default_rng(11)
    rand = rng.uniform(-1, 1, size=(n_states, H)).astype(np.float32)
    prefixes = [rng.integers(1, model.n_items + 1, size=int(rng.integers(1, 11))).tolist()
                for _ in range(n_states)]
    out = {}
    f32 = recs["float32"]
    for prec in PRECISIONS[1:]:
        r = recs[prec]
        a, _ = f32._topk(rand, f32._table, f32._b_y, K, None, None, 1)
        c, _ = r._topk(rand, r._table, r._b_y, K, None, r._scales, 1)
        ov_rand = float(np.mean([len(set(x.tolist()) & set(y.tolist())) / K for x, y in zip(a, c)]))
        ov_model = r.overlap_at_k(prefixes, k=K, max_prefixes=n_states)
        out[prec] = {"random_states": ov_rand, "model_states": ov_model}
    return out


def overlap_real(quick: bool) -> Optional[dict]:
    """overlap@20 on real prefixes: a GRU (H=100) fitted one epoch on rsc15_100k train_full, all
    prefixes of the test sessions (at most 5000). None if the data is absent."""
    train_p, test_p = RSC15 / "rsc15_100k_train_full.tsv.gz", RSC15 / "rsc15_100k_test.tsv.gz"
    if not (train_p.is_file() and test_p.is_file()):
        print(f"NOTE: {RSC15} not found; overlap on real prefixes skipped", file=sys.stderr)
        return None
    from seqrec_fast.data import load
    from seqrec_fast.model import SessionRNN
    from seqrec_fast.serving import Recommender

    t0 = time.perf_counter()
    train = load(str(train_p))
    test = load(str(test_p), item_map=train)
    model = SessionRNN(cell="gru", layers=[H], n_epochs=1, seed=0, num_threads=1, progress=False,
                       verbose=False).fit(train)
    out = {"data": "rsc15_100k (1 epoch)", "n_items": int(train.n_items)}
    for prec in PRECISIONS[1:]:
        rec = Recommender(model, precision=prec)
        out[prec] = rec.overlap_at_k(test, k=K, max_prefixes=1000 if quick else 5000)
    out["prefixes"] = 1000 if quick else 5000
    out["seconds"] = time.perf_counter() - t0
    return out


def bench_size(N: int, threads, quick: bool, batch_threads, batch_precisions) -> tuple[list, list, dict]:
    """All seqrec and NumPy cases at N items: (single records, batch records, checks)."""
    from seqrec_fast.serving import Recommender

    t_start = time.perf_counter()
    model = build_model(N)
    recs = {p: Recommender(model, precision=p, num_threads=1) for p in PRECISIONS}
    checks = {"validation": validate_seqrec(model, recs, 1), "overlap@20": overlap_random(model, recs)}
    rng = np.random.default_rng(N + 5)
    items = rng.integers(1, N + 1, size=4096).tolist()
    hs = np.tanh(rng.normal(size=(4096, H))).astype(np.float32)[:, None, :]  # (4096, 1, H)
    npb = NumpyServing(model)
    E, b_y = npb.E, npb.b_y
    buf = np.empty(N, np.float32)
    single = []
    n = n_samples(N, quick)
    for nt in threads:
        cases = {}
        for p, rec in recs.items():
            rec.num_threads = nt

            def recommend(j, rec=rec):
                return rec.recommend(f"s{j % 100}", items[j % 4096], k=K)

            def kernel(j, rec=rec, nt=nt):
                return rec._topk(hs[j % 4096], rec._table, rec._b_y, K, None, rec._scales, nt)

            h_state = [np.zeros((1, H), np.float32)]  # advanced in place by the kernel

            def step_topk(j, rec=rec, nt=nt, h_state=h_state):
                return rec._step_topk(rec.cell, rec.embedding, rec._weights, rec._E_in, rec._W_y,
                                      rec._b_y, h_state, None, np.array([items[j % 4096] - 1], np.int32),
                                      K, None, rec._table, rec._scales, nt)

            cases[f"seqrec recommend|{p}"] = recommend
            cases[f"seqrec kernel step_topk|{p}"] = step_topk
            cases[f"seqrec kernel topk|{p}"] = kernel
        cases["numpy step+topk|float32"] = lambda j: npb.recommend(items[j % 4096] - 1)
        cases["numpy E@h|float32"] = lambda j: np.dot(E, hs[j % 4096][0], out=buf)
        with blas_threads(nt):
            res = interleaved(cases, n)
        for name, r in res.items():
            side, prec = name.split("|")
            single.append({"side": side, "precision": prec, "n_items": N, "threads": nt, **r})
        print(f"  N={N} threads={nt}: seqrec f32 p50 {res['seqrec recommend|float32']['p50_us']:.0f} µs, "
              f"numpy {res['numpy step+topk|float32']['p50_us']:.0f} µs", file=sys.stderr)
    batch = []
    if N == BATCH_N:
        sids = [f"b{i}" for i in range(BATCH)]
        for p in batch_precisions:
            rec = recs[p]
            for nt in batch_threads:
                rec.num_threads = nt

                def bcall(j, rec=rec):
                    return rec.recommend_batch(sids, items[(j * 7) % 3000: (j * 7) % 3000 + BATCH], k=K)

                r = bcall(0)
                assert len(r) == BATCH and all(len(x[0]) == K for x in r)
                lat = [time_calls(bcall, 4 if quick else 12, warmup=2) for _ in range(ROUNDS)]
                s = summarize(lat)
                batch.append({"side": "seqrec recommend_batch", "precision": p, "n_items": N,
                              "batch": BATCH, "threads": nt, **s,
                              "events_per_s": BATCH / (s["p50_us"] * 1e-6)})
                # the bare kernel on 512 states: how much of the batch is the top-k itself
                Hb = np.ascontiguousarray(hs[:BATCH, 0])

                def kcall(j, rec=rec, nt=nt, Hb=Hb):
                    return rec._topk(Hb, rec._table, rec._b_y, K, None, rec._scales, nt)

                lat = [time_calls(kcall, 4 if quick else 12, warmup=2) for _ in range(ROUNDS)]
                s = summarize(lat)
                batch.append({"side": "seqrec kernel topk (512 states)", "precision": p, "n_items": N,
                              "batch": BATCH, "threads": nt, **s,
                              "events_per_s": BATCH / (s["p50_us"] * 1e-6)})
        # NumPy batch: GRU step on 512 + (512,H)@(H,N) + argpartition per row
        from seqrec_fast import reference as ref

        for nt in batch_threads:
            hb = [np.zeros((BATCH, H), np.float32)]

            def nbatch(j, hb=hb):
                it = np.asarray(items[(j * 7) % 3000: (j * 7) % 3000 + BATCH]) - 1
                h_new, _ = ref.gru_forward(E[it], hb[0], npb.W_x, npb.W_h, npb.b)
                hb[0] = np.asarray(h_new, np.float32)
                S = hb[0] @ E.T
                S += b_y
                idx = np.argpartition(-S, K, axis=1)[:, :K]
                o = np.argsort(-np.take_along_axis(S, idx, 1), axis=1, kind="stable")
                return np.take_along_axis(idx, o, 1)

            with blas_threads(nt):
                lat = [time_calls(nbatch, 3 if quick else 8, warmup=1) for _ in range(ROUNDS)]
            s = summarize(lat)
            batch.append({"side": "numpy batch", "precision": "float32", "n_items": N, "batch": BATCH,
                          "threads": nt, **s, "events_per_s": BATCH / (s["p50_us"] * 1e-6)})
    checks["seconds"] = time.perf_counter() - t_start
    for rec in recs.values():
        rec.store.clear()
    del recs, model
    return single, batch, checks


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def add_ratios(single: list, batch: list) -> None:
    def find(side, N, nt, prec="float32", rows=single):
        return next((r for r in rows if r["side"] == side and r["n_items"] == N and r["threads"] == nt
                     and r.get("precision", "float32") == prec), None)

    for r in single:
        r["p99_over_p50"] = r["p99_us"] / r["p50_us"]
        if r["side"].startswith("seqrec"):
            t = find("torch eager", r["n_items"], r["threads"])
            n = find("numpy step+topk", r["n_items"], r["threads"])
            bw = find("numpy E@h", r["n_items"], r["threads"])
            if t:
                r["speedup_vs_torch_p50"] = t["p50_us"] / r["p50_us"]
            if n:
                r["speedup_vs_numpy_p50"] = n["p50_us"] / r["p50_us"]
            if bw:
                r["vs_numpy_Eh_pass"] = bw["p50_us"] / r["p50_us"]
    for r in batch:
        t = find("torch eager", r["n_items"], r["threads"], rows=batch)
        if t and r["side"] != "torch eager":
            r["throughput_vs_torch"] = r["events_per_s"] / t["events_per_s"]


def tables(single, batch, checks, torch_info) -> str:
    L = []
    L.append(f"CPU: {cpu_model()} ({os.cpu_count()} cores); H={H}, k={K}, GRU, random weights; "
             f"torch: {torch_info or 'not run'}; load avg at start: {checks.get('loadavg')}")
    L.append("")
    L.append("### (a) single event latency (µs; p50 spread = (max-min)/median of the per-round p50s)")
    L.append("")
    L.append("| N | thr | side | precision | p50 | p90 | p99 | p99/p50 | p50 spread | vs torch | vs numpy |")
    L.append("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    order = {"seqrec recommend": 0, "seqrec kernel step_topk": 1, "seqrec kernel topk": 2,
             "torch eager": 3, "numpy step+topk": 4, "numpy E@h": 5}
    for r in sorted(single, key=lambda r: (r["n_items"], r["threads"], order.get(r["side"], 9),
                                           PRECISIONS.index(r.get("precision", "float32")))):
        vt = f"{r['speedup_vs_torch_p50']:.2f}x" if "speedup_vs_torch_p50" in r else ""
        vn = f"{r['speedup_vs_numpy_p50']:.2f}x" if "speedup_vs_numpy_p50" in r else ""
        L.append(f"| {r['n_items']:,} | {r['threads']} | {r['side']} | {r.get('precision', 'float32')} "
                 f"| {r['p50_us']:,.1f} | {r['p90_us']:,.1f} | {r['p99_us']:,.1f} | {r['p99_over_p50']:.2f} "
                 f"| {r['round_p50_spread'] * 100:.0f}% | {vt} | {vn} |")
    L.append("")
    L.append(f"### (b) batch of {BATCH} sessions, N={BATCH_N:,} (ms per batch; events/s at the p50)")
    L.append("")
    L.append("| side | precision | thr | p50 ms | p90 ms | events/s | vs torch |")
    L.append("|---|---|---:|---:|---:|---:|---:|")
    for r in sorted(batch, key=lambda r: (r["side"], r["precision"], r["threads"])):
        vt = f"{r['throughput_vs_torch']:.2f}x" if "throughput_vs_torch" in r else ""
        L.append(f"| {r['side']} | {r['precision']} | {r['threads']} | {r['p50_us'] / 1e3:,.2f} "
                 f"| {r['p90_us'] / 1e3:,.2f} | {r['events_per_s']:,.0f} | {vt} |")
    L.append("")
    L.append("### overlap@20 vs float32")
    L.append("")
    L.append("| source | N | bfloat16 | int8 |")
    L.append("|---|---:|---:|---:|")
    for N, c in sorted(checks["per_size"].items()):
        ov = c["overlap@20"]
        for src in ("random_states", "model_states"):
            L.append(f"| {src.replace('_', ' ')} (random GRU, 200) | {N:,} | {ov['bfloat16'][src]:.4f} "
                     f"| {ov['int8'][src]:.4f} |")
    real = checks.get("real_overlap")
    if real:
        L.append(f"| real test prefixes, {real['data']}, {real['prefixes']} | {real['n_items']:,} "
                 f"| {real['bfloat16']:.4f} | {real['int8']:.4f} |")
    L.append("")
    vals = [v for c in checks["per_size"].values() for v in c["validation"]]
    vals += checks.get("torch_checks", [])
    ok = all(v["equal_ties_aside"] == v["queries"] for v in vals)
    L.append(f"Validation (top-{K} vs exact float64 top-{K}, before timing): "
             f"{'all passed' if ok else 'FAILED'} "
             f"({sum(v['identical'] for v in vals)}/{sum(v['queries'] for v in vals)} identical lists, "
             f"the rest equal ties aside)")
    return "\n".join(L)


def aims(single, batch) -> str:
    def get(side, N, nt, prec):
        return next((r for r in single if r["side"] == side and r["n_items"] == N and r["threads"] == nt
                     and r["precision"] == prec), None)

    L = ["", "### aims (issue 5)", ""]
    r = get("seqrec recommend", 40_000, 2, "float32")
    if r and "speedup_vs_torch_p50" in r:
        L.append(f"- N=40k float32 2 threads: {r['speedup_vs_torch_p50']:.2f}x torch p50 (aim >= 1.5x); "
                 f"p99/p50 = {r['p99_over_p50']:.2f} (aim < 2)")
    for nt in (1, 2):
        r = get("seqrec recommend", 40_000, nt, "float32")
        if r and nt == 1 and "speedup_vs_torch_p50" in r:
            L.append(f"- N=40k float32 1 thread: {r['speedup_vs_torch_p50']:.2f}x torch p50; "
                     f"p99/p50 = {r['p99_over_p50']:.2f}")
        for p in PRECISIONS[1:]:
            r = get("seqrec recommend", 40_000, nt, p)
            if r and "speedup_vs_torch_p50" in r:
                L.append(f"- N=40k {p} {nt} thread(s): {r['speedup_vs_torch_p50']:.2f}x torch p50 "
                         f"(aim >= 4x)")
    for nt in (1, 2):
        r = get("seqrec recommend", 3_000, nt, "float32")
        if r:
            L.append(f"- N=3k float32 {nt} thread(s): p50 {r['p50_us']:.1f} µs (aim < 25 µs)")
    for r in batch:
        if r["side"] == "seqrec recommend_batch" and "throughput_vs_torch" in r:
            L.append(f"- batch {BATCH} N=40k {r['precision']} {r['threads']} thread(s): "
                     f"{r['throughput_vs_torch']:.2f}x torch throughput (aim >= 3x)")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N <= 100k, fewer samples (< 1 min)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-real", action="store_true", help="skip overlap on real rsc15 prefixes")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sizes = a.sizes or ([s for s in SIZES if s <= 100_000] if a.quick else list(SIZES))
    if a.torch_worker:
        res = torch_worker(sizes, a.threads, a.quick, a.batch_threads)
        print(WORKER_TAG + json.dumps(res))
        return 0

    t0 = time.perf_counter()
    checks = {"loadavg": [round(x, 2) for x in os.getloadavg()], "per_size": {}}
    single, batch = [], []
    torch_res = None if a.no_torch else run_torch(sizes, a.threads, a.quick, a.batch_threads)
    if torch_res:
        single += [{**r, "precision": "float32"} for r in torch_res["single"]]
        batch += torch_res["batch"]
        checks["torch_checks"] = torch_res["checks"]
    print(f"  torch side: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for N in sizes:
        s, b, c = bench_size(N, a.threads, a.quick, a.batch_threads, ("float32", "int8"))
        single += s
        batch += b
        checks["per_size"][N] = c
    if not a.no_real:
        checks["real_overlap"] = overlap_real(a.quick)
    add_ratios(single, batch)
    from seqrec_fast import _core

    print(tables(single, batch, checks, torch_res and torch_res["torch"]))
    print(aims(single, batch))
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s; seqrec_fast ISA variant {_core.ISA}")
    if not a.no_record:
        base = {"bench": "serving", "hidden": H, "k": K, "isa": _core.ISA, "quick": a.quick,
                "torch": torch_res and torch_res["torch"], "loadavg_start": checks["loadavg"]}
        recs = [{**base, "mode": "single", **r} for r in single]
        recs += [{**base, "mode": "batch", **r} for r in batch]
        for N, c in checks["per_size"].items():
            recs.append({**base, "mode": "checks", "n_items": N, **c})
        if checks.get("real_overlap"):
            recs.append({**base, "mode": "real_overlap", **checks["real_overlap"]})
        if checks.get("torch_checks"):
            recs.append({**base, "mode": "torch_checks", "checks": checks["torch_checks"]})
        path = write_records("serving", recs)
        print(f"appended {len(recs)} records to {path}")
    return 0


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (small: N = 3k and 40k, one thread)
# ---------------------------------------------------------------------------------------------------
try:
    import pytest

    _CACHE: dict = {}

    def _setup(N: int, precision: str):
        from seqrec_fast.serving import Recommender

        key = (N, precision)
        if key not in _CACHE:
            model = _CACHE.get(("model", N)) or build_model(N)
            _CACHE[("model", N)] = model
            rec = Recommender(model, precision=precision, num_threads=1)
            if precision == "float32":
                validate_seqrec(model, {"float32": rec}, 1)
            _CACHE[key] = rec
        return _CACHE[("model", N)], _CACHE[key]

    @pytest.mark.parametrize("N", [3_000, 40_000])
    @pytest.mark.parametrize("side", ["seqrec-float32", "seqrec-bfloat16", "seqrec-int8", "numpy"])
    def test_recommend_latency(benchmark, N, side):
        model, rec = _setup(N, side.split("-")[1] if side.startswith("seqrec") else "float32")
        items = np.random.default_rng(0).integers(1, N + 1, size=4096).tolist()
        j = [0]
        benchmark.group = f"single event N={N} k={K} 1 thread"
        if side == "numpy":
            npb = NumpyServing(model)

            def call():
                j[0] += 1
                return npb.recommend(items[j[0] % 4096] - 1)

            with blas_threads(1):
                benchmark(call)
        else:
            def call():
                j[0] += 1
                return rec.recommend(f"s{j[0] % 100}", items[j[0] % 4096], k=K)

            benchmark(call)

    @pytest.mark.parametrize("precision", ["float32", "int8"])
    def test_recommend_batch(benchmark, precision):
        _, rec = _setup(BATCH_N, precision)
        items = np.random.default_rng(1).integers(1, BATCH_N + 1, size=BATCH).tolist()
        sids = [f"b{i}" for i in range(BATCH)]
        benchmark.group = f"recommend_batch {BATCH} N={BATCH_N} 1 thread"
        benchmark.pedantic(rec.recommend_batch, args=(sids, items, K), rounds=5, iterations=1,
                           warmup_rounds=1)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    raise SystemExit(main())
