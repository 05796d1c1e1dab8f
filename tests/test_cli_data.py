"""The ``seqrec`` CLI: data prepare / stats, baseline, and the error paths (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from seqrec_fast.cli import main
from seqrec_fast.data import load

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SEQREC_DATA_DIR", REPO.parent / "shared" / "data"))


def make_log(path: Path, seed: int = 0, days: int = 5) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["SessionId\tItemId\tTime"]
    for s in range(400):
        t = rng.uniform(0, days * 86400)
        x = int(rng.integers(40))
        for _ in range(int(rng.integers(1, 7))):
            lines.append(f"{s}\t{x}\t{t:.3f}")
            t += rng.uniform(1, 300)
            x = (x * 7 + 3) % 40 if rng.random() < 0.8 else int(rng.integers(40))
    path.write_text("\n".join(lines) + "\n")
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_prepare_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = make_log(tmp_path / "log.tsv")
    out_dir = tmp_path / "prep"
    code, out, err = run(
        [
            "data",
            "prepare",
            str(log),
            "--protocol",
            "rsc15-2023",
            "--out-dir",
            str(out_dir),
            "--test-days",
            "1",
            "--valid-days",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("train_full", "test", "train_tr", "train_valid"):
        p = out_dir / f"log_{name}.tsv"
        assert p.exists()
        assert name in out
    train, test = load(out_dir / "log_train_full.tsv"), load(out_dir / "log_test.tsv")
    assert set(test.item_ids.tolist()) <= set(train.item_ids.tolist())
    assert test.session_lengths.min() >= 2

    js = tmp_path / "stats.json"
    code, out, err = run(
        ["data", "stats", str(out_dir / "log_test.tsv"), "--json", str(js)], capsys
    )
    assert code == 0, err
    st = json.loads(js.read_text())
    assert st["events"] == test.n_events and st["sessions"] == test.n_sessions
    assert "length_median" in out and "time_span_days" in out


def test_prepare_loo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "users.txt"
    src.write_text("1 10 11 12\n2 11 13\n3 10\n")
    code, _, err = run(
        ["data", "prepare", str(src), "--protocol", "loo", "--out-dir", str(tmp_path)], capsys
    )
    assert code == 0, err
    test = load(tmp_path / "users_test.tsv")
    assert test.n_sessions == 2


def test_baseline_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = make_log(tmp_path / "log.tsv")
    run(
        ["data", "prepare", str(log), "--out-dir", str(tmp_path), "--protocol", "rsc15-2015"],
        capsys,
    )
    js = tmp_path / "res.json"
    code, out, err = run(
        [
            "baseline",
            "sr",
            str(tmp_path / "log_train_full.tsv"),
            str(tmp_path / "log_test.tsv"),
            "--cutoffs",
            "1",
            "5",
            "20",
            "--json",
            str(js),
            "--param",
            "steps=3",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(js.read_text())
    for k in (1, 5, 20):
        for m in ("recall", "mrr", "ndcg", "hitrate"):
            assert 0.0 <= res[f"{m}@{k}"] <= 1.0
    assert res["recall@1"] <= res["recall@5"] <= res["recall@20"]
    assert res["n_events"] > 0 and res["n_dropped"] == 0
    assert res["params"]["steps"] == 3
    assert "@20" in out
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["data", "--help"],
        ["data", "prepare", "--help"],
        ["data", "stats", "--help"],
        ["baseline", "--help"],
    ],
)
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(argv, capsys)
    assert code == 0 and "usage" in out


def _assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_error_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.tsv")
    code, _, err = run(["data", "stats", missing], capsys)
    _assert_user_error(code, err, "nope.tsv", "no such file")

    code, _, err = run(["data", "stats", missing, "--format", "xml"], capsys)
    _assert_user_error(code, err, "invalid choice")

    bad = tmp_path / "bad.tsv"
    bad.write_text("SessionId\tItemId\tTime\n1\t2\tnoon\n")
    code, _, err = run(["data", "stats", str(bad)], capsys)
    _assert_user_error(code, err, "bad.tsv", "line 2", "numeric")

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run(["data", "stats", str(empty)], capsys)
    _assert_user_error(code, err, "empty")

    code, _, err = run(["baseline", "sr", str(bad)], capsys)
    _assert_user_error(code, err, "required")

    good = make_log(tmp_path / "good.tsv")
    code, _, err = run(["baseline", "sr", str(good), str(good), "--param", "nonsense"], capsys)
    _assert_user_error(code, err, "key=value")
    code, _, err = run(["baseline", "sr", str(good), str(good), "--param", "k=3"], capsys)
    _assert_user_error(code, err, "no parameter")
    code, _, err = run(["baseline", "sr", str(good), str(good), "--cutoffs", "0"], capsys)
    _assert_user_error(code, err, "positive integer")
    code, _, err = run(
        ["baseline", "sr", str(good), str(good), "--json", str(tmp_path / "no" / "r.json")], capsys
    )
    _assert_user_error(code, err, "does not exist")

    code, _, err = run(
        ["data", "prepare", str(good), "--out-dir", str(tmp_path), "--test-days", "-1"], capsys
    )
    _assert_user_error(code, err, "positive number")
    nt = tmp_path / "sessions.txt"
    nt.write_text("1 2 3\n")
    code, _, err = run(["data", "prepare", str(nt), "--out-dir", str(tmp_path)], capsys)
    _assert_user_error(code, err, "needs event times")

    code, _, err = run([], capsys)
    assert code == 2 and "Traceback" not in err
    code, _, err = run(["fly"], capsys)
    assert code == 2 and "invalid choice" in err


def test_module_entry_point_subprocess(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    p = subprocess.run(
        [sys.executable, "-m", "seqrec_fast.cli", "data", "stats", str(tmp_path / "x.tsv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "no such file" in p.stderr


def test_shared_baseline_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = DATA_DIR / "rsc15_100k_sessionrec"
    if not d.exists():
        pytest.skip(f"shared dataset {d} not found (set SEQREC_DATA_DIR)")
    js = tmp_path / "pop.json"
    code, _, err = run(
        [
            "baseline",
            "pop",
            str(d / "rsc15_100k_train_full.tsv.gz"),
            str(d / "rsc15_100k_test.tsv.gz"),
            "--json",
            str(js),
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(js.read_text())
    # README: every test item occurs in train_full; 13,568 events in 3,416 sessions -> 10,152 predictions
    assert res["n_dropped"] == 0 and res["n_events"] == 13568 - 3416
