"""``seqrec bench``: the comparison matrix (C++ core vs the NumPy reference vs PyTorch) in one command.

Runs the repository's benchmark scripts (``bench/bench_kernels.py``, ``bench/bench_train.py``,
``bench/bench_evaluate.py``, ``bench/bench_serving.py``, ``bench/bench_rank.py``,
``bench/bench_contention.py``; every case there is validated against the NumPy reference, or for the
contention suite against the quiet run, before it is timed) and writes, into ``--out`` (default
``bench/results/report/``):

- ``records.jsonl``: one record per case and side (commit, date, CPU model, cores, the OpenMP / BLAS
  thread pools seen by threadpoolctl, the thread count pinned on that side, sizes, dtype, median,
  p10 / p90, repeats, speed-ups over NumPy and PyTorch);
- ``report.md``: Markdown tables;
- PNG plots (needs matplotlib: ``pip install 'seqrec-fast[bench]'``): training events/s against batch
  size and hidden size, serving latency against catalogue size N (log axes), and the speed-ups.

The benchmark scripts live in the repository (``bench/``), not in the installed package: they are found
beside the package source, or with ``--bench-dir`` / ``$SEQREC_BENCH_DIR``.

    seqrec bench --quick                      # < 2 minutes on 2 cores
    seqrec bench --out /tmp/report --no-torch
    python -m seqrec_fast.bench --quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

__all__ = [
    "find_bench_dir",
    "environment",
    "write_jsonl",
    "render_markdown",
    "write_plots",
    "write_report",
    "add_speedups",
    "main",
]

EXIT_USAGE = 2
DEFAULT_OUT = os.path.join("bench", "results", "report")
WORKER_TAG = "@@seqrec_bench@@"

# Training sweep: events/s against batch size (at H = 100) and against hidden size (at B = 32), in the
# official GRU4Rec RSC15 setting otherwise (bench_train.SETTING: cross-entropy + logQ, n_sample 2048).
TRAIN_BATCHES = (32, 128, 512)
TRAIN_HIDDEN = (64, 100, 256)
# The other official settings (bench_train.SETTINGS: configs/yoochoose.toml H = 480 B = 48, and
# configs/diginetica.toml H = 512 B = 128 BPR-max), each with a bf16 C++ row where the CPU has
# AVX-512-BF16 (the RSC15 setting's B = 32, H = 100 row gets one too).
TRAIN_SETTINGS = ("yoochoose", "diginetica")
SERVING_SIZES_QUICK = (3_000, 40_000)
SERVING_SIZES_FULL = (3_000, 40_000, 100_000, 1_000_000)


SUITES = ("kernels", "train", "evaluation", "serving", "ranking", "scale", "features", "contention")

FOREIGN_LOAD_FLAG = 0.25
NOISY_SPREAD = 1.5
SLOWER_TOLERANCE = 1.2  # a row > 20% slower on more threads is listed as suspect
SETTLE_S = 0.1  # pause between sides: OpenBLAS / libgomp workers spin-wait after a call  # p90/p10 above which a row is marked † in the report  # cores of other processes' load above which a row is flagged (bench_train)


class BenchError(Exception):
    """A user-facing error: printed as ``seqrec bench: error: ...``, exit status 2."""


# ---------------------------------------------------------------------------------------------------
# locating and importing the repository's bench scripts
# ---------------------------------------------------------------------------------------------------
def find_bench_dir(explicit: Optional[str] = None) -> Path:
    """The repository's ``bench/`` folder: ``explicit``, ``$SEQREC_BENCH_DIR``, beside the package
    source (``<repo>/python/seqrec_fast`` -> ``<repo>/bench``), or ``./bench``."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    elif os.environ.get("SEQREC_BENCH_DIR"):
        candidates.append(Path(os.environ["SEQREC_BENCH_DIR"]))
    else:
        candidates.append(Path(__file__).resolve().parents[2] / "bench")
        candidates.append(Path.cwd() / "bench")
    for c in candidates:
        if (c / "bench_kernels.py").is_file() and (c / "common.py").is_file():
            return c.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise BenchError(
        f"the benchmark scripts (bench/bench_kernels.py, ...) were not found (looked in {where}). "
        "They ship with the source repository, not with the installed package: run from a checkout, "
        "or pass --bench-dir PATH/TO/bench (or set SEQREC_BENCH_DIR)"
    )


def _import_bench(bench_dir: Path, name: str):
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    return importlib.import_module(name)


# ---------------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit(cwd: Optional[Path] = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=cwd or Path(__file__).parent, check=False)
        sha = out.stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=cwd or Path(__file__).parent,
                               check=False).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def threadpools() -> dict:
    """Thread pools loaded in this process (threadpoolctl): {user_api: max num_threads}, plus the
    libraries. Empty if threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"note": "threadpoolctl missing"}
    out: dict[str, Any] = {"libraries": []}
    for info in threadpool_info():
        api = info.get("user_api")
        out[api] = max(out.get(api, 0), int(info.get("num_threads") or 0))
        out["libraries"].append({k: info.get(k) for k in
                                 ("user_api", "internal_api", "num_threads", "version", "prefix")})
    return out


def _torch_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def environment(bench_dir: Optional[Path] = None) -> dict:
    """Fields common to every record of a run."""
    try:
        from . import _core

        isa = getattr(_core, "ISA", None)
    except ImportError:  # pragma: no cover
        isa = None
    import numpy as np

    return {
        "commit": _commit(bench_dir),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _torch_version(),
        "isa": isa,
        "threadpools": threadpools(),
        "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_"))},
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


# ---------------------------------------------------------------------------------------------------
# normalised records
# ---------------------------------------------------------------------------------------------------
def _rec(suite: str, case: str, side: str, role: str, threads: int, sizes: dict, *, median: float,
         p10: float, p90: float, unit: str, repeats: int, dtype: str = "float32",
         pinned: Optional[dict] = None, higher_is_better: bool = False, **extra: Any) -> dict:
    """One normalised record. ``role``: cpp | numpy | torch | other (the speed-up columns compare
    cpp against numpy and torch within the same suite, case, sizes and thread count)."""
    return {
        "suite": suite, "case": case, "side": side, "role": role, "threads": threads,
        "pinned": pinned or {}, "sizes": sizes, "dtype": dtype, "median": median, "p10": p10,
        "p90": p90, "unit": unit, "higher_is_better": higher_is_better, "repeats": repeats, **extra,
    }


def _key(r: dict) -> tuple:
    return (r["suite"], r["case"], r["threads"], json.dumps(r["sizes"], sort_keys=True),
            r.get("precision", "float32"))


def add_speedups(records: list[dict]) -> list[dict]:
    """Adds ``speedup_vs_numpy`` / ``speedup_vs_torch`` (> 1: the C++ side is faster) to every
    ``role == "cpp"`` record that has a baseline at the same suite, case, sizes and thread count."""
    base: dict[tuple, dict] = {}
    for r in records:
        if r["role"] in ("numpy", "torch"):
            k = (*_key(r)[:4], r["role"])
            base.setdefault(k, r)
    for r in records:
        if r["role"] != "cpp":
            continue
        for role in ("numpy", "torch"):
            b = base.get((*_key(r)[:4], role))
            if b is None or not b["median"] or not r["median"]:
                continue
            ratio = r["median"] / b["median"] if r["higher_is_better"] else b["median"] / r["median"]
            r[f"speedup_vs_{role}"] = ratio
    return records


def _quantiles(xs: Sequence[float]) -> tuple[float, float, float]:
    import numpy as np

    a = np.asarray(xs, dtype=np.float64)
    return float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
def run_kernels(bench_dir: Path, quick: bool, threads=(1, 2)) -> list[dict]:
    bk = _import_bench(bench_dir, "bench_kernels")
    raw = bk.run(batches=(32, 512), threads=threads, repeats=5 if quick else 30)  # validates first
    out = []
    for r in raw:
        sizes = dict(r["sizes"]) if "sizes" in r else {"B": r["B"], "T": r["T"], "E": r["E"], "H": r["H"]}
        for side, role, pfx, pin in (("seqrec_fast C++", "cpp", "cpp", {"openmp": r["threads"]}),
                                     ("NumPy reference", "numpy", "ref", {"blas": r["threads"]})):
            out.append(_rec("kernels", r["case"], side, role, r["threads"], sizes,
                            median=r[f"{pfx}_median_s"], p10=r[f"{pfx}_p10_s"],
                            p90=r[f"{pfx}_p90_s"], unit="s", repeats=r["repeats"], pinned=pin,
                            validated="assert_allclose vs reference (bench_kernels.check)"))
    return out


# ---------------------------------------------------------------------------------------------------
# training sweep (batch size, hidden size)
# ---------------------------------------------------------------------------------------------------
@contextmanager
def _setting(bt, B: int, H: int, name: str = "rsc15"):
    saved = dict(bt.SETTING)
    bt.SETTING.clear()
    bt.SETTING.update(getattr(bt, "SETTINGS", {}).get(name, saved))
    bt.SETTING.update(batch_size=B, layers=[H])
    try:
        yield
    finally:
        bt.SETTING.clear()
        bt.SETTING.update(saved)


def train_configs() -> list[tuple[int, int]]:
    cfgs = [(B, 100) for B in TRAIN_BATCHES] + [(32, H) for H in TRAIN_HIDDEN]
    return list(dict.fromkeys(cfgs))


def _train_config(bt, B: int, H: int, sides: Sequence[str], threads, steps: int, repeats: int,
                  data_path: Optional[str], setting: str = "rsc15", bf16: bool = False) -> list[dict]:
    """Validates (float64, 3 steps, to 1e-8 vs the reference; the bf16 side against the reference's
    bf16 products in float32), then times the given step-level sides of bench_train on identical
    pre-drawn inputs, each repeat from the same initial state. ``setting``: a key of
    bench_train.SETTINGS; ``bf16``: also time the C++ trainer with precision='bf16'."""
    import dataclasses

    import numpy as np

    from . import _core

    bf16 = bf16 and "cpp" in sides and _core.bf16_available()
    with _setting(bt, B, H, setting):
        c64 = bt.build_case(n_steps=3, dtype=np.float64, data_path=data_path)
        checks = {}
        if "cpp" in sides:
            for nt in threads:
                checks[f"cpp_{nt}t"] = bt.check_cpp(c64, 3, 1e-8, nt)
        if "torch" in sides:
            checks["torch"] = bt.check_torch_twin(c64, 3, 1e-8)
        case = bt.build_case(n_steps=steps, dtype=np.float32, data_path=data_path)
        if bf16:
            c16 = bt.build_case(n_steps=3, dtype=np.float32, data_path=data_path)
            c16 = dataclasses.replace(c16, config=dict(c16.config, precision="bf16"))
            checks["cpp_bf16"] = bt._compare("C++ bf16", c16, 3, 2e-3,
                                             lambda c, s, k: bt.run_cpp(c, s, max(threads), k), 2e-2)
            case16 = dataclasses.replace(case, config=dict(case.config, precision="bf16"))
    sizes = {"B": B, "H": H, "n_sample": case.extra["S"], "n_items": case.extra["n_items"],
             "steps": int(case.x.shape[0])}
    runs = []
    for nt in threads:
        if "cpp" in sides:
            runs.append(("seqrec_fast C++", "cpp", nt, lambda st, nt=nt: bt.run_cpp(case, st, nt),
                         {"openmp": nt}, None))
        if bf16:
            runs.append(("seqrec_fast C++ bf16", "cpp", nt,
                         lambda st, nt=nt: bt.run_cpp(case16, st, nt), {"openmp": nt}, "bf16"))
        if "numpy" in sides:
            runs.append(("NumPy reference", "numpy", nt, lambda st: bt.run_ref(case, st), {"blas": nt},
                         "blas"))
        if "torch" in sides:
            runs.append(("PyTorch twin", "torch", nt, lambda st: bt.run_torch(case, st), {"torch": nt},
                         "torch"))

    def once(run, warmup: int) -> float:
        _, _, nt, fn, _, how = run
        if how == "torch":
            bt.torch.set_num_threads(nt)
        if how == "blas":
            with bt.blas_threads(nt):
                return bt.time_steps(fn, case.fresh_state, 1, warmup=warmup)[0]
        return bt.time_steps(fn, case.fresh_state, 1, warmup=warmup)[0]

    # Repeats are interleaved round-robin over every side and thread count (r1: all rows, r2: all
    # rows, ...): this shared 2-core VM sometimes slows 2-thread runs down several-fold for a minute,
    # and interleaving spreads such a spell over all rows instead of sinking one row's median.
    secs: dict[int, list[float]] = {i: [] for i in range(len(runs))}
    fls: dict[int, list[float]] = {i: [] for i in range(len(runs))}
    for rep in range(repeats):
        for i, run in enumerate(runs):
            time.sleep(SETTLE_S)  # the previous side's thread pool stops spinning (see bench/common.py)
            with bt.ForeignLoad() as fl:
                secs[i].append(once(run, warmup=1 if rep == 0 else 0))
            if fl.cores is not None:
                fls[i].append(fl.cores * secs[i][-1])  # other processes' busy CPU seconds
    out = []
    for i, (side, role, nt, _, pinned, how) in enumerate(runs):
        rates = [case.n_events / x for x in secs[i]]
        med, p10, p90 = _quantiles(rates)
        extra = {"precision": "bf16"} if how == "bf16" else {}
        out.append(_rec("train", f"train steps ({setting} setting)", side, role, nt, sizes, median=med,
                        p10=p10, p90=p90, unit="events/s", higher_is_better=True,
                        repeats=repeats, pinned=pinned, events=case.n_events,
                        foreign_load_cores=(sum(fls[i]) / sum(secs[i][:len(fls[i])])
                                            if fls[i] else None),
                        seconds_median=statistics.median(secs[i]),
                        validated={k: {kk: v[kk] for kk in ("steps", "loss_max_rel_diff",
                                                             "max_param_diff")}
                                   for k, v in checks.items()
                                   if (role == "cpp" and k.startswith("cpp")
                                       and (k == "cpp_bf16") == (how == "bf16"))
                                   or (role == "torch" and k == "torch")}
                        or "is the reference", **extra))
    return out


def _train_sweep_local(bench_dir: Path, sides, threads, steps, repeats, data_path) -> list[dict]:
    bt = _import_bench(bench_dir, "bench_train")
    if "torch" in sides and not bt._import_torch():
        raise BenchError("torch is not importable in the training worker")
    recs = []
    for B, H in train_configs():
        t0 = time.perf_counter()
        recs += _train_config(bt, B, H, sides, threads, steps, repeats, data_path,
                              bf16=(B, H) == (32, 100))
        print(f"  train B={B} H={H} [{','.join(sides)}]: {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    for name in TRAIN_SETTINGS if hasattr(bt, "SETTINGS") else ():
        st = bt.SETTINGS[name]
        B, H = st["batch_size"], st["layers"][-1]
        path = data_path
        if path is None:
            path = bt.setting_data_path(name)
            if path is not None and not Path(path).is_file():
                path = None  # bench_train falls back to rsc15_100k / synthetic data
        t0 = time.perf_counter()
        recs += _train_config(bt, B, H, sides, threads, max(4, steps // 2), repeats, path,
                              setting=name, bf16=True)
        print(f"  train {name} setting B={B} H={H} [{','.join(sides)}]: "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return recs


def run_train(bench_dir: Path, quick: bool, torch_side: bool, threads=(1, 2),
              data_path: Optional[str] = None) -> list[dict]:
    """C++ and NumPy in this process; the PyTorch twin in a separate process (torch's wheel ships its
    own libgomp.so.1, which would otherwise serve seqrec_fast's OpenMP too; see bench_train.py)."""
    steps, repeats = (8, 3) if quick else (60, 5)
    recs = _train_sweep_local(bench_dir, ("cpp", "numpy"), threads, steps, repeats, data_path)
    if torch_side:
        if importlib.util.find_spec("torch") is None:
            print("NOTE: torch is not installed; the PyTorch training side is skipped",
                  file=sys.stderr)
        else:
            payload = {"bench_dir": str(bench_dir), "threads": list(threads), "steps": steps,
                       "repeats": repeats, "data": data_path}
            cmd = [sys.executable, "-m", "seqrec_fast.bench", "--train-torch-worker",
                   json.dumps(payload)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            sys.stderr.write(p.stderr)
            if p.returncode != 0:
                raise RuntimeError(f"torch training worker failed (exit {p.returncode})")
            line = next(x for x in reversed(p.stdout.splitlines()) if x.startswith(WORKER_TAG))
            recs += json.loads(line[len(WORKER_TAG):])
    return recs


# ---------------------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------------------
def run_serving(bench_dir: Path, quick: bool, torch_side: bool, threads=(1, 2)) -> list[dict]:
    bs = _import_bench(bench_dir, "bench_serving")
    sizes = SERVING_SIZES_QUICK if quick else SERVING_SIZES_FULL
    batch_threads = (1,) if quick else (1, 2)
    single, batch = [], []
    torch_res = bs.run_torch(sizes, threads, quick, batch_threads) if torch_side else None
    if torch_res:
        single += [{**r, "precision": "float32"} for r in torch_res["single"]]
        batch += torch_res["batch"]
    for N in sizes:
        t0 = time.perf_counter()
        s, b, _checks = bs.bench_size(N, threads, quick, batch_threads, ("float32", "int8"))
        single += s
        batch += b
        print(f"  serving N={N}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    roles = {"seqrec recommend": "cpp", "numpy step+topk": "numpy", "torch eager": "torch"}
    out = []
    for r in single:
        role = roles.get(r["side"], "other")
        pin = {"torch": r["threads"]} if role == "torch" else (
            {"blas": r["threads"]} if r["side"].startswith("numpy") else {"openmp": r["threads"]})
        # only float32 seqrec rows are compared with the float32 baselines
        if role == "cpp" and r.get("precision", "float32") != "float32":
            role = "other"
        out.append(_rec("serving", f"single event top-{bs.K}", r["side"], role, r["threads"],
                        {"N": r["n_items"], "H": bs.H, "k": bs.K}, median=r["p50_us"],
                        p10=r.get("p10_us", float("nan")), p90=r["p90_us"], unit="us",
                        repeats=r["n"], pinned=pin, precision=r.get("precision", "float32"),
                        dtype=r.get("precision", "float32"), p99=r["p99_us"],
                        round_p50_spread=r["round_p50_spread"],
                        validated="top-20 vs exact float64 top-20 (bench_serving.validate_seqrec)"))
    broles = {"seqrec recommend_batch": "cpp", "numpy batch": "numpy", "torch eager": "torch"}
    for r in batch:
        role = broles.get(r["side"], "other")
        if role == "cpp" and r["precision"] != "float32":
            role = "other"
        out.append(_rec("serving", f"batch {r['batch']} top-{bs.K}", r["side"], role, r["threads"],
                        {"N": r["n_items"], "H": bs.H, "k": bs.K, "batch": r["batch"]},
                        median=r["p50_us"], p10=r.get("p10_us", float("nan")), p90=r["p90_us"],
                        unit="us", repeats=r["n"], precision=r["precision"], dtype=r["precision"],
                        events_per_s=r["events_per_s"],
                        pinned={"torch" if role == "torch" else
                                ("blas" if r["side"].startswith("numpy") else "openmp"):
                                r["threads"]}))
    return out


def run_scale(bench_dir: Path, quick: bool, threads=(1, 2)) -> list[dict]:
    """Serving past one process (bench_serving_store.py): one event in-process on the in-memory store
    against a Redis store (a real redis-server on 127.0.0.1, started and stopped here), and the exact
    fused kernel against bare NumPy ``W_y @ h`` at N=40k. Skipped with a message when redis-server or
    redis-py is missing. The HTTP and index parts are long: run bench/bench_serving_store.py and
    bench/bench_index.py directly."""
    bss = _import_bench(bench_dir, "bench_serving_store")
    N = 3_000 if quick else 40_000
    model = bss.build_model(N, 100)
    out = []
    try:
        ctx = bss.redis_server()
        url = ctx.__enter__()
    except (RuntimeError, ImportError) as e:
        print(f"  scale: Redis part skipped ({e})", file=sys.stderr)
        ctx = None
    if ctx is not None:
        try:
            rows = bss.bench_stores(model, url, 300 if quick else 1500)
        finally:
            ctx.__exit__(None, None, None)
        for r in rows:
            out.append(_rec("scale", "one event, session store", f"recommend, {r['store']} store",
                            "other", 1, {"N": N, "H": 100, "k": bss.K}, median=r["p50_us"],
                            p10=float("nan"), p90=r["p90_us"], unit="us", repeats=r["n"],
                            p99=r["p99_us"], pinned={"openmp": 1}))
    for r in bss.bench_kernel_vs_numpy(model, threads, repeats=150 if quick else 600):
        role = "numpy" if r["side"].startswith("numpy W_y @ h (p") else (
            "cpp" if r["side"].startswith("fused topk") else "other")
        out.append(_rec("scale", "one query vs bare W_y @ h", r["side"], role, r["threads"],
                        {"N": N, "H": 100, "k": bss.K}, median=r["p50_us"], p10=float("nan"),
                        p90=r["p90_us"], unit="us", repeats=r["n"], p99=r["p99_us"],
                        pinned={"blas" if role == "numpy" else "openmp": r["threads"]}))
    return out


# ---------------------------------------------------------------------------------------------------
# ranking a candidate list
# ---------------------------------------------------------------------------------------------------
def run_ranking(bench_dir: Path, quick: bool, torch_side: bool) -> list[dict]:
    """Re-ranking C = 100 and 1,000 candidates (H = 100, N = 40k, 1 thread, in process): the C++
    kernel alone, fused with the GRU step, the step alone, the Recommender API, against PyTorch
    (separate process) and NumPy doing the same gather, matmul and sort; validated first."""
    br = _import_bench(bench_dir, "bench_rank")
    res = br.run(br.CANDIDATES, quick, torch_side)
    roles = {"seqrec rank_candidates": "cpp", "torch gather+matmul+sort": "torch",
             "numpy gather+matmul+sort": "numpy"}
    out = []
    for r in res["rows"]:
        role = roles.get(r["side"], "other")
        case = "rank C candidates (given state)" if r["side"] in roles else "rank C candidates (other)"
        pin = {"torch": 1} if r["side"].startswith("torch") else (
            {"blas": 1} if r["side"].startswith("numpy") else {"openmp": 1})
        out.append(_rec("ranking", case, r["side"], role, 1, {"C": r["C"], "H": br.H, "N": br.N},
                        median=r["p50_us"], p10=r.get("p10_us", float("nan")), p90=r["p90_us"],
                        unit="us", repeats=r["n"], pinned=pin, p99=r["p99_us"],
                        validated="vs reference.rank_candidates and the exact order (bench_rank)"))
    return out


# ---------------------------------------------------------------------------------------------------
# item features
# ---------------------------------------------------------------------------------------------------
def run_features(bench_dir: Path, quick: bool, threads=(1, 2)) -> list[dict]:
    """bench_features.py: train_chunk events/s with F_dim 0 / 64 / 384 (validated against the
    reference trainer first), and per-event serving latency with and without features."""
    bf = _import_bench(bench_dir, "bench_features")
    N = 5_000 if quick else 40_000
    steps, reps, sreps = (16, 3, 40) if quick else (128, 6, 300)
    out = []
    for r in bf.bench_train(threads, N=N, steps=steps, repeats=reps):
        out.append(_rec("features", f"train_chunk F_dim={r['F_dim']} (events/s)",
                        "seqrec_fast C++", "other", r["threads"],
                        {"N": N, "B": r["B"], "H": r["H"], "n_sample": r["n_sample"],
                         "F_dim": r["F_dim"]},
                        median=r["events_per_s"], p10=r["events_per_s_p10"],
                        p90=r["events_per_s_p90"], unit="events/s", higher_is_better=True,
                        repeats=r["repeats"], pinned={"openmp": r["threads"]},
                        relative_to_no_features=r["relative_to_no_features"],
                        validated="C++ vs NumPy reference trainer with features (float64)"))
    for r in bf.bench_serving(N=N, repeats=sreps):
        out.append(_rec("features", f"serve one event top-{r['k']} (µs)",
                        "with features" if r["F_dim"] else "without features", "other", 1,
                        {"N": N, "F_dim": r["model_F_dim"]}, median=r["p50_us"], p10=r["p10_us"],
                        p90=r["p90_us"], unit="us", repeats=r["repeats"], pinned={"openmp": 1},
                        fold_at_load_s=r["fold_at_load_s"], validated=r["validated"]))
    return out


# ---------------------------------------------------------------------------------------------------
# full-ranking evaluation
# ---------------------------------------------------------------------------------------------------
def run_evaluation(bench_dir: Path, quick: bool, torch_side: bool, threads=(1, 2)) -> list[dict]:
    """``evaluate()`` end to end with the C++ scorer, the NumPy reference scorer and PyTorch (separate
    process), on identical test sessions and weights; ranks checked against the reference first."""
    be = _import_bench(bench_dir, "bench_evaluate")
    sizes = be.SIZES_QUICK if quick else be.SIZES_FULL
    raw = be.run(sizes, threads, quick, None, torch_side)
    out = []
    for r in raw:
        secs_p = [r["p10_s"], r["p90_s"]]
        n = r["predictions"]
        out.append(_rec("evaluation", f"evaluate() full ranking (GRU H={be.H})", r["side"],
                        r["role"], r["threads"], dict(r["sizes"]), median=n / r["median_s"],
                        p10=n / max(secs_p), p90=n / min(secs_p), unit="predictions/s",
                        higher_is_better=True, repeats=r["repeats"], pinned=r["pinned"],
                        seconds_median=r["median_s"], validated=r["validated"]))
    return out


# ---------------------------------------------------------------------------------------------------
# threads beside a busy process (issue 14)
# ---------------------------------------------------------------------------------------------------
def run_contention(bench_dir: Path, quick: bool, threads=(1, 2)) -> list[dict]:
    """Training, evaluation and serving at 1 and 2 threads, quiet and beside a busy-looping process
    (bench/bench_contention.py: the competitor is always killed; every busy result is checked to be
    bit-identical to the quiet one at the same thread count)."""
    bc = _import_bench(bench_dir, "bench_contention")
    rows = bc.measure(bc.CASES, quick, repeats=2 if quick else 5, threads=tuple(threads))
    out = []
    for r in rows:
        med, p10, p90 = _quantiles(r["samples"])
        side = ("seqrec_fast C++, quiet" if r["mode"] == "quiet"
                else "seqrec_fast C++, beside 1 busy process")
        out.append(_rec("contention", f"{r['case']} ({r['unit']})", side, "other", r["threads"],
                        {k: v for k, v in r["sizes"].items() if k != "data"}, median=med, p10=p10,
                        p90=p90, unit=r["unit"], higher_is_better=True, repeats=r["repeats"],
                        pinned={"seqrec": r["threads"]}, mode=r["mode"],
                        ratio_vs_1_thread=r["ratio_vs_1"], validated=r["validated"],
                        pool_backoffs=r.get("pool_backoffs", 0)))
    return out


# ---------------------------------------------------------------------------------------------------
# report writing (pure functions of the records; tested on fake records)
# ---------------------------------------------------------------------------------------------------
def write_jsonl(records: Iterable[dict], path: os.PathLike | str, env: Optional[dict] = None) -> Path:
    """One JSON object per line: ``{**env, **record}`` (overwrites ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**(env or {}), **r}, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _fmt_val(v: float, unit: str) -> str:
    if v is None or v != v:
        return "–"
    if unit == "s":
        return f"{v * 1e6:,.0f}"
    if unit == "us":
        return f"{v:,.1f}"
    return f"{v:,.0f}"


_UNIT_LABEL = {"s": "µs", "us": "µs", "events/s": "events/s", "predictions/s": "predictions/s"}


def _sizes_txt(s: dict) -> str:
    return " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in s.items())


def _ratio(r: dict, k: str) -> str:
    return f"{r[k]:.2f}x" if k in r else ""


def is_noisy(r: dict) -> bool:
    """A row whose spread p90/p10 exceeds NOISY_SPREAD (the machine was disturbed while it ran)."""
    lo, hi = r.get("p10"), r.get("p90")
    if not lo or not hi or lo != lo or hi != hi or lo <= 0:
        return False
    return max(hi / lo, lo / hi) > NOISY_SPREAD


def slower_with_more_threads(records: Sequence[dict]) -> list[dict]:
    """Records whose median is worse, by more than SLOWER_TOLERANCE, than the same suite, case, sizes,
    side and precision at a smaller thread count (a sign of a disturbed machine on a 2-core VM; code
    that does not use the second thread stays within the tolerance)."""
    by: dict[tuple, list[dict]] = {}
    for r in records:
        k = (r["suite"], r["case"], json.dumps(r["sizes"], sort_keys=True), r["side"],
             r.get("precision", "float32"))
        by.setdefault(k, []).append(r)
    out = []
    for rows in by.values():
        rows = sorted(rows, key=lambda r: r["threads"])
        for a, b in zip(rows, rows[1:]):
            if b["threads"] > a["threads"] and a["median"] and b["median"]:
                ratio = a["median"] / b["median"] if b["higher_is_better"] else b["median"] / a["median"]
                worse = ratio > SLOWER_TOLERANCE
                if worse:
                    out.append(b)
    return out


def render_markdown(records: Sequence[dict], env: Optional[dict] = None,
                    command: Optional[str] = None, plots: Sequence[str] = ()) -> str:
    """The Markdown report: an environment header and one table per suite."""
    env = env or {}
    L = ["# seqrec_fast benchmark report", ""]
    if env:
        tp = env.get("threadpools", {})
        pools = ", ".join(f"{k} {v}" for k, v in tp.items() if k not in ("libraries", "note"))
        L += [
            f"- commit `{env.get('commit')}`, {env.get('date')}",
            f"- CPU: {env.get('cpu')} ({env.get('cores')} cores); seqrec_fast ISA {env.get('isa')}",
            f"- Python {env.get('python')}, NumPy {env.get('numpy')}, torch {env.get('torch') or 'not installed'}",
            f"- thread pools at start (threadpoolctl): {pools or tp.get('note', 'none')}; each side "
            "pins its own count per row (C++ num_threads, BLAS via threadpoolctl, torch.set_num_threads)",
        ]
        if env.get("loadavg_start") is not None:
            L.append(f"- load average at start {env.get('loadavg_start')}, at end {env.get('loadavg_end')}"
                     f"; wall time {env.get('wall_s')} s")
    if command:
        L.append(f"- command: `{command}`")
    busy = [r for r in records if (r.get("foreign_load_cores") or 0) > FOREIGN_LOAD_FLAG]
    if busy:
        L += ["", f"**Warning:** other processes kept more than {FOREIGN_LOAD_FLAG} of a core busy during "
              f"{len(busy)} training row(s) (`foreign_load_cores` in records.jsonl); on a 2-core machine the "
              "2-thread figures of every side collapse under such load. Rerun on an idle machine before "
              "quoting them."]
    slow = slower_with_more_threads(records)
    if slow:
        L += ["", "**Check:** these rows ran more than 20% slower on more threads than on fewer for the same "
              "side and case, "
              "which on this kind of shared VM means a slow spell of the host rather than the code (rerun "
              "them alone to confirm): "
              + "; ".join(f"{r['suite']} {r['case']} {_sizes_txt(r['sizes'])} {r['side']} "
                          f"{r.get('precision', 'float32')} {r['threads']}t" for r in slow) + "."]
    L += ["", "Every case was validated against the NumPy reference before it was timed. Speed-ups are "
          "ratios of medians at the same thread count (> 1: seqrec_fast C++ is faster). A † after a "
          f"median marks a spread p90/p10 above {NOISY_SPREAD:g}: the machine was disturbed during that row; "
          "read its ratios with care.", ""]
    titles = {"kernels": "Kernels (GRU forward + backward, loss, optimizer, top-k, rank counts)",
              "train": "Training (steps per second)",
              "evaluation": "Full-ranking evaluation (evaluate() end to end, all items ranked)",
              "serving": "Serving",
              "ranking": "Ranking a candidate list (H = 100, N = 40k, 1 thread)",
              "scale": "Serving past one process (session store, fused kernel vs bare product)",
              "features": "Item features (training cost against none; serving with F·P folded)",
              "contention": "Threads beside a busy process (1 against 2 threads)"}
    for suite in SUITES:
        rows = [r for r in records if r["suite"] == suite]
        if not rows:
            continue
        unit = rows[0]["unit"]
        stat = "median"
        L += [f"## {titles[suite]}", "",
              f"| case | sizes | side | precision | threads | {stat} ({_UNIT_LABEL.get(unit, unit)}) "
              "| p10 | p90 | repeats | vs NumPy | vs PyTorch |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        rows = sorted(rows, key=lambda r: (r["case"], json.dumps(r["sizes"], sort_keys=True),
                                            r["threads"], r["role"] != "cpp", r["side"],
                                            r.get("precision", "")))
        for r in rows:
            u = r["unit"]
            L.append(f"| {r['case']} | {_sizes_txt(r['sizes'])} | {r['side']} "
                     f"| {r.get('precision', r.get('dtype', ''))} | {r['threads']} "
                     f"| {_fmt_val(r['median'], u)}{' †' if is_noisy(r) else ''} "
                     f"| {_fmt_val(r['p10'], u)} | {_fmt_val(r['p90'], u)} "
                     f"| {r['repeats']} | {_ratio(r, 'speedup_vs_numpy')} | {_ratio(r, 'speedup_vs_torch')} |")
        L.append("")
        if suite == "contention":
            L += ["| case | machine | 2 threads / 1 thread |", "|---|---|---:|"]
            L += [f"| {r['case']} | {r['side']} | {r['ratio_vs_1_thread']:.2f} |" for r in rows
                  if r["threads"] > 1 and "ratio_vs_1_thread" in r]
            L.append("")
    if plots:
        L += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(L)


def _series(records, suite, case_prefix, fixed: dict, xkey: str):
    """{(side, threads): sorted [(x, record)]} for records whose sizes match ``fixed``."""
    out: dict[tuple, list] = {}
    for r in records:
        if r["suite"] != suite or not r["case"].startswith(case_prefix):
            continue
        if r.get("precision", "float32") != "float32" and suite == "serving":
            label_side = f"{r['side']} {r['precision']}"
        else:
            label_side = r["side"]
        if any(r["sizes"].get(k) != v for k, v in fixed.items()) or xkey not in r["sizes"]:
            continue
        out.setdefault((label_side, r["threads"], r["role"]), []).append((r["sizes"][xkey], r))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in out.items()}


def write_plots(records: Sequence[dict], out_dir: os.PathLike | str) -> list[Path]:
    """PNG plots; returns the files written ([] with a message if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        print("NOTE: matplotlib is not installed; plots skipped (pip install 'seqrec-fast[bench]')",
              file=sys.stderr)
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    style = {"cpp": "-o", "numpy": "--s", "torch": ":^", "other": "-.x"}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        p = out_dir / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    def band(ax, pts, fmt, label):
        xs = [x for x, _ in pts]
        ax.plot(xs, [r["median"] for _, r in pts], fmt, label=label)
        lo = [r["p10"] for _, r in pts]
        hi = [r["p90"] for _, r in pts]
        if all(v == v for v in lo + hi):
            ax.fill_between(xs, lo, hi, alpha=0.15)

    # (1) training events/s vs batch size and hidden size
    train = [r for r in records if r["suite"] == "train"]
    if train:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, fixed, xkey, title in ((axes[0], {"H": 100}, "B", "events/s vs batch size (H=100)"),
                                       (axes[1], {"B": 32}, "H", "events/s vs hidden size (B=32)")):
            for (side, nt, role), pts in sorted(_series(train, "train", "", fixed, xkey).items()):
                band(ax, pts, style.get(role, "-"), f"{side}, {nt}t")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xkey)
            ax.set_ylabel("training events/s (median, p10-p90 band)")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "train_events_per_s.png")

    # (2) serving latency vs N (log axes)
    serving = [r for r in records if r["suite"] == "serving" and r["case"].startswith("single")]
    if serving:
        fig, ax = plt.subplots(figsize=(7.5, 5))
        keep = ("seqrec recommend", "numpy step+topk", "torch eager", "numpy E@h")
        for (side, nt, role), pts in sorted(_series(serving, "serving", "single", {}, "N").items()):
            if not side.startswith(keep) or "bfloat16" in side:
                continue
            band(ax, pts, style.get(role, "-."), f"{side}, {nt}t")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue size N (items)")
        ax.set_ylabel("latency per event, µs (p50, p10-p90 band)")
        ax.set_title("serving: one GRU step + top-20")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "serving_latency_vs_N.png")

    # (3) speed-ups over NumPy and PyTorch
    panels = []
    if train:
        panels += [("train", {"H": 100}, "B", "training, vs batch size (H=100)"),
                   ("train", {"B": 32}, "H", "training, vs hidden size (B=32)")]
    if serving:
        panels.append(("serving", {}, "N", "serving single event, vs N"))
    if any(r["suite"] == "evaluation" for r in records):
        panels.append(("evaluation", {}, "N", "full-ranking evaluation, vs N"))
    kern = [r for r in records if r["suite"] == "kernels"]
    if kern:
        panels.append(("kernels", {}, "B", "kernels fwd+bwd, vs batch size"))
    if panels and any("speedup_vs_numpy" in r or "speedup_vs_torch" in r for r in records):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
        for ax, (suite, fixed, xkey, title) in zip(axes[0], panels):
            case = "single" if suite == "serving" else ""
            for (side, nt, role), pts in sorted(_series(records, suite, case, fixed, xkey).items()):
                if role != "cpp":
                    continue
                for base, fmt in (("numpy", "-o"), ("torch", "--^")):
                    q = [(x, r[f"speedup_vs_{base}"]) for x, r in pts if f"speedup_vs_{base}" in r]
                    if suite == "kernels":
                        cases = sorted({r["case"] for _, r in pts})
                        for c in cases:
                            qc = [(x, r[f"speedup_vs_{base}"]) for x, r in pts
                                  if r["case"] == c and f"speedup_vs_{base}" in r]
                            if qc:
                                ax.plot(*zip(*qc), fmt, label=f"{c} vs {base}, {nt}t")
                    elif q:
                        ax.plot(*zip(*q), fmt, label=f"vs {'NumPy' if base == 'numpy' else 'PyTorch'}, {nt}t")
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xscale("log", base=10 if xkey == "N" else 2)
            ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded minor labels on short ranges
            ax.set_yscale("log")
            ax.set_xlabel(xkey)
            ax.set_ylabel("speed-up of seqrec_fast C++ (x)")
            ax.set_title(title, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
        save(fig, "speedup.png")
    return written


def write_report(records: list[dict], out_dir: os.PathLike | str, env: Optional[dict] = None,
                 command: Optional[str] = None, plots: bool = True) -> dict:
    """Speed-ups, ``records.jsonl``, PNG plots and ``report.md`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    add_speedups(records)
    jsonl = write_jsonl(records, out_dir / "records.jsonl", env)
    pngs = write_plots(records, out_dir) if plots else []
    md = out_dir / "report.md"
    md.write_text(render_markdown(records, env, command, [str(p) for p in pngs]), encoding="utf-8")
    return {"records": jsonl, "report": md, "plots": pngs}


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="small sizes, few repeats (under 2 minutes on 2 cores); a smoke test")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"output folder (default: <repo>/{DEFAULT_OUT})")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--bench-dir", default=None, metavar="DIR",
                   help="the repository's bench/ folder (default: beside the package source, "
                   "$SEQREC_BENCH_DIR, or ./bench)")
    p.add_argument("--suites", nargs="+", choices=SUITES, default=list(SUITES),
                   help="suites to run (default: all)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts, pinned on every side (default: 1 2)")
    p.add_argument("--data", default=None,
                   help="training data for the training suite (default: bench_train's rsc15_100k, "
                   "or synthetic sessions)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        bench_dir = find_bench_dir(args.bench_dir)
    except BenchError as e:
        print(f"seqrec bench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out) if args.out else bench_dir / "results" / "report"
    torch_side = not args.no_torch
    threads = tuple(args.threads)
    env = environment(bench_dir)
    records: list[dict] = []
    if "kernels" in args.suites:
        print("kernels ...", file=sys.stderr)
        records += run_kernels(bench_dir, args.quick, threads)
    if "train" in args.suites:
        print("training sweep ...", file=sys.stderr)
        records += run_train(bench_dir, args.quick, torch_side, threads, args.data)
    if "evaluation" in args.suites:
        print("full-ranking evaluation ...", file=sys.stderr)
        records += run_evaluation(bench_dir, args.quick, torch_side, threads)
    if "serving" in args.suites:
        print("serving ...", file=sys.stderr)
        records += run_serving(bench_dir, args.quick, torch_side, threads)
    if "ranking" in args.suites:
        print("ranking ...", file=sys.stderr)
        records += run_ranking(bench_dir, args.quick, torch_side)
    if "scale" in args.suites:
        print("serving past one process ...", file=sys.stderr)
        records += run_scale(bench_dir, args.quick, threads)
    if "features" in args.suites:
        print("item features ...", file=sys.stderr)
        records += run_features(bench_dir, args.quick, threads)
    if "contention" in args.suites:
        print("threads beside a busy process ...", file=sys.stderr)
        records += run_contention(bench_dir, args.quick, threads)
    wall = time.perf_counter() - t0
    env["wall_s"] = round(wall, 1)
    env["loadavg_end"] = _loadavg()
    env["quick"] = bool(args.quick)
    cmd = "seqrec bench" + (" --quick" if args.quick else "") + (" --no-torch" if args.no_torch else "")
    paths = write_report(records, out, env, cmd, plots=not args.no_plots)
    print(paths["report"].read_text(encoding="utf-8"))
    print(f"wrote {paths['records']} ({len(records)} records), {paths['report']}"
          + "".join(f", {p}" for p in paths["plots"]))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


def _train_torch_worker(payload: str) -> int:
    cfg = json.loads(payload)
    recs = _train_sweep_local(Path(cfg["bench_dir"]), ("torch",), tuple(cfg["threads"]), cfg["steps"],
                              cfg["repeats"], cfg["data"])
    print(WORKER_TAG + json.dumps(recs, default=_json_default))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--train-torch-worker"]:
        return _train_torch_worker(argv[1])
    p = argparse.ArgumentParser(prog="seqrec bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
