"""Shared helpers for the benchmarks: timing, thread pinning and JSONL records."""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from seqrec_fast.bench import _commit, _cpu_model  # pure Python: loads no OpenMP runtime

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU model name (the same helper `seqrec bench` records)."""
    return _cpu_model()


def commit() -> str:
    """The short commit of this checkout, marked -dirty when tracked files are modified."""
    return _commit(Path(__file__).resolve().parent)


@contextmanager
def blas_threads(n: int):
    """Pin NumPy's BLAS to n threads (threadpoolctl), so both sides use the same thread count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - reported in the record
        yield "unpinned (threadpoolctl missing)"
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield n


def measure(fn, repeats: int = 30, warmup: int = 3, min_time: float = 0.002) -> dict:
    """Median and spread of the wall time of fn(), in seconds per call.

    Each repeat runs fn enough times to last at least `min_time`, so tiny kernels are not
    dominated by timer resolution.
    """
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    samples.sort()
    return {
        "median_s": statistics.median(samples),
        "p10_s": samples[max(0, int(0.1 * len(samples)) - 0)],
        "p90_s": samples[min(len(samples) - 1, int(0.9 * len(samples)))],
        "repeats": repeats,
        "inner": inner,
    }


SETTLE_S = 0.1  # pause before switching library: OpenBLAS / libgomp workers spin-wait after a call


def settle(seconds: float = SETTLE_S) -> None:
    """Let the previous side's thread pool stop spinning before the next side is timed.

    OpenBLAS's idle workers busy-wait for a while after each call (blas_thread_server), and libgomp's
    do too; on a 2-core machine a 2-thread run that starts right after the other library's 2-thread run
    shares a core with a spinning thread and runs several times slower.
    """
    time.sleep(seconds)


def measure_interleaved(fns: dict, repeats: int = 30, warmup: int = 3, min_time: float = 0.002,
                        contexts: dict | None = None, rounds: int = 3) -> dict:
    """:func:`measure` of several callables, their repeats split into ``rounds`` blocks that alternate
    between the callables (block 1 of every fn, block 2 of every fn, ...), with a :func:`settle` pause
    before each block: a slow spell of a shared machine then touches every side alike, and no side
    is timed while another library's workers still spin.

    ``contexts`` maps a name to a zero-argument context-manager factory entered around each of that
    fn's blocks (e.g. BLAS thread pinning). Returns ``{name: measure-like dict}``.
    """
    from contextlib import nullcontext

    contexts = contexts or {}
    inner = {}
    for name, fn in fns.items():
        with contexts.get(name, nullcontext)():
            for _ in range(warmup):
                fn()
            t0 = time.perf_counter()
            fn()
            one = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, int(min_time / one))
    samples: dict = {name: [] for name in fns}
    rounds = max(1, min(rounds, repeats))
    for rd in range(rounds):
        n_rd = repeats * (rd + 1) // rounds - repeats * rd // rounds
        for name, fn in fns.items():
            settle()
            with contexts.get(name, nullcontext)():
                fn()  # one untimed call: caches and thread pool warm again
                for _ in range(n_rd):
                    t0 = time.perf_counter()
                    for _ in range(inner[name]):
                        fn()
                    samples[name].append((time.perf_counter() - t0) / inner[name])
    out = {}
    for name, xs in samples.items():
        xs.sort()
        out[name] = {
            "median_s": statistics.median(xs),
            "p10_s": xs[max(0, int(0.1 * len(xs)))],
            "p90_s": xs[min(len(xs) - 1, int(0.9 * len(xs)))],
            "repeats": repeats,
            "inner": inner[name],
        }
    return out


def write_records(name: str, records: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    base = {
        "commit": commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
    }
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**base, **r}) + "\n")
    return path
