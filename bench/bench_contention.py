"""Threads beside a busy process (issue 14): 1 against 2 kernel threads, on a quiet machine and beside
a competitor that keeps one core busy, for training, evaluation and serving, in the same run.

The competitor is ``python -c "while True: pass"`` in its own session (like a user's other program),
pinned to the last CPU of this process's affinity mask; it is started before and always killed after
each block of busy measurements (``finally``). Within one repeat the order is quiet 1, quiet 2, busy 1,
busy 2 threads; repeats alternate, and medians over repeats are reported, with the 2-thread / 1-thread
ratio of each (aims: >= 1 beside the competitor; >= 1.7 quiet for training).

Cases:

- ``train``: ``_core.train_chunk`` over the first steps of an rsc15_100k epoch in the official RSC15
  setting (GRU H = 100, batch 32, 2,048 negatives, cross-entropy + logQ; bench_train.SETTING), as
  ``SessionRNN.fit`` calls it (chunks of 256 steps). Events/s.
- ``evaluation``: ``evaluate(model, test)`` full ranking, GRU H = 100, N items, random weights.
  Predictions/s.
- ``serving``: ``Recommender.recommend(session, item, k=20)`` single events, N items (a single request
  splits the catalogue across the threads). Events/s (1 / median latency).

The pool's back-offs (the caller running a loop's chunks alone after a helper stalled or shared its
CPU; ``_core.pool_backoffs()``) are counted per row.

Validation before anything is timed, and again for every busy run: at a given thread count the result
beside the competitor is bit-identical to the quiet one (parameters after training; metrics and rank
counts of the evaluation; items and scores of the recommendations) -- the thread pool's chunks are
fixed by the thread count, not by which thread happens to run them.

    python bench/bench_contention.py [--quick] [--repeats R]   # table + bench/results/contention.jsonl
    python bench/bench_contention.py --paired 40 [--settings rsc15 yoochoose diginetica]

``--paired N`` measures the quiet 2-thread / 1-thread ratio of training steps at each official
setting (bench_train.SETTINGS) the way a noisy shared host allows: one process alternates a 1-thread
and a 2-thread run N times (the same pre-drawn steps, each from the same initial state), so each
2-thread run has a 1-thread neighbour seconds apart; it prints medians, p10 / p90 and the median of
the paired ratios (the host slows a run down, never up, so p90 is the quieter machine's figure).
    pytest bench/bench_contention.py --benchmark-only            # group "contention"
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, cpu_model, write_records  # noqa: E402

THREADS = (1, 2)
MODES = ("quiet", "busy")
CASES = ("train", "evaluation", "serving")
K = 20
H = 100


# ---------------------------------------------------------------------------------------------------
# the competitor
# ---------------------------------------------------------------------------------------------------
@contextmanager
def busy_competitor(cpu: Optional[int] = None):
    """A busy-looping Python process, pinned to ``cpu`` (default: the last CPU this process may use),
    in its own session; killed on exit from the block, whatever happens inside it. Yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        try:
            cpus = sorted(os.sched_getaffinity(0))
            target = cpus[-1] if cpu is None else cpu
            if len(cpus) > 1:
                os.sched_setaffinity(proc.pid, {target})
        except (AttributeError, OSError):  # pragma: no cover - not Linux: unpinned
            pass
        time.sleep(0.05)  # let it start spinning
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def _mode(mode: str):
    if mode == "busy":
        with busy_competitor() as pid:
            yield pid
    else:
        yield None


# ---------------------------------------------------------------------------------------------------
# the cases: each builds its inputs once and returns run(nt) -> (work units, seconds, result)
# ---------------------------------------------------------------------------------------------------
def train_case(quick: bool, steps: int | None = None) -> tuple[Callable, str, dict]:
    import bench_train as bt

    case = bt.build_case(n_steps=steps or (40 if quick else 300))

    def run(nt: int):
        state = case.fresh_state()
        t0 = time.perf_counter()
        bt.run_cpp(case, state, nt)
        dt = time.perf_counter() - t0
        return case.n_events, dt, [p.copy() for p in state[0]]

    sizes = {"B": case.extra["B"], "H": case.extra["H"], "S": case.extra["S"],
             "N": case.extra["n_items"], "steps": int(case.x.shape[0]), "data": case.source}
    return run, "events/s", sizes


def evaluation_case(quick: bool, steps: int | None = None) -> tuple[Callable, str, dict]:
    import bench_evaluate as be
    from seqrec_fast.evaluate import evaluate

    N = 3_000 if quick else 40_000
    n_sessions = 200 if quick else 1_000
    model = be.build_model(N)
    test = be.build_test(N, n_sessions)

    def run(nt: int):
        model.num_threads = nt
        t0 = time.perf_counter()
        res = evaluate(model, test)
        dt = time.perf_counter() - t0
        return res.n_scored, dt, res.metrics

    return run, "predictions/s", {"N": N, "H": be.H, "sessions": n_sessions}


def serving_case(quick: bool, steps: int | None = None) -> tuple[Callable, str, dict]:
    from bench_serving_http import build_model
    from seqrec_fast.serving import Recommender

    N = 40_000 if quick else 200_000
    n_events = 100 if quick else 400
    model = build_model(N, H, 0)
    rng = np.random.default_rng(0)
    items = model.item_ids_[rng.integers(0, N, n_events)]
    sessions = rng.integers(0, 20, n_events)

    def run(nt: int):
        rec = Recommender(model, num_threads=nt)
        out = []
        lat = []
        for s, it in zip(sessions, items):
            t0 = time.perf_counter()
            r = rec.recommend(int(s), it, k=K)
            lat.append(time.perf_counter() - t0)
            out.append(r)
        # events/s from the median latency: one slow call (a page fault, a tick) does not dominate
        med = statistics.median(lat)
        return 1, med, [(np.asarray(i).tolist(), np.asarray(s).tolist()) for i, s in out]

    return run, "events/s", {"N": N, "H": H, "k": K, "events": n_events}


BUILDERS = {"train": train_case, "evaluation": evaluation_case, "serving": serving_case}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


# ---------------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------------
def measure(cases=CASES, quick: bool = False, repeats: int = 3, threads=THREADS,
            steps: int | None = None) -> list[dict]:
    from seqrec_fast import _core

    rows = []
    for name in cases:
        run, unit, sizes = BUILDERS[name](quick, steps)
        ref = {}
        for nt in threads:  # warm-up and the quiet reference result of each thread count
            run(nt)
            ref[nt] = run(nt)[2]
        rates: dict = {}
        backoffs: dict = {}
        for _ in range(repeats):
            for mode in MODES:
                with _mode(mode):
                    for nt in threads:
                        b0 = sum(_core.pool_backoffs().values())
                        units, secs, result = run(nt)
                        backoffs[(mode, nt)] = (backoffs.get((mode, nt), 0)
                                                + sum(_core.pool_backoffs().values()) - b0)
                        if not _same(result, ref[nt]):
                            raise AssertionError(f"{name}: {nt}-thread result {mode} differs from the "
                                                 "quiet run (must be bit-identical)")
                        rates.setdefault((mode, nt), []).append(units / secs)
        for mode in MODES:
            base = statistics.median(rates[(mode, threads[0])])
            for nt in threads:
                xs = sorted(rates[(mode, nt)])
                med = statistics.median(xs)
                rows.append({"case": name, "mode": mode, "threads": nt, "unit": unit,
                             "median": med, "min": xs[0], "max": xs[-1], "repeats": len(xs),
                             "ratio_vs_1": med / base, "sizes": sizes, "samples": xs,
                             "pool_backoffs": backoffs[(mode, nt)],
                             "validated": "bit-identical to the quiet run at the same thread count"})
        print(f"  {name}: done", file=sys.stderr)
    return rows


def paired_scaling(settings=("rsc15", "yoochoose", "diginetica"), rounds: int = 40,
                   steps: int | None = None) -> list[dict]:
    """Quiet 2-thread / 1-thread training, 1- and 2-thread runs alternated in this process (see the
    module docstring). Every 2-thread result is checked bit-identical across rounds."""
    import bench_train as bt

    default_steps = {"rsc15": 300, "yoochoose": 60, "diginetica": 40}
    saved = dict(bt.SETTING)
    rows = []
    try:
        for name in settings:
            bt.SETTING.clear()
            bt.SETTING.update(bt.SETTINGS[name])
            case = bt.build_case(n_steps=steps or default_steps.get(name, 60),
                                 data_path=bt.setting_data_path(name))
            rates: dict = {1: [], 2: []}
            ref: dict = {}
            for r in range(rounds + 1):  # round 0 warms up and keeps the reference results
                for nt in THREADS:
                    state = case.fresh_state()
                    t0 = time.perf_counter()
                    bt.run_cpp(case, state, nt)
                    dt = time.perf_counter() - t0
                    params = [p.copy() for p in state[0]]
                    if r == 0:
                        ref[nt] = params
                        continue
                    if not _same(params, ref[nt]):
                        raise AssertionError(f"{name}: {nt}-thread training differs between rounds")
                    rates[nt].append(case.n_events / dt)
            paired = sorted(b / a for a, b in zip(rates[1], rates[2]))

            def pct(xs, f):
                xs = sorted(xs)
                return xs[round(f * (len(xs) - 1))]

            row = {"case": f"train {name} setting", "mode": "quiet, paired", "unit": "events/s",
                   "rounds": rounds, "steps": int(case.x.shape[0]), "data": case.source,
                   "paired_ratio_median": statistics.median(paired), "paired_ratio_p90": pct(paired, 0.9)}
            for nt in THREADS:
                row[f"{nt}t"] = {"median": statistics.median(rates[nt]), "p10": pct(rates[nt], 0.1),
                                 "p90": pct(rates[nt], 0.9), "samples": rates[nt]}
            rows.append(row)
            print(f"  {name}: done", file=sys.stderr)
    finally:
        bt.SETTING.clear()
        bt.SETTING.update(saved)
    return rows


def paired_table(rows: list[dict]) -> str:
    lines = ["| setting | 1 thread median (p10–p90) | 2 threads median (p10–p90) | 2t / 1t paired, median | p90 |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        a, b = r["1t"], r["2t"]
        lines.append(f"| {r['case']} ({r['rounds']} rounds, {r['steps']} steps) | {a['median']:,.0f} "
                     f"({a['p10']:,.0f}–{a['p90']:,.0f}) | {b['median']:,.0f} ({b['p10']:,.0f}–"
                     f"{b['p90']:,.0f}) | {r['paired_ratio_median']:.2f} | {r['paired_ratio_p90']:.2f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    from seqrec_fast import _core

    head = (f"CPU: {cpu_model()} ({os.cpu_count()} cores, affinity "
            f"{len(os.sched_getaffinity(0))}); commit {commit()}; ISA {_core.ISA}; parallel backend "
            f"{_core.parallel_backend()}, spin {_core.pool_spin_us()} us; load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    lines = [head, "",
             "| case | machine | 1 thread | 2 threads | 2t / 1t | pool back-offs (2t, all repeats) |",
             "|---|---|---:|---:|---:|---:|"]
    by = {(r["case"], r["mode"], r["threads"]): r for r in rows}
    for case in dict.fromkeys(r["case"] for r in rows):
        for mode in MODES:
            r1, r2 = by.get((case, mode, 1)), by.get((case, mode, 2))
            if not r1 or not r2:
                continue
            label = "quiet" if mode == "quiet" else "beside 1 busy process"
            lines.append(f"| {case} ({r1['unit']}) | {label} | {r1['median']:,.0f} | "
                         f"{r2['median']:,.0f} | {r2['ratio_vs_1']:.2f} | {r2.get('pool_backoffs', 0)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small cases (a smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 5; quick 2)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per run (default 300, ~0.15 s on 1 thread; quick 40): longer "
                         "runs weigh the pool's back-off probes as a real epoch does")
    ap.add_argument("--paired", type=int, metavar="N", default=None,
                    help="instead of the matrix: quiet 2t / 1t training, N alternated rounds per setting")
    ap.add_argument("--settings", nargs="+", default=["rsc15", "yoochoose", "diginetica"],
                    choices=["rsc15", "yoochoose", "diginetica"], help="settings for --paired")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.paired is not None:
        if args.paired < 1:
            ap.error("--paired must be >= 1")
        rows = paired_scaling(args.settings, args.paired, args.steps)
        print(paired_table(rows))
        if not args.no_record:
            print(f"records: {write_records('contention', rows)}")
        return 0
    repeats = args.repeats or (2 if args.quick else 5)
    rows = measure(args.cases, args.quick, repeats, steps=args.steps)
    print(table(rows))
    if not args.no_record:
        print(f"records: {write_records('contention', rows)}")
    return 0


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark: group "contention" (small cases; each validated against the quiet run first)
# ---------------------------------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - script use without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module", params=CASES)
    def contention_case(request):
        run, _unit, _sizes = BUILDERS[request.param](True)
        return request.param, run, {nt: run(nt)[2] for nt in THREADS}

    @pytest.mark.benchmark(group="contention")
    @pytest.mark.parametrize("nt", THREADS, ids=lambda n: f"busy-{n}t")
    def test_beside_busy_process(benchmark, contention_case, nt):
        name, run, ref = contention_case
        with busy_competitor():
            _units, _secs, result = run(nt)
            assert _same(result, ref[nt]), f"{name}: result beside a busy process differs"
            benchmark.extra_info.update({"case": name, "threads": nt, "competitor": "1 busy process"})
            benchmark.pedantic(run, args=(nt,), rounds=3, iterations=1)

    @pytest.mark.benchmark(group="contention")
    def test_paired_scaling(benchmark):
        # --paired on a few steps: 1- and 2-thread runs alternated, each checked bit-identical
        # across rounds, ratios reported
        rows = benchmark.pedantic(paired_scaling, args=(("rsc15",), 2, 5), rounds=1, iterations=1)
        (row,) = rows
        assert row["rounds"] == 2 and len(row["2t"]["samples"]) == 2
        assert row["paired_ratio_median"] > 0 and "|" in paired_table(rows)


if __name__ == "__main__":
    sys.exit(main())
