"""Cost of item features (issue 13): training speed with F_dim 64 and 384 against none, and serving
latency at N = 40k with F·P folded into the table.

    python bench/bench_features.py [--quick] [--threads 1 2]
    pytest bench/bench_features.py --benchmark-only [--quick]

Training: ``_core.train_chunk`` (the kernel ``SessionRNN.fit`` calls) on the GRU4Rec RSC15 shape
(GRU, H = 100, B = 32, 2,048 sampled negatives shared by the batch, cross-entropy with logQ,
Adagrad with momentum, constrained embedding) over N = 40,000 items, one call of 128 steps, with a
dense random F (N, F_dim) (a stand-in for text / image embeddings) and without. The three variants
are timed in alternating blocks in the same run; events/s = B · steps / median seconds. A float64
case is checked against the NumPy reference trainer before anything is timed.

Serving: ``Recommender.recommend`` (one step + top-20 over N items per event) for a model with item
features (F_dim 64 and 384, 40k items added with ``add_items``) and the same model without them.
The recommender folds ``W_y + F @ P`` once when it is built, so the per-event cost must be the same;
its top-20 is checked against the NumPy reference over the unfolded ``W_y + F @ P`` first. Records go
to bench/results/features.jsonl.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure_interleaved, write_records  # noqa: E402

from seqrec_fast import _core  # noqa: E402
from seqrec_fast import reference as ref  # noqa: E402
from seqrec_fast.model import SessionRNN  # noqa: E402
from seqrec_fast.serving import Recommender  # noqa: E402
from seqrec_fast.synthetic import generate_sessions  # noqa: E402

B, H, S, K_TOP = 32, 100, 2048, 20
CONFIG = {"loss": "cross-entropy", "logq": 1.0, "sample_alpha": 0.5, "batch_size": B,
          "optimizer": "adagrad", "learning_rate": 0.05, "momentum": 0.2, "bpreg": 0.0,
          "elu_param": 0.0}
F_DIMS = (0, 64, 384)


# ------------------------------------------------------------------------------------------------
# training
def train_case(N: int, Fd: int, steps: int, dtype=np.float32, seed: int = 0, H_: int = H,
               B_: int = B, S_: int = S) -> dict:
    rng = np.random.default_rng(seed)
    G = 3

    def glorot(r, c, g=1):
        s = math.sqrt(6.0 / (r + c))
        return rng.uniform(-s, s, (r, g * c)).astype(dtype)

    params = [glorot(H_, H_, G), glorot(H_, H_, G), np.zeros(G * H_, dtype), glorot(N, H_),
              np.zeros(N, dtype)]
    F = None
    if Fd:
        F = (rng.normal(size=(N, Fd)) / math.sqrt(Fd)).astype(dtype)
        params.append(glorot(Fd, H_))
    x = rng.integers(0, N, (steps, 1, B_)).astype(np.int32)
    y = rng.integers(0, N, (steps, 1, B_)).astype(np.int32)
    reset = (rng.random((steps, 1, B_)) < 0.2).astype(np.uint8)
    neg = rng.integers(0, N, (steps, 1, S_)).astype(np.int32)
    ls = np.log(rng.integers(1, 100, N)).astype(dtype)
    return {"params": params, "s1": [np.zeros_like(p) for p in params],
            "s2": [np.zeros_like(p) for p in params], "hidden": [np.zeros((B_, H_), dtype)],
            "x": x, "y": y, "reset": reset, "neg": neg, "ls": ls, "F": F, "steps": steps}


def run_train(case: dict, nt: int, mod=_core):
    kw = {"num_threads": nt} if mod is _core else {}
    return mod.train_chunk("gru", "constrained", case["params"], case["s1"], case["s2"],
                           case["hidden"], None, case["x"], case["y"], case["reset"], case["neg"],
                           None, None, case["ls"], dict(CONFIG, step=1), features=case["F"], **kw)


def validate_train() -> float:
    """Max abs difference C++ vs NumPy reference after 4 steps with features (float64)."""
    worst = 0.0
    for Fd in (5, 17):
        a = train_case(300, Fd, 4, np.float64, seed=Fd, H_=9, B_=6, S_=40)
        b = {k: ([v.copy() for v in val] if isinstance(val, list) else val) for k, val in a.items()}
        ra, rb = run_train(a, 1), run_train(b, 1, ref)
        np.testing.assert_allclose(ra[0], rb[0], rtol=1e-9)
        for u, v in zip(a["params"], b["params"]):
            np.testing.assert_allclose(u, v, rtol=1e-8, atol=1e-10)
            worst = max(worst, float(np.abs(u - v).max()))
    return worst


def bench_train(threads=(1, 2), N: int = 40_000, steps: int = 128, repeats: int = 6) -> list[dict]:
    diff = validate_train()
    out = []
    for nt in threads:
        cases = {Fd: train_case(N, Fd, steps) for Fd in F_DIMS}
        fns = {Fd: (lambda c=cases[Fd], nt=nt: run_train(c, nt)) for Fd in F_DIMS}
        res = measure_interleaved(fns, repeats=repeats, warmup=1, min_time=0.0, rounds=3)
        base = B * steps / res[0]["median_s"]
        for Fd in F_DIMS:
            r = res[Fd]
            ev = B * steps / r["median_s"]
            out.append({"case": "train_chunk", "F_dim": Fd, "threads": nt, "N": N, "B": B, "H": H,
                        "n_sample": S, "steps": steps, "events_per_s": ev,
                        "events_per_s_p10": B * steps / r["p90_s"],
                        "events_per_s_p90": B * steps / r["p10_s"],
                        "relative_to_no_features": ev / base, "repeats": repeats,
                        "validated_max_abs_diff_f64": diff})
    return out


# ------------------------------------------------------------------------------------------------
# serving
def serving_models(N: int, Fd: int, seed: int = 0):
    """(model with features, the same model without them), both with N items (all but the first
    300 added with add_items)."""
    rng = np.random.default_rng(seed)
    data = generate_sessions(n_sessions=600, n_items=300, seed=seed)
    emb = rng.normal(size=(300, Fd)).astype(np.float32) / math.sqrt(Fd)
    feats = pd.DataFrame({"ItemId": data.item_ids, "emb": list(emb)})
    kw = {"layers": [H], "n_sample": 64, "batch_size": 32, "n_epochs": 1, "progress": False,
          "verbose": False, "num_threads": 1, "seed": seed}
    mf = SessionRNN(**kw, item_features=feats).fit(data)
    m0 = SessionRNN(**kw).fit(data)
    new_ids = np.arange(10_000, 10_000 + N - 300)
    t0 = time.perf_counter()
    mf.add_items(new_ids, rng.normal(size=(len(new_ids), Fd)).astype(np.float32) / math.sqrt(Fd))
    add_s = time.perf_counter() - t0
    m0.add_items(new_ids)
    # give the featureless model non-zero rows so both score a real table
    m0.params_[m0.param_names_.index("W_y")][300:] = rng.normal(size=(len(new_ids), H)) * 0.1
    m0._params_changed()
    return mf, m0, add_s


def validate_serving(rec: Recommender, model: SessionRNN, items) -> None:
    """The recommender's top-k after a prefix equals the NumPy reference over W_y + F @ P."""
    W = model.params_[model.param_names_.index("W_y")]
    if model.item_features_ is not None:
        W = W + model.item_features_ @ model.params_[-1]
    W = W.astype(np.float32)
    b = model.b_y_.astype(np.float32)
    weights = [tuple(a.astype(np.float32) for a in w) for w in model._weights()]
    h = [np.zeros((1, H), np.float32)]
    for i in items[:-1]:
        X = W[[i]].reshape(1, 1, H)
        _, h, _, _ = ref.sequence_forward("gru", X, h, None, None, weights, None)
    idx, sc = ref.step_topk("gru", "constrained", weights, None, W, b, h, None,
                            np.array([items[-1]], np.int32), K_TOP)
    got_ids, got_sc = rec.predict_next([model.item_ids_[i] for i in items], k=K_TOP)
    np.testing.assert_array_equal(got_ids, model.item_ids_[idx[0]])
    np.testing.assert_allclose(got_sc, sc[0], rtol=1e-4, atol=1e-4)


def bench_serving(N: int = 40_000, f_dims=(64, 384), repeats: int = 200) -> list[dict]:
    out = []
    rng = np.random.default_rng(1)
    for Fd in f_dims:
        mf, m0, add_s = serving_models(N, Fd)
        t0 = time.perf_counter()
        rf = Recommender(mf)
        fold_s = time.perf_counter() - t0
        r0 = Recommender(m0)
        validate_serving(rf, mf, [5, 17, N - 3])
        items = rng.integers(0, N, 4096)
        ids_f, ids_0 = mf.item_ids_[items], m0.item_ids_[items]
        state = {"i": 0}

        def step(rec, ids, state=state):
            i = state["i"] = (state["i"] + 1) % len(ids)
            rec.recommend(i % 64, ids[i], k=K_TOP)

        fns = {"features": lambda a=rf, b=ids_f: step(a, b), "none": lambda a=r0, b=ids_0: step(a, b)}
        res = measure_interleaved(fns, repeats=repeats, warmup=20, min_time=0.0, rounds=4)
        for name, r in res.items():
            out.append({"case": "serve_one_event", "N": N, "F_dim": Fd if name == "features" else 0,
                        "model_F_dim": Fd, "threads": 1, "k": K_TOP, "p50_us": r["median_s"] * 1e6,
                        "p10_us": r["p10_s"] * 1e6, "p90_us": r["p90_s"] * 1e6,
                        "fold_at_load_s": fold_s if name == "features" else None,
                        "add_items_s": add_s if name == "features" else None,
                        "repeats": repeats, "validated": "top-20 vs NumPy reference over W_y + F@P"})
    return out


def table(train_recs, serve_recs) -> str:
    L = ["| training (train_chunk, N=40k, B=32, H=100, 2,048 negatives) | threads | events/s | vs no features |",
         "|---|---:|---:|---:|"]
    for r in train_recs:
        L.append(f"| F_dim {r['F_dim'] or 'none'} | {r['threads']} | {r['events_per_s']:,.0f} "
                 f"| {r['relative_to_no_features']:.2f}x |")
    L += ["", "| serving one event (N=40k, top-20, 1 thread) | model | p50 µs | p90 µs | fold at load |",
          "|---|---|---:|---:|---:|"]
    for r in serve_recs:
        fold = f"{r['fold_at_load_s'] * 1e3:.0f} ms" if r["fold_at_load_s"] is not None else ""
        L.append(f"| {'with features' if r['F_dim'] else 'without features'} | F_dim {r['model_F_dim']} "
                 f"| {r['p50_us']:.0f} | {r['p90_us']:.0f} | {fold} |")
    return "\n".join(L)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args(argv)
    steps, reps, sreps = (16, 3, 40) if a.quick else (128, 6, 300)
    N = 5000 if a.quick else 40_000
    tr = bench_train(tuple(a.threads), N=N, steps=steps, repeats=reps)
    sv = bench_serving(N=N, repeats=sreps)
    print(table(tr, sv))
    print(f"records appended to {write_records('features', tr + sv)}")
    return 0


# ------------------------------------------------------------------------------------------------
# pytest-benchmark cases


@pytest.fixture(scope="module")
def _validated():
    return validate_train()


@pytest.mark.parametrize("Fd", F_DIMS)
def test_train_chunk_features(benchmark, _validated, Fd):
    case = train_case(5000, Fd, 8)
    benchmark.group = "features: train_chunk N=5000 B=32 H=100 S=2048, 8 steps"
    benchmark(run_train, case, 1)


@pytest.mark.parametrize("N,Fd", [(3000, 64), (40000, 384)])
def test_serve_with_features(benchmark, N, Fd):
    mf, _, _ = serving_models(N, Fd)
    rec = Recommender(mf)
    validate_serving(rec, mf, [1, 2, N - 1])
    ids = mf.item_ids_[np.random.default_rng(0).integers(0, N, 512)]
    it = iter(range(10**9))

    def step():
        i = next(it)
        rec.recommend(i % 64, ids[i % len(ids)], k=K_TOP)

    benchmark.group = f"features: serve one event N={N}"
    benchmark(step)


if __name__ == "__main__":
    raise SystemExit(main())
