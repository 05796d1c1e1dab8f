"""Thread policies compared on training beside a busy process (issue 14; docs/results.md).

Each configuration (parallel backend, spin / wait policy: environment variables that must be set
before the kernel module and libgomp load) runs in its own process; configurations alternate within
every repeat. A run: ``_core.train_chunk`` on the first STEPS steps of rsc15_100k in the RSC15 setting
(bench_train.build_case), 1 and 2 threads, quiet and beside ``python -c "while True: pass"`` (its own
session, pinned to the last CPU; always killed). Prints medians of events/s and of this process's
CPU use (cores) per cell, and the 2-thread / 1-thread ratios.

    python bench/contention_policies.py [--repeats 3] [--steps 150] [--configs pool-spin0 omp-default]
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

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "pool-spin0": {"SEQREC_PARALLEL": "pool", "SEQREC_SPIN_US": "0"},
    "pool-spin20": {"SEQREC_PARALLEL": "pool", "SEQREC_SPIN_US": "20"},
    "pool-spin100": {"SEQREC_PARALLEL": "pool", "SEQREC_SPIN_US": "100"},
    # GOMP_SPINCOUNT=300000 is libgomp's own default; setting it keeps _core.py from choosing passive
    "omp-default": {"SEQREC_PARALLEL": "openmp", "GOMP_SPINCOUNT": "300000"},
    "omp-spin10k": {"SEQREC_PARALLEL": "openmp", "GOMP_SPINCOUNT": "10000"},
    "omp-passive": {"SEQREC_PARALLEL": "openmp", "OMP_WAIT_POLICY": "passive"},
}
CELLS = ("quiet1", "quiet2", "busy1", "busy2")


def child(steps: int) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_train as bt
    from bench_contention import busy_competitor

    case = bt.build_case(n_steps=steps)

    def once(nt):
        st = case.fresh_state()
        c0, t0 = os.times(), time.perf_counter()
        bt.run_cpp(case, st, nt)
        dt, c1 = time.perf_counter() - t0, os.times()
        return case.n_events / dt, (c1.user + c1.system - c0.user - c0.system) / dt

    once(2)
    out = {"quiet1": once(1), "quiet2": once(2)}
    with busy_competitor():
        out["busy1"], out["busy2"] = once(1), once(2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.steps)))
        return 0
    res: dict = {}
    for _ in range(a.repeats):
        for name in a.configs:
            env = dict(os.environ, **CONFIGS[name])
            o = subprocess.run([sys.executable, __file__, "--child", "--steps", str(a.steps)], env=env,
                               capture_output=True, text=True, check=False)
            if o.returncode != 0:
                print(f"{name}: failed\n{o.stderr[-2000:]}", file=sys.stderr)
                continue
            for k, v in json.loads(o.stdout.strip().splitlines()[-1]).items():
                res.setdefault((name, k), []).append(v)
    print(f"load average {os.getloadavg()}")
    print("| config | " + " | ".join(CELLS) + " | 2t/1t quiet | 2t/1t busy |")
    print("|---|" + "---:|" * (len(CELLS) + 2))
    for name in a.configs:
        if (name, "quiet1") not in res:
            continue
        med = {c: statistics.median(x[0] for x in res[(name, c)]) for c in CELLS}
        cpu = {c: statistics.median(x[1] for x in res[(name, c)]) for c in CELLS}
        print(f"| {name} | " + " | ".join(f"{med[c]:,.0f} ({cpu[c]:.2f} cores)" for c in CELLS)
              + f" | {med['quiet2'] / med['quiet1']:.2f} | {med['busy2'] / med['busy1']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
