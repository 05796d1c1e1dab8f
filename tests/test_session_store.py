"""Session stores (serving/store.py, serving/redis_store.py) against a real redis-server: the
SessionStore contract for both stores, state bytes, the Recommender on Redis equal to the in-memory
one, no lost updates under concurrent writers, malformed bytes, model reload with replay, Redis faults."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from _redis_server import RedisServer
from seqrec_fast.io import load_model_file
from seqrec_fast.model import SessionRNN
from seqrec_fast.serving import (
    MalformedStateError,
    MemorySessionStore,
    Recommender,
    SessionState,
    SessionStore,
    StoreUnavailableError,
    model_fingerprint,
)
from seqrec_fast.serving.store import decode_state, encode_state
from seqrec_fast.synthetic import generate_sessions


def _fit(cell="gru", layers=(16,), seed=0, str_ids=False, n_epochs=2):
    data = generate_sessions(n_sessions=400, n_items=90, seed=1)
    model = SessionRNN(cell=cell, layers=list(layers), n_epochs=n_epochs, batch_size=16, n_sample=0,
                       learning_rate=0.1, seed=seed, progress=False, verbose=False, num_threads=1)
    model.fit(data)
    if str_ids:
        model.item_ids_ = np.array([f"it-{x}" for x in model.item_ids_.tolist()], dtype=object)
        model._item_map = None
    return model, data


@pytest.fixture(scope="module")
def model():
    return _fit()[0]


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server):
    if redis_server.proc is None:
        redis_server.start()
    redis_server.client().flushdb()
    return redis_server.url


def _sessions(model, n=12, length=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = model.item_ids_
    return {f"s{i}": [ids[j] for j in rng.integers(0, len(ids), size=rng.integers(1, length + 1))]
            for i in range(n)}


def _interleave(sessions: dict):
    """(session, item) events, sessions interleaved round-robin."""
    out, t = [], 0
    while True:
        step = [(s, items[t]) for s, items in sessions.items() if t < len(items)]
        if not step:
            return out
        out += step
        t += 1


# ---------------------------------------------------------------------------------------------------
# state value and bytes
# ---------------------------------------------------------------------------------------------------
def test_state_bytes_round_trip_and_malformed():
    rng = np.random.default_rng(0)
    h = (rng.standard_normal((1, 5)).astype(np.float32), rng.standard_normal((1, 3)).astype(np.float32))
    c = tuple(a * 2 for a in h)
    for cc, recent in ((None, np.array([7, -2, 10**12], np.int64)), (c, np.array(["a", "b é"], object)),
                       (c, np.zeros(0, np.int64))):
        st = SessionState("sha256:ab", h, cc, recent, 9)
        raw = encode_state(st)
        back = decode_state(raw, version=4)
        assert back.version == 4 and back.fingerprint == "sha256:ab" and back.n_events == 9
        for a, b in zip(back.h, h):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == np.float32 and a.shape == b.shape
        assert (back.c is None) == (cc is None)
        assert back.recent.tolist() == recent.tolist()
        # 40-odd bytes of header, 4 bytes per state float, 8 per remembered integer id
        floats = 4 * 8 * (2 if cc is not None else 1)
        if recent.dtype.kind == "i":
            assert len(raw) == 4 + 2 + len("sha256:ab") + 3 + 2 * 4 + 12 + floats + 8 * len(recent)
        for bad in (raw[:-1], raw[:20], b"XXXX" + raw[4:], raw + b"\0", b""):
            if recent.dtype.kind != "i" and bad == raw + b"\0":
                continue  # a JSON tail with a NUL is still rejected below
            with pytest.raises(MalformedStateError):
                decode_state(bad)


def test_fingerprint_is_the_model_file_checksum(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    _, header = load_model_file(path)
    assert model_fingerprint(model) == header["checksum"]
    assert Recommender(SessionRNN.load(path)).fingerprint == header["checksum"]


# ---------------------------------------------------------------------------------------------------
# the SessionStore contract, both stores
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return MemorySessionStore(max_sessions=100, ttl_seconds=0.3)
    from seqrec_fast.serving.redis_store import RedisSessionStore

    return RedisSessionStore(request.getfixturevalue("redis_url"), ttl_seconds=0.3)


def test_store_contract(store):
    assert isinstance(store, SessionStore)
    st = SessionState("fp", (np.ones((1, 3), np.float32),), None, np.array([4], np.int64), 1)
    assert store.get("a") is None
    assert store.compare_and_set("a", 5, st) is None  # does not exist: only version 0 matches
    v1 = store.compare_and_set("a", 0, st)
    assert v1 and store.get("a").version == v1
    assert store.compare_and_set("a", 0, st) is None  # exists now
    st2 = SessionState("fp", (np.full((1, 3), 2, np.float32),), None, np.array([4, 5], np.int64), 2)
    v2 = store.compare_and_set("a", v1, st2)
    assert v2 and v2 != v1
    assert store.compare_and_set("a", v1, st) is None  # stale version
    got = store.get("a")
    np.testing.assert_array_equal(got.h[0], st2.h[0])
    assert got.n_events == 2 and got.recent.tolist() == [4, 5]
    assert store.touch("a") is True and store.touch("zz") is False
    assert store.delete("a") is True and store.delete("a") is False
    # re-created after a delete: a fresh version, never the old one (no ABA)
    v3 = store.compare_and_set("a", 0, st)
    assert v3 not in (v1, v2)
    assert store.ping()
    # TTL: gone after ttl_seconds idle
    time.sleep(0.5)
    assert store.get("a") is None


# ---------------------------------------------------------------------------------------------------
# Recommender on Redis equals the in-memory Recommender
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,layers,str_ids,exclude_seen,cache", [
    ("gru", (16,), False, False, 0), ("lstm", (12, 8), True, True, 0),
    ("rnn", (10,), False, True, 0), ("gru", (16,), False, True, 64)])
def test_redis_recommender_equals_memory(redis_url, cell, layers, str_ids, exclude_seen, cache):
    """Two Recommenders on one Redis (two "processes"), events alternated between them; with
    local_cache every cached state is stale at its next use (the other process wrote since), so
    every event exercises the refused compare-and-set and the retry on a fresh read."""
    model, _ = _fit(cell, layers, str_ids=str_ids)
    url = redis_url + (f"?local_cache={cache}" if cache else "")
    mem = Recommender(model, exclude_seen=exclude_seen)
    red = Recommender(model, exclude_seen=exclude_seen, store=url)
    red2 = Recommender(model, exclude_seen=exclude_seen, store=url)  # a second "process"
    assert red.store.local_cache == cache
    events = _interleave(_sessions(model))
    for n, (sid, it) in enumerate(events):
        a = mem.recommend(sid, it, k=8)
        b = (red if n % 2 else red2).recommend(sid, it, k=8)
        np.testing.assert_array_equal(b[0], a[0])
        np.testing.assert_allclose(b[1], a[1], rtol=1e-6, atol=1e-6)
    # batches, with a session repeated, against sequential calls
    sids = ["s0", "s1", "s0", "new"]
    its = [model.item_ids_[3], model.item_ids_[4], model.item_ids_[5], model.item_ids_[6]]
    got = red.recommend_batch(sids, its, k=5)
    for (gi, gs), s, i in zip(got, sids, its):
        ei, es = mem.recommend(s, i, k=5)
        np.testing.assert_array_equal(gi, ei)
        np.testing.assert_allclose(gs, es, rtol=1e-6, atol=1e-6)
    assert red.store.get("s0").n_events == mem.store.get("s0").n_events
    assert red.reset("s1") and not red2.reset("s1")


@pytest.mark.parametrize("cache", [0, 16])
def test_concurrent_events_of_one_session_are_all_applied(redis_url, model, cache):
    """Two Recommenders (two clients, as two workers) and several threads hit one session at once:
    every event is applied once (no lost update); with one item every order gives the same state."""
    url = redis_url + (f"?local_cache={cache}" if cache else "")
    recs = [Recommender(model, store=url) for _ in range(2)]
    it = model.item_ids_[7]
    n_threads, n_each = 4, 15

    def work(t):
        for _ in range(n_each):
            recs[t % 2].recommend("hot", it, k=3)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = recs[0].store.get("hot")
    assert st.n_events == n_threads * n_each
    assert len(st.recent) == n_threads * n_each
    _ids, sc = recs[1].recommend("hot", it, k=5)
    np.testing.assert_allclose(sc, recs[0].predict_next([it] * (n_threads * n_each + 1), k=5)[1],
                               rtol=1e-4, atol=1e-5)


def test_local_cache_saves_the_read_and_never_serves_a_stale_state(redis_url, model):
    """local_cache: a session whose events stay in one process is read from the cache (one round
    trip per event); a write by another process makes the cached copy stale, and the next event is
    then recomputed on the fresh state (same answers as one in-memory Recommender)."""
    from seqrec_fast.serving.redis_store import RedisSessionStore

    store = RedisSessionStore(redis_url, local_cache=2)
    assert store.local_cache == 2 and "local_cache=2" in repr(store)
    mine = Recommender(model, store=store)
    other = Recommender(model, store=redis_url)
    mem = Recommender(model)
    ids = model.item_ids_
    seq = [("a", ids[1], mine), ("a", ids[2], mine), ("a", ids[3], other), ("a", ids[4], mine),
           ("b", ids[5], mine), ("c", ids[6], mine), ("d", ids[7], mine), ("b", ids[8], mine)]
    for sid, it, rec in seq:
        got, want = rec.recommend(sid, it, k=6), mem.recommend(sid, it, k=6)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)
    assert store.cache_hits >= 1  # a's second event came from the cache
    assert store.conflicts >= 1  # a's fourth event: the cached copy was stale
    assert len(store._cache) == 2  # bounded: the least recently used sessions were dropped
    assert store.get("a").n_events == 4
    st = store.stats()
    assert st["local_cache"] == 2 and st["cache_hits"] == store.cache_hits
    store.clear()
    assert len(store._cache) == 0
    for bad in ("-1", "x"):
        with pytest.raises(ValueError, match="local_cache"):
            RedisSessionStore(redis_url + f"?local_cache={bad}")
    with pytest.raises(ValueError, match="conflicts"):
        RedisSessionStore(redis_url + "?local_cache=3", local_cache=4)


def test_malformed_state_counts_as_missing(redis_url, model, caplog):
    rec = Recommender(model, store=redis_url)
    it = model.item_ids_[2]
    client = rec.store.client
    client.hset(rec.store.key("bad"), mapping={"v": 3, "s": b"garbage"})
    # a well-formed state of this model's fingerprint but another width
    wrong = SessionState(rec.fingerprint, (np.zeros((1, 5), np.float32),), None,
                         np.zeros(0, np.int64), 4)
    client.hset(rec.store.key("wide"), mapping={"v": 9, "s": encode_state(wrong)})
    with caplog.at_level(logging.WARNING, logger="seqrec_fast"):
        for sid in ("bad", "wide"):
            _ids, sc = rec.recommend(sid, it, k=5)
            np.testing.assert_allclose(sc, rec.predict_next([it], k=5)[1], rtol=1e-6)
            assert rec.store.get(sid).n_events == 1
    assert "malformed" in caplog.text
    assert rec.store.malformed == 1 and rec.malformed == 1


# ---------------------------------------------------------------------------------------------------
# model reload: sessions survive, states of the old model are replayed through the new one
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_reload_replays_sessions(request, backend, model):
    other, _ = _fit(seed=5, n_epochs=1)
    assert model_fingerprint(other) != model_fingerprint(model)
    store = request.getfixturevalue("redis_url") if backend == "redis" else None
    rec = Recommender(model, store=store, exclude_seen=True)
    sessions = _sessions(model, n=5, length=5, seed=3)
    for sid, it in _interleave(sessions):
        rec.recommend(sid, it, k=5)
    assert rec.reload(other) == model_fingerprint(other)
    extra = model.item_ids_[11]
    for sid, items in sessions.items():
        ids, sc = rec.recommend(sid, extra, k=6)
        ref_ids, ref_sc = rec.predict_next(items + [extra], k=6, exclude_seen=True)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-6)
        st = rec.store.get(sid)
        assert st.fingerprint == rec.fingerprint and st.n_events == len(items) + 1
    assert rec.rebuilt == len(sessions)


# ---------------------------------------------------------------------------------------------------
# faults: Redis stops and comes back
# ---------------------------------------------------------------------------------------------------
def test_redis_outage_and_recovery(redis_server, redis_url, model):
    rec = Recommender(model, store=redis_url)
    it = model.item_ids_[1]
    rec.recommend("x", it, k=5)
    redis_server.stop()
    try:
        assert rec.store.ping() is False
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            rec.recommend("x", it, k=5)
        with pytest.raises(StoreUnavailableError):
            rec.reset("x")
        assert rec.stats()["available"] is False
        # stateless scoring does not need the store
        assert len(rec.predict_next([it, model.item_ids_[2]], k=5)[0]) == 5
    finally:
        redis_server.start()
    # the same client reconnects by itself; the restarted (empty) Redis lost "x": a new session
    _ids, sc = rec.recommend("x", it, k=5)
    np.testing.assert_allclose(sc, rec.predict_next([it], k=5)[1], rtol=1e-6)
    assert rec.store.ping()


def test_store_argument_errors(model):
    with pytest.raises(ValueError, match="store must be"):
        Recommender(model, store="mysql://x")
    with pytest.raises(TypeError, match="lacks SessionStore"):
        Recommender(model, store=object())
    with pytest.raises(ValueError, match="not a Redis URL"):
        from seqrec_fast.serving.redis_store import RedisSessionStore

        RedisSessionStore("http://x")
