"""Training speed against the official PyTorch GRU4Rec, in the same run, alternating the two programs.

The official code (https://github.com/hidasib/GRU4Rec_PyTorch_Official) is not part of this project and
is never copied into it: point ``--official DIR`` (or ``$GRU4REC_OFFICIAL``) at a checkout of it. Its
``run.py`` is started as a subprocess on CPU (``-d cpu``), with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
set to the thread count, and its own per-epoch line (``[... mb/s | N e/s]``) is parsed. Our side is
``SessionRNN.fit`` in a subprocess of its own (one epoch, ``num_threads`` set), read from
``history_[0]["events_per_s"]``: both figures are the epoch's events divided by the epoch's wall
time, set-up excluded on both sides.

Both programs train one epoch of the same setting (the official parameter file translated in
configs/*.toml) on the same TSV: the first ``--events`` events (whole sessions, sessions ordered by
their first event, as both programs order them) of the setting's training file, written once into a
temporary folder. The repeats alternate official / ours / official / ours ..., so a slow spell of a
shared machine touches both. The table reports medians and the ratio ours / official per setting,
thread count and precision.

    python bench/bench_official.py --official /path/to/GRU4Rec_PyTorch_Official \\
        [--settings rsc15 yoochoose diginetica] [--threads 2] [--precision float32 bf16] \\
        [--events 60000] [--repeats 3]

Records go to bench/results/official.jsonl (``--no-record`` to skip). Needs torch (and the official
code's own imports: pandas, joblib) in this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_records  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SEQREC_DATA_DIR", REPO.parent / "shared" / "data" / "rsc15_100k_sessionrec"))

# setting -> (our config, official parameter string, training file relative to the data folder's parent)
# The official strings are the official paramfiles/*_best.py with n_epochs=1.
SETTINGS = {
    "rsc15": ("configs/rsc15.toml",
              "loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,layers=100,"
              "n_epochs=1,batch_size=32,dropout_p_embed=0.0,dropout_p_hidden=0.4,learning_rate=0.2,"
              "momentum=0.2,n_sample=2048,sample_alpha=0.5,bpreg=0.0,logq=1.0",
              "rsc15_100k_sessionrec/rsc15_100k_train_full.tsv.gz"),
    "yoochoose": ("configs/yoochoose.toml",
                  "loss=cross-entropy,constrained_embedding=True,embedding=0,elu_param=0,layers=480,"
                  "n_epochs=1,batch_size=48,dropout_p_embed=0.0,dropout_p_hidden=0.2,learning_rate=0.07,"
                  "momentum=0.0,n_sample=2048,sample_alpha=0.2,bpreg=0.0,logq=1.0",
                  "yoochoose1_64_srgnn/train_sessions.txt.gz"),
    # no Diginetica file is shipped: its setting runs on rsc15_100k (as in bench_train.SETTINGS)
    "diginetica": ("configs/diginetica.toml",
                   "loss=bpr-max,constrained_embedding=True,embedding=0,elu_param=1,layers=512,"
                   "n_epochs=1,batch_size=128,dropout_p_embed=0.5,dropout_p_hidden=0.3,"
                   "learning_rate=0.05,momentum=0.15,n_sample=2048,sample_alpha=0.3,bpreg=0.9,logq=0.0",
                   "rsc15_100k_sessionrec/rsc15_100k_train_full.tsv.gz"),
}
OFFICIAL_RATE = re.compile(r"Epoch1 --> loss: ([0-9.eE+-]+).*\|\s*([0-9.]+) e/s\]")


def write_subset(src: Path, n_events: int, out: Path) -> tuple[int, int]:
    """The first whole sessions (ordered by first event, file order breaking ties) holding at most
    n_events events, as GRU4Rec's TSV (SessionId, ItemId, Time). Returns (events, sessions)."""
    import numpy as np
    import pandas as pd
    from seqrec_fast.data import load

    data = load(str(src))
    lens = np.diff(data.offsets)
    order = np.arange(data.n_sessions)
    if data.times is not None:
        order = np.argsort(data.times[data.offsets[:-1]], kind="stable")
    keep = order[np.cumsum(lens[order]) <= n_events]
    keep.sort()
    rows = np.concatenate([np.arange(data.offsets[s], data.offsets[s + 1]) for s in keep])
    sess = np.repeat(keep, lens[keep])
    times = (data.times[rows] if data.times is not None else rows.astype(np.float64))
    pd.DataFrame({"SessionId": sess.astype(np.int64), "ItemId": data.item_ids[data.items[rows]],
                  "Time": times}).to_csv(out, sep="\t", index=False)
    return int(len(rows)), int(len(keep))


# The official run.py under a compatibility shim, not a modified copy: with torch >= 2.x and pandas
# 2.x, ``torch.tensor(pandas.Series)`` (its logQ popularity vector) raises "could not determine the
# shape of object type 'Series'", so pandas objects given to torch.tensor become NumPy arrays first;
# and under NumPy 2's promotion rules (NEP 50) its float32 initial weights times a NumPy float64 scale
# come out float64, which ``Parameter.set_`` refuses, so set_ casts its source to the parameter's
# dtype (float32, what the official code gets under NumPy 1). Nothing else is touched.
_OFFICIAL_LAUNCHER = """
import runpy, sys
import pandas as pd, torch
_tensor = torch.tensor
def _compat_tensor(data, *a, **k):
    if isinstance(data, (pd.Series, pd.Index, pd.DataFrame)):
        data = data.to_numpy()
    return _tensor(data, *a, **k)
torch.tensor = _compat_tensor
_set = torch.Tensor.set_
def _compat_set(self, source=None, *a, **k):
    if isinstance(source, torch.Tensor) and source.dtype != self.dtype:
        source = source.to(self.dtype)
    return _set(self, source, *a, **k) if source is not None else _set(self, *a, **k)
torch.Tensor.set_ = _compat_set
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_official(official: Path, tsv: Path, params: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", _OFFICIAL_LAUNCHER, str(official / "run.py"), str(tsv), "-ps",
           params, "-d", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    m = OFFICIAL_RATE.search(r.stdout)
    if r.returncode != 0 or m is None:
        raise RuntimeError(f"official run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return {"events_per_s": float(m.group(2)), "loss": float(m.group(1))}


_WORKER = """
import json, sys, tomllib
from seqrec_fast.data import load
from seqrec_fast.model import SessionRNN
cfg = tomllib.load(open(sys.argv[2], "rb"))
cfg.update(n_epochs=1, num_threads=int(sys.argv[3]), progress=False, verbose=False)
if sys.argv[4] != "float32":
    cfg["precision"] = sys.argv[4]
m = SessionRNN(**cfg).fit(load(sys.argv[1]))
h = m.history_[0]
print(json.dumps({"events_per_s": h["events_per_s"], "loss": h.get("loss_gru4rec", h["loss"]),
                  "precision": getattr(m, "precision_", "float32")}))
"""


def run_ours(tsv: Path, config: str, threads: int, precision: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-c", _WORKER, str(tsv), str(REPO / config), str(threads), precision]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"seqrec_fast run failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", default=os.environ.get("GRU4REC_OFFICIAL"),
                    help="checkout of hidasib/GRU4Rec_PyTorch_Official (default: $GRU4REC_OFFICIAL)")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--precision", nargs="+", choices=("float32", "bf16"), default=["float32", "bf16"])
    ap.add_argument("--events", type=int, default=60000, help="events of the training subset")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args(argv)
    if not a.official or not (Path(a.official) / "run.py").is_file():
        print("SKIP: no official GRU4Rec checkout (pass --official DIR or set $GRU4REC_OFFICIAL to a "
              "clone of https://github.com/hidasib/GRU4Rec_PyTorch_Official)", file=sys.stderr)
        return 0
    official = Path(a.official).resolve()
    records, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.settings:
            config, params, rel = SETTINGS[name]
            src = DATA.parent / rel
            if not src.is_file():
                print(f"SKIP {name}: {src} not found", file=sys.stderr)
                continue
            tsv = Path(tmp) / f"{name}.tsv"
            n_ev, n_sess = write_subset(src, a.events, tsv)
            for nt in a.threads:
                runs: dict = {"official": []}
                runs.update({p: [] for p in a.precision})
                for rep in range(a.repeats):
                    runs["official"].append(run_official(official, tsv, params, nt))
                    for p in a.precision:
                        runs[p].append(run_ours(tsv, config, nt, p))
                    print(f"  {name} {nt}t repeat {rep + 1}: " + ", ".join(
                        f"{k} {v[-1]['events_per_s']:,.0f}" for k, v in runs.items()), flush=True)
                med = {k: statistics.median(r["events_per_s"] for r in v) for k, v in runs.items()}
                for k, v in runs.items():
                    rec = {"setting": name, "side": "official" if k == "official" else f"seqrec-{k}",
                           "threads": nt, "events": n_ev, "sessions": n_sess, "source": str(src),
                           "events_per_s": [r["events_per_s"] for r in v], "median_events_per_s": med[k],
                           "loss": [r["loss"] for r in v],
                           "ratio_vs_official": med[k] / med["official"]}
                    if k != "official":
                        rec["precision_used"] = v[-1]["precision"]
                    records.append(rec)
                    rows.append((name, nt, rec["side"], med[k], rec["ratio_vs_official"]))
    print(f"\n{'setting':<11} {'thr':>3} {'side':<16} {'events/s':>10} {'vs official':>11}")
    for name, nt, side, eps, ratio in rows:
        print(f"{name:<11} {nt:>3} {side:<16} {eps:>10,.0f} {ratio:>10.2f}x")
    if records and not a.no_record:
        print(f"records: {write_records('official', records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
