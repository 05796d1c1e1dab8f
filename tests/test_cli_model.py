"""The ``seqrec train | evaluate | recommend`` commands.

Three groups of tests:
- error paths and help texts, which need no model;
- the command wiring (parameter precedence, item mapping, JSON keys, output) against a small stand-in
  model injected as ``seqrec_fast.model``, so the CLI is tested whatever the state of the real model;
- end-to-end runs with the real :class:`seqrec_fast.model.SessionRNN` (skipped until it exists).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from seqrec_fast.cli import main
from seqrec_fast.io import load_model_file, save_model_file

REPO = Path(__file__).resolve().parents[1]
ISSUE_KEYS = ("recall@{k}", "mrr@{k}", "ndcg@{k}", "hitrate@{k}")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write_log(path: Path, seed: int = 0, n_sessions: int = 300, p_unknown: float = 0.0) -> Path:
    """GRU4Rec TSV, int ids 100..129 with a strong next-item pattern (100+x -> 100 + (7x+3) % 30);
    with probability ``p_unknown`` an event is item 900 (never in a training log)."""
    n_items = 30
    rng = np.random.default_rng(seed)
    lines = ["SessionId\tItemId\tTime"]
    t = 1_600_000_000.0
    for s in range(n_sessions):
        x = int(rng.integers(n_items))
        for _ in range(int(rng.integers(2, 7))):
            item = 900 if rng.random() < p_unknown else 100 + x
            lines.append(f"{s}\t{item}\t{t:.1f}")
            t += 10.0
            x = (x * 7 + 3) % n_items if rng.random() < 0.9 else int(rng.integers(n_items))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    train = write_log(tmp_path / "train.tsv", seed=0)
    test = write_log(tmp_path / "test.tsv", seed=1, n_sessions=60, p_unknown=0.05)
    return {"train": train, "test": test, "dir": tmp_path}


# ---------------------------------------------------------------------------------------------------
# help texts and error paths (no model needed)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cmd, words",
    [
        ("train", ["--out", "--valid", "--config", "--param", "--threads", "--seed", "--quiet",
                   "--early-stopping", "learning_rate"]),
        ("evaluate", ["--cutoffs", "--tie-mode", "--unknown-targets", "--json", "--batch-size",
                      "--threads", "--format"]),
        ("recommend", ["--items", "-k", "--json"]),
    ],
)  # fmt: skip
def test_help(cmd: str, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([cmd, "--help"], capsys)
    assert code == 0
    assert f"usage: seqrec {cmd}" in out
    for w in words:
        assert w in out, w
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and cmd in out


def test_unknown_param_name(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out_model = data["dir"] / "m.npz"
    code, _, err = run(
        [
            "train",
            str(data["train"]),
            "--out",
            str(out_model),
            "--param",
            "lerning_rate=0.1",
        ],
        capsys,
    )
    assert code == 2
    assert "unknown parameter 'lerning_rate' (did you mean 'learning_rate'?)" in err
    assert "allowed:" in err and "n_sample" in err
    assert "Traceback" not in err
    assert not out_model.exists()


@pytest.mark.parametrize("bad", ["layers", "=3", "layers=1,,2"])
def test_malformed_param(
    bad: str, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["train", str(data["train"]), "--out", "m.npz", "--param", bad], capsys)
    assert code == 2
    assert "--param" in err


def test_missing_train_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["train", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "m")], capsys)
    assert code == 2
    assert "nope.tsv" in err and "no such file" in err
    assert "Traceback" not in err


def test_missing_train_file_subprocess_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "seqrec_fast.cli", "train", str(tmp_path / "nope.tsv"), "--out",
         str(tmp_path / "m.npz")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "seqrec: error:" in proc.stderr and "nope.tsv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_valid_file(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["train", str(data["train"]), "--out", str(data["dir"] / "m.npz"), "--valid", "nope.tsv"],
        capsys,
    )
    assert code == 2 and "validation data nope.tsv: no such file" in err


def test_bad_config_path(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["train", str(data["train"]), "--out", str(data["dir"] / "m.npz"), "--config", "nope.toml"],
        capsys,
    )
    assert code == 2
    assert "nope.toml" in err and "no such file" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("layers = [100\n", "invalid TOML"),
        ("hidden = 100\n", "unknown parameter 'hidden'"),
        ("lerning_rate = 0.1\n", "did you mean 'learning_rate'"),
        ("[model]\ncell = 'gru'\n", "tables are not supported"),
    ],
)
def test_bad_config_content(
    content: str, message: str, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    conf = data["dir"] / "bad.toml"
    conf.write_text(content)
    code, _, err = run(
        ["train", str(data["train"]), "--out", str(data["dir"] / "m.npz"), "--config", str(conf)],
        capsys,
    )
    assert code == 2
    assert "bad.toml" in err and message in err
    assert "Traceback" not in err


def test_early_stopping_needs_valid(
    data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["train", str(data["train"]), "--out", str(data["dir"] / "m.npz"), "--early-stopping", "2"],
        capsys,
    )
    assert code == 2 and "--early-stopping needs --valid" in err


def test_out_folder_missing(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["train", str(data["train"]), "--out", str(data["dir"] / "no" / "m.npz")], capsys
    )
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--seed", "-1"], ["--seed", "x"]])
def test_bad_threads_seed(
    argv: list[str], data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["train", str(data["train"]), "--out", "m.npz", *argv], capsys)
    assert code == 2 and argv[0] in err


def test_evaluate_missing_files(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["evaluate", str(data["dir"] / "nope.npz"), str(data["test"])], capsys)
    assert code == 2 and "model file" in err and "nope.npz: no such file" in err
    model = data["dir"] / "m.npz"
    model.write_bytes(b"x")
    code, _, err = run(["evaluate", str(model), str(data["dir"] / "nope.tsv")], capsys)
    assert code == 2 and "nope.tsv: no such file" in err
    code, _, err = run(
        ["evaluate", str(model), str(data["test"]), "--json", str(data["dir"] / "no" / "r.json")],
        capsys,
    )
    assert code == 2 and "does not exist" in err
    code, _, err = run(["evaluate", str(model), str(data["test"]), "--cutoffs", "0"], capsys)
    assert code == 2


def test_recommend_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["recommend", str(tmp_path / "nope.npz"), "--items", "1"], capsys)
    assert code == 2 and "nope.npz: no such file" in err
    code, _, err = run(["recommend", str(tmp_path / "nope.npz")], capsys)
    assert code == 2 and "--items" in err


# ---------------------------------------------------------------------------------------------------
# command wiring against a stand-in model
# ---------------------------------------------------------------------------------------------------
class FakeSessionRNN:
    """First-order Markov counts with the SessionRNN surface the CLI uses (not a real model)."""

    instances: ClassVar[list[FakeSessionRNN]] = []

    def __init__(self, **params: Any) -> None:
        self.params = dict(params)
        FakeSessionRNN.instances.append(self)

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k not in ("progress", "early_stopping")}

    def set_params(self, **params: Any) -> FakeSessionRNN:
        self.params.update(params)
        return self

    def fit(self, train: Any, valid: Any = None) -> FakeSessionRNN:
        if valid is not None:
            assert valid.n_items == train.n_items  # the CLI mapped VALID onto TRAIN's items
            assert not np.any(valid.items < 0)
        self.valid_ = valid
        n = train.n_items
        counts = np.ones((n, n), dtype=np.float32) * 1e-3
        for s in range(train.n_sessions):
            x = train.session(s)
            np.add.at(counts, (x[:-1], x[1:]), 1.0)
        self.trans_ = counts
        self.item_ids_ = train.item_ids
        self.n_items = n
        return self

    def save(self, path: str) -> None:
        save_model_file(
            path,
            # SessionData keeps string ids as an object array; the model file needs fixed-width str
            {
                "trans": self.trans_,
                "item_ids": np.asarray(self.item_ids_).astype(
                    str if self.item_ids_.dtype == object else self.item_ids_.dtype
                ),
            },
            {"params": self.get_params()},
        )

    @classmethod
    def load(cls, path: str) -> FakeSessionRNN:
        arrays, header = load_model_file(path)
        m = cls(**header["params"])
        m.trans_, m.item_ids_ = arrays["trans"], arrays["item_ids"]
        m.n_items = m.trans_.shape[0]
        return m

    def start(self, n_slots: int) -> None:
        pass

    def reset(self, slots: np.ndarray) -> None:
        pass

    def score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.trans_[items]

    def recommend(self, items: list[Any], k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        assert len(items) > 0
        pos = {v: i for i, v in enumerate(self.item_ids_.tolist())}
        last = pos[items[-1]]  # KeyError for an unknown id, like a strict model
        s = self.trans_[last]
        top = np.argsort(-s, kind="stable")[:k]
        return self.item_ids_[top], s[top]


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> type[FakeSessionRNN]:
    mod = types.ModuleType("seqrec_fast.model")
    mod.SessionRNN = FakeSessionRNN  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "seqrec_fast.model", mod)
    FakeSessionRNN.instances = []
    return FakeSessionRNN


def test_train_param_precedence(
    fake_model: type[FakeSessionRNN], data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    conf = data["dir"] / "c.toml"
    conf.write_text(
        "cell = 'lstm'\nlayers = [64]\nlearning_rate = 0.1\nseed = 5\nnum_threads = 4\nn_epochs = 3\n"
    )
    model_path = data["dir"] / "m.npz"
    code, out, err = run(
        [
            "train",
            str(data["train"]),
            "--out",
            str(model_path),
            "--valid",
            str(data["test"]),
            "--config",
            str(conf),
            "--param",
            "learning_rate=0.05",
            "--param",
            "layers=100",
            "--param",
            "seed=7",
            "--param",
            "loss=bpr-max",
            "--seed",
            "11",
            "--threads",
            "2",
            "--quiet",
            "--early-stopping",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    (m,) = fake_model.instances
    assert m.params == {
        "cell": "lstm",  # config
        "layers": [100],  # --param (int -> one layer)
        "learning_rate": 0.05,  # --param beats config
        "loss": "bpr-max",
        "n_epochs": 3,
        "seed": 11,  # --seed beats --param and config
        "num_threads": 2,  # --threads beats config
        "progress": False,  # --quiet
        "early_stopping": 3,
    }
    assert m.valid_ is not None and m.valid_.n_unknown > 0  # unknown items dropped from VALID
    assert model_path.exists()
    assert "saved" in out and str(model_path) in out
    assert "300 sessions" in out


def test_train_without_options(
    fake_model: type[FakeSessionRNN], data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["train", str(data["train"]), "--out", str(data["dir"] / "m.npz")], capsys)
    assert code == 0, err
    (m,) = fake_model.instances
    assert m.params == {"progress": True, "early_stopping": None}


def test_train_bad_kwarg_is_user_error(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    class Strict:
        def __init__(self, *, cell: str = "gru", progress: bool = True, early_stopping: Any = None):
            pass

    mod = types.ModuleType("seqrec_fast.model")
    mod.SessionRNN = Strict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "seqrec_fast.model", mod)
    code, _, err = run(
        ["train", str(data["train"]), "--out", str(data["dir"] / "m.npz"), "--param", "bptt=3"],
        capsys,
    )
    assert code == 2 and "bad hyperparameters" in err and "Traceback" not in err


def _train_fake(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> Path:
    path = data["dir"] / "m.npz"
    code, _, err = run(["train", str(data["train"]), "--out", str(path), "--quiet"], capsys)
    assert code == 0, err
    return path


@pytest.mark.parametrize("unknown", ["drop", "miss"])
def test_evaluate_json_keys(
    unknown: str,
    fake_model: type[FakeSessionRNN],
    data: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _train_fake(data, capsys)
    out_json = data["dir"] / "r.json"
    code, out, err = run(
        [
            "evaluate",
            str(path),
            str(data["test"]),
            "--cutoffs",
            "1",
            "5",
            "20",
            "--unknown-targets",
            unknown,
            "--json",
            str(out_json),
            "--threads",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert "recall" in out and "@20" in out and "events=" in out
    res = json.loads(out_json.read_text())
    for k in (1, 5, 20):
        for key in ISSUE_KEYS:
            assert isinstance(res[key.format(k=k)], float)
    assert isinstance(res["n_events"], int) and isinstance(res["n_dropped"], int)
    assert "recall@10" not in res
    assert res["unknown_targets"] == unknown
    if unknown == "drop":
        assert res["n_dropped"] > 0
    else:
        assert res["n_unknown_targets"] > 0 and res["n_dropped"] == 0
    assert res["model"] == str(path) and res["test"] == str(data["test"])
    assert res["recall@20"] > 0.5  # the Markov stand-in learns the planted pattern
    (loaded,) = fake_model.instances[1:]
    assert loaded.params["num_threads"] == 1


def test_evaluate_same_path_as_baseline(
    fake_model: type[FakeSessionRNN], data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The model's item map and the training file's map give the same test mapping (same code path)."""
    path = _train_fake(data, capsys)
    r1, r2 = data["dir"] / "a.json", data["dir"] / "b.json"
    assert run(["evaluate", str(path), str(data["test"]), "--json", str(r1)], capsys)[0] == 0
    code, _, err = run(
        ["baseline", "sr", str(data["train"]), str(data["test"]), "--json", str(r2)], capsys
    )
    assert code == 0, err
    a, b = json.loads(r1.read_text()), json.loads(r2.read_text())
    assert a["n_events"] == b["n_events"] and a["n_dropped"] == b["n_dropped"]


def test_evaluate_bad_model_file(
    fake_model: type[FakeSessionRNN], data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = data["dir"] / "bad.npz"
    bad.write_text("not a model\n")
    code, _, err = run(["evaluate", str(bad), str(data["test"])], capsys)
    assert code == 2 and "bad.npz" in err and "Traceback" not in err


def test_recommend(
    fake_model: type[FakeSessionRNN], data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _train_fake(data, capsys)
    # planted pattern: item 100+x is followed by 100 + (7x+3) % 30
    code, out, err = run(["recommend", str(path), "--items", "101", "102", "-k", "3"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "session: 101 102"
    assert len(lines) == 2 + 3
    assert lines[2].split()[:2] == ["1", str(100 + (7 * 2 + 3) % 30)]

    code, out, err = run(
        ["recommend", str(path), "--items", "101", "zzz", "999", "102", "--json", "-k", "500"],
        capsys,
    )
    assert code == 0, err
    assert "skipped items not in the model's item map: zzz, 999" in err
    res = json.loads(out)
    assert res["session"] == [101, 102] and res["skipped"] == ["zzz", "999"]
    assert res["k"] == 30 and len(res["recommendations"]) == 30  # k capped at n_items
    assert res["recommendations"][0]["item"] == 100 + (7 * 2 + 3) % 30
    scores = [r["score"] for r in res["recommendations"]]
    assert scores == sorted(scores, reverse=True)

    code, _, err = run(["recommend", str(path), "--items", "zzz", "999"], capsys)
    assert code == 2 and "none of the items" in err


def test_recommend_string_ids(
    fake_model: type[FakeSessionRNN], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "s.tsv"
    train.write_text(
        "SessionId\tItemId\tTime\n1\ta\t1\n1\tb\t2\n2\ta\t3\n2\tb\t4\n3\tb\t5\n3\tc-1\t6\n"
    )
    path = tmp_path / "m.npz"
    assert run(["train", str(train), "--out", str(path), "--quiet"], capsys)[0] == 0
    code, out, err = run(["recommend", str(path), "--items", "a", "--json", "-k", "1"], capsys)
    assert code == 0, err
    assert json.loads(out)["recommendations"][0]["item"] == "b"


# ---------------------------------------------------------------------------------------------------
# end to end with the real model
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def real_model() -> Any:
    mod = pytest.importorskip("seqrec_fast.model")
    return mod.SessionRNN


TINY = ["--param", "layers=16", "--param", "n_epochs=2", "--param", "batch_size=8",
        "--param", "n_sample=8", "--seed", "3", "--threads", "1", "--quiet"]  # fmt: skip


def test_real_train_evaluate_recommend(
    real_model: Any, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = data["dir"] / "gru.npz"
    code, out, err = run(
        ["train", str(data["train"]), "--out", str(path), "--config",
         str(REPO / "configs" / "rsc15.toml"), *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert path.exists() and "saved" in out
    m = real_model.load(str(path))
    params = m.get_params()
    assert params["layers"] == [16] and params["seed"] == 3 and params["num_threads"] == 1
    assert params["loss"] == "cross-entropy" and params["dropout_hidden"] == 0.4  # from the config
    assert os.listdir(data["dir"]).count("gru.npz") == 1
    assert not [f for f in os.listdir(data["dir"]) if f.endswith(".tmp")]

    out_json = data["dir"] / "r.json"
    code, out, err = run(
        ["evaluate", str(path), str(data["test"]), "--json", str(out_json), "--cutoffs", "5", "20"],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out_json.read_text())
    for k in (5, 20):
        for key in ISSUE_KEYS:
            assert 0.0 <= res[key.format(k=k)] <= 1.0
    assert res["n_events"] > 0 and res["n_dropped"] > 0

    code, out, err = run(
        ["recommend", str(path), "--items", "101", "102", "--json", "-k", "5"], capsys
    )
    assert code == 0, err
    rec = json.loads(out)["recommendations"]
    assert len(rec) == 5
    ids, scores = m.recommend([101, 102], k=5)
    assert [r["item"] for r in rec] == [int(x) for x in ids]
    assert [r["score"] for r in rec] == [float(s) for s in scores]


def test_real_train_with_valid_and_early_stopping(
    real_model: Any, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = data["dir"] / "gru.npz"
    code, _, err = run(
        ["train", str(data["train"]), "--out", str(path), "--valid", str(data["test"]),
         "--early-stopping", "1", *TINY],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert path.exists()


def test_real_evaluate_corrupted_model(
    real_model: Any, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = data["dir"] / "gru.npz"
    assert run(["train", str(data["train"]), "--out", str(path), *TINY], capsys)[0] == 0
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    code, _, err = run(["evaluate", str(path), str(data["test"])], capsys)
    assert code == 2 and "gru.npz" in err and "Traceback" not in err


def test_train_sigterm_exits_143_without_a_model_file(tmp_path):
    """SIGTERM during `seqrec train` is a clean stop: exit status 143, a one-line message, no model
    file and no temporary file left behind."""
    import signal

    from seqrec_fast.synthetic import generate_sessions

    d = generate_sessions(n_sessions=300, n_items=60, seed=3)
    sess = np.repeat(np.arange(d.n_sessions), np.diff(d.offsets))
    tsv = tmp_path / "tr.tsv"
    tsv.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"{s}\t{i}\t{t}\n" for t, (s, i) in enumerate(zip(sess, d.item_ids[d.items]))))
    out = tmp_path / "m.npz"
    cmd = [sys.executable, "-u", "-m", "seqrec_fast.cli", "train", str(tsv), "--out", str(out),
           "--param", "layers=8", "--param", "n_sample=8", "--param", "batch_size=8",
           "--param", "n_epochs=100000", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the first epoch line: fit is running, the handler installed
            if line.startswith("epoch 1/"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [tsv]
