"""Recommender and SessionStore (serving/recommender.py): agreement with SessionRNN on whole prefixes, the
session store (LRU, TTL, thread safety), unknown-item policies, batches, reduced precision."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from seqrec_fast.model import SessionRNN
from seqrec_fast.serving import Recommender, UnknownItemError
from seqrec_fast.synthetic import generate_sessions


def _fit(cell="gru", embedding="constrained", layers=(16,), dtype="float32"):
    data = generate_sessions(n_sessions=500, n_items=100, seed=1)
    model = SessionRNN(cell=cell, embedding=embedding, layers=list(layers), n_epochs=3, dtype=dtype,
                       batch_size=16, n_sample=0, learning_rate=0.1, seed=0,
                       progress=False, verbose=False, num_threads=1)
    return model.fit(data), data


@pytest.fixture(scope="module")
def fitted():
    return _fit()


@pytest.fixture(scope="module")
def model(fitted):
    return fitted[0]


@pytest.fixture(scope="module")
def prefixes(fitted):
    model, data = fitted
    out = []
    for s in range(40):
        seq = data.items[data.offsets[s]: data.offsets[s + 1]]
        out.append([model.item_ids_[i] for i in seq])
    return [p for p in out if p]


def _assert_same_topk(ids, scores, full_scores, item_ids, k, exclude=()):
    """ids/scores are a valid top-k of full_scores (float32 round-off allowed; ties may differ only
    between items whose scores agree within tolerance)."""
    s = full_scores.astype(np.float64).copy()
    index = {x: j for j, x in enumerate(np.asarray(item_ids).tolist())}
    for x in exclude:
        s[index[x]] = -np.inf
    j = np.array([index[x] for x in np.asarray(ids).tolist()])
    assert len(j) == min(k, np.isfinite(s).sum())
    assert len(set(j.tolist())) == len(j)
    np.testing.assert_allclose(scores, s[j], rtol=1e-5, atol=1e-5)
    expected = np.sort(s)[::-1][: len(j)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores) <= 1e-6)


# ---------------------------------------------------------------------------------------------------
# agreement with SessionRNN
# ---------------------------------------------------------------------------------------------------
def test_predict_next_equals_sessionrnn(model, prefixes):
    rec = Recommender(model)
    for p in prefixes[:20]:
        ids, sc = rec.predict_next(p, k=10)
        _ref_ids, ref_sc = model.recommend(p, k=10)
        _assert_same_topk(ids, sc, model.score_prefix(p), model.item_ids_, 10)
        np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-5)
        assert sc.dtype == np.float32
        assert ids.dtype == model.item_ids_.dtype


def test_predict_next_exclude_seen_equals_sessionrnn(model, prefixes):
    rec = Recommender(model)
    for p in prefixes[:10]:
        ids, sc = rec.predict_next(p, k=10, exclude_seen=True)
        _ref_ids, ref_sc = model.recommend(p, k=10, exclude_seen=True)
        assert not set(ids.tolist()) & set(p)
        _assert_same_topk(ids, sc, model.score_prefix(p), model.item_ids_, 10, exclude=p)
        np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell,embedding,layers,dtype", [
    ("gru", "constrained", (16,), "float32"), ("lstm", "separate", (12, 8), "float32"),
    ("rnn", "onehot", (8,), "float32"), ("gru", "separate", (10, 6), "float64"),
])
def test_stateful_recommend_equals_prefix(cell, embedding, layers, dtype):
    model, data = _fit(cell, embedding, layers, dtype)
    rec = Recommender(model)
    for s in range(8):
        seq = [model.item_ids_[i] for i in data.items[data.offsets[s]: data.offsets[s + 1]]]
        for t, it in enumerate(seq):
            ids, sc = rec.recommend(("sess", s), it, k=7)
            _assert_same_topk(ids, sc, model.score_prefix(seq[: t + 1]), model.item_ids_, 7)
            _pids, psc = rec.predict_next(seq[: t + 1], k=7)
            np.testing.assert_allclose(sc, psc, rtol=1e-5, atol=1e-5)
    assert len(rec.store) == 8


def test_exclude_seen_stateful(model, prefixes):
    rec = Recommender(model, exclude_seen=True)
    p = prefixes[0] + prefixes[1]
    for t, it in enumerate(p):
        ids, sc = rec.recommend("a", it, k=15)
        assert not set(ids.tolist()) & set(p[: t + 1])
        _assert_same_topk(ids, sc, model.score_prefix(p[: t + 1]), model.item_ids_, 15,
                          exclude=set(p[: t + 1]))
    # k larger than what is left: fewer results, never an excluded one, no -inf
    ids, sc = rec.recommend("a", p[0], k=100)
    assert len(ids) == model.n_items - len(set(p))
    assert np.all(np.isfinite(sc))


def test_k_larger_than_catalogue_and_bad_k(model):
    rec = Recommender(model)
    ids, _sc = rec.recommend("x", model.item_ids_[3], k=10_000)
    assert len(ids) == model.n_items
    assert sorted(ids.tolist()) == sorted(model.item_ids_.tolist())
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="k must be"):
            rec.recommend("x", model.item_ids_[3], k=bad)


def test_reset(model, prefixes):
    rec = Recommender(model)
    p = prefixes[2]
    for it in p:
        rec.recommend("r", it)
    assert rec.reset("r") is True
    assert rec.reset("r") is False
    assert len(rec) == 0
    _ids, sc = rec.recommend("r", p[-1], k=5)
    _ref_ids, ref_sc = rec.predict_next([p[-1]], k=5)
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-6)
    assert rec.stats()["resets"] == 1


# ---------------------------------------------------------------------------------------------------
# store: LRU, TTL
# ---------------------------------------------------------------------------------------------------
def test_lru_eviction(model):
    rec = Recommender(model, max_sessions=3)
    it = model.item_ids_[0]
    for s in "abc":
        rec.recommend(s, it)
    rec.recommend("a", it)  # a is now the most recent
    rec.recommend("d", it)  # evicts b
    assert len(rec.store) == 3
    assert "b" not in rec.store and "a" in rec.store and "d" in rec.store
    st = rec.stats()
    assert st["evictions"] == 1 and st["sessions"] == 3 and st["created"] == 4
    # state arrays plus the recent item ids kept for exclude_seen and replay (8 bytes per int id)
    assert st["recent_items"] == 4  # a: 2, c: 1, d: 1 (b was evicted)
    assert st["bytes"] == 3 * st["state_bytes_per_session"] + 8 * st["recent_items"] > 0
    # the evicted session starts again from the zero state
    _ids, sc = rec.recommend("b", it, k=5)
    np.testing.assert_allclose(sc, rec.predict_next([it], k=5)[1], rtol=1e-6)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_ttl_expiry_with_fake_clock(model):
    clock = FakeClock()
    rec = Recommender(model, ttl_seconds=10.0, clock=clock)
    a, b = model.item_ids_[1], model.item_ids_[2]
    rec.recommend("old", a)
    clock.t += 6
    rec.recommend("new", a)
    clock.t += 5  # old idle 11 s > ttl, new idle 5 s
    assert rec.store.sweep() == 1
    assert "old" not in rec.store and "new" in rec.store
    # lazy: an expired session is fresh at its next event
    clock.t += 20
    _ids, sc = rec.recommend("new", b, k=5)
    np.testing.assert_allclose(sc, rec.predict_next([b], k=5)[1], rtol=1e-6)
    st = rec.stats()
    assert st["expirations"] == 2 and st["sessions"] == 1
    # touching refreshes the TTL
    clock.t += 9
    rec.recommend("new", a)
    clock.t += 9
    assert "new" in rec.store
    _ids2, sc2 = rec.recommend("new", a, k=5)
    np.testing.assert_allclose(sc2, rec.predict_next([b, a, a], k=5)[1], rtol=1e-5, atol=1e-6)


def test_constructor_validation(model):
    for kw in ({"max_sessions": 0}, {"ttl_seconds": 0}, {"unknown_item": "ignore"},
               {"precision": "fp16"}, {"num_threads": 0}):
        with pytest.raises(ValueError):
            Recommender(model, **kw)
    with pytest.raises(ValueError, match="not fitted"):
        Recommender(SessionRNN())


# ---------------------------------------------------------------------------------------------------
# thread safety
# ---------------------------------------------------------------------------------------------------
def test_threads_hammering_sessions(model, prefixes):
    rec = Recommender(model, max_sessions=20, exclude_seen=True)
    errors = []
    items = model.item_ids_
    shared_count = [0]
    lock = threading.Lock()

    def work(tid):
        rng = np.random.default_rng(tid)
        try:
            for n in range(150):
                sid = "shared" if n % 3 == 0 else f"t{tid}-{rng.integers(12)}"
                if sid == "shared":
                    with lock:
                        shared_count[0] += 1
                ids, sc = rec.recommend(sid, items[rng.integers(len(items))], k=5)
                assert len(ids) == 5 and np.all(np.diff(sc) <= 1e-6)
                if n % 25 == 0:
                    rec.recommend_batch([sid, f"t{tid}-b", sid], [items[1], items[2], items[3]], k=3)
                if n % 40 == 0:
                    rec.reset(f"t{tid}-0")
                assert len(rec.store) <= 20
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    st = rec.stats()
    assert st["sessions"] <= 20 and st["evictions"] > 0


def test_same_session_events_are_serialised(model):
    """Concurrent events of one session are all applied (none lost): the final state is some order of
    all of them; with all events equal every order gives the same state."""
    rec = Recommender(model)
    it = model.item_ids_[5]
    n_threads, n_each = 4, 25

    def work():
        for _ in range(n_each):
            rec.recommend("one", it, k=3)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _ids, sc = rec.recommend("one", it, k=5)
    _ref_ids, ref_sc = rec.predict_next([it] * (n_threads * n_each + 1), k=5)
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-4, atol=1e-5)
    assert rec.store.get("one").n_events == n_threads * n_each + 1


# ---------------------------------------------------------------------------------------------------
# unknown items
# ---------------------------------------------------------------------------------------------------
def test_unknown_item_skip(model, prefixes):
    rec = Recommender(model, unknown_item="skip")
    # brand-new session: zero-state scores (b_y), no session created
    _ids, sc = rec.recommend("new", 10**9, k=5)
    expected = np.sort(model.b_y_.astype(np.float32))[::-1][:5]
    np.testing.assert_allclose(sc, expected, rtol=1e-6)
    assert len(rec.store) == 0
    # existing session: the state is not advanced; the answer is the current state's
    p = prefixes[3]
    for it in p:
        last = rec.recommend("s", it, k=5)
    again = rec.recommend("s", "no-such-item", k=5)
    np.testing.assert_array_equal(again[0], last[0])
    np.testing.assert_allclose(again[1], last[1], rtol=1e-5, atol=1e-6)
    nxt = rec.recommend("s", p[0], k=5)
    np.testing.assert_allclose(nxt[1], rec.predict_next(p + [p[0]], k=5)[1], rtol=1e-5, atol=1e-6)
    # stateless: unknown items are dropped
    np.testing.assert_allclose(rec.predict_next([p[0], "zzz", p[1]], k=5)[1],
                               rec.predict_next([p[0], p[1]], k=5)[1], rtol=1e-6)
    assert len(rec.predict_next(["zzz"], k=5)[0]) == 5


def test_unknown_item_raise(model, prefixes):
    rec = Recommender(model, unknown_item="raise")
    rec.recommend("s", prefixes[0][0])
    with pytest.raises(UnknownItemError, match="'nope'") as ei:
        rec.recommend("s", "nope")
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, ValueError)
    assert ei.value.item == "nope"
    assert "item map" in str(ei.value)
    with pytest.raises(KeyError, match="123456"):
        rec.predict_next([prefixes[0][0], 123456])
    # a batch is checked before anything changes
    before = rec.store.get("s").h[0].copy()
    with pytest.raises(UnknownItemError):
        rec.recommend_batch(["s", "t"], [prefixes[0][1], "nope"])
    np.testing.assert_array_equal(rec.store.get("s").h[0], before)
    assert "t" not in rec.store
    with pytest.raises(TypeError):
        rec.recommend("s", 1.5)
    with pytest.raises(TypeError):
        rec.recommend("s", True)


# ---------------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------------
def test_batch_with_duplicates_equals_sequential(model, prefixes):
    sids = ["a", "b", "a", "c", "a", "b", "d"]
    its = [prefixes[0][0], prefixes[1][0], prefixes[0][1], prefixes[2][0], "unknown",
           prefixes[1][1], "unknown"]
    for exclude_seen in (False, True):
        seq = Recommender(model, exclude_seen=exclude_seen)
        bat = Recommender(model, exclude_seen=exclude_seen)
        # some state beforehand
        for r in (seq, bat):
            r.recommend("a", prefixes[4][0])
        expected = [seq.recommend(s, i, k=6) for s, i in zip(sids, its)]
        got = bat.recommend_batch(sids, its, k=6)
        assert len(got) == len(expected)
        for (ei, es), (gi, gs) in zip(expected, got):
            np.testing.assert_array_equal(gi, ei)
            np.testing.assert_allclose(gs, es, rtol=1e-5, atol=1e-6)
        assert len(bat.store) == len(seq.store) == 3  # d only saw an unknown item
        for s in "abc":
            np.testing.assert_allclose(bat.store.get(s).h[0], seq.store.get(s).h[0], rtol=1e-5,
                                       atol=1e-6)
    assert Recommender(model).recommend_batch([], [], k=3) == []
    with pytest.raises(ValueError, match="differ in length"):
        Recommender(model).recommend_batch(["a"], [], k=3)
    with pytest.raises(ValueError, match="max_sessions"):
        Recommender(model, max_sessions=2).recommend_batch(["a", "b", "c"], [prefixes[0][0]] * 3)


# ---------------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------------
def test_string_item_ids_and_int_string_matching(fitted, tmp_path):
    model, _ = fitted
    rec = Recommender(model)
    a = int(model.item_ids_[7])
    # int ids accept their decimal strings
    np.testing.assert_allclose(rec.predict_next([str(a)], k=5)[1], rec.predict_next([a], k=5)[1])
    np.testing.assert_allclose(rec.predict_next([np.int32(a)], k=5)[1],
                               rec.predict_next([a], k=5)[1])
    assert rec.index_of("x7") == -1
    # a model with string ids: ids come back as the same strings; ints find them by text
    smodel = SessionRNN.load(_save(model, tmp_path))
    smodel.item_ids_ = np.array([f"{x}" if i % 2 else f"item-{x}" for i, x in
                                 enumerate(model.item_ids_.tolist())], dtype=object)
    srec = Recommender(smodel)
    p = [smodel.item_ids_[3], smodel.item_ids_[8], smodel.item_ids_[8]]
    ids, sc = srec.predict_next(p, k=10)
    _ref_ids, ref_sc = smodel.recommend(p, k=10)
    assert all(isinstance(x, str) for x in ids.tolist())
    assert set(ids.tolist()) <= set(smodel.item_ids_.tolist())
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-6)
    _ids2, _sc2 = srec.recommend("s", smodel.item_ids_[3], k=10)
    odd = smodel.item_ids_[3]  # "x" string of an int: matched by an int too
    assert srec.index_of(int(odd)) == 3
    assert srec.index_of(f"item-{model.item_ids_[2]}") == 2


def _save(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    return path


# ---------------------------------------------------------------------------------------------------
# reduced precision
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_reduced_precision_overlap(model, prefixes, fitted, precision):
    rec = Recommender(model, precision=precision)
    ov = rec.overlap_at_k(prefixes, k=10)
    assert 0.9 <= ov <= 1.0
    _, data = fitted
    assert Recommender(model).overlap_at_k(data, k=10, precision=precision, max_prefixes=300) >= 0.9
    assert Recommender(model).overlap_at_k(prefixes, k=10) == 1.0
    # float32 recommenders score the exact float32 values (a packed copy of W_y, same numbers)
    from seqrec_fast import reference

    exact = Recommender(model)
    np.testing.assert_array_equal(reference.unpack_table(exact._table, model.n_items), model.W_y_)
    assert exact._scales is None
    ids, sc = rec.predict_next(prefixes[0], k=10)
    ref_ids, _ = model.recommend(prefixes[0], k=10)
    assert len(set(ids.tolist()) & set(ref_ids.tolist())) >= 8
    # stateful and stateless agree under reduced precision too
    for it in prefixes[0]:
        _sids, ssc = rec.recommend("q", it, k=10)
    np.testing.assert_allclose(ssc, sc, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="precision"):
        rec.overlap_at_k(prefixes, precision="fp8")


def test_num_threads_can_be_changed_after_construction(model, prefixes):
    """Setting ``num_threads`` on a live Recommender reaches the kernels (it used to stay on the
    engine's construction-time count); the answers do not depend on it."""
    rec = Recommender(model, num_threads=1)
    rec.num_threads = 2
    assert rec.num_threads == 2 and rec._engine.num_threads == 2
    one = Recommender(model, num_threads=1)
    for j, p in enumerate(prefixes[:10]):
        for x in p:
            a = rec.recommend(f"s{j}", x, k=10)
            b = one.recommend(f"s{j}", x, k=10)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-6)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_threads"):
            rec.num_threads = bad
    assert rec.num_threads == 2
