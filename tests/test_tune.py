"""Hyperparameter search (seqrec_fast.tune): space files, best.toml round trip, and real searches on
a local Ray: outputs, failures recorded, pruning, resume, Ctrl-C."""

from __future__ import annotations

import _thread
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from seqrec_fast.cli import main
from seqrec_fast.config import load_config
from seqrec_fast.data import SessionData
from seqrec_fast.model import SessionRNN
from seqrec_fast.synthetic import generate_sessions
from seqrec_fast.tune import OFFICIAL_NAMES, SearchParam, load_space, tune, write_config

try:
    import optuna  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("optuna is not installed (pip install '.[ray]')", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "configs" / "spaces"


def _write_space(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def data():
    d = generate_sessions(n_sessions=700, n_items=120, seed=11, n_days=2)
    cut = int(d.n_sessions * 0.8)
    o = d.offsets
    train = SessionData(d.items[: o[cut]], o[: cut + 1], d.item_ids)
    valid = SessionData(d.items[o[cut]:], o[cut:] - o[cut], d.item_ids)
    return train, valid


FIXED = {"layers": [12], "n_sample": 16, "batch_size": 16, "n_epochs": 2}


def test_official_spaces_load_with_our_names():
    for name, extra in (("gru4rec_xe_standard.jsonl", set()),
                        ("gru4rec_bprmax_standard.jsonl", {"bpreg", "elu_param"})):
        space = load_space(SPACES / name)
        names = {q.name for q in space}
        assert names == {"layers", "batch_size", "learning_rate", "dropout_embed",
                         "dropout_hidden", "momentum", "sample_alpha"} | extra
    # each fixed config is a valid config for seqrec train
    for name in ("gru4rec_xe_fixed.toml", "gru4rec_bprmax_fixed.toml"):
        SessionRNN(**load_config(SPACES / name))._validated()


def test_space_accepts_official_names_and_rejects_bad_lines(tmp_path):
    p = _write_space(tmp_path / "s.jsonl", [
        {"name": "dropout_p_hidden", "dtype": "float", "values": [0.0, 0.7], "step": 0.05},
        {"name": "learning_rate", "dtype": "float", "values": [1e-3, 0.3], "log": True},
        {"name": "elu_param", "dtype": "categorical", "values": [0.5, 1, 0]},
    ])
    space = load_space(p)
    assert space[0].name == OFFICIAL_NAMES["dropout_p_hidden"] == "dropout_hidden"
    assert space[1].log and space[2].values == (0.5, 1, 0)
    bad = [
        ({"name": "learnin_rate", "dtype": "float", "values": [0, 1]}, "did you mean 'learning_rate'"),
        ({"name": "layers", "dtype": "long", "values": [1, 2]}, "dtype must be one of"),
        ({"name": "layers", "dtype": "int", "values": [64]}, r"\[low, high\]"),
        ({"name": "layers", "dtype": "int", "values": [512, 64]}, "low <= high"),
        ({"name": "layers", "dtype": "int", "values": [64, 512], "step": -32}, "step must be"),
        ({"name": "momentum", "dtype": "float", "values": [0, 1], "log": True}, "log scale"),
        ({"name": "momentum", "dtype": "float", "values": [0, 1], "scale": 2}, "unknown key"),
        ({"name": "num_threads", "dtype": "int", "values": [1, 2]}, "unknown parameter"),
        ({"dtype": "int", "values": [1, 2]}, "missing key 'name'"),
    ]
    for obj, msg in bad:
        with pytest.raises(ValueError, match=msg):
            load_space(_write_space(tmp_path / "bad.jsonl", [obj]))
    (tmp_path / "nojson.jsonl").write_text("{name: layers}\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        load_space(tmp_path / "nojson.jsonl")
    dup = [{"name": "momentum", "dtype": "float", "values": [0, 1]}] * 2
    with pytest.raises(ValueError, match="more than once"):
        load_space(_write_space(tmp_path / "dup.jsonl", dup))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no parameters"):
        load_space(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        load_space(tmp_path / "missing.jsonl")


def test_write_config_round_trip(tmp_path):
    params = {"layers": [96, 64], "loss": "bpr-max", "learning_rate": 0.185, "momentum": 0.0,
              "full_softmax": False, "n_epochs": 5, "embedding_dim": None, "elu_param": 1}
    write_config(tmp_path / "c.toml", params, comments=["a comment"])
    back = load_config(tmp_path / "c.toml")
    assert back == {k: v for k, v in params.items() if v is not None}


def test_tune_errors(data, tmp_path):
    train, valid = data
    space = load_space(SPACES / "gru4rec_xe_standard.jsonl")
    with pytest.raises(ValueError, match="metric"):
        tune(train, valid, space, 2, tmp_path / "a", metric="precision@20")
    with pytest.raises(ValueError, match="valid_options"):
        tune(train, valid, space, 2, tmp_path / "a", valid_options={"cutoffs": [10]})
    with pytest.raises(ValueError, match="both fixed and in the search space"):
        tune(train, valid, space, 2, tmp_path / "a", fixed={"layers": 64})
    with pytest.raises(ValueError, match="n_trials"):
        tune(train, valid, space, 0, tmp_path / "a")
    with pytest.raises(ValueError, match="unknown parameter"):
        tune(train, valid, space, 2, tmp_path / "a", fixed={"n_epoch": 3})
    with pytest.raises(ValueError, match="loss must be one of"):
        tune(train, valid, space, 2, tmp_path / "a", fixed={"loss": "hinge"})
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        tune(train, valid, space, 2, tmp_path / "a", resume=True)


def test_tune_search_outputs_and_best_toml_round_trip(data, tmp_path, ray_local, capsys):
    train, valid = data
    space = [SearchParam("learning_rate", "float", (0.02, 0.3), 0.01),
             SearchParam("dropout_hidden", "float", (0.0, 0.5), 0.1),
             SearchParam("layers", "int", (8, 24), 8)]
    fixed = {k: v for k, v in FIXED.items() if k != "layers"}
    out = tmp_path / "study"
    res = tune(train, valid, space, 4, out, fixed=fixed, parallel=2, threads_per_trial=1, seed=3)
    study, best = res  # unpacks as (study, best params)
    assert len(study.trials) == 4
    assert res.best_value == max(t.value for t in study.trials if t.value is not None
                                 and t.state.name == "COMPLETE")
    for f in ("study.db", "trials.csv", "trials.jsonl", "best.toml", "history.png"):
        assert (out / f).stat().st_size > 0, f
    recs = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    for r in recs:
        assert r["state"] in ("complete", "pruned")
        assert len(r["metric_per_epoch"]) == len(r["epochs"]) >= 1
        assert r["seconds"] > 0 and r["params"]["num_threads"] == 1
        if r["state"] == "complete":
            assert r["value"] == pytest.approx(r["metric_per_epoch"][-1])
            assert len(r["epochs"]) == 2
    csv = pd.read_csv(out / "trials.csv")
    assert list(csv["number"]) == [0, 1, 2, 3]
    assert {"param_learning_rate", "param_layers", "mrr@20_per_epoch", "state"} <= set(csv.columns)
    # best.toml is accepted by seqrec train --config as it is, and is the best trial's config
    conf = load_config(out / "best.toml")
    assert conf == best and "num_threads" not in conf and isinstance(conf["layers"], list)
    model_path = tmp_path / "best.npz"
    trp, vap = tmp_path / "tr.tsv", tmp_path / "va.tsv"
    for d, p in ((train, trp), (valid, vap)):
        sess = np.repeat(np.arange(d.n_sessions), np.diff(d.offsets))
        pd.DataFrame({"SessionId": sess, "ItemId": d.item_ids[d.items],
                      "Time": np.arange(d.n_events)}).to_csv(p, sep="\t", index=False)
    assert main(["train", str(trp), "--out", str(model_path), "--config", str(out / "best.toml"),
                 "--threads", "1", "--quiet"]) == 0
    m = SessionRNN.load(model_path)
    for k, v in best.items():
        got = m.get_params()[k]
        assert (list(got) if k == "layers" else got) == v, k
    # the same trial retrained from best.toml reproduces its validation metric (seeded)
    from seqrec_fast.evaluate import evaluate

    bt = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    m2 = SessionRNN(**best, num_threads=1, progress=False, verbose=False).fit(train)
    assert evaluate(m2, valid, cutoffs=[20], batch_size=512)["mrr@20"] == pytest.approx(bt.value)
    capsys.readouterr()


def test_failed_and_diverging_trials_are_recorded_and_search_goes_on(data, tmp_path, ray_local):
    train, valid = data
    space = [SearchParam("cell", "categorical", ("gru", "bogus")),
             SearchParam("learning_rate", "categorical", (0.1, 1e30))]
    res = tune(train, valid, space, 6, tmp_path / "s", fixed=FIXED, parallel=1, seed=0,
               prune=False, verbose=False)
    recs = [json.loads(x) for x in (tmp_path / "s" / "trials.jsonl").read_text().splitlines()]
    assert len(recs) == 6
    states = {r["state"] for r in recs}
    assert states == {"complete", "fail"}
    for r in recs:
        bad_cell = r["params"]["cell"] == "bogus"
        diverge = r["params"]["learning_rate"] > 1
        if bad_cell:
            assert r["state"] == "fail" and "cell must be one of" in r["error"]
        elif diverge:
            assert r["state"] == "fail"
            assert "NonFiniteLossError" in r["error"] or "diverged" in r["error"]
        else:
            assert r["state"] == "complete" and r["error"] is None
    assert any(r["params"]["cell"] == "bogus" for r in recs)
    assert any(r["params"]["cell"] == "gru" and r["params"]["learning_rate"] > 1 for r in recs)
    assert res.best_params["cell"] == "gru" and res.best_params["learning_rate"] == 0.1


def test_pruner_stops_hopeless_trials(data, tmp_path, ray_local):
    train, valid = data
    # half of the learning rates are far too small to learn anything in a few epochs
    space = [SearchParam("learning_rate", "categorical", (1e-6, 0.2))]
    fixed = dict(FIXED, n_epochs=4)
    res = tune(train, valid, space, 7, tmp_path / "p", fixed=fixed, parallel=1, seed=1,
               pruner_startup_trials=2, pruner_warmup_epochs=1, verbose=False)
    recs = [json.loads(x) for x in (tmp_path / "p" / "trials.jsonl").read_text().splitlines()]
    pruned = [r for r in recs if r["state"] == "pruned"]
    assert pruned, [(r["params"]["learning_rate"], r["state"]) for r in recs]
    assert all(r["params"]["learning_rate"] == 1e-6 for r in pruned)
    assert all(len(r["epochs"]) < 4 for r in pruned)
    assert res.best_params["learning_rate"] == 0.2


def test_resume_continues_the_study(data, tmp_path, ray_local):
    train, valid = data
    space = [SearchParam("learning_rate", "float", (0.02, 0.3), 0.01)]
    out = tmp_path / "r"
    first = tune(train, valid, space, 2, out, fixed=FIXED, parallel=2, verbose=False)
    before = [(t.number, t.params, t.value) for t in first.study.trials]
    with pytest.raises(ValueError, match="already holds a study"):
        tune(train, valid, space, 3, out, fixed=FIXED)
    with pytest.raises(ValueError, match="metric differ"):
        tune(train, valid, space, 3, out, fixed=FIXED, metric="recall@20", resume=True)
    second = tune(train, valid, space, 3, out, fixed=FIXED, parallel=2, resume=True, verbose=False)
    after = [(t.number, t.params, t.value) for t in second.study.trials]
    assert len(after) == 3 and after[:2] == before
    assert len((out / "trials.jsonl").read_text().splitlines()) == 3
    # nothing left to do: no new trial
    third = tune(train, valid, space, 3, out, fixed=FIXED, resume=True, verbose=False)
    assert len(third.study.trials) == 3


def test_ctrl_c_stops_cleanly_with_the_study_saved(data, tmp_path, ray_local):
    import optuna

    train, valid = data
    space = [SearchParam("learning_rate", "float", (0.02, 0.3), 0.01)]
    out = tmp_path / "c"
    fixed = dict(FIXED, n_epochs=5000)  # long trials (minutes each): Ctrl-C lands while they run
    stop = threading.Event()

    def ctrl_c_when_trials_run():
        # press Ctrl-C once the study has running trials; press it again if, 5 s later, trials still
        # run (a KeyboardInterrupt that lands in an object's __del__ -- e.g. a Ray ObjectRef being
        # collected on the main thread -- is printed and dropped by Python, for a user as for this test)
        pressed = False
        t_db = None  # when study.db appeared: if no RUNNING row can be read within 5 s, press anyway
        while not stop.wait(5.0 if pressed else 0.2):
            if not (out / "study.db").exists():
                continue
            t_db = t_db or time.monotonic()
            try:  # read-only peek (optuna here would race tune() creating the schema)
                con = sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True, timeout=1)
                try:
                    running = con.execute(
                        "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
                finally:
                    con.close()
            except sqlite3.Error:  # the study is being created, or a write holds the lock
                running = 0
            if running or time.monotonic() - t_db > 5.0:
                if not pressed:
                    stop.wait(0.5)
                _thread.interrupt_main()
                pressed = True

    # a process started in the background by a non-interactive shell inherits SIGINT ignored, and
    # then interrupt_main() does nothing: give this test Python's own Ctrl-C handler
    import signal

    old_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=ctrl_c_when_trials_run, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            tune(train, valid, space, 50, out, fixed=fixed, parallel=2, prune=False, verbose=False)
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGINT, old_sigint)
    study = optuna.load_study(study_name="seqrec-tune", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states and "RUNNING" not in states
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert interrupted and all(t.state.name == "FAIL" for t in interrupted)
    assert all("interrupted" in t.user_attrs["error"] for t in interrupted)
    assert (out / "trials.jsonl").exists() and (out / "history.png").exists()


def _cli_inputs(data, tmp_path):
    """train / valid as GRU4Rec TSV files and a one-parameter space file, for the CLI tests."""
    trp, vap = tmp_path / "tr.tsv", tmp_path / "va.tsv"
    for d, p in zip(data, (trp, vap)):
        sess = np.repeat(np.arange(d.n_sessions), np.diff(d.offsets))
        pd.DataFrame({"SessionId": sess, "ItemId": d.item_ids[d.items],
                      "Time": np.arange(d.n_events)}).to_csv(p, sep="\t", index=False)
    space = _write_space(tmp_path / "s.jsonl", [
        {"name": "learning_rate", "dtype": "float", "values": [0.05, 0.2], "step": 0.05}])
    return trp, vap, space


def test_cli_tune(data, tmp_path, ray_local, capsys):
    trp, vap, space = _cli_inputs(data, tmp_path)
    out = tmp_path / "cli"
    argv = ["tune", str(trp), str(vap), "--space", str(space), "--trials", "2", "--out", str(out),
            "--fixed", "layers=12", "n_sample=16", "batch_size=16", "n_epochs=1",
            "--metric", "recall@20", "--parallel", "2", "--threads-per-trial", "1", "--seed", "4"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "best validation recall@20" in text and (out / "best.toml").exists()
    assert main(argv) == 2  # the study exists: --resume needed
    assert "already holds a study" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0


def _running_trials(db: Path) -> int:
    try:  # read-only peek while the search runs
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return 0


def test_cli_tune_sigterm_saves_the_study(data, tmp_path, ray_local):
    """SIGTERM (kill, systemd, Kubernetes) stops `seqrec tune` like Ctrl-C: exit 143, every open trial
    failed with its reason, the reports written; the search can be resumed."""
    import signal
    import subprocess
    import sys
    import time

    trp, vap, space = _cli_inputs(data, tmp_path)
    out = tmp_path / "term"
    address = ray_local.get_runtime_context().gcs_address  # join the test's Ray, do not start one
    cmd = [sys.executable, "-m", "seqrec_fast.cli", "tune", str(trp), str(vap), "--space", str(space),
           "--trials", "20", "--out", str(out), "--fixed", "layers=12", "n_sample=16",
           "batch_size=16", "n_epochs=500", "--no-prune", "--parallel", "2", "--threads-per-trial",
           "1", "--address", address, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _running_trials(out / "study.db") == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no trial started within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err
    study = optuna.load_study(study_name="seqrec-tune", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states and "RUNNING" not in states
    assert any(t.user_attrs.get("interrupted") for t in study.trials)
    assert (out / "trials.jsonl").exists()


def test_tune_with_a_leave_one_out_validation_protocol(tmp_path, ray_local):
    """valid_options reach every trial: the trial's recorded ndcg@20 equals the leave-one-out
    evaluation of a model retrained from best.toml with the same seed."""
    from seqrec_fast.evaluate import evaluate
    from seqrec_fast.preprocess import leave_one_out

    rng = np.random.default_rng(5)
    hist = []
    for _ in range(200):
        x = int(rng.integers(30))
        seq = []
        for _ in range(int(rng.integers(3, 10))):
            seq.append(x)
            x = (x + 11) % 30
        hist.append(seq)
    sp = leave_one_out(SessionData.from_sessions(hist, item_map=np.arange(30)))
    train = SessionData.from_events(sp["train_tr"]["SessionId"], sp["train_tr"]["ItemId"],
                                    item_map=np.arange(30))
    valid = SessionData.from_events(sp["train_valid"]["SessionId"], sp["train_valid"]["ItemId"],
                                    item_map=np.arange(30), keep_unknown=True)
    opts = {"targets": "last", "exclude_history": True, "max_history": 5, "unknown_targets": "miss"}
    space = _write_space(tmp_path / "s.jsonl", [
        {"name": "learning_rate", "dtype": "float", "values": [0.005, 0.03], "step": 0.005}])
    fixed = {"layers": [10], "n_sample": 0, "full_softmax": True, "optimizer": "adam",
             "batch_size": 16, "n_epochs": 2}
    res = tune(train, valid, space, 2, tmp_path / "t", fixed=fixed, metric="ndcg@20", parallel=2,
               prune=False, verbose=False, valid_options=opts)
    best = load_config(tmp_path / "t" / "best.toml")
    m = SessionRNN(**{**best, "num_threads": 1}, progress=False, verbose=False).fit(train)
    assert evaluate(m, valid, cutoffs=(20,), **opts)["ndcg@20"] == pytest.approx(res.best_value,
                                                                                 abs=1e-12)
    rec = [json.loads(x) for x in (tmp_path / "t" / "trials.jsonl").read_text().splitlines()]
    assert all(r["metric"] == "ndcg@20" for r in rec)
    with pytest.raises(ValueError, match="resume"):  # the protocol is part of the study's settings
        tune(train, valid, space, 3, tmp_path / "t", fixed=fixed, metric="ndcg@20", resume=True,
             valid_options={"targets": "last"}, verbose=False)
