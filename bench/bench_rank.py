"""Ranking a candidate list (issue 12): latency for C = 100 and 1,000 candidates, H = 100, 1 thread, in
process, against PyTorch and NumPy doing the same gather, matmul and sort.

Sides (one session, a catalogue of N = 40,000 items; each call ranks a different candidate list):
- ``seqrec rank_candidates``: the C++ kernel on a given state: gather the C rows, C dot products, sort.
- ``seqrec step_rank``: the same fused with one GRU step (``Recommender.rank(..., item_id=...)``'s
  kernel); ``seqrec step only`` (``step_rank`` with C = 0) is the recurrent step alone, so the ranking
  costs step_rank - step. Aim: at most 10 µs plus the step for C = 100.
- ``seqrec Recommender.rank``: the whole Python API with external ids (id mapping, duplicates,
  unknown ids, the fused kernel, the result wrapping), item given.
- ``torch gather+matmul+sort``: ``E.index_select(0, cand) @ h + b[cand]`` then ``torch.sort(stable)``,
  and ``torch step+rank`` (``nn.GRUCell`` step first), under ``torch.set_num_threads(1)``, in a separate
  process (its libgomp clashes with ours; see bench_train.py).
- ``numpy gather+matmul+sort``: ``E[cand] @ h + b[cand]`` and a stable argsort, BLAS pinned to 1 thread.

Validation before timing: the kernel's order and scores equal the NumPy reference
(``reference.rank_candidates``) on the benchmark's own inputs, and every side's order equals the exact
float64 order ties aside. Latency samples are single calls (perf_counter), taken in 3 rounds interleaved
with the other sides; p50 / p90 over all samples.

    python bench/bench_rank.py               # table + bench/results/rank.jsonl
    python bench/bench_rank.py --quick       # fewer samples
    pytest bench/bench_rank.py --benchmark-only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import interleaved
from common import blas_threads, cpu_model, write_records

H = 100
N = 40_000
CANDIDATES = (100, 1_000)
POOL = 64  # distinct candidate lists, cycled through
WORKER_TAG = "@@bench_rank@@"
AIM_US = 10.0


def inputs(C: int, seed: int = 0):
    """The shared inputs of every side: E (N, H), b (N,), a state h (H,), POOL candidate lists."""
    rng = np.random.default_rng(seed)
    E = (rng.normal(size=(N, H)) * np.sqrt(2.0 / (N + H))).astype(np.float32)
    b = rng.normal(0, 0.1, N).astype(np.float32)
    h = np.tanh(rng.normal(size=H)).astype(np.float32)
    cands = np.stack([rng.choice(N, C, replace=False) for _ in range(POOL)]).astype(np.int32)
    return E, b, h, cands


def exact_order(E, b, h, cand) -> tuple[np.ndarray, np.ndarray]:
    s = E[cand].astype(np.float64) @ h.astype(np.float64) + b[cand]
    o = np.lexsort((cand, -s))
    return cand[o], s[o]


def same_order(got, want_idx, want_s, rtol: float = 1e-5) -> bool:
    """got equals the exact order, except swaps among items whose exact scores are within rounding."""
    got = np.asarray(got)
    if np.array_equal(got, want_idx):
        return True
    pos = {int(j): i for i, j in enumerate(want_idx)}
    s = want_s[[pos[int(j)] for j in got]]
    tol = rtol * (np.abs(want_s).max() + 1.0)
    return sorted(got.tolist()) == sorted(want_idx.tolist()) and bool(np.all(np.diff(s) <= tol))


def n_samples(quick: bool) -> int:
    return 300 if quick else 2000


# ---------------------------------------------------------------------------------------------------
# PyTorch side (separate process)
# ---------------------------------------------------------------------------------------------------
def torch_worker(cands_sizes, quick: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    out = {"torch": torch.__version__, "rows": [], "checks": []}
    with torch.inference_mode():
        for C in cands_sizes:
            E_np, b_np, h_np, cands_np = inputs(C)
            E, b, h = torch.from_numpy(E_np), torch.from_numpy(b_np), torch.from_numpy(h_np)
            cands = torch.from_numpy(cands_np.astype(np.int64))
            torch.manual_seed(0)
            cell = torch.nn.GRUCell(H, H)
            items = torch.from_numpy(np.random.default_rng(1).integers(0, N, 4096))

            def rank(j, h=h, E=E, b=b, cands=cands):
                c = cands[j % POOL]
                s = torch.mv(E.index_select(0, c), h) + b.index_select(0, c)
                sc, o = torch.sort(s, descending=True, stable=True)
                return c[o], sc

            state = [h[None]]

            def step_rank(j, state=state, cell=cell, E=E, b=b, cands=cands, items=items):
                state[0] = cell(E[items[j % 4096]][None], state[0])
                c = cands[j % POOL]
                s = E.index_select(0, c) @ state[0][0] + b.index_select(0, c)
                sc, o = torch.sort(s, descending=True, stable=True)
                return c[o], sc

            ok = 0
            for j in range(5):
                got, _ = rank(j)
                ok += same_order(got.numpy(), *exact_order(E_np, b_np, h_np, cands_np[j % POOL]))
            out["checks"].append({"side": "torch", "C": C, "queries": 5, "equal_ties_aside": ok})
            if ok != 5:
                raise AssertionError(f"torch ranking differs from the exact order at C={C}")
            res = interleaved({"torch gather+matmul+sort": rank, "torch step+rank": step_rank},
                              n_samples(quick))
            for side, r in res.items():
                out["rows"].append({"side": side, "C": C, **r})
                print(f"  {side} C={C}: p50 {r['p50_us']:.1f} µs", file=sys.stderr)
    return out


def run_torch(cands_sizes, quick: bool) -> dict | None:
    if importlib.util.find_spec("torch") is None:
        print("NOTE: torch is not installed; the PyTorch baseline is skipped", file=sys.stderr)
        return None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker",
           "--candidates", *map(str, cands_sizes)] + (["--quick"] if quick else [])
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"torch worker failed (exit {p.returncode})")
    line = next(x for x in reversed(p.stdout.splitlines()) if x.startswith(WORKER_TAG))
    return json.loads(line[len(WORKER_TAG):])


# ---------------------------------------------------------------------------------------------------
# seqrec_fast and NumPy sides
# ---------------------------------------------------------------------------------------------------
def setup(C: int):
    """(model, Recommender, E, b, h, cands, numpy-side callables) on the shared inputs."""
    from bench_serving_http import build_model
    from seqrec_fast import reference as ref
    from seqrec_fast.serving import Recommender

    E, b, h, cands = inputs(C)
    model = build_model(N, H, 0)
    names = list(model.param_names_)
    model.params_[names.index("W_y")][...] = E
    model.params_[names.index("b_y")][...] = b
    rec = Recommender(model, num_threads=1)
    # validate the kernel against the reference, and against the exact order, on these inputs
    from seqrec_fast import _core

    for j in range(5):
        c = cands[j][None, :]
        ki, ks = _core.rank_candidates(h[None, :], rec._W_y, rec._b_y, c, 1)
        ri, rs = ref.rank_candidates(h[None, :], rec._W_y, rec._b_y, c)
        if not same_order(ki[0], *exact_order(E, b, h, cands[j])):
            raise AssertionError(f"rank_candidates differs from the exact order at C={C}")
        if not (same_order(ki[0], ri[0], rs[0].astype(np.float64))
                and np.allclose(np.sort(ks[0]), np.sort(rs[0]), rtol=1e-5, atol=1e-6)):
            raise AssertionError(f"rank_candidates differs from the reference at C={C}")
    return model, rec, E, b, h, cands


def bench_C(C: int, quick: bool) -> tuple[list[dict], dict]:
    from seqrec_fast import _core

    model, rec, E, b, h, cands = setup(C)
    H1 = h[None, :].copy()
    ids = model.item_ids_
    cand_ids = [ids[c].tolist() for c in cands]  # external ids (1..N) as a client sends them
    items = np.random.default_rng(1).integers(0, N, 4096).astype(np.int32)
    st = [[np.zeros((1, H), np.float32)]]
    empty = np.zeros((1, 0), np.int32)
    c2 = [np.ascontiguousarray(c[None, :]) for c in cands]
    args = ("gru", "constrained", rec._weights, None, rec._W_y, rec._b_y)

    def k_rank(j):
        return _core.rank_candidates(H1, rec._W_y, rec._b_y, c2[j % POOL], 1)

    def k_step_rank(j):
        return _core.step_rank(*args, st[0], None, items[j % 4096: j % 4096 + 1], c2[j % POOL], 1)

    def k_step(j):
        return _core.step_rank(*args, st[0], None, items[j % 4096: j % 4096 + 1], empty, 1)

    def api_rank(j):
        return rec.rank("bench", cand_ids[j % POOL], item_id=int(ids[items[j % 4096]]))

    def np_rank(j):
        c = cands[j % POOL]
        s = E[c] @ h + b[c]
        o = np.argsort(-s, kind="stable")
        return c[o], s[o]

    r = api_rank(0)
    if not same_order(np.asarray(r.items) - 1, *exact_order(E, b, rec.session_vector("bench"),
                                                              cands[0])):
        raise AssertionError("Recommender.rank differs from the exact order")
    if not same_order(np_rank(0)[0], *exact_order(E, b, h, cands[0])):
        raise AssertionError("NumPy baseline differs from the exact order")
    with blas_threads(1):
        res = interleaved({"seqrec rank_candidates": k_rank, "seqrec step_rank": k_step_rank,
                           "seqrec step only": k_step, "seqrec Recommender.rank": api_rank,
                           "numpy gather+matmul+sort": np_rank}, n_samples(quick))
    rows = [{"side": side, "C": C, **r} for side, r in res.items()]
    for row in rows:
        print(f"  {row['side']} C={C}: p50 {row['p50_us']:.1f} µs", file=sys.stderr)
    return rows, {"C": C, "validated": "kernel vs reference.rank_candidates and the exact float64 "
                                       "order; Recommender.rank and NumPy vs the exact order"}


def run(cands_sizes=CANDIDATES, quick: bool = False, torch_side: bool = True) -> dict:
    torch_res = run_torch(cands_sizes, quick) if torch_side else None
    rows = list(torch_res["rows"]) if torch_res else []
    checks = []
    for C in cands_sizes:
        r, c = bench_C(C, quick)
        rows += r
        checks.append(c)
    return {"rows": rows, "checks": checks, "torch": torch_res and torch_res["torch"]}


def table(res: dict) -> str:
    by = {(r["side"], r["C"]): r for r in res["rows"]}
    Cs = sorted({r["C"] for r in res["rows"]})
    sides = list(dict.fromkeys(r["side"] for r in res["rows"] if r["side"].startswith("seqrec")))
    sides += [s for s in dict.fromkeys(r["side"] for r in res["rows"]) if s not in sides]
    title = (f"Ranking C candidates, H = {H}, N = {N:,}, 1 thread; p50 / p90 in µs "
             f"(torch {res['torch'] or 'not run'}; {cpu_model()})")
    L = [title, "",
         "| side | " + " | ".join(f"C = {C:,} p50 | p90" for C in Cs) + " |",
         "|---|" + "---:|---:|" * len(Cs)]
    for s in sides:
        cells = []
        for C in Cs:
            r = by.get((s, C))
            cells += [f"{r['p50_us']:.1f}", f"{r['p90_us']:.1f}"] if r else ["", ""]
        L.append(f"| {s} | " + " | ".join(cells) + " |")
    L.append("")
    for C in Cs:
        def g(side, C=C):
            return by.get((side, C), {}).get("p50_us")

        sr, st, k, tt, tn = (g("seqrec step_rank"), g("seqrec step only"), g("seqrec rank_candidates"),
                             g("torch gather+matmul+sort"), g("numpy gather+matmul+sort"))
        line = f"C = {C:,}: step_rank - step = {sr - st:.1f} µs (aim <= {AIM_US:g} µs for C = 100)"
        if tt:
            line += f"; rank_candidates vs torch {tt / k:.1f}x"
            ts = g("torch step+rank")
            line += f", step_rank vs torch step+rank {ts / sr:.1f}x"
        if tn:
            line += f"; vs NumPy {tn / k:.1f}x"
        L.append(line)
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--candidates", type=int, nargs="+", default=list(CANDIDATES))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_worker:
        print(WORKER_TAG + json.dumps(torch_worker(a.candidates, a.quick)))
        return 0
    t0 = time.perf_counter()
    res = run(a.candidates, a.quick, not a.no_torch)
    print(table(res))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    if not a.no_record:
        from seqrec_fast import _core

        base = {"bench": "rank", "hidden": H, "n_items": N, "threads": 1, "isa": _core.ISA,
                "quick": a.quick, "torch": res["torch"]}
        path = write_records("rank", [{**base, **r} for r in res["rows"]])
        print(f"appended {len(res['rows'])} records to {path}")
    return 0


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark entry points
# ---------------------------------------------------------------------------------------------------
try:
    import pytest

    _CACHE: dict = {}

    @pytest.mark.parametrize("C", CANDIDATES)
    @pytest.mark.parametrize("side", ["kernel", "step_rank", "api", "numpy"])
    def test_rank_latency(benchmark, C, side):
        from seqrec_fast import _core

        if C not in _CACHE:
            _CACHE[C] = setup(C)  # validates before anything is timed
        model, rec, E, b, h, cands = _CACHE[C]
        benchmark.group = f"rank C={C} H={H} N={N} 1 thread"
        j = [0]
        c2 = [np.ascontiguousarray(c[None, :]) for c in cands]
        if side == "kernel":
            H1 = h[None, :].copy()
            benchmark(lambda: _core.rank_candidates(H1, rec._W_y, rec._b_y, c2[0], 1))
        elif side == "step_rank":
            st = [np.zeros((1, H), np.float32)]
            item = np.array([7], np.int32)
            benchmark(lambda: _core.step_rank("gru", "constrained", rec._weights, None, rec._W_y,
                                              rec._b_y, st, None, item, c2[0], 1))
        elif side == "api":
            ids = [model.item_ids_[c].tolist() for c in cands]

            def call():
                j[0] += 1
                return rec.rank("b", ids[j[0] % POOL], item_id=int(model.item_ids_[7]))

            benchmark(call)
        else:
            def call():
                j[0] += 1
                c = cands[j[0] % POOL]
                s = E[c] @ h + b[c]
                return np.argsort(-s, kind="stable")

            with blas_threads(1):
                benchmark(call)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    raise SystemExit(main())
