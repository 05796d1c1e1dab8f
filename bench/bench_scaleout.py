"""Past one process (issue 11): hyperparameter search modes and batch-scoring engines, in one run.

Two suites, both on the real Ray (``ray.init(num_cpus=<cores>)``, no dashboard), started once:

- ``tune``: ``seqrec_fast.tune.tune`` on rsc15_100k (``train_tr`` / ``train_valid``), official XE
  space (configs/spaces/gru4rec_xe_standard.jsonl with gru4rec_xe_fixed.toml), the same seed, as
  P trials x T threads for every ``--modes`` entry ``PxT`` (default ``2x1 1x2``: two 1-thread trials
  at a time against one 2-thread trial at a time). Each mode gets its own study folder, so both see the
  same TPE start-up configurations. Reports wall time, trial states and the best validation metric.
- ``score``: ``seqrec_fast.score.score`` top-20 of every yoochoose1_64_srgnn test session (a GRU 100
  over its 17,376 items, trained for one epoch with configs/rsc15.toml: speed does not depend on the
  weights) with the local engine at 1 and 2 threads and the Ray engine with 2 one-thread workers,
  alternating, median of ``--repeats``; every output is checked identical to the first. Ray's fixed
  cost per job is measured by scoring one session.

    python bench/bench_scaleout.py [--suites tune score] [--trials 30] [--epochs 10] \\
        [--modes 2x1 1x2] [--repeats 3] [--out DIR]
    # equal work: TPE's 10 seeded start-up configurations, no pruning, in every mode
    python bench/bench_scaleout.py --suites tune --trials 10 --no-prune

Records go to bench/results/scaleout.jsonl (``--no-record`` to skip). Data from $SEQREC_DATA_DIR
(default ../shared/data beside the repository); a suite whose files are absent is skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_records  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SEQREC_DATA_DIR", REPO.parent / "shared" / "data"))
SPACE = REPO / "configs" / "spaces" / "gru4rec_xe_standard.jsonl"
FIXED = REPO / "configs" / "spaces" / "gru4rec_xe_fixed.toml"


def bench_tune(modes, trials: int, epochs: int, seed: int, out: Path, prune: bool = True) -> list[dict]:
    from seqrec_fast.tune import tune

    d = DATA / "rsc15_100k_sessionrec"
    train, valid = d / "rsc15_100k_train_tr.tsv.gz", d / "rsc15_100k_train_valid.tsv.gz"
    if not train.is_file():
        print(f"SKIP tune: {train} not found", file=sys.stderr)
        return []
    recs = []
    for i, mode in enumerate(modes):  # a mode may repeat (alternating rounds): one folder per run
        P, T = (int(x) for x in mode.split("x"))
        folder = out / f"tune{i}_{mode}{'' if prune else '_noprune'}_{trials}"
        t0 = time.perf_counter()
        res = tune(train, valid, SPACE, trials, folder, config=FIXED, fixed={"n_epochs": epochs},
                   parallel=P, threads_per_trial=T, seed=seed, metric="mrr@20", verbose=False,
                   prune=prune)
        wall = time.perf_counter() - t0
        rec = {"suite": "tune", "mode": mode, "parallel": P, "threads_per_trial": T, "trials": trials,
               "epochs": epochs, "seed": seed, "prune": prune, "wall_s": wall, "counts": res.counts,
               "best_valid_mrr@20": res.best_value, "best_params": res.best_params,
               "out": str(folder), "loadavg": os.getloadavg()[0]}
        recs.append(rec)
        print(f"tune {mode}: {wall:,.0f} s, {res.counts}, best valid MRR@20 {res.best_value:.4f}",
              flush=True)
    if len(set(modes)) > 1:  # each mode's wall time against the median of the last mode's runs
        last = statistics.median(r["wall_s"] for r in recs if r["mode"] == modes[-1])
        for r in recs:
            r["wall_vs_last_mode"] = r["wall_s"] / last
    return recs


def bench_score(repeats: int, out: Path) -> list[dict]:
    import pandas as pd
    from seqrec_fast.data import load
    from seqrec_fast.model import SessionRNN
    from seqrec_fast.score import score

    d = DATA / "yoochoose1_64_srgnn"
    train_f, test_f = d / "train_sessions.txt.gz", d / "test_sessions.txt.gz"
    if not train_f.is_file():
        print(f"SKIP score: {train_f} not found", file=sys.stderr)
        return []
    from seqrec_fast.config import load_config

    cfg = load_config(REPO / "configs" / "rsc15.toml")
    cfg.update(n_epochs=1, progress=False, verbose=False, seed=0)
    model_path = out / "yc.npz"
    SessionRNN(**cfg).fit(load(train_f)).save(model_path)
    one = out / "one.txt"
    with __import__("gzip").open(test_f, "rt") as f:
        one.write_text(f.readline())
    sides = {"local 1 thread": dict(engine="local", threads=1),
             "local 2 threads": dict(engine="local", threads=2),
             "ray 2 workers x 1 thread": dict(engine="ray", workers=2, threads=1)}
    times: dict = {k: [] for k in sides}
    first = None
    n_sessions = None
    for rep in range(repeats):
        for name, kw in sides.items():
            dst = out / f"recs_{rep}_{name.replace(' ', '_')}.parquet"
            t0 = time.perf_counter()
            st = score(model_path, test_f, dst, k=20, **kw)
            times[name].append(time.perf_counter() - t0)
            n_sessions = st.n_sessions
            got = pd.read_parquet(dst)
            if first is None:
                first = got
            else:
                pd.testing.assert_frame_equal(got, first)  # every engine, every repeat: identical
            dst.unlink()
    fixed = []
    for _ in range(repeats):  # Ray's per-job cost: one session, actors started and the model shipped
        t0 = time.perf_counter()
        score(model_path, one, out / "one.parquet", k=20, engine="ray", workers=2, threads=1)
        fixed.append(time.perf_counter() - t0)
    recs = []
    for name, xs in times.items():
        med = statistics.median(xs)
        recs.append({"suite": "score", "side": name, "sessions": n_sessions, "median_s": med,
                     "seconds": xs, "sessions_per_s": n_sessions / med, "identical": True,
                     "loadavg": os.getloadavg()[0]})
        print(f"score {name}: {med:.2f} s, {n_sessions / med:,.0f} sessions/s", flush=True)
    recs.append({"suite": "score", "side": "ray fixed cost per job (1 session)",
                 "median_s": statistics.median(fixed), "seconds": fixed})
    print(f"score: Ray's fixed cost per job {statistics.median(fixed):.2f} s", flush=True)
    return recs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", nargs="+", choices=("tune", "score"), default=["tune", "score"])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--modes", nargs="+", default=["2x1", "1x2"], help="PxT: P trials of T threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-prune", action="store_true",
                    help="run every trial to its last epoch; with --trials 10 (TPE's seeded random "
                    "start-up) every mode then trains the same configurations: equal work")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="keep the studies here (default: a temporary folder)")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args(argv)
    for m in a.modes:
        if len(m.split("x")) != 2 or not all(x.isdigit() and int(x) > 0 for x in m.split("x")):
            ap.error(f"--modes: expected PxT with positive integers (e.g. 2x1), got {m!r}")
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    recs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(a.out) if a.out else Path(tmp)
            out.mkdir(parents=True, exist_ok=True)
            if "tune" in a.suites:
                recs += bench_tune(a.modes, a.trials, a.epochs, a.seed, out, prune=not a.no_prune)
            if "score" in a.suites:
                recs += bench_score(a.repeats, out)
    finally:
        ray.shutdown()
    if recs and not a.no_record:
        print(f"records: {write_records('scaleout', recs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
