"""Item features end to end (issue 13): encoding, fitting with F, cold-start items, save/load,
add_items on a model and on a live Recommender, warm-start retraining, and the bad-input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from seqrec_fast.data import SessionData
from seqrec_fast.features import FeatureEncoder
from seqrec_fast.model import SessionRNN
from seqrec_fast.serving import Recommender
from seqrec_fast.synthetic import generate_item_features, generate_sessions

N_ITEMS = 300
SMALL = {"layers": [24], "n_sample": 64, "batch_size": 16, "learning_rate": 0.1, "momentum": 0.1,
         "n_epochs": 2, "progress": False, "verbose": False, "num_threads": 1, "seed": 3}


@pytest.fixture(scope="module")
def log():
    return generate_sessions(n_sessions=2500, n_items=N_ITEMS, seed=5)


@pytest.fixture(scope="module")
def feats():
    return generate_item_features(n_items=N_ITEMS, seed=5, code_dim=4)


def _frame(data: SessionData, drop_items=()) -> pd.DataFrame:
    f = data.to_frame()
    return f[~f.ItemId.isin(drop_items)]


def _from_frame(f: pd.DataFrame, **kw) -> SessionData:
    return SessionData.from_events(f.SessionId.to_numpy(), f.ItemId.to_numpy(), f.Time.to_numpy(), **kw)


# -------------------------------------------------------------------------------------------------
# encoding


def test_encoder_kinds_and_round_trip():
    df = pd.DataFrame({
        "price": [1.5, 2.0, 3.0],
        "brand": ["a", "b", "a"],
        "cat": [7, 3, 7],
        "tags": [["x", "y"], ["y"], []],
        "emb": [np.array([0.1, 0.2]), np.array([0.3, 0.4]), np.array([0.5, 0.6])],
    })
    enc = FeatureEncoder(categorical=["cat"]).fit(df)
    kinds = {c["name"]: c["kind"] for c in enc.columns_}
    assert kinds == {"price": "numeric", "brand": "onehot", "cat": "onehot", "tags": "multihot",
                     "emb": "vector"}
    assert enc.width == 1 + 2 + 2 + 2 + 2
    F = enc.transform(df, dtype=np.float64)
    np.testing.assert_array_equal(F[0], [1.5, 1, 0, 0, 1, 1, 1, 0.1, 0.2])
    np.testing.assert_array_equal(F[2, 5:7], [0, 0])  # no tags
    again = FeatureEncoder.from_json(enc.to_json())
    new = pd.DataFrame({"price": [9.0], "brand": ["zzz"], "cat": [3], "tags": [["x", "new"]],
                        "emb": [[1.0, 2.0]]})
    row = again.transform(new, dtype=np.float64)[0]
    np.testing.assert_array_equal(row, [9.0, 0, 0, 1, 0, 1, 0, 1.0, 2.0])  # unseen brand: zeros
    assert enc.column_names()[:3] == ["price", "brand=a", "brand=b"]


def test_encoder_refuses_missing_and_infinite():
    with pytest.raises(ValueError, match="'brand' has 1 missing"):
        FeatureEncoder().fit(pd.DataFrame({"brand": ["a", None]}))
    with pytest.raises(ValueError, match="'x' has 1 missing"):
        FeatureEncoder().fit(pd.DataFrame({"x": [1.0, np.nan]}))
    enc = FeatureEncoder().fit(pd.DataFrame({"x": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="NaN or infinite values in 1 row"):
        enc.transform(pd.DataFrame({"x": [1.0, np.inf]}))
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['x'\]"):
        enc.transform(pd.DataFrame({"y": [1.0]}))


def test_generate_item_features_describes_the_log(log, feats):
    """Topics of the feature table are the generator's: most consecutive clicks stay in a topic."""
    topic = dict(zip(feats.ItemId, feats.topic))
    a, b = log.items[:-1], log.items[1:]
    same_session = np.ones(len(a), bool)
    same_session[log.offsets[1:-1] - 1] = False
    ids = log.item_ids
    same = np.array([topic[ids[i]] == topic[ids[j]] for i, j in zip(a[same_session], b[same_session])])
    assert same.mean() > 0.7  # walks stay in their topic; 1/7 topics would be chance
    assert len(feats) == N_ITEMS and len(feats.code[0]) == 4


# -------------------------------------------------------------------------------------------------
# fitting, cold-start items, persistence


def test_fit_rejects_uncovered_items_and_bad_values(log, feats):
    m = SessionRNN(**SMALL, item_features=feats.iloc[10:])
    with pytest.raises(ValueError, match=r"no row for \d+ of the \d+ training items"):
        m.fit(log)
    bad = feats.copy()
    bad["w"] = 1.0
    bad.loc[3, "w"] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        SessionRNN(**SMALL, item_features=bad).fit(log)
    bad.loc[3, "w"] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        SessionRNN(**SMALL, item_features=bad).fit(log)
    with pytest.raises(ValueError, match="no id column 'item'"):
        SessionRNN(**SMALL, item_features=feats, item_features_id_column="item").fit(log)
    with pytest.raises(FileNotFoundError):
        SessionRNN(**SMALL, item_features="/nonexistent/f.parquet").fit(log)


@pytest.fixture(scope="module")
def cold_model(log, feats):
    """Trained without the events of 10% of the items; their feature rows make them cold items."""
    rng = np.random.default_rng(0)
    held = np.sort(rng.choice(log.item_ids, 30, replace=False))
    f = _frame(log)
    sess = f.SessionId.unique()
    test_sess = sess[-400:]
    train = _from_frame(f[~f.SessionId.isin(test_sess) & ~f.ItemId.isin(held)])
    m = SessionRNN(**dict(SMALL, n_epochs=4), item_features=feats[["ItemId", "topic", "pop_bucket"]])
    m.fit(train)
    return m, train, f[f.SessionId.isin(test_sess)], held


def test_cold_start_items_are_in_the_model_and_recommended(cold_model):
    m, train, test_frame, held = cold_model
    assert m.n_items == N_ITEMS and train.n_items < N_ITEMS
    cold = np.flatnonzero(np.isin(m.item_ids_, held))
    assert cold.min() >= train.n_items  # appended after the training items
    W = m.params_[m.param_names_.index("W_y")]
    np.testing.assert_array_equal(W[cold], 0)  # never trained: scored by F @ P only
    np.testing.assert_allclose(m.W_y_[cold], m.item_features_[cold] @ m.params_[-1], rtol=1e-6)
    # held-out targets in the test sessions: the feature model ranks them far above chance
    test = _from_frame(test_frame, item_map=m.item_ids_)
    m.start(1)
    hits = n = 0
    for s in range(test.n_sessions):
        seq = test.session(s)
        m.reset(np.array([0]))
        for x, y in zip(seq[:-1], seq[1:]):
            sc = m.score(np.array([0]), np.array([x]))[0]
            if y in cold:
                n += 1
                hits += int((sc >= sc[y]).sum() <= 20)
    assert n > 20
    assert hits / n > 3 * 20 / N_ITEMS  # chance of a uniform ranking is 20/N


def test_save_load_keeps_features_and_encoding(cold_model, tmp_path):
    m = cold_model[0]
    p = tmp_path / "m.npz"
    m.save(p)
    m2 = SessionRNN.load(p)
    np.testing.assert_array_equal(m2.item_features_, m.item_features_)
    np.testing.assert_array_equal(m2.params_[-1], m.params_[-1])
    assert m2.feature_encoder_.to_json() == m.feature_encoder_.to_json()
    for prefix in ([1, 2], [5]):
        a, b = m.recommend(prefix, k=10), m2.recommend(prefix, k=10)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    # the loaded model encodes new rows exactly like the original
    row = pd.DataFrame({"topic": ["t3"], "pop_bucket": ["p1"]})
    np.testing.assert_array_equal(m.feature_encoder_.transform(row), m2.feature_encoder_.transform(row))


# -------------------------------------------------------------------------------------------------
# add_items


def _snapshot(m):
    return [a.copy() for a in m.params_], m.item_ids_.copy(), m.item_features_.copy()


def test_add_items_errors_leave_the_model_unchanged(cold_model, tmp_path):
    m = SessionRNN.load(_saved(cold_model[0], tmp_path))
    before = _snapshot(m)
    width = m.item_features_.shape[1]
    with pytest.raises(ValueError, match="already in the model"):
        m.add_items([int(m.item_ids_[0]), 99999], np.zeros((2, width)))
    with pytest.raises(ValueError, match=rf"shape \(n, {width}\)"):
        m.add_items([99999], np.zeros((1, width + 1)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.add_items([99999], np.full((1, width), np.nan))
    with pytest.raises(ValueError, match="lack the column"):
        m.add_items([99999], pd.DataFrame({"topic": ["t1"]}))
    with pytest.raises(ValueError, match="duplicates"):
        m.add_items([99999, 99999], np.zeros((2, width)))
    with pytest.raises(ValueError, match="pass features"):
        m.add_items([99999])
    after = _snapshot(m)
    for a, b in zip(before[0], after[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[2], after[2])


def _saved(m, tmp_path):
    p = tmp_path / "m.npz"
    m.save(p)
    return p


def test_add_items_scores_by_features_and_serving_matches(cold_model, tmp_path):
    m = SessionRNN.load(_saved(cold_model[0], tmp_path))
    rec = Recommender(m)
    n0 = m.n_items
    # a new item with the features of the best-scoring item of topic-mates: same F row
    prefix = [int(m.item_ids_[0]), int(m.item_ids_[1])]
    top_ids, _ = m.recommend(prefix, k=1)
    j = int(np.flatnonzero(m.item_ids_ == top_ids[0])[0])
    rec.add_items([70001, 70002], pd.DataFrame({"topic": ["t0", "t1"], "pop_bucket": ["p0", "p9"]}))
    assert m.n_items == n0 + 2 and rec.n_items == n0 + 2
    m.add_items([70003], m.item_features_[j : j + 1])
    rec = Recommender(m)  # a fresh recommender folds F @ P for the new rows too
    new = n0 + 2
    np.testing.assert_allclose(m.W_y_[new], m.item_features_[j] @ m.params_[-1], rtol=1e-6)
    # serving (the folded table) gives the model's top-k, new items included
    ids, scores = rec.predict_next(prefix, k=15)
    ref_ids, ref_scores = m.recommend(prefix, k=15)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # and a new item can be the input of a session (constrained embedding: its F @ P vector)
    out, _ = rec.recommend("s1", 70003, k=5)
    assert len(out) == 5
    with pytest.raises(ValueError, match="already in the model"):
        rec.add_items([70001], np.zeros((1, m.item_features_.shape[1])))
    assert rec.n_items == n0 + 3


def test_add_items_without_features_model(log):
    m = SessionRNN(**SMALL).fit(log)
    with pytest.raises(ValueError, match="no item features"):
        m.add_items([5000], np.zeros((1, 3)))
    m.add_items([5000, 5001])
    assert m.n_items == log.n_items + 2
    np.testing.assert_array_equal(m.W_y_[-2:], 0)


# -------------------------------------------------------------------------------------------------
# warm start


def _overlap(m_a, m_b, prefixes, k=20):
    out = []
    for p in prefixes:
        a, _ = m_a.recommend(p, k=k)
        b, _ = m_b.recommend(p, k=k)
        out.append(len(set(a.tolist()) & set(b.tolist())) / k)
    return float(np.mean(out))


@pytest.mark.parametrize("with_features", [False, True])
def test_warm_start_keeps_old_items_and_learns_new_ones(log, feats, tmp_path, with_features):
    f = _frame(log)
    sess = f.SessionId.unique()
    day1, day2 = sess[:1500], sess[1500:]
    rng = np.random.default_rng(1)
    new_items = np.sort(rng.choice(log.item_ids, 25, replace=False))
    d1 = _from_frame(f[f.SessionId.isin(day1) & ~f.ItemId.isin(new_items)])
    d2 = _from_frame(f[f.SessionId.isin(day2)])
    extra = {"item_features": feats[["ItemId", "topic", "pop_bucket"]]} if with_features else {}
    params = dict(SMALL, n_epochs=3, **extra)
    m = SessionRNN(**params).fit(d1)
    n_old = m.n_items
    before = SessionRNN.load(_saved(m, tmp_path))
    acc_before = [a.copy() for a in m.state1_]
    steps = m.n_updates_
    m.set_params(n_epochs=1)
    m.fit(d2, warm_start=True)
    assert m.n_updates_ > steps
    if with_features:  # the feature table held every item already: nothing appended
        assert m.n_items == n_old
    else:
        assert m.n_items == n_old + len(new_items)
    # Adagrad accumulators continue (they only grow), for the old rows of the item table
    iy = m.param_names_.index("W_y")
    assert np.all(m.state1_[iy][:n_old] >= acc_before[iy] - 1e-7)
    assert np.all(m.state1_[0] >= acc_before[0] - 1e-7)
    # old items' recommendations stay close ...
    prefixes = [[int(i)] for i in d1.item_ids[:40]]
    warm = _overlap(before, m, prefixes)
    scratch = SessionRNN(**dict(params, seed=11, n_epochs=1)).fit(d2)
    cold = _overlap(before, scratch, prefixes)
    assert warm > 0.5 and warm > cold
    # ... and the new items are learned: their rank after their usual predecessors improves
    idx = np.flatnonzero(np.isin(m.item_ids_, new_items))
    pairs = [(a, b) for s in range(d2.n_sessions) for a, b in zip(d2.session(s)[:-1], d2.session(s)[1:])]
    ids2 = d2.item_ids
    new_pairs = [(ids2[a], ids2[b]) for a, b in pairs if ids2[b] in set(m.item_ids_[idx].tolist())
                 and ids2[a] not in set(new_items.tolist())][:150]
    assert len(new_pairs) > 30

    def recall(model):
        hits = 0
        for a, b in new_pairs:
            s = model.score_prefix([a])
            j = int(np.flatnonzero(model.item_ids_ == b)[0]) if b in set(model.item_ids_.tolist()) else -1
            hits += j >= 0 and int((s >= s[j]).sum()) <= 20
        return hits / len(new_pairs)

    r_after = recall(m)
    assert r_after > 0.2 and r_after > recall(before) + 0.1


def test_warm_start_from_file_with_optimizer_state(log, tmp_path):
    m = SessionRNN(**SMALL).fit(log)
    p = tmp_path / "opt.npz"
    m.save(p, optimizer_state=True)
    m2 = SessionRNN.load(p)
    assert m2.n_updates_ == m.n_updates_
    for a, b in zip(m.state1_, m2.state1_):
        np.testing.assert_array_equal(a, b)
    m2.fit(log, warm_start=True)
    assert m2.n_updates_ == 2 * m.n_updates_


def test_warm_start_errors(log, feats):
    with pytest.raises(ValueError, match="not fitted"):
        SessionRNN(**SMALL).fit(log, warm_start=True)
    m = SessionRNN(**SMALL).fit(log)
    with pytest.raises(ValueError, match="cannot change layers"):
        m.set_params(layers=[8]).fit(log, warm_start=True)
    m.set_params(layers=SMALL["layers"], embedding="separate")
    with pytest.raises(ValueError, match="cannot change embedding"):
        m.fit(log, warm_start=True)
    m.set_params(embedding="constrained", item_features=feats)
    with pytest.raises(ValueError, match="trained without item features"):
        m.fit(log, warm_start=True)
    mf = SessionRNN(**SMALL, item_features=feats.iloc[: N_ITEMS - 5]).fit(
        _from_frame(_frame(log, drop_items=log.item_ids[-5:])))
    mf.set_params(item_features=None)
    full = _from_frame(_frame(log))
    with pytest.raises(ValueError, match="5 items the model does not know"):
        mf.fit(full, warm_start=True)


# -------------------------------------------------------------------------------------------------
# command line


def test_cli_train_with_item_features_and_warm_start(log, feats, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from seqrec_fast.cli import main

    f = _frame(log)
    sess = f.SessionId.unique()
    day1 = f[f.SessionId.isin(sess[:1200]) & (f.ItemId <= N_ITEMS - 20)]
    day2 = f[f.SessionId.isin(sess[1200:])]
    p1, p2 = tmp_path / "day1.tsv", tmp_path / "day2.tsv"
    day1.to_csv(p1, sep="\t", index=False)
    day2.to_csv(p2, sep="\t", index=False)
    fp = tmp_path / "feats.parquet"
    feats[["ItemId", "topic", "pop_bucket"]].to_parquet(fp)
    m1, m2 = tmp_path / "m1.npz", tmp_path / "m2.npz"
    common = ["--param", "layers=16", "--param", "n_sample=32", "--param", "n_epochs=1",
              "--param", "batch_size=16", "--threads", "1", "--quiet"]
    assert main(["train", str(p1), "--out", str(m1), "--item-features", str(fp),
                 "--save-optimizer-state", *common]) == 0
    first = SessionRNN.load(m1)
    assert first.n_items == N_ITEMS  # 20 items without events came in as cold-start items
    assert first.item_features_.shape == (N_ITEMS, first.feature_encoder_.width)
    assert main(["train", str(p2), "--out", str(m2), "--warm-start", str(m1), *common]) == 0
    second = SessionRNN.load(m2)
    np.testing.assert_array_equal(second.item_ids_, first.item_ids_)
    assert not np.allclose(second.params_[-1], first.params_[-1])  # P trained further
    capsys.readouterr()
    # a feature table that misses training items: a clear error, exit code 2 (CLIError)
    feats.iloc[:100][["ItemId", "topic"]].to_parquet(fp)
    code = main(["train", str(p1), "--out", str(tmp_path / "bad.npz"), "--item-features", str(fp),
                 *common])
    err = capsys.readouterr().err
    assert code != 0 and "no row for" in err and "training items" in err
