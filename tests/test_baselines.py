"""Baselines on small hand-checked cases, the scorer protocol, and a structural quality check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from seqrec_fast.baselines import BASELINES, SKNN, VSKNN, ItemKNN, SequentialRules, get_baseline
from seqrec_fast.data import SessionData
from seqrec_fast.evaluate import NextItemScorer, evaluate


def train_of(sessions: list[list[str]]) -> SessionData:
    return SessionData.from_sessions(sessions)


def scores_after(model, data: SessionData, session: list[str]) -> dict[str, float]:
    """Feed ``session`` into slot 0 and return the final scores by external id."""
    model.start(2)
    model.reset(np.array([0], dtype=np.int64))
    idx = data.item_to_index(session)
    for i in idx:
        out = model.score(np.array([0], dtype=np.int64), np.array([i], dtype=np.int32))
    assert out.shape == (1, data.n_items)
    return {data.item_ids[j]: float(out[0, j]) for j in range(data.n_items)}


def test_registry_and_contract() -> None:
    train = train_of([["a", "b"], ["b", "c"]])
    for name in ("pop", "spop", "itemknn", "sr", "sknn", "vsknn"):
        model = get_baseline(name)
        assert model.fit(train) is model
        assert isinstance(model, NextItemScorer)
        assert model.n_items == train.n_items
        params = model.get_params()
        assert model.set_params(**params) is model
    assert set(BASELINES) == {"pop", "spop", "itemknn", "sr", "sknn", "vsknn"}
    with pytest.raises(ValueError, match="unknown baseline 'knn'"):
        get_baseline("knn")
    with pytest.raises(ValueError, match="no parameter"):
        get_baseline("sr", k=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        get_baseline("pop").start(3)
    with pytest.raises(TypeError, match="SessionData"):
        get_baseline("pop").fit([[1, 2]])
    with pytest.raises(ValueError, match="steps"):
        get_baseline("sr", steps=0).fit(train)


def test_popularity() -> None:
    train = train_of([["a", "b"], ["b", "c"], ["b"]])
    s = scores_after(get_baseline("pop").fit(train), train, ["c"])
    assert s["b"] > s["a"] == s["c"]


def test_session_popularity_boosts_session_items() -> None:
    train = train_of([["a", "b"], ["b", "c"], ["b", "d"]])
    s = scores_after(get_baseline("spop").fit(train), train, ["c", "a", "c"])
    # c twice in session > a once in session > b (most popular overall) > d
    assert s["c"] > s["a"] > s["b"] > s["d"]


def test_item_knn_by_hand() -> None:
    train = train_of([["a", "b"], ["a", "b"], ["a", "c"]])
    model = ItemKNN(lmbd=0.0, alpha=0.5).fit(train)
    s = scores_after(model, train, ["a"])
    # co-occurrence a-b = 2, a-c = 1; supports a=3, b=2, c=1
    assert s["b"] == pytest.approx(2 / math.sqrt(3 * 2), rel=1e-6)
    assert s["c"] == pytest.approx(1 / math.sqrt(3 * 1), rel=1e-6)
    assert s["a"] == 0.0  # no self-similarity
    # lambda shrinks rarely seen items more: with lmbd=20, b overtakes by a larger margin
    s20 = scores_after(ItemKNN(lmbd=20.0).fit(train), train, ["a"])
    assert s20["b"] == pytest.approx(2 / math.sqrt(23 * 22), rel=1e-6)
    # only the last item matters
    assert scores_after(model, train, ["c", "a"]) == s
    # pruning keeps the strongest neighbour
    s1 = scores_after(ItemKNN(n_sims=1, lmbd=0.0).fit(train), train, ["a"])
    assert s1["b"] > 0 and s1["c"] == 0


def test_sequential_rules_by_hand() -> None:
    train = train_of([["a", "b", "c"], ["a", "c"]])
    model = SequentialRules(steps=10, pruning=0).fit(train)
    s = scores_after(model, train, ["a"])
    # a->b: 1 (d=1); a->c: 1/2 (d=2 in s0) + 1 (d=1 in s1)
    assert s["b"] == pytest.approx(1.0) and s["c"] == pytest.approx(1.5) and s["a"] == 0.0
    # steps=1 keeps only adjacent pairs
    s1 = scores_after(SequentialRules(steps=1, pruning=0).fit(train), train, ["a"])
    assert s1["c"] == pytest.approx(1.0)
    # rules are directional
    assert scores_after(model, train, ["c"]) == {k: 0.0 for k in s}
    # pruning=1 keeps only the strongest rule of a
    sp = scores_after(SequentialRules(pruning=1).fit(train), train, ["a"])
    assert sp["c"] == pytest.approx(1.5) and sp["b"] == 0.0


def test_sknn_by_hand() -> None:
    train = train_of([["a", "b"], ["a", "c", "d"], ["e", "f"]])
    s = scores_after(SKNN(k=10, sample_size=0).fit(train), train, ["a"])
    sim0, sim1 = 1 / math.sqrt(1 * 2), 1 / math.sqrt(1 * 3)
    assert (
        s["b"] == pytest.approx(sim0)
        and s["c"] == pytest.approx(sim1)
        and s["d"] == pytest.approx(sim1)
    )
    assert s["a"] == pytest.approx(sim0 + sim1) and s["e"] == 0.0 and s["f"] == 0.0
    # k=1: only the most similar neighbour votes
    s1 = scores_after(SKNN(k=1, sample_size=0).fit(train), train, ["a"])
    assert s1["b"] == pytest.approx(sim0) and s1["c"] == 0.0
    # sample_size=1: only the most recent session sharing an item is a candidate (session 1)
    ss = scores_after(SKNN(k=10, sample_size=1).fit(train), train, ["a"])
    assert ss["b"] == 0.0 and ss["c"] == pytest.approx(sim1)


def test_sknn_recency_uses_times() -> None:
    # with times, session ["a","b"] is the most recent one although it comes first in the list
    train = SessionData.from_sessions([["a", "c"], ["a", "b"]], times=[[5, 6], [1, 2]])
    assert train.session_ids.tolist() == [1, 0]  # reordered by first time
    ss = scores_after(SKNN(k=10, sample_size=1).fit(train), train, ["a"])
    assert ss["c"] > 0 and ss["b"] == 0.0


def test_vsknn_by_hand() -> None:
    train = train_of([["a", "b"], ["a", "c", "d"], ["e", "f"]])
    s = scores_after(VSKNN(k=10, sample_size=0).fit(train), train, ["a", "c"])
    # weights: c (most recent) 1.0, a 0.9; sim = weighted overlap / |A| with |A| = 2
    sim0, sim1 = 0.9 / 2, (0.9 + 1.0) / 2
    assert s["b"] == pytest.approx(sim0) and s["d"] == pytest.approx(sim1)
    assert s["a"] == pytest.approx(sim0 + sim1) and s["e"] == 0.0


def test_slots_are_independent_and_reset() -> None:
    train = train_of([["a", "b", "c"], ["c", "a"], ["b", "c", "a"]])
    for name in BASELINES:
        model = get_baseline(name).fit(train)
        alone = scores_after(model, train, ["b", "c"])
        model.start(3)
        model.reset(np.arange(3, dtype=np.int64))
        ids = train.item_to_index(["a", "b", "c"])
        model.score(np.array([0, 1], dtype=np.int64), np.array([ids[0], ids[1]], dtype=np.int32))
        out = model.score(np.array([1], dtype=np.int64), np.array([ids[2]], dtype=np.int32))
        got = {train.item_ids[j]: float(out[0, j]) for j in range(train.n_items)}
        assert got == pytest.approx(alone), name
        model.reset(np.array([1], dtype=np.int64))
        model.score(np.array([1], dtype=np.int64), np.array([ids[1]], dtype=np.int32))
        out = model.score(np.array([1], dtype=np.int64), np.array([ids[2]], dtype=np.int32))
        assert {train.item_ids[j]: float(out[0, j]) for j in range(train.n_items)} == pytest.approx(
            alone
        )


def test_score_validates_items() -> None:
    train = train_of([["a", "b"]])
    model = get_baseline("sr").fit(train)
    model.start(1)
    model.reset(np.array([0]))
    with pytest.raises(ValueError, match="items must lie"):
        model.score(np.array([0]), np.array([5], dtype=np.int32))


def synthetic_chains(
    rng: np.random.Generator, succ: np.ndarray, n_sessions: int
) -> list[list[int]]:
    """Sessions following the successor function ``succ`` with 10% noise towards a few popular items."""
    n_items = succ.size
    out = []
    for _ in range(n_sessions):
        x = int(rng.integers(n_items))
        s = [x]
        for _ in range(int(rng.integers(2, 7))):
            x = int(succ[x]) if rng.random() > 0.1 else int(rng.integers(5))
            s.append(x)
        out.append(s)
    return out


def test_sequence_aware_baselines_beat_popularity_on_chains() -> None:
    rng = np.random.default_rng(0)
    succ = rng.permutation(60)
    train = SessionData.from_sessions(synthetic_chains(rng, succ, 800))
    test = SessionData.from_sessions(
        synthetic_chains(rng, succ, 200), item_map=train, keep_unknown=True
    )
    res = {
        name: evaluate(get_baseline(name).fit(train), test, cutoffs=[5]).metrics["recall@5"]
        for name in BASELINES
    }
    for name in ("itemknn", "sr", "sknn", "vsknn"):
        assert res[name] > res["pop"] + 0.3, res
    # the successor rule is recovered: SR nearly always has the next item in its top 5
    assert res["sr"] > 0.8
