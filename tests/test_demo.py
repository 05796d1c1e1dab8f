"""``run_demo`` and ``seqrec demo``: the pipeline runs, reports consistent results, and fails cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from seqrec_fast.cli import main
from seqrec_fast.demo import DEFAULT_BASELINES, run_demo
from seqrec_fast.synthetic import generate_frame


@pytest.fixture(scope="module")
def quick() -> tuple[dict, list[str]]:
    lines: list[str] = []
    return run_demo(quick=True, out=lines.append), lines


def check_entry(entry: dict, cutoffs=(5, 10, 20)) -> None:
    for k in cutoffs:
        r, m, n = entry[f"recall@{k}"], entry[f"mrr@{k}"], entry[f"ndcg@{k}"]
        assert 0.0 <= m <= n <= r <= 1.0  # MRR <= NDCG <= Recall at every cut-off
    assert entry["recall@5"] <= entry["recall@10"] <= entry["recall@20"]
    assert entry["n_events"] > 0
    assert entry["fit_seconds"] >= 0 and entry["eval_seconds"] >= 0


def test_quick_demo_results(quick: tuple[dict, list[str]]) -> None:
    res, _ = quick
    results = res["results"]
    assert list(results)[: len(DEFAULT_BASELINES)] == list(DEFAULT_BASELINES)
    for entry in results.values():
        check_entry(entry)
    # every model is evaluated on the same test events
    assert len({e["n_events"] for e in results.values()}) == 1
    # the synthetic log has sequential structure: SR and item-kNN beat popularity clearly
    pop = results["pop"]
    for name in ("sr", "itemknn"):
        assert results[name]["recall@20"] > 2 * pop["recall@20"]
        assert results[name]["mrr@20"] > 2 * pop["mrr@20"]
    if res["gru"]["skipped"] is None:
        assert "gru" in results
    else:
        assert "gru" not in results and res["gru"]["skipped"]
    assert res["cutoffs"] == [5, 10, 20]
    assert res["data"]["source"] == "synthetic"
    log, train, test = res["data"]["stats"]
    assert train["events"] + test["events"] <= log["events"]
    assert train["time_end"] <= test["time_end"]


def test_quick_demo_prints_table_and_examples(quick: tuple[dict, list[str]]) -> None:
    res, lines = quick
    text = "\n".join(lines)
    header = next(line for line in lines if line.startswith("model"))
    for col in ("Recall@20", "MRR@20", "NDCG@20", "fit s", "eval s"):
        assert col in header
    for name, entry in res["results"].items():
        row = next(line for line in lines if line.split()[:1] == [name])
        assert f"{entry['recall@20']:.4f}" in row and f"{entry['mrr@20']:.4f}" in row
    assert "example recommendations" in text
    assert 1 <= len(res["examples"]) <= 3
    item_ids = set(range(1, 601))  # the quick synthetic catalogue has ids 1..600
    for ex in res["examples"]:
        assert len(ex["recommended"]) == 5 and len(set(ex["recommended"])) == 5
        assert set(ex["recommended"]) <= item_ids and set(ex["session"]) <= item_ids
        assert ex["next"] in item_ids
        assert list(ex["scores"]) == sorted(ex["scores"], reverse=True)
        if ex["hit_rank"] is not None:
            assert ex["recommended"][ex["hit_rank"] - 1] == ex["next"]
        else:
            assert ex["next"] not in ex["recommended"]


def test_demo_on_a_file_and_silent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "clicks.tsv"
    generate_frame(n_sessions=1500, n_items=300, seed=5, n_days=4).to_csv(
        path, sep="\t", index=False
    )
    res = run_demo(str(path), out=None, gru=False, baselines=("pop", "sr"), n_examples=2)
    assert capsys.readouterr().out == ""
    assert res["data"]["source"] == str(path) and res["data"]["generator"] is None
    assert list(res["results"]) == ["pop", "sr"]
    for entry in res["results"].values():
        check_entry(entry)
    assert res["results"]["sr"]["mrr@20"] > res["results"]["pop"]["mrr@20"]
    assert res["gru"]["skipped"]
    # without the GRU the best baseline shows its recommendations
    assert res["examples"] and {ex["model"] for ex in res["examples"]} == {"sr"}


def test_demo_needs_times(tmp_path: Path) -> None:
    path = tmp_path / "sessions.txt"
    rng = np.random.default_rng(0)
    path.write_text("\n".join(" ".join(map(str, rng.integers(1, 20, 4))) for _ in range(50)) + "\n")
    with pytest.raises(ValueError, match="event times"):
        run_demo(str(path), format="sessions", out=None, gru=False)


def test_demo_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        run_demo(quick=True, out=None, baselines=("nope",))
    with pytest.raises(ValueError, match="n_epochs"):
        run_demo(quick=True, out=None, n_epochs=0)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["demo", "--help"], capsys)
    assert code == 0
    for opt in ("--data", "--format", "--seed", "--epochs", "--quick", "--json"):
        assert opt in out
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "demo" in out


def test_cli_quick_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "demo.json"
    code, out, err = run(["demo", "--quick", "--seed", "1", "--json", str(out_json)], capsys)
    assert code == 0, err
    assert "Recall@20" in out and f"wrote {out_json}" in out
    saved = json.loads(out_json.read_text())
    assert set(DEFAULT_BASELINES) <= set(saved["results"])
    for entry in saved["results"].values():
        check_entry(entry)
    assert saved["data"]["generator"]["seed"] == 1
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--data", "MISSING"], "no such file"),
        (["demo", "--json", "/nonexistent-folder/x.json"], "does not exist"),
        (["demo", "--epochs", "0"], "positive integer"),
        (["demo", "--seed", "-3"], "integer >= 0"),
        (["demo", "--format", "nope"], "invalid choice"),
    ],
)
def test_cli_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "missing.tsv") if a == "MISSING" else a for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_cli_time_less_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.txt"
    path.write_text("1 2 3\n2 3 4\n3 4 5\n")
    code, _, err = run(["demo", "--data", str(path), "--format", "sessions"], capsys)
    assert code == 2 and "event times" in err and "Traceback" not in err


def test_module_entry_point_bad_data(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "seqrec_fast.cli", "demo", "--data", str(tmp_path / "nope.tsv")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "no such file" in p.stderr
