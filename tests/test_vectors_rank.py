"""Session vectors and candidate re-ranking (issue 12): SessionRNN.transform / rank, Recommender
.session_vector / rank / rank_prefix, similar_sessions, vector files, and their error paths."""

from __future__ import annotations

import numpy as np
import pytest
from seqrec_fast import reference as ref
from seqrec_fast.model import SessionRNN
from seqrec_fast.ranking import Ranking
from seqrec_fast.serving import Recommender, UnknownItemError, UnknownSessionError
from seqrec_fast.synthetic import generate_sessions
from seqrec_fast.vectors import SessionVectors, load_vectors, save_vectors, similar_sessions


def _fit(cell="gru", embedding="constrained", layers=(16,), dtype="float32", seed=1):
    data = generate_sessions(n_sessions=400, n_items=90, seed=seed)
    model = SessionRNN(cell=cell, embedding=embedding, layers=list(layers), n_epochs=2, dtype=dtype,
                       batch_size=16, n_sample=0, learning_rate=0.1, seed=0, progress=False,
                       verbose=False, num_threads=1)
    return model.fit(data), data


@pytest.fixture(scope="module")
def fitted():
    return _fit()


def _sessions(model, data, n):
    return [[model.item_ids_[i] for i in data.items[data.offsets[s]: data.offsets[s + 1]]]
            for s in range(n)]


# ---------------------------------------------------------------------------------------------------
# vectors
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,embedding,layers,dtype", [
    ("gru", "constrained", (16,), "float32"), ("lstm", "separate", (12, 8), "float32"),
    ("rnn", "onehot", (8,), "float64"), ("gru", "separate", (10, 6), "float64"),
])
def test_transform_vector_is_the_state_that_scores_the_next_item(cell, embedding, layers, dtype):
    model, data = _fit(cell, embedding, layers, dtype)
    sv = model.transform(data)
    assert isinstance(sv, SessionVectors)
    np.testing.assert_array_equal(sv.ids, data.session_ids)
    assert sv.vectors.shape == (data.n_sessions, layers[-1]) and sv.vectors.dtype == dtype
    atol = 1e-12 if dtype == "float64" else 1e-6
    for s, seq in enumerate(_sessions(model, data, 25)):
        model.score_prefix(seq)  # leaves the state that scored the next item in model._h
        np.testing.assert_allclose(sv.vectors[s], model._h[-1][0], rtol=0, atol=atol)
        scores = sv.vectors[s] @ model.W_y_.T + model.b_y_
        np.testing.assert_allclose(scores, model.score_prefix(seq), rtol=1e-5, atol=1e-5)
    # a list of sequences gives the same vectors, with positions as ids
    seqs = _sessions(model, data, 7)
    lv = model.transform(seqs)
    np.testing.assert_array_equal(lv.ids, np.arange(7))
    np.testing.assert_allclose(lv.vectors, sv.vectors[:7], rtol=0, atol=atol)


def test_transform_unknown_items_other_item_map_and_empty_sessions(fitted):
    model, data = fitted
    seqs = _sessions(model, data, 4)
    mixed = [["nope"] + seqs[0] + ["nope2"], ["nope"], seqs[2], []]
    sv = model.transform(mixed)
    np.testing.assert_array_equal(sv.ids, [0, 2])  # sessions without a known item get no row
    want = model.transform([seqs[0], seqs[2]]).vectors
    np.testing.assert_array_equal(sv.vectors, want)
    # a SessionData over another item map is re-mapped onto the model's
    from seqrec_fast.data import SessionData

    other = SessionData.from_sessions([seqs[0][::-1], seqs[2]])
    assert not np.array_equal(other.item_ids, model.item_ids_[: other.n_items])
    np.testing.assert_allclose(model.transform(other).vectors,
                               model.transform([seqs[0][::-1], seqs[2]]).vectors, atol=1e-6)
    with pytest.raises(TypeError, match="SessionData or a sequence"):
        model.transform("abc")
    with pytest.raises(ValueError, match="not fitted"):
        SessionRNN().transform(data)


def test_session_vector_is_exactly_the_state_that_scores(fitted):
    model, data = fitted
    rec = Recommender(model)
    seq = _sessions(model, data, 3)[2]
    for it in seq:
        ids, sc = rec.recommend("s", it, k=10)
    v = rec.session_vector("s")
    assert v.dtype == np.float32 and v.shape == (16,)
    # the top-k of the vector, by the same kernel, is the answer recommend gave: bit for bit
    top_i, top_s = rec._scores_of_states(v[None, :], 10, None)
    np.testing.assert_array_equal(model.item_ids_[top_i[0]], ids)
    np.testing.assert_array_equal(top_s[0], sc)
    np.testing.assert_allclose(v, model.transform([seq]).vectors[0], atol=1e-6)
    v[:] = 0  # a copy: the session is not changed
    assert np.any(rec.session_vector("s") != 0)
    with pytest.raises(KeyError, match="not live"):
        rec.session_vector("never-seen")
    rec.reset("s")
    with pytest.raises(UnknownSessionError):
        rec.session_vector("s")


def test_similar_sessions_cosine_exact(fitted, rng):
    model, data = fitted
    sv = model.transform(data)
    V = sv.vectors.astype(np.float64)
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    rows, scores = similar_sessions(sv, 5, k=8)
    cos = U @ U[5]
    cos[5] = -np.inf
    want = np.argsort(-cos, kind="stable")[:8]
    assert 5 not in rows.tolist()
    np.testing.assert_allclose(scores, cos[rows], atol=1e-5)
    np.testing.assert_allclose(scores, cos[want], atol=1e-5)
    q = rng.normal(size=(3, V.shape[1]))
    rows, scores = similar_sessions(sv.vectors, q, k=4)
    assert rows.shape == scores.shape == (3, 4)
    qc = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ U.T
    np.testing.assert_allclose(scores, np.sort(qc, axis=1)[:, ::-1][:, :4], atol=1e-5)
    r1, _s1 = similar_sessions(sv.vectors, q[0], k=4)
    np.testing.assert_array_equal(r1, rows[0])
    # scale-invariant; ties (duplicate rows) go to the lower row; k beyond n is capped
    W = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    r, s = similar_sessions(W, np.array([3.0, 0.0]), k=10)
    assert r.tolist() == [0, 1, 2, 3] and s.tolist() == [1.0, 1.0, 0.0, 0.0]
    r, s = similar_sessions(W, 0, k=10)
    assert r.tolist() == [1, 2, 3]
    with pytest.raises(IndexError, match="out of range"):
        similar_sessions(W, 4)
    with pytest.raises(ValueError, match="width 3"):
        similar_sessions(W, np.ones(3))
    with pytest.raises(ValueError, match="k must be"):
        similar_sessions(W, 0, k=0)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        similar_sessions(np.ones(3), 0)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_vector_files_round_trip(fitted, tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    model, data = fitted
    sv = model.transform(data.subset(np.arange(30)))
    path = tmp_path / f"v{suffix}"
    written = save_vectors(path, sv)
    assert all(p.endswith((".npy", ".npz", ".parquet")) for p in written)
    back = load_vectors(path)
    np.testing.assert_array_equal(back.vectors, sv.vectors)
    assert back.ids.tolist() == sv.ids.tolist()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError, match="unknown vector file type"):
        save_vectors(tmp_path / "v.csv", sv)
    with pytest.raises(ValueError, match="does not exist"):
        save_vectors(tmp_path / "missing" / f"v{suffix}", sv)
    with pytest.raises(FileNotFoundError):
        load_vectors(tmp_path / f"none{suffix}")


# ---------------------------------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------------------------------
def _expected_order(scores: np.ndarray, idx: list) -> list:
    """Candidates by score (float64 oracle scores), ties to the lower index."""
    return sorted(idx, key=lambda j: (-scores[j], j))


@pytest.mark.parametrize("cell,embedding,layers,dtype", [
    ("gru", "constrained", (16,), "float32"), ("lstm", "separate", (12, 8), "float32"),
    ("rnn", "onehot", (8,), "float64"),
])
def test_sessionrnn_rank_orders_candidates_by_prefix_scores(cell, embedding, layers, dtype):
    model, data = _fit(cell, embedding, layers, dtype)
    ids = model.item_ids_
    for seq in _sessions(model, data, 6):
        full = model.score_prefix(seq)
        cand = [ids[j] for j in (5, 80, 3, 3, 44, 7, 61)] + ["nope", "nope", -1]
        r = model.rank(seq, cand)
        assert isinstance(r, Ranking)
        assert r.unknown == ["nope", -1]
        assert sorted(r.items.tolist()) == sorted({ids[j] for j in (5, 80, 3, 44, 7, 61)})
        np.testing.assert_allclose(r.scores, full[[model._to_index([x])[0] for x in r.items]],
                                   rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(r.scores) <= 0)
        assert r.scores.dtype == dtype
    empty = model.rank(seq, [])
    assert len(empty.items) == 0 and len(empty.scores) == 0 and empty.unknown == []
    with pytest.raises(ValueError, match="unknown item"):
        model.rank(["nope"], cand)
    with pytest.raises(ValueError, match="items is empty"):
        model.rank([], cand)
    with pytest.raises(TypeError, match="candidates must be a sequence"):
        model.rank(seq, "abc")


def _same_ranking(r_items, r_scores, ids, sc):
    """Same scores to float32 rounding; same order except among items whose scores agree."""
    pos = {x: i for i, x in enumerate(np.asarray(ids).tolist())}
    mine = np.asarray(sc)[[pos[x] for x in np.asarray(r_items).tolist()]]
    np.testing.assert_allclose(r_scores, mine, rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(mine) <= 1e-6)


def test_recommender_rank_equals_recommend(fitted):
    """Re-ranking the recommended items reproduces the recommendation (packed-table scoring agrees
    with the gathered rows to float32 rounding); the fused step is exactly the event's step."""
    model, data = fitted
    seq = _sessions(model, data, 5)[4]
    a, b = Recommender(model), Recommender(model)
    for it in seq:
        ids, sc = a.recommend("s", it, k=15)
        r = b.rank("s", list(ids[::-1]), item_id=it)  # advances b's session by the same event
        _same_ranking(r.items, r.scores, ids, sc)
        np.testing.assert_array_equal(a.session_vector("s"), b.session_vector("s"))
        r2 = b.rank("s", ids.tolist())  # no item: reads the state, changes nothing
        np.testing.assert_array_equal(r2.items, r.items)
        np.testing.assert_array_equal(r2.scores, r.scores)
    assert b.store.get("s").n_events == len(seq)
    # stateless prefix ranking agrees with the session
    r3 = b.rank_prefix(seq, model.item_ids_.tolist())
    np.testing.assert_array_equal(r3.scores, b.rank("s", model.item_ids_.tolist()).scores)
    _same_ranking(r3.items[:15], r3.scores[:15], ids, sc)


def test_recommender_rank_candidates_bookkeeping(fitted):
    model, data = fitted
    rec = Recommender(model)
    ids = model.item_ids_.tolist()
    seq = _sessions(model, data, 2)[1]
    for it in seq:
        rec.recommend("s", it)
    H = rec.session_vector("s")[None, :]
    cand = [ids[9], str(ids[4]), ids[9], "x", ids[70], np.int64(ids[4]), "x", 10**12]
    r = rec.rank("s", cand)
    assert r.unknown == ["x", 10**12]
    assert sorted(r.items.tolist()) == sorted([ids[9], ids[4], ids[70]])
    idx, sc = ref.rank_candidates(H, rec._W_y, rec._b_y, np.array([[9, 4, 70]], np.int32))
    assert r.items.tolist() == [ids[j] for j in idx[0]]
    np.testing.assert_allclose(r.scores, sc[0], rtol=1e-5, atol=1e-6)
    # ndarray candidates take the vectorised path and agree
    r2 = rec.rank("s", np.array([ids[9], ids[4], ids[70], ids[9], 10**12]))
    np.testing.assert_array_equal(r2.items, r.items)
    assert r2.unknown == [10**12]
    # 0 candidates: empty; a session that is not live ranks from the zero state, nothing created
    r0 = rec.rank("s", [])
    assert r0.items.size == 0 and r0.unknown == []
    z = rec.rank("ghost", ids[:5])
    np.testing.assert_array_equal(z.items, [ids[j] for j in _expected_order(model.b_y_, list(range(5)))])
    assert "ghost" not in rec.store
    # an unknown item_id under 'skip' does not advance; under 'raise' nothing changes
    before = rec.session_vector("s").copy()
    rec.rank("s", ids[:3], item_id="nope")
    np.testing.assert_array_equal(rec.session_vector("s"), before)
    strict = Recommender(model, unknown_item="raise")
    with pytest.raises(UnknownItemError):
        strict.rank("s", ids[:3], item_id="nope")
    assert "s" not in strict.store
    # the limit
    rec.max_candidates = 4
    with pytest.raises(ValueError, match="exceed the limit of 4"):
        rec.rank("s", ids[:5])
    with pytest.raises(ValueError, match="exceed the limit of 4"):
        rec.rank_prefix(seq, ids[:5])
    assert len(rec.rank("s", ids[:4]).items) == 4
    with pytest.raises(TypeError, match="candidates must be a sequence"):
        rec.rank("s", 42)
