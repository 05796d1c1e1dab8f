"""SessionRNN and the session-parallel schedule: behaviour, persistence, errors, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec_fast.baselines import get_baseline
from seqrec_fast.data import SessionData
from seqrec_fast.evaluate import evaluate
from seqrec_fast.model import NonFiniteLossError, SessionRNN
from seqrec_fast.synthetic import generate_sessions
from seqrec_fast.train import session_parallel_schedule


# --------------------------------------------------------------------------------------------
# schedule


def official_iterator(lengths, B):
    """A direct, per-step simulation of GRU4Rec's SessionDataIterator (the oracle)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n_sess = len(lengths)
    iters = list(range(min(B, n_sess)))
    maxiter = len(iters) - 1
    start = [offsets[i] for i in iters]
    end = [offsets[i + 1] for i in iters]
    steps = []
    while iters:
        minlen = min(e - s for s, e in zip(start, end))
        for i in range(minlen - 1):
            steps.append([(s + i, s + i + 1) for s in start])
        start = [s + minlen - 1 for s in start]
        new_iters, new_start, new_end = [], [], []
        for it, s, e in zip(iters, start, end):
            if e - s <= 1:
                maxiter += 1
                if maxiter >= n_sess:
                    continue
                it, s, e = maxiter, offsets[maxiter], offsets[maxiter + 1]
            new_iters.append(it)
            new_start.append(s)
            new_end.append(e)
        iters, start, end = new_iters, new_start, new_end
    return steps


@pytest.mark.parametrize("B", [1, 3, 4, 7])
def test_schedule_matches_official_iterator(rng, B):
    lengths = rng.integers(2, 9, size=23)
    items = np.arange(lengths.sum(), dtype=np.int32)  # item = event position: pairs are explicit
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sch = session_parallel_schedule(items, offsets, B)
    oracle = official_iterator(lengths, B)
    assert sch.n_events == int((lengths - 1).sum())
    # the official iterator compacts finished slots away; ours keeps them idle. Compare per step
    # the multiset of (input, target) pairs, and that active slots stay in the same relative order.
    assert sch.n_steps == len(oracle)
    for t, pairs in enumerate(oracle):
        act = sch.x[t] >= 0
        ours = list(zip(sch.x[t][act].tolist(), sch.y[t][act].tolist()))
        assert ours == pairs
    # every event after the first of each session is predicted exactly once
    assert sorted(sch.y[sch.y >= 0].tolist()) == sorted(
        set(range(lengths.sum())) - set(offsets[:-1].tolist())
    )


def test_schedule_resets_at_session_starts(rng):
    lengths = rng.integers(2, 6, size=10)
    items = np.arange(lengths.sum(), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sch = session_parallel_schedule(items, offsets, 3)
    first = set(offsets[:-1].tolist())
    starts = sch.x[sch.reset == 1]
    assert sorted(starts.tolist()) == sorted(first)
    # a non-reset active step continues the slot's previous step
    for t in range(1, sch.n_steps):
        for b in range(3):
            if sch.x[t, b] >= 0 and not sch.reset[t, b]:
                assert sch.x[t, b] == sch.y[t - 1, b]


def test_schedule_skips_single_event_sessions_and_rejects_empty():
    items = np.arange(6, dtype=np.int32)
    sch = session_parallel_schedule(items, np.array([0, 1, 4, 5, 6]), 2)
    assert sch.n_events == 2
    with pytest.raises(ValueError, match="nothing to train on"):
        session_parallel_schedule(items[:2], np.array([0, 1, 2]), 2)


# --------------------------------------------------------------------------------------------
# learning


@pytest.fixture(scope="module")
def synth():
    data = generate_sessions(n_sessions=3000, n_items=300, seed=3)
    n_train = int(data.n_sessions * 0.85)
    train = data.subset(np.arange(n_train))
    test = data.subset(np.arange(n_train, data.n_sessions))
    return train, test.with_item_map(train)


def small(**kw):
    base = dict(layers=[32], batch_size=16, n_sample=64, learning_rate=0.1, momentum=0.1,
                n_epochs=3, seed=1, num_threads=1, progress=False, verbose=False)
    base.update(kw)
    return SessionRNN(**base)


def test_gru_clearly_beats_popularity(synth):
    train, test = synth
    gru = small(n_epochs=5).fit(train)
    r_gru = evaluate(gru, test, cutoffs=(20,))
    r_pop = evaluate(get_baseline("pop").fit(train), test, cutoffs=(20,))
    assert r_gru["recall@20"] > r_pop["recall@20"] + 0.15
    assert r_gru["mrr@20"] > 2 * r_pop["mrr@20"]
    losses = [h["loss"] for h in gru.history_]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("loss", ["bpr-max", "top1-max"])
def test_other_cells_and_losses_learn(synth, cell, loss):
    train, test = synth
    m = small(cell=cell, loss=loss, n_epochs=2).fit(train)
    pop = evaluate(get_baseline("pop").fit(train), test, cutoffs=(20,))["recall@20"]
    assert evaluate(m, test, cutoffs=(20,))["recall@20"] > pop + 0.05


@pytest.mark.parametrize(
    "kw",
    [
        dict(embedding="separate", embedding_dim=12, dropout_embed=0.2),
        dict(embedding="onehot"),
        dict(layers=[16, 24], dropout_hidden=0.3, bptt=3),
        dict(full_softmax=True, optimizer="adam", learning_rate=0.01),
        dict(n_sample=0, logq=0.5),
    ],
)
def test_configurations_train_and_score(synth, kw):
    train, test = synth
    m = small(n_epochs=1, **kw).fit(train)
    res = evaluate(m, test, cutoffs=(20,))
    assert 0 < res["recall@20"] <= 1
    assert np.isfinite(m.history_[0]["loss"])


def test_seed_makes_training_deterministic(synth):
    train, _ = synth
    a = small(n_epochs=1, dropout_hidden=0.3, num_threads=2).fit(train)
    b = small(n_epochs=1, dropout_hidden=0.3, num_threads=2).fit(train)
    c = small(n_epochs=1, dropout_hidden=0.3, num_threads=2, seed=2).fit(train)
    for x, y in zip(a.params_, b.params_):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.params_[0], c.params_[0])


def test_scoring_protocol_matches_prefix_scoring(synth):
    train, test = synth
    m = small(n_epochs=1).fit(train)
    s = test.session(0) if hasattr(test, "session") else None
    items = test.items[test.offsets[0] : test.offsets[1]]
    items = items[items >= 0][:3]
    m.start(4)
    m.reset(np.array([2]))
    for it in items:
        out = m.score(np.array([2]), np.array([it]))
    direct = m.score_prefix(list(m.item_ids_[items]))
    np.testing.assert_allclose(out[0], direct, rtol=1e-6, atol=1e-6)
    del s


# --------------------------------------------------------------------------------------------
# persistence


def test_save_load_round_trip_is_bit_identical(synth, tmp_path):
    train, test = synth
    m = small(n_epochs=1).fit(train)
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = SessionRNN.load(path)
    assert m2.get_params()["layers"] == [32]
    prefix = list(m.item_ids_[:3])
    np.testing.assert_array_equal(m.score_prefix(prefix), m2.score_prefix(prefix))
    ids1, s1 = m.recommend(prefix, k=10)
    ids2, s2 = m2.recommend(prefix, k=10)
    np.testing.assert_array_equal(ids1, ids2)
    np.testing.assert_array_equal(s1, s2)


def test_string_item_ids_survive_save_load(tmp_path):
    sessions = [["a", "b", "c"], ["b", "c", "d"], ["a", "c"], ["d", "a", "b"]] * 20
    data = SessionData.from_sessions(sessions)
    m = small(n_epochs=1, n_sample=2, batch_size=4).fit(data)
    m.save(tmp_path / "s.npz")
    m2 = SessionRNN.load(tmp_path / "s.npz")
    ids, _ = m2.recommend(["a", "b"], k=4)
    assert set(ids.tolist()) == {"a", "b", "c", "d"}
    np.testing.assert_array_equal(m.recommend(["a"], k=4)[0], ids if False else m2.recommend(["a"], k=4)[0])


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        SessionRNN.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.npz"):
        SessionRNN.load(bad)


# --------------------------------------------------------------------------------------------
# contract and errors


def test_sklearn_contract():
    m = SessionRNN(layers=[7], n_epochs=2)
    assert m.get_params()["layers"] == [7]
    assert not hasattr(m, "params_")
    assert m.set_params(n_epochs=3) is m and m.n_epochs == 3
    with pytest.raises(ValueError, match="unknown parameter 'n_epoch'"):
        m.set_params(n_epoch=3)
    with pytest.raises(ValueError, match="not fitted"):
        m.recommend([1])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(cell="transformer"), "cell must be one of"),
        (dict(layers=[]), "layers must be a non-empty"),
        (dict(dropout_hidden=1.0), "dropout_hidden must be in"),
        (dict(batch_size=0), "batch_size must be an int >= 1"),
        (dict(loss="hinge"), "loss must be one of"),
        (dict(embedding="onehot", dropout_embed=0.1), "dropout_embed must be 0"),
        (dict(learning_rate=-1.0), "learning_rate must be > 0"),
        (dict(n_sample=-5), "n_sample must be an int >= 0"),
    ],
)
def test_bad_parameters_raise(synth, kw, match):
    train, _ = synth
    with pytest.raises(ValueError, match=match):
        small(**kw).fit(train)


def test_fit_rejects_non_session_data():
    with pytest.raises(TypeError, match="SessionData"):
        small().fit([[1, 2, 3]])


def test_diverging_training_stops_with_clear_error_and_finite_model(synth, tmp_path):
    train, _ = synth

    def poison(model, epoch, logs):  # an overflowed item bias, as after a divergent update
        model.b_y_[5] = np.inf

    m = small(n_epochs=3, callbacks=[poison])
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) in epoch 2 at step \d+"):
        m.fit(train)
    # nothing of the failing step was applied: all other parameters are finite
    for name, a in zip(m.param_names_, m.params_):
        if name != "b_y":
            assert np.all(np.isfinite(a)), name
    with pytest.raises(ValueError, match="refusing to save: parameter b_y holds NaN or inf"):
        m.save(tmp_path / "never.npz")
    assert not (tmp_path / "never.npz").exists()


def test_early_stopping_keeps_best_epoch_and_callbacks_stop(synth):
    train, test = synth
    seen = []

    def cb(model, epoch, logs):
        seen.append((epoch, logs["loss"]))
        return epoch >= 2

    m = small(n_epochs=5, callbacks=[cb]).fit(train)
    assert [e for e, _ in seen] == [1, 2]
    m = small(n_epochs=4, early_stopping=1, learning_rate=0.05).fit(train, valid=test)
    mrrs = [h["valid_mrr@20"] for h in m.history_]
    assert m.best_epoch_ == int(np.argmax(mrrs)) + 1
    again = evaluate(m, test, cutoffs=(20,))["mrr@20"]
    assert again == pytest.approx(max(mrrs))


def test_fused_rank_counts_match_reference_with_ties(rng):
    from seqrec_fast import _core
    from seqrec_fast import reference as ref

    n, N, D = 37, 301, 7
    H = rng.normal(size=(n, D)).astype(np.float32)
    W = rng.normal(size=(N, D)).astype(np.float32)
    W[100:110] = W[5]  # ties: ten copies of item 5
    b = np.zeros(N, np.float32)
    target = rng.integers(0, N, n).astype(np.int32)
    target[:4] = 5
    for nt in (1, 2):
        gt, ge = _core.score_rank_counts(H, W, b, target, nt)
        rgt, rge = ref.score_rank_counts(H, W, b, target)
        # float32 products may round differently from NumPy's BLAS; compare with a float64 oracle
        S = H.astype(np.float64) @ W.T.astype(np.float64)
        t = S[np.arange(n), target][:, None]
        np.testing.assert_array_equal(ge - gt >= 1, True)  # the target counts itself
        np.testing.assert_array_equal((ge - gt)[:4], 11)   # itself and its ten copies
        assert np.abs(gt - (S > t).sum(1)).max() <= 1
        assert np.abs(rgt - gt).max() <= 1
    with pytest.raises(IndexError, match="target holds 301"):
        _core.score_rank_counts(H, W, b, np.full(n, N, np.int32), 1)


def test_evaluate_fused_path_equals_generic_path(synth):
    train, test = synth
    m = small(n_epochs=1).fit(train)

    class Generic:  # the same model seen only through score()
        n_items = m.n_items
        start, reset, score = m.start, m.reset, m.score

    a = evaluate(m, test, cutoffs=(1, 5, 20))
    b = evaluate(Generic(), test, cutoffs=(1, 5, 20))
    for key in ("recall@1", "recall@20", "mrr@20", "ndcg@5"):
        assert a[key] == pytest.approx(b[key], abs=2e-3)
