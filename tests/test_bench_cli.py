"""`seqrec bench`: the command is registered and the report writers work on fake records.

The benchmark itself (`seqrec bench --quick`) is not run here (about 1.5 minutes); CI runs it and
`pytest bench/ --benchmark-only --quick` separately.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from seqrec_fast import bench
from seqrec_fast.cli import main as cli_main


def _fake_records() -> list[dict]:
    R = []
    for B in (32, 128, 512):
        for nt in (1, 2):
            for side, role, rate in (("seqrec_fast C++", "cpp", 30_000.0), ("NumPy reference", "numpy", 10_000.0),
                                     ("PyTorch twin", "torch", 15_000.0)):
                R.append(bench._rec("train", "train steps (rsc15 setting)", side, role, nt,
                                    {"B": B, "H": 100}, median=rate * nt, p10=rate * nt * 0.9,
                                    p90=rate * nt * 1.1, unit="events/s", higher_is_better=True,
                                    repeats=3, pinned={"openmp": nt}))
    for H in (64, 256):
        for side, role, rate in (("seqrec_fast C++", "cpp", 20_000.0), ("NumPy reference", "numpy", 5_000.0)):
            R.append(bench._rec("train", "train steps (rsc15 setting)", side, role, 1, {"B": 32, "H": H},
                                median=rate, p10=rate, p90=rate, unit="events/s", higher_is_better=True,
                                repeats=3))
    for N in (3_000, 40_000, 1_000_000):
        for side, role, us in (("seqrec recommend", "cpp", 30.0), ("numpy step+topk", "numpy", 80.0),
                               ("torch eager", "torch", 70.0)):
            R.append(bench._rec("serving", "single event top-20", side, role, 1, {"N": N, "H": 100, "k": 20},
                                median=us * N / 3000, p10=us * N / 3000 * 0.9, p90=us * N / 3000 * 1.2,
                                unit="us", repeats=100, precision="float32"))
    for N in (3_000, 40_000):
        for side, role, rate in (("seqrec_fast C++", "cpp", 100_000.0), ("NumPy reference", "numpy", 50_000.0),
                                 ("PyTorch", "torch", 25_000.0)):
            R.append(bench._rec("evaluation", "evaluate() full ranking (GRU H=100)", side, role, 1,
                                {"N": N, "H": 100, "predictions": 16_000, "batch": 512},
                                median=rate * 3000 / N, p10=rate * 2900 / N, p90=rate * 3100 / N,
                                unit="predictions/s", higher_is_better=True, repeats=5))
    R.append(bench._rec("kernels", "gru_cell_fwd_bwd", "seqrec_fast C++", "cpp", 1, {"B": 32, "H": 100},
                        median=1.5e-4, p10=1.4e-4, p90=1.6e-4, unit="s", repeats=5))
    R.append(bench._rec("kernels", "gru_cell_fwd_bwd", "NumPy reference", "numpy", 1, {"B": 32, "H": 100},
                        median=3.0e-4, p10=2.9e-4, p90=3.1e-4, unit="s", repeats=5))
    return R


ENV = {"commit": "abc1234", "date": "2026-01-01T00:00:00+00:00", "cpu": "Test CPU", "cores": 2,
       "threadpools": {"blas": 2, "openmp": 2}, "torch": None, "isa": "avx2"}


def test_bench_help(capsys):
    assert cli_main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--out", "--no-torch", "--bench-dir"):
        assert opt in out


def test_bench_module_help(capsys):
    assert bench.main(["--help"]) == 0
    assert "--quick" in capsys.readouterr().out


def test_missing_bench_dir_exits_2(tmp_path, capsys):
    assert cli_main(["bench", "--bench-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "--bench-dir" in err
    assert not (tmp_path / "o").exists()


def test_find_bench_dir_in_checkout():
    d = bench.find_bench_dir()
    assert (d / "bench_kernels.py").is_file()


def test_speedups():
    recs = bench.add_speedups(_fake_records())
    cpp = next(r for r in recs if r["suite"] == "train" and r["role"] == "cpp" and r["sizes"]["B"] == 32
               and r["threads"] == 1)
    assert cpp["speedup_vs_numpy"] == pytest.approx(3.0)  # events/s: higher is better
    assert cpp["speedup_vs_torch"] == pytest.approx(2.0)
    srv = next(r for r in recs if r["suite"] == "serving" and r["role"] == "cpp")
    assert srv["speedup_vs_numpy"] == pytest.approx(80 / 30)  # latency: lower is better
    ev = next(r for r in recs if r["suite"] == "evaluation" and r["role"] == "cpp")
    assert ev["speedup_vs_numpy"] == pytest.approx(2.0) and ev["speedup_vs_torch"] == pytest.approx(4.0)
    k = next(r for r in recs if r["suite"] == "kernels" and r["role"] == "cpp")
    assert k["speedup_vs_numpy"] == pytest.approx(2.0) and "speedup_vs_torch" not in k
    assert all("speedup_vs_numpy" not in r for r in recs if r["role"] != "cpp")


def test_write_jsonl(tmp_path):
    recs = _fake_records()
    path = bench.write_jsonl(recs, tmp_path / "sub" / "records.jsonl", ENV)
    lines = path.read_text().splitlines()
    assert len(lines) == len(recs)
    for line in lines:
        r = json.loads(line)
        for key in ("commit", "date", "cpu", "cores", "threadpools", "sizes", "dtype", "median", "p10",
                    "p90", "repeats", "threads", "side"):
            assert key in r
        assert r["commit"] == "abc1234" and r["cores"] == 2


def test_render_markdown():
    recs = bench.add_speedups(_fake_records())
    md = bench.render_markdown(recs, ENV, "seqrec bench --quick", ["/x/speedup.png"])
    assert md.startswith("# seqrec_fast benchmark report")
    assert "abc1234" in md and "Test CPU" in md and "`seqrec bench --quick`" in md
    for title in ("## Kernels", "## Training", "## Full-ranking evaluation", "## Serving"):
        assert title in md
    assert "| seqrec_fast C++ | float32 | 1 | 30,000 | 27,000 | 33,000 | 3 | 3.00x | 2.00x |" in md
    assert "![speedup](speedup.png)" in md
    # every table row has the same number of cells as its header
    for block in md.split("\n\n"):
        rows = [x for x in block.splitlines() if x.startswith("|")]
        if rows:
            assert len({r.count("|") for r in rows}) == 1


def test_render_markdown_marks_noisy_rows():
    recs = bench.add_speedups(_fake_records())
    clean = bench.render_markdown(recs, ENV)
    assert "| 30,000 |" in clean and " † |" not in clean
    recs[0]["p90"] = recs[0]["p10"] * 2
    md = bench.render_markdown(recs, ENV)
    assert "| 30,000 † |" in md
    assert bench.is_noisy(recs[0]) and not bench.is_noisy(recs[1])


def test_render_markdown_lists_rows_slower_on_more_threads():
    recs = _fake_records()
    assert bench.slower_with_more_threads(recs) == []
    assert "**Check:**" not in bench.render_markdown(recs, ENV)
    two = next(r for r in recs if r["suite"] == "train" and r["role"] == "cpp" and r["threads"] == 2)
    two["median"] = 1.0  # events/s: lower than its 1-thread row
    assert bench.slower_with_more_threads(recs) == [two]
    assert "**Check:**" in bench.render_markdown(recs, ENV)


def test_render_markdown_flags_foreign_load():
    recs = _fake_records()
    recs[0]["foreign_load_cores"] = 0.9
    assert "Warning" in bench.render_markdown(recs, ENV)
    assert "Warning" not in bench.render_markdown(_fake_records(), ENV)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_write_report_with_plots(tmp_path):
    paths = bench.write_report(_fake_records(), tmp_path, ENV, "seqrec bench")
    names = sorted(p.name for p in paths["plots"])
    assert names == ["serving_latency_vs_N.png", "speedup.png", "train_events_per_s.png"]
    for p in paths["plots"]:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "train_events_per_s.png" in md
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == len(_fake_records())


def test_write_report_without_matplotlib(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    paths = bench.write_report(_fake_records(), tmp_path, ENV)
    assert paths["plots"] == []
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert (tmp_path / "report.md").is_file() and (tmp_path / "records.jsonl").is_file()
    assert not list(tmp_path.glob("*.png"))


def test_evaluation_suite_validates_and_records(tmp_path):
    """The evaluation benchmark on a tiny case: every side's ranks are checked against the NumPy
    reference scorer before timing, and the records carry the agreement."""
    import sys

    d = bench.find_bench_dir()
    sys.path.insert(0, str(d))
    try:
        be = bench._import_bench(d, "bench_evaluate")
        recs = be.bench_size(400, (1, 2), True, 1, False)
    finally:
        sys.path.remove(str(d))
    assert {(r["role"], r["threads"]) for r in recs} == {("cpp", 1), ("cpp", 2), ("numpy", 1), ("numpy", 2)}
    for r in recs:
        assert r["predictions"] > 1000 and r["median_s"] > 0
        if r["role"] == "cpp":
            v = r["validated"]
            assert v["identical_ranks"] >= be.MIN_IDENTICAL and v["recall20_diff"] <= be.METRIC_TOL


def test_evaluation_agreement_check_fails_on_wrong_ranks():
    import sys

    import numpy as np

    d = bench.find_bench_dir()
    sys.path.insert(0, str(d))
    try:
        be = bench._import_bench(d, "bench_evaluate")
    finally:
        sys.path.remove(str(d))

    class R:
        def __init__(self, ranks):
            self.ranks = ranks
            self.metrics = {"recall@20": float(np.mean(ranks <= 20)),
                            "mrr@20": float(np.mean(np.where(ranks <= 20, 1 / ranks, 0)))}

    ref_ranks = np.arange(1, 1001, dtype=float)
    be.check_agreement("same", 1, R(ref_ranks.copy()), R(ref_ranks))
    wrong = ref_ranks.copy()
    wrong[:5] += 1
    with pytest.raises(AssertionError, match="disagrees"):
        be.check_agreement("off", 1, R(wrong), R(ref_ranks))


def test_contention_rows_render_with_their_thread_ratio():
    R = []
    for mode, side, rates in (("quiet", "seqrec_fast C++, quiet", (10_000.0, 17_000.0)),
                              ("busy", "seqrec_fast C++, beside 1 busy process", (9_000.0, 9_900.0))):
        for nt, rate in zip((1, 2), rates):
            R.append(bench._rec("contention", "train (events/s)", side, "other", nt, {"B": 32, "H": 100},
                                median=rate, p10=rate, p90=rate, unit="events/s", higher_is_better=True,
                                repeats=3, mode=mode, ratio_vs_1_thread=rate / rates[0]))
    md = bench.render_markdown(R, ENV)
    assert "## Threads beside a busy process" in md
    assert "| train (events/s) | seqrec_fast C++, quiet | 1.70 |" in md
    assert "| train (events/s) | seqrec_fast C++, beside 1 busy process | 1.10 |" in md
    assert "contention" in bench.SUITES
