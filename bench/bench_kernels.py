"""Kernels: C++ (1 and 2 threads) against the NumPy reference (BLAS pinned to the same count).

Cases: one GRU cell step forward + backward (B = 32 and 512, E = H = 100), and a T = 8 window
forward + backward through the sequence kernel; the training loss and its gradient on a B = 32 ×
C = 2080 score matrix (cross-entropy, BPR-max); a lazy AdagradM update of 2,080 rows × 100 of an
item table; top-k (k = 20) of one query over a packed N = 40,000 table; and full-ranking rank counts
of 512 queries against N = 17,000 items. Every case first checks the C++ result against the
reference, then times both sides in the same run.

    python bench/bench_kernels.py            # table + bench/results/kernels.jsonl
    pytest bench/bench_kernels.py --benchmark-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import blas_threads, cpu_model, measure, measure_interleaved, write_records  # noqa: E402

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


# Loss, optimizer, top-k and rank-count kernels ---------------------------------------------

LOSS_B, LOSS_C = 32, 2080          # 32 positives + 2,048 sampled negatives per row
LOSS_CONFIGS = {"xe": {"loss": "cross-entropy"},
                "bprmax": {"loss": "bpr-max", "bpreg": 1.0, "elu_param": 0.0}}
OPT_ROWS, OPT_W, OPT_N = 2080, 100, 40000
OPT_CONFIG = {"optimizer": "adagrad", "learning_rate": 0.05, "momentum": 0.1}
TOPK_N, TOPK_D, TOPK_K = 40000, 100, 20
RANK_N, RANK_D = 17000, 100


def make_loss_case(loss: str, B: int = LOSS_B, C: int = LOSS_C, seed: int = 0):
    rng = np.random.default_rng(seed)
    R = (rng.normal(size=(B, C)) * 0.5).astype(np.float32)
    pos = rng.integers(0, C, size=B).astype(np.int32)
    return R, pos, LOSS_CONFIGS[loss]


def loss_cpp(case, nt=1):
    R, pos, cfg = case
    return _core.loss_grad(R, pos, cfg, num_threads=nt)


def loss_ref(case):
    R, pos, cfg = case
    return ref.loss_and_grad(cfg, R, pos)


def make_opt_case(rows: int = OPT_ROWS, W: int = OPT_W, N: int = OPT_N, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = (rng.normal(size=(N, W)) * 0.1).astype(np.float32)
    s1 = np.zeros((N, W), np.float32)
    s2 = np.zeros((N, W), np.float32)
    idx = np.sort(rng.choice(N, size=rows, replace=False)).astype(np.int32)
    G = (rng.normal(size=(rows, W)) * 0.01).astype(np.float32)
    return idx, G, p, s1, s2


def opt_cpp(case, nt=1):
    idx, G, p, s1, s2 = case
    _core.opt_update_rows(OPT_CONFIG, 1, idx, G, p, s1, s2, num_threads=nt)


def opt_ref(case):
    idx, G, p, s1, s2 = case
    ref.opt_update_rows(OPT_CONFIG, 1, idx, G, p, s1, s2)


def make_topk_case(N: int = TOPK_N, D: int = TOPK_D, n: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = (rng.normal(size=(N, D)) * 0.1).astype(np.float32)
    b = (rng.normal(size=N) * 0.01).astype(np.float32)
    H = rng.normal(size=(n, D)).astype(np.float32)
    return H, W, _core.pack_table(W), b


def topk_cpp(case, nt=1):
    H, _, P, b = case
    return _core.topk(H, P, b, TOPK_K, num_threads=nt)


def topk_ref(case):
    H, W, _, b = case  # the reference scores the unpacked table (same values, its fastest layout)
    return ref.topk(H, W, b, TOPK_K)


def make_rank_case(n: int = 512, N: int = RANK_N, D: int = RANK_D, seed: int = 0):
    rng = np.random.default_rng(seed)
    W = (rng.normal(size=(N, D)) * 0.1).astype(np.float32)
    b = (rng.normal(size=N) * 0.01).astype(np.float32)
    H = rng.normal(size=(n, D)).astype(np.float32)
    target = rng.integers(0, N, size=n).astype(np.int32)
    return H, W, b, target


def rank_cpp(case, nt=1):
    return _core.score_rank_counts(*case, num_threads=nt)


def rank_ref(case):
    return ref.score_rank_counts(*case)


def check_loss(case) -> None:
    R, pos, cfg = case
    l_c, g_c = loss_cpp(case)
    l_r, g_r = ref.loss_and_grad(cfg, R.astype(np.float64), pos)
    np.testing.assert_allclose(l_c, l_r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_c, g_r, rtol=1e-3, atol=1e-6)


def check_opt() -> None:
    a, b = make_opt_case(), make_opt_case()
    for step in (1, 2):
        _core.opt_update_rows(OPT_CONFIG, step, *a)
        ref.opt_update_rows(OPT_CONFIG, step, *b)
    for x, y in zip(a[2:], b[2:]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def check_topk(case) -> None:
    (i_c, s_c), (i_r, s_r) = topk_cpp(case), topk_ref(case)
    np.testing.assert_allclose(s_c, s_r, rtol=1e-5, atol=1e-5)
    # indices agree except where two scores tie to float32 rounding
    assert (i_c == i_r).mean() > 0.99, "top-k indices disagree with the reference"


def check_rank(case) -> None:
    (gt_c, ge_c), (gt_r, ge_r) = rank_cpp(case), rank_ref(case)
    # scores summed in a different order may flip a near-tie: allow a difference of a few items
    assert np.abs(gt_c - gt_r).max() <= 2 and np.abs(ge_c - ge_r).max() <= 2
    assert (gt_c == gt_r).mean() > 0.99


def _extra_groups():
    """(case name, sizes, make, check, ref fn, C++ fn, events per call) of the non-GRU kernels."""
    out = []
    for loss in LOSS_CONFIGS:
        out.append((f"loss_{loss}_grad", {"B": LOSS_B, "C": LOSS_C},
                    lambda loss=loss: make_loss_case(loss), check_loss, loss_ref, loss_cpp, LOSS_B))
    out.append(("adagradm_rows_update", {"rows": OPT_ROWS, "W": OPT_W, "N": OPT_N},
                make_opt_case, lambda case: check_opt(), opt_ref, opt_cpp, OPT_ROWS))
    out.append(("topk_packed", {"n": 1, "N": TOPK_N, "D": TOPK_D, "k": TOPK_K},
                make_topk_case, check_topk, topk_ref, topk_cpp, 1))
    out.append(("score_rank_counts", {"n": 512, "N": RANK_N, "D": RANK_D},
                make_rank_case, check_rank, rank_ref, rank_cpp, 512))
    return out


def run(batches=(32, 512), threads=(1, 2), repeats=30, extra=True):
    """Validated timings of every case; ``extra=False`` keeps only the GRU cases."""
    records = []
    for kind, T in (("cell", 1), ("window", 8)):
        fn = cell_step if kind == "cell" else window
        for B in batches:
            case = make_case(B, T)
            check(kind, case)
            for nt in threads:
                m = measure_interleaved({"ref": lambda: fn(ref, case), "cpp": lambda: fn(_core, case, nt)},
                                        repeats=repeats, contexts={"ref": lambda: blas_threads(nt)})
                r, c = m["ref"], m["cpp"]
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
    if extra:
        for name, sizes, make, chk, fref, fcpp, events in _extra_groups():
            case = make()
            chk(case)
            for nt in threads:
                m = measure_interleaved({"ref": lambda: fref(case), "cpp": lambda: fcpp(case, nt)},
                                        repeats=repeats, contexts={"ref": lambda: blas_threads(nt)})
                r, c = m["ref"], m["cpp"]
                records.append({
                    "case": name, "sizes": dict(sizes), **sizes, "dtype": "float32", "threads": nt,
                    "isa": _core.ISA,
                    "ref_median_s": r["median_s"], "ref_p10_s": r["p10_s"], "ref_p90_s": r["p90_s"],
                    "cpp_median_s": c["median_s"], "cpp_p10_s": c["p10_s"], "cpp_p90_s": c["p90_s"],
                    "speedup": r["median_s"] / c["median_s"], "repeats": repeats,
                    "cpp_events_per_s": events / c["median_s"],
                })
    # thread scaling of the C++ side
    for rec in records:
        if rec["threads"] != 1:
            base = next(x for x in records if x["case"] == rec["case"] and _sizes(x) == _sizes(rec)
                        and x["threads"] == 1)
            rec["cpp_thread_scaling"] = base["cpp_median_s"] / rec["cpp_median_s"]
    return records


def _sizes(rec) -> dict:
    """The sizes of a record: its ``sizes`` dict, or B, T, E, H for the GRU cases."""
    return rec.get("sizes") or {k: rec[k] for k in ("B", "T", "E", "H")}


def table(records) -> str:
    lines = [
        f"CPU: {cpu_model()}; seqrec_fast ISA variant: {_core.ISA}; float32; GRU: E = H = 100",
        "",
        "| case | B | T | threads | NumPy ref (µs) | C++ (µs) | speed-up | C++ 2t/1t |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gru = [r for r in records if "sizes" not in r]
    other = [r for r in records if "sizes" in r]
    for r in gru:
        scale = f"{r['cpp_thread_scaling']:.2f}x" if "cpp_thread_scaling" in r else ""
        lines.append(
            f"| {r['case']} | {r['B']} | {r['T']} | {r['threads']} | {r['ref_median_s'] * 1e6:,.0f} "
            f"| {r['cpp_median_s'] * 1e6:,.0f} | {r['speedup']:.2f}x | {scale} |"
        )
    if other:
        lines += ["", "| case | sizes | threads | NumPy ref (µs) | C++ (µs) | speed-up | C++ 2t/1t |",
                  "|---|---|---|---|---|---|---|"]
        for r in other:
            scale = f"{r['cpp_thread_scaling']:.2f}x" if "cpp_thread_scaling" in r else ""
            sizes = ", ".join(f"{k}={v:,}" for k, v in r["sizes"].items())
            lines.append(
                f"| {r['case']} | {sizes} | {r['threads']} | {r['ref_median_s'] * 1e6:,.0f} "
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

    def _bench_pair(benchmark, side, fref, fcpp, case):
        if side == "ref":
            with blas_threads(1):
                benchmark(fref, case)
        else:
            benchmark(fcpp, case, int(side[-1]))

    @pytest.mark.parametrize("loss", list(LOSS_CONFIGS))
    @pytest.mark.parametrize("side", ["cpp1", "cpp2", "ref"])
    def test_loss_grad(benchmark, loss, side):
        case = make_loss_case(loss)
        check_loss(case)
        benchmark.group = f"loss {loss} + grad B={LOSS_B} C={LOSS_C}"
        _bench_pair(benchmark, side, loss_ref, loss_cpp, case)

    @pytest.mark.parametrize("side", ["cpp1", "cpp2", "ref"])
    def test_adagradm_rows_update(benchmark, side):
        check_opt()
        case = make_opt_case()
        benchmark.group = f"AdagradM rows update {OPT_ROWS} x {OPT_W}"
        _bench_pair(benchmark, side, opt_ref, opt_cpp, case)

    @pytest.mark.parametrize("N", [3000, TOPK_N])
    @pytest.mark.parametrize("side", ["cpp1", "cpp2", "ref"])
    def test_topk_packed(benchmark, N, side):
        case = make_topk_case(N)
        check_topk(case)
        benchmark.group = f"top-{TOPK_K} packed table N={N}"
        _bench_pair(benchmark, side, topk_ref, topk_cpp, case)

    @pytest.mark.parametrize("n", [64, 512])
    @pytest.mark.parametrize("side", ["cpp1", "cpp2", "ref"])
    def test_score_rank_counts(benchmark, n, side):
        case = make_rank_case(n)
        check_rank(case)
        benchmark.group = f"rank counts n={n} N={RANK_N}"
        _bench_pair(benchmark, side, rank_ref, rank_cpp, case)
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
