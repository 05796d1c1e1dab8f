"""GRU kernels: C++ (1 and 2 threads) against the NumPy reference (BLAS pinned to the same count).

Cases: one GRU cell step forward + backward (B = 32 and 512, E = H = 100), and a T = 8 window
forward + backward through the sequence kernel. Every case first checks the C++ result against
the reference, then times both sides in the same run.

    python bench/bench_kernels.py            # table + bench/results/kernels.jsonl
    pytest bench/bench_kernels.py --benchmark-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, cpu_model, measure, write_records  # noqa: E402

from seqrec_fast import _core  # noqa: E402
from seqrec_fast import reference as ref  # noqa: E402

E = H = 100


def make_case(B: int, T: int = 1, dtype=np.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = (
        (rng.normal(size=(E, 3 * H)) * 0.1).astype(dtype),
        (rng.normal(size=(H, 3 * H)) * 0.1).astype(dtype),
        np.zeros(3 * H, dtype),
    )
    X = rng.normal(size=(T, B, E)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    reset = (rng.random((T, B)) < 0.1).astype(np.uint8)
    dY = rng.normal(size=(T, B, H)).astype(dtype)
    return W, X, h0, reset, dY


def cell_step(mod, case, nt=1):
    (W_x, W_h, b), X, h0, _, dY = case
    h_new, gates = mod.gru_forward(X[0], h0, W_x, W_h, b, num_threads=nt)
    grads = mod.gru_backward(dY[0], X[0], h0, gates, W_x, W_h, num_threads=nt)
    return h_new, grads


def window(mod, case, nt=1):
    W, X, h0, reset, dY = case
    Y, _, _, cache = mod.sequence_forward("gru", X, [h0], None, reset, [W], num_threads=nt)
    grads = mod.sequence_backward("gru", dY, None, None, X, reset, [W], cache, num_threads=nt)
    return Y, grads


def check(kind: str, case) -> None:
    """The C++ result must match the reference before anything is timed."""
    fn = cell_step if kind == "cell" else window
    a, b = fn(_core, case), fn(ref, case)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-5)
    flat_a = [x for x in a[1] if isinstance(x, np.ndarray)] or [a[1][0]]
    flat_b = [x for x in b[1] if isinstance(x, np.ndarray)] or [b[1][0]]
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)


def run(batches=(32, 512), threads=(1, 2), repeats=30):
    records = []
    for kind, T in (("cell", 1), ("window", 8)):
        fn = cell_step if kind == "cell" else window
        for B in batches:
            case = make_case(B, T)
            check(kind, case)
            for nt in threads:
                with blas_threads(nt):
                    r = measure(lambda: fn(ref, case), repeats=repeats)
                c = measure(lambda: fn(_core, case, nt), repeats=repeats)
                events = B * T
                rec = {
                    "case": f"gru_{kind}_fwd_bwd", "B": B, "T": T, "E": E, "H": H,
                    "dtype": "float32", "threads": nt, "isa": _core.ISA,
                    "ref_median_s": r["median_s"], "ref_p10_s": r["p10_s"], "ref_p90_s": r["p90_s"],
                    "cpp_median_s": c["median_s"], "cpp_p10_s": c["p10_s"], "cpp_p90_s": c["p90_s"],
                    "speedup": r["median_s"] / c["median_s"], "repeats": repeats,
                    "cpp_events_per_s": events / c["median_s"],
                }
                records.append(rec)
    # thread scaling of the C++ side
    for rec in records:
        if rec["threads"] != 1:
            base = next(x for x in records if x["case"] == rec["case"] and x["B"] == rec["B"]
                        and x["threads"] == 1)
            rec["cpp_thread_scaling"] = base["cpp_median_s"] / rec["cpp_median_s"]
    return records


def table(records) -> str:
    lines = [
        f"CPU: {cpu_model()}; seqrec_fast ISA variant: {_core.ISA}; float32; E = H = 100",
        "",
        "| case | B | T | threads | NumPy ref (µs) | C++ (µs) | speed-up | C++ 2t/1t |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        scale = f"{r['cpp_thread_scaling']:.2f}x" if "cpp_thread_scaling" in r else ""
        lines.append(
            f"| {r['case']} | {r['B']} | {r['T']} | {r['threads']} | {r['ref_median_s'] * 1e6:,.0f} "
            f"| {r['cpp_median_s'] * 1e6:,.0f} | {r['speedup']:.2f}x | {scale} |"
        )
    return "\n".join(lines)


# pytest-benchmark entry points -------------------------------------------------------------

try:
    import pytest

    @pytest.mark.parametrize("B", [32, 512])
    @pytest.mark.parametrize("side", ["cpp1", "cpp2", "ref"])
    def test_gru_cell_fwd_bwd(benchmark, B, side):
        case = make_case(B)
        check("cell", case)
        benchmark.group = f"gru cell fwd+bwd B={B}"
        if side == "ref":
            with blas_threads(1):
                benchmark(cell_step, ref, case)
        else:
            benchmark(cell_step, _core, case, int(side[-1]))

    @pytest.mark.parametrize("B", [32, 512])
    @pytest.mark.parametrize("side", ["cpp1", "cpp2", "ref"])
    def test_gru_window_fwd_bwd(benchmark, B, side):
        case = make_case(B, T=8)
        check("window", case)
        benchmark.group = f"gru T=8 window fwd+bwd B={B}"
        if side == "ref":
            with blas_threads(1):
                benchmark(window, ref, case)
        else:
            benchmark(window, _core, case, int(side[-1]))
except ImportError:  # pragma: no cover
    pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    p.add_argument("--no-record", action="store_true", help="do not append to bench/results/")
    a = p.parse_args(argv)
    records = run(repeats=5 if a.quick else a.repeats)
    print(table(records))
    if not a.no_record:
        path = write_records("kernels", records)
        print(f"\nrecords appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
