"""Evaluation does not depend on how test sessions are batched or partitioned: any batch_size, and
engine="ray" (sessions split across Ray tasks, rank counts concatenated) give the local metrics."""

from __future__ import annotations

import numpy as np
import pytest
from seqrec_fast.cli import main
from seqrec_fast.data import SessionData
from seqrec_fast.evaluate import evaluate
from seqrec_fast.model import SessionRNN
from seqrec_fast.synthetic import generate_sessions


@pytest.fixture(scope="module")
def model_and_test():
    d = generate_sessions(n_sessions=900, n_items=160, seed=21, n_days=2)
    cut = 700
    o = d.offsets
    train = SessionData(d.items[: o[cut]], o[: cut + 1], d.item_ids)
    test = SessionData(d.items[o[cut]:], o[cut:] - o[cut], d.item_ids)
    model = SessionRNN(layers=[20], n_epochs=2, batch_size=16, n_sample=32, num_threads=1,
                       progress=False, verbose=False, seed=2).fit(train)
    return model, test


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_ranks_do_not_depend_on_batch_size(model_and_test, cell):
    model, test = model_and_test
    if cell != model.cell:
        d = generate_sessions(n_sessions=300, n_items=160, seed=22, n_days=1)
        model = SessionRNN(cell=cell, layers=[9, 13], n_epochs=1, batch_size=8, n_sample=16,
                           num_threads=1, progress=False, verbose=False).fit(d)
    ref = evaluate(model, test, batch_size=512).ranks
    for bs in (1, 2, 3, 5, 7, 37):
        np.testing.assert_array_equal(evaluate(model, test, batch_size=bs).ranks, ref)


def test_ray_engine_identical_to_local(model_and_test, ray_local):
    model, test = model_and_test
    local = evaluate(model, test, cutoffs=(1, 5, 20))
    for workers in (2, 5):
        dist = evaluate(model, test, cutoffs=(1, 5, 20), engine="ray", workers=workers)
        np.testing.assert_array_equal(dist.ranks, local.ranks)
        assert dist.metrics == local.metrics
        assert dist.by_position == local.by_position
        assert dist.n_events == local.n_events


def test_engine_errors(model_and_test):
    model, test = model_and_test
    with pytest.raises(ValueError, match="engine"):
        evaluate(model, test, engine="dask")
    with pytest.raises(ValueError, match="workers"):
        evaluate(model, test, engine="ray", workers=0)


def _write_tsv(d, path):
    """Sessions as a GRU4Rec TSV file (SessionId, ItemId, Time), for the CLI tests."""
    import pandas as pd

    sess = np.repeat(np.arange(d.n_sessions), np.diff(d.offsets))
    pd.DataFrame({"SessionId": sess, "ItemId": d.item_ids[d.items],
                  "Time": np.arange(d.n_events)}).to_csv(path, sep="\t", index=False)


def test_cli_evaluate_engine_ray(model_and_test, tmp_path, ray_local, capsys):
    import json

    model, test = model_and_test
    model.save(tmp_path / "m.npz")
    _write_tsv(test, tmp_path / "t.tsv")
    out = {}
    for engine in ("local", "ray"):
        j = tmp_path / f"{engine}.json"
        assert main(["evaluate", str(tmp_path / "m.npz"), str(tmp_path / "t.tsv"), "--engine",
                     engine, "--workers", "2", "--json", str(j)]) == 0
        out[engine] = json.loads(j.read_text())
    capsys.readouterr()
    for o in out.values():
        o.pop("seconds")
        o.pop("events_per_s")
    assert out["ray"] == out["local"] and "mrr@20" in out["local"]


def test_pickled_model_scores_the_same(model_and_test):
    """Arrays that went through pickle (multiprocessing, Ray) carry an equal but not identical
    dtype object; the kernels accept them."""
    import pickle

    model, test = model_and_test
    clone = pickle.loads(pickle.dumps(model))
    assert clone.W_y_.dtype == np.float32
    np.testing.assert_array_equal(evaluate(clone, test).ranks, evaluate(model, test).ranks)
    ids, scores = clone.recommend(list(test.item_ids[test.items[:3]]), k=5)
    ref_ids, ref_scores = model.recommend(list(test.item_ids[test.items[:3]]), k=5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_ray_engine_identical_to_local_loo_and_min_prefix(model_and_test, ray_local):
    """The leave-one-out options (history exclusion, history window) and min_prefix run on the Ray
    engine too, with the local engine's ranks."""
    model, test = model_and_test
    for kw in ({"targets": "last", "exclude_history": True},
               {"targets": "last", "exclude_history": True, "max_history": 3},
               {"min_prefix": 2}):
        local = evaluate(model, test, cutoffs=(5, 20), **kw)
        dist = evaluate(model, test, cutoffs=(5, 20), engine="ray", workers=3, **kw)
        np.testing.assert_array_equal(dist.ranks, local.ranks)
        assert dist.metrics == local.metrics
        assert dist.n_events == local.n_events
        assert dist.n_target_in_history == local.n_target_in_history


def test_cli_evaluate_min_prefix(model_and_test, tmp_path, capsys):
    import json

    model, test = model_and_test
    model.save(tmp_path / "m.npz")
    _write_tsv(test, tmp_path / "t.tsv")
    j = tmp_path / "r.json"
    assert main(["evaluate", str(tmp_path / "m.npz"), str(tmp_path / "t.tsv"), "--min-prefix", "2",
                 "--json", str(j)]) == 0
    r = json.loads(j.read_text())
    want = evaluate(model, test, min_prefix=2)
    assert r["min_prefix"] == 2 and r["n_events"] == want.n_events
    assert r["n_events"] == int(np.maximum(np.diff(test.offsets) - 2, 0).sum())
    assert r["mrr@20"] == want["mrr@20"]
    assert main(["evaluate", str(tmp_path / "m.npz"), str(tmp_path / "t.tsv"), "--min-prefix", "2",
                 "--protocol", "loo"]) == 2
    assert "--min-prefix applies to --targets all" in capsys.readouterr().err
