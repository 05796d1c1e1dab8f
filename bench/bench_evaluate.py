"""Full-ranking evaluation, end to end: ``seqrec_fast.evaluate`` on a GRU (H = 100) over a test set.

Three scorers run through the *same* evaluation driver (``seqrec_fast.evaluate.evaluate``: session-
parallel slots, 512 at a time, every event after the first of a session is a prediction ranked against
all N items, conservative ties), so the sides differ only in how a step is scored:

- ``seqrec_fast C++``: the fitted ``SessionRNN`` itself; its ``score_counts`` runs the GRU step and the
  fused C++ score + rank-count kernel (no (n, N) score array);
- ``NumPy reference``: ``reference.gru_forward`` + ``h @ W_y.T + b_y`` + ``metrics.rank_counts`` (the
  driver's generic path for scorers without ``score_counts``), BLAS pinned with threadpoolctl;
- ``PyTorch``: the same GRU4Rec GRU in torch ops + ``addmm`` + ``(scores > target).sum(1)``, in a separate
  process (torch's wheel ships its own libgomp.so.1; see bench_train.py), ``torch.set_num_threads``.

The test log is synthetic (``seqrec_fast.synthetic.generate_sessions``, Zipfian items, mean session
length 5) over catalogues of N items; weights are random (evaluation cost does not depend on them). Before
anything is timed every side's ranks are compared with the NumPy reference's: at least 99.9% identical
(the rest are float32 near-ties, off by at most a few places) and Recall@20 / MRR@20 within 1e-3.

    python bench/bench_evaluate.py                 # N = 3,000 and 40,000, 1 and 2 threads
    python bench/bench_evaluate.py --quick --no-torch
    pytest bench/bench_evaluate.py --benchmark-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, cpu_model, settle, write_records  # noqa: E402

# seqrec_fast's C++ module and torch are imported lazily: the torch worker (--torch-worker) must never
# load seqrec_fast's OpenMP runtime. seqrec_fast.evaluate / .data / .metrics / .synthetic are pure
# Python + NumPy and are used on every side.
from seqrec_fast.data import SessionData  # noqa: E402
from seqrec_fast.evaluate import evaluate  # noqa: E402

H = 100
BATCH = 512
SIZES_FULL = (3_000, 40_000)
SIZES_QUICK = (3_000,)
SESSIONS_FULL = 4_000       # about 16,000 predictions
SESSIONS_QUICK = 1_000      # about 4,000
WORKER_TAG = "@@bench_evaluate@@"
MIN_IDENTICAL = 0.999
METRIC_TOL = 1e-3


# ---------------------------------------------------------------------------------------------------
# the case: weights + test sessions (pure NumPy, so the torch worker can rebuild nothing but load it)
# ---------------------------------------------------------------------------------------------------
def build_test(N: int, n_sessions: int, seed: int = 1) -> SessionData:
    from seqrec_fast.synthetic import generate_sessions

    return generate_sessions(n_sessions, n_items=N, seed=seed)


def build_model(N: int, seed: int = 0):
    """A SessionRNN (GRU, constrained embedding, H = 100) with random weights and N items."""
    from bench_serving_http import build_model as _build

    return _build(N, H, seed)


def model_weights(model) -> dict:
    p = dict(zip(model.param_names_, model.params_))
    W = model._weights()
    if len(W) != 1 or model.embedding != "constrained":
        raise ValueError("the evaluation benchmark uses one GRU layer and the constrained embedding")
    W_x, W_h, b = W[0]
    return {"W_x": W_x, "W_h": W_h, "b": b, "W_y": p["W_y"], "b_y": p["b_y"]}


# ---------------------------------------------------------------------------------------------------
# scorers (the NextItemScorer protocol of seqrec_fast.evaluate)
# ---------------------------------------------------------------------------------------------------
class NumpyScorer:
    """The NumPy reference: one reference GRU step, a full (n, N) score matrix; the driver counts."""

    def __init__(self, w: dict):
        self.w = w
        self.n_items = w["W_y"].shape[0]

    def start(self, n_slots: int) -> None:
        self.h = np.zeros((n_slots, self.w["W_h"].shape[0]), self.w["W_y"].dtype)

    def reset(self, slots: np.ndarray) -> None:
        self.h[slots] = 0

    def score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        from seqrec_fast import reference as ref

        w = self.w
        h, _ = ref.gru_forward(w["W_y"][items], self.h[slots], w["W_x"], w["W_h"], w["b"])
        self.h[slots] = h
        s = h @ w["W_y"].T
        s += w["b_y"]
        return s


class TorchScorer:
    """The same model in torch ops; ranks counted in torch (no NumPy (n, N) array)."""

    def __init__(self, w: dict):
        import torch

        self.torch = torch
        self.t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()}
        self.n_items = w["W_y"].shape[0]
        self.Hd = w["W_h"].shape[0]

    def start(self, n_slots: int) -> None:
        self.h = self.torch.zeros(n_slots, self.Hd, dtype=self.t["W_y"].dtype)

    def reset(self, slots: np.ndarray) -> None:
        self.h[self.torch.from_numpy(np.asarray(slots, dtype=np.int64))] = 0

    def score_counts(self, slots, items, targets):
        torch, t, Hd = self.torch, self.t, self.Hd
        with torch.inference_mode():
            sl = torch.from_numpy(np.asarray(slots, dtype=np.int64))
            x = t["W_y"].index_select(0, torch.from_numpy(np.asarray(items, dtype=np.int64)))
            h = self.h.index_select(0, sl)
            a = torch.addmm(t["b"], x, t["W_x"])
            rz = torch.sigmoid(a[:, : 2 * Hd] + h @ t["W_h"][:, : 2 * Hd])
            r, z = rz[:, :Hd], rz[:, Hd:]
            c = torch.tanh(a[:, 2 * Hd:] + (r * h) @ t["W_h"][:, 2 * Hd:])
            h = (1.0 - z) * h + z * c
            self.h.index_copy_(0, sl, h)
            s = torch.addmm(t["b_y"], h, t["W_y"].T)
            tg = s.gather(1, torch.from_numpy(np.asarray(targets, dtype=np.int64))[:, None])
            gt = (s > tg).sum(1)
            ge = (s >= tg).sum(1)
            nan = torch.isnan(tg[:, 0])  # as metrics.rank_counts: a NaN target ranks last
            if bool(nan.any()):
                gt[nan] = self.n_items
                ge[nan] = self.n_items
            return gt.numpy(), ge.numpy()


# ---------------------------------------------------------------------------------------------------
# validation and timing
# ---------------------------------------------------------------------------------------------------
def agreement(ranks: np.ndarray, ref_ranks: np.ndarray, res, ref_res) -> dict:
    same = float(np.mean(ranks == ref_ranks)) if ranks.size else 1.0
    finite = np.isfinite(ranks) & np.isfinite(ref_ranks)
    max_diff = float(np.max(np.abs(ranks[finite] - ref_ranks[finite]))) if finite.any() else 0.0
    d_rec = abs(res.metrics["recall@20"] - ref_res.metrics["recall@20"])
    d_mrr = abs(res.metrics["mrr@20"] - ref_res.metrics["mrr@20"])
    return {"identical_ranks": same, "max_rank_diff": max_diff, "recall20_diff": d_rec,
            "mrr20_diff": d_mrr, "n": int(ranks.size)}


def check_agreement(side: str, N: int, res, ref_res) -> dict:
    a = agreement(res.ranks, ref_res.ranks, res, ref_res)
    if a["n"] != ref_res.ranks.size or a["identical_ranks"] < MIN_IDENTICAL or \
            a["recall20_diff"] > METRIC_TOL or a["mrr20_diff"] > METRIC_TOL:
        raise AssertionError(f"{side} evaluation at N={N} disagrees with the NumPy reference: {a}")
    return a


def time_eval(scorer, test: SessionData, repeats: int, warmup: bool = True) -> list[float]:
    """Seconds of whole ``evaluate`` calls (after one warm-up call unless ``warmup`` is false)."""
    if warmup:
        evaluate(scorer, test, batch_size=BATCH)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(scorer, test, batch_size=BATCH)
        out.append(time.perf_counter() - t0)
    return out


def summarize(secs: list[float], n_pred: int) -> dict:
    a = np.asarray(secs)
    return {"median_s": float(np.median(a)), "p10_s": float(np.percentile(a, 10)),
            "p90_s": float(np.percentile(a, 90)), "repeats": len(secs), "predictions": n_pred,
            "predictions_per_s": n_pred / float(np.median(a))}


def bench_size(N: int, threads, quick: bool, repeats: int, torch_side: bool) -> list[dict]:
    """All sides at one catalogue size; returns one record per side and thread count."""
    test = build_test(N, SESSIONS_QUICK if quick else SESSIONS_FULL)
    model = build_model(N)
    w = model_weights(model)
    npy = NumpyScorer(w)
    with blas_threads(1):
        ref_res = evaluate(npy, test, batch_size=BATCH)
    n_pred = int(ref_res.n_events)
    sizes = {"N": N, "H": H, "predictions": n_pred, "batch": BATCH}
    out = []
    checks = {}
    for nt in threads:
        model.num_threads = nt
        checks[f"cpp{nt}"] = check_agreement(f"C++ ({nt} threads)", N,
                                             evaluate(model, test, batch_size=BATCH), ref_res)
    torch_recs = run_torch(N, test, w, ref_res, threads, repeats) if torch_side else []
    # repeats interleaved round-robin over sides and thread counts (a slow spell of the shared VM
    # then touches every row alike instead of one row's median)
    secs: dict = {(role, nt): [] for nt in threads for role in ("cpp", "numpy")}
    for rep in range(repeats):
        for nt in threads:
            model.num_threads = nt
            settle()
            secs[("cpp", nt)] += time_eval(model, test, 1, warmup=rep == 0)
            settle()
            with blas_threads(nt):
                secs[("numpy", nt)] += time_eval(npy, test, 1, warmup=rep == 0)
    for nt in threads:
        out.append({"side": "seqrec_fast C++", "role": "cpp", "threads": nt, "sizes": sizes,
                    "pinned": {"openmp": nt}, "validated": checks[f"cpp{nt}"],
                    **summarize(secs[("cpp", nt)], n_pred)})
        out.append({"side": "NumPy reference", "role": "numpy", "threads": nt, "sizes": sizes,
                    "pinned": {"blas": nt}, "validated": "is the reference",
                    **summarize(secs[("numpy", nt)], n_pred)})
    for r in torch_recs:
        out.append({**r, "sizes": sizes})
    out.sort(key=lambda r: (r["threads"], r["role"]))
    return out


# ---------------------------------------------------------------------------------------------------
# the PyTorch side, in its own process
# ---------------------------------------------------------------------------------------------------
def run_torch(N: int, test: SessionData, w: dict, ref_res, threads, repeats: int) -> list[dict]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("NOTE: torch is not installed; the PyTorch evaluation side is skipped", file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case.npz")
        np.savez(path, items=test.items, offsets=test.offsets, ref_ranks=ref_res.ranks,
                 ref_metrics=np.array([ref_res.metrics["recall@20"], ref_res.metrics["mrr@20"]]),
                 **w)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", path,
               "--threads", *map(str, threads), "--repeats", str(repeats)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"torch evaluation worker failed (exit {p.returncode})")
    line = next(x for x in reversed(p.stdout.splitlines()) if x.startswith(WORKER_TAG))
    return json.loads(line[len(WORKER_TAG):])


def torch_worker(path: str, threads, repeats: int) -> list[dict]:
    import torch

    torch.set_num_interop_threads(1)
    z = np.load(path)
    w = {k: z[k] for k in ("W_x", "W_h", "b", "W_y", "b_y")}
    N = w["W_y"].shape[0]
    test = SessionData(z["items"], z["offsets"], np.arange(N))
    scorer = TorchScorer(w)
    out = []
    ref_res = _RefResult(z["ref_ranks"], *z["ref_metrics"])
    for nt in threads:
        torch.set_num_threads(nt)
        a = check_agreement(f"torch ({nt} threads)", N, evaluate(scorer, test, batch_size=BATCH), ref_res)
        s = summarize(time_eval(scorer, test, repeats), ref_res.ranks.size)
        out.append({"side": "PyTorch", "role": "torch", "threads": nt, "pinned": {"torch": nt},
                    "validated": a, "torch": torch.__version__, **s})
        print(f"  torch N={N} threads={nt}: {s['median_s']:.3f} s", file=sys.stderr)
    return out


class _RefResult:
    """The parts of the reference's EvalResult that check_agreement reads (shipped to the worker)."""

    def __init__(self, ranks: np.ndarray, recall20: float, mrr20: float):
        self.ranks = ranks
        self.metrics = {"recall@20": float(recall20), "mrr@20": float(mrr20)}


# ---------------------------------------------------------------------------------------------------
# script
# ---------------------------------------------------------------------------------------------------
def run(sizes=SIZES_FULL, threads=(1, 2), quick: bool = False, repeats: Optional[int] = None,
        torch_side: bool = True) -> list[dict]:
    repeats = repeats or (3 if quick else 5)
    recs = []
    for N in sizes:
        t0 = time.perf_counter()
        recs += bench_size(N, threads, quick, repeats, torch_side)
        print(f"  evaluation N={N}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    add_ratios(recs)
    return recs


def add_ratios(recs: list[dict]) -> None:
    base = {(r["sizes"]["N"], r["threads"], r["role"]): r for r in recs}
    for r in recs:
        if r["role"] != "cpp":
            continue
        for role in ("numpy", "torch"):
            b = base.get((r["sizes"]["N"], r["threads"], role))
            if b:
                r[f"speedup_vs_{role}"] = b["median_s"] / r["median_s"]


def table(recs: list[dict]) -> str:
    L = ["| N | predictions | side | threads | median s | p10 | p90 | predictions/s | vs NumPy | vs PyTorch |",
         "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        sp = [f"{r[k]:.2f}x" if k in r else "" for k in ("speedup_vs_numpy", "speedup_vs_torch")]
        L.append(f"| {r['sizes']['N']:,} | {r['predictions']:,} | {r['side']} | {r['threads']} "
                 f"| {r['median_s']:.3f} | {r['p10_s']:.3f} | {r['p90_s']:.3f} "
                 f"| {r['predictions_per_s']:,.0f} | {sp[0]} | {sp[1]} |")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 3,000, 1,000 sessions, 3 repeats")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/")
    ap.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_worker:
        recs = torch_worker(a.torch_worker, a.threads, a.repeats or 5)
        print(WORKER_TAG + json.dumps(recs))
        return 0
    sizes = a.sizes or (SIZES_QUICK if a.quick else SIZES_FULL)
    t0 = time.perf_counter()
    recs = run(sizes, a.threads, a.quick, a.repeats, not a.no_torch)
    print(f"# full-ranking evaluation, GRU H={H}, batch {BATCH}; {cpu_model()}")
    print(table(recs))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    if not a.no_record:
        path = write_records("evaluate", [{"bench": "evaluate", "quick": a.quick, **r} for r in recs])
        print(f"appended {len(recs)} records to {path}")
    return 0


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark entry points
# ---------------------------------------------------------------------------------------------------
try:
    import pytest

    _CACHE: dict = {}

    def _case(N: int):
        if N not in _CACHE:
            test = build_test(N, SESSIONS_QUICK)
            model = build_model(N)
            w = model_weights(model)
            with blas_threads(1):
                ref_res = evaluate(NumpyScorer(w), test, batch_size=BATCH)
            _CACHE[N] = (test, model, w, ref_res)
        return _CACHE[N]

    @pytest.mark.parametrize("N", [3_000, 40_000])
    @pytest.mark.parametrize("side", ["cpp1", "cpp2", "ref1", "torch1"])
    def test_evaluate_full_ranking(benchmark, N, side):
        test, model, w, ref_res = _case(N)
        nt = int(side[-1])
        benchmark.group = f"full-ranking evaluation N={N} ({ref_res.n_events} predictions)"
        benchmark.extra_info["predictions"] = int(ref_res.n_events)
        if side.startswith("cpp"):
            model.num_threads = nt
            check_agreement(side, N, evaluate(model, test, batch_size=BATCH), ref_res)
            benchmark.pedantic(evaluate, args=(model, test), kwargs={"batch_size": BATCH},
                               rounds=3, iterations=1, warmup_rounds=1)
        elif side.startswith("ref"):
            scorer = NumpyScorer(w)
            with blas_threads(nt):
                benchmark.pedantic(evaluate, args=(scorer, test), kwargs={"batch_size": BATCH},
                                   rounds=3, iterations=1, warmup_rounds=0)
        else:
            torch = pytest.importorskip("torch")
            torch.set_num_threads(nt)
            scorer = TorchScorer(w)
            check_agreement(side, N, evaluate(scorer, test, batch_size=BATCH), ref_res)
            benchmark.pedantic(evaluate, args=(scorer, test), kwargs={"batch_size": BATCH},
                               rounds=3, iterations=1, warmup_rounds=0)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    raise SystemExit(main())
