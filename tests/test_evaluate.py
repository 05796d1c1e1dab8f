"""Evaluation harness and metrics, checked against a brute-force NumPy oracle (ties included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqrec_fast.data import SessionData
from seqrec_fast.evaluate import EvalResult, NextItemScorer, evaluate
from seqrec_fast.metrics import metrics_from_ranks, rank_counts, ranks_from_counts

N_ITEMS = 11


def prefix_scores(prefix: list[int], n_items: int = N_ITEMS) -> np.ndarray:
    """Scores that depend on the whole session prefix, coarse integers so that ties are frequent."""
    j = np.arange(n_items)
    last, first, length = prefix[-1], prefix[0], len(prefix)
    return ((3 * last + 5 * j + 2 * first + length * (j % 3)) % 5).astype(np.float32)


class PrefixScorer:
    """Reference scorer keeping explicit per-slot histories."""

    def __init__(self, n_items: int = N_ITEMS) -> None:
        self.n_items = n_items
        self.calls: list[tuple[int, list[int]]] = []

    def start(self, n_slots: int) -> None:
        self.hist: list[list[int] | None] = [None] * n_slots

    def reset(self, slots: np.ndarray) -> None:
        assert slots.dtype == np.int64
        for s in slots:
            self.hist[s] = []

    def score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        assert slots.dtype == np.int64 and items.dtype == np.int32
        out = np.empty((slots.size, self.n_items), dtype=np.float32)
        for r, (s, i) in enumerate(zip(slots.tolist(), items.tolist())):
            assert self.hist[s] is not None, "score before reset"
            self.hist[s].append(i)
            self.calls.append((s, list(self.hist[s])))
            out[r] = prefix_scores(self.hist[s], self.n_items)
        return out


def oracle_rank(scores: np.ndarray, target: int, tie_mode: str) -> float:
    """Rank by a full stable sort: conservative puts tied items first, standard puts the target first."""
    is_t = np.zeros(scores.size, dtype=bool)
    is_t[target] = True
    cons = int(np.flatnonzero(is_t[np.lexsort((is_t, -scores))])[0]) + 1
    std = int(np.flatnonzero(is_t[np.lexsort((~is_t, -scores))])[0]) + 1
    return {"conservative": cons, "standard": std, "median": (cons + std) / 2}[tie_mode]


def oracle_metrics(
    sessions: list[list[int]], tie_mode: str, cutoffs: list[int]
) -> dict[str, float]:
    ranks = []
    for s in sessions:
        for k in range(1, len(s)):
            ranks.append(oracle_rank(prefix_scores(s[:k]), s[k], tie_mode))
    out = {}
    n = len(ranks)
    for c in cutoffs:
        hits = [r for r in ranks if r <= c]
        out[f"recall@{c}"] = len(hits) / n
        out[f"hitrate@{c}"] = len(hits) / n
        out[f"mrr@{c}"] = sum(1 / r for r in hits) / n
        out[f"ndcg@{c}"] = sum(1 / math.log2(r + 1) for r in hits) / n
    return out


def make_test(sessions: list[list[int]]) -> SessionData:
    return SessionData.from_sessions(sessions, item_map=np.arange(N_ITEMS))


def random_sessions(rng: np.random.Generator, n: int) -> list[list[int]]:
    return [rng.integers(0, N_ITEMS, rng.integers(1, 9)).tolist() for _ in range(n)]


def test_scorer_protocol_is_runtime_checkable() -> None:
    assert isinstance(PrefixScorer(), NextItemScorer)


@pytest.mark.parametrize("tie_mode", ["conservative", "standard", "median"])
@pytest.mark.parametrize("batch_size", [1, 3, 512])
def test_evaluate_matches_oracle(tie_mode: str, batch_size: int) -> None:
    rng = np.random.default_rng(7)
    sessions = random_sessions(rng, 40)
    cutoffs = [1, 2, 5, 20]
    res = evaluate(
        PrefixScorer(),
        make_test(sessions),
        cutoffs=cutoffs,
        tie_mode=tie_mode,
        batch_size=batch_size,
    )
    expected = oracle_metrics(sessions, tie_mode, cutoffs)
    assert res.n_events == sum(len(s) - 1 for s in sessions)
    assert res.n_dropped == 0
    for k, v in expected.items():
        assert res.metrics[k] == pytest.approx(v, abs=1e-12), k


def test_each_session_is_fed_in_order_from_a_reset_state() -> None:
    rng = np.random.default_rng(3)
    sessions = random_sessions(rng, 25)
    scorer = PrefixScorer()
    evaluate(scorer, make_test(sessions), batch_size=4)
    # every prefix s[:k], k = 1..len-1, of every session of length >= 2 is scored exactly once
    fed = sorted(tuple(p) for _, p in scorer.calls)
    want = sorted(tuple(s[:k]) for s in sessions if len(s) >= 2 for k in range(1, len(s)))
    assert fed == want
    assert max(slot for slot, _ in scorer.calls) < 4


def test_result_keys_and_counts() -> None:
    res = evaluate(PrefixScorer(), make_test([[1, 2, 3], [4, 5]]), cutoffs=[20, 5])
    d = res.to_dict()
    for k in (5, 20):
        for m in ("recall", "mrr", "ndcg", "hitrate"):
            assert f"{m}@{k}" in d
    assert d["n_events"] == 3 and d["n_dropped"] == 0
    assert isinstance(res, EvalResult)
    assert res.metrics["hitrate@20"] == res.metrics["recall@20"]
    assert sum(v["n"] for v in res.by_position.values()) == 3
    assert res.by_position["1"]["n"] == 2 and res.by_position["2"]["n"] == 1
    assert "recall@20" in res.format_table() or "@20" in res.format_table()


def _mapped(sessions: list[list[str]], train_ids: list[str]) -> SessionData:
    raw = SessionData.from_sessions(sessions)
    return raw.with_item_map(np.array(train_ids, dtype=object), keep_unknown=True)


def test_unknown_targets_drop_vs_miss() -> None:
    ids = [str(i) for i in range(N_ITEMS)]
    # "x" is unknown to training
    sessions = [["1", "x", "2", "3"], ["x", "4", "5"], ["6", "x"], ["7", "8"]]
    test = _mapped(sessions, ids)
    assert test.n_unknown == 3 and test.has_unknown

    drop = evaluate(PrefixScorer(), test, cutoffs=[1, 20])
    # dropping x: [1,2,3] -> 2 predictions, [4,5] -> 1, [6] -> 0, [7,8] -> 1
    assert drop.n_events == 4 and drop.n_dropped == 3
    want = oracle_metrics([[1, 2, 3], [4, 5], [6], [7, 8]], "conservative", [1, 20])
    for k, v in want.items():
        assert drop.metrics[k] == pytest.approx(v)

    scorer = PrefixScorer()
    miss = evaluate(scorer, test, cutoffs=[1, 20], unknown_targets="miss")
    # every event after the first of the original sessions: 3 + 2 + 1 + 1
    assert miss.n_events == 7 and miss.n_dropped == 0
    # misses: x in s0, 4 in s1 (no known input before it), x in s2
    assert miss.n_unknown_targets == 3 and miss.n_scored == 4
    # unknown inputs are skipped: after [1, x] the model has only seen [1] when predicting 2
    assert sorted(tuple(p) for _, p in scorer.calls) == sorted([(1,), (1, 2), (4,), (7,)])
    assert miss.metrics["recall@20"] == pytest.approx(drop.metrics["recall@20"] * 4 / 7)


def test_miss_mode_needs_kept_unknowns() -> None:
    raw = SessionData.from_sessions([["1", "x", "2"]])
    dropped = raw.with_item_map(np.array([str(i) for i in range(N_ITEMS)], dtype=object))
    assert dropped.n_unknown == 1 and not dropped.has_unknown
    res = evaluate(PrefixScorer(), dropped)
    assert res.n_dropped == 1 and res.n_events == 1
    with pytest.raises(ValueError, match="keep_unknown"):
        evaluate(PrefixScorer(), dropped, unknown_targets="miss")


def test_targets_last_only_scores_last_event() -> None:
    sessions = [[1, 2, 3, 4], [5, 6], [7]]
    res = evaluate(PrefixScorer(), make_test(sessions), targets="last", cutoffs=[3])
    assert res.n_events == 2
    ranks = [
        oracle_rank(prefix_scores([1, 2, 3]), 4, "conservative"),
        oracle_rank(prefix_scores([5]), 6, "conservative"),
    ]
    assert res.metrics["recall@3"] == pytest.approx(sum(r <= 3 for r in ranks) / 2)


def test_evaluate_validates_inputs() -> None:
    test = make_test([[1, 2]])
    with pytest.raises(ValueError, match="n_items"):
        evaluate(PrefixScorer(n_items=5), test)
    with pytest.raises(ValueError, match="tie_mode"):
        evaluate(PrefixScorer(), test, tie_mode="optimistic")
    with pytest.raises(ValueError, match="unknown_targets"):
        evaluate(PrefixScorer(), test, unknown_targets="ignore")
    with pytest.raises(ValueError, match="cutoffs"):
        evaluate(PrefixScorer(), test, cutoffs=[0])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(PrefixScorer(), test, batch_size=0)

    class BadShape(PrefixScorer):
        def score(self, slots, items):
            return super().score(slots, items)[:, :3]

    with pytest.raises(ValueError, match="expected"):
        evaluate(BadShape(), test)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_rank_counts_matches_sort_oracle(b: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(b, n)).astype(np.float32)
    targets = rng.integers(0, n, size=b)
    gt, ge = rank_counts(scores, scores[np.arange(b), targets])
    for mode in ("conservative", "standard", "median"):
        got = ranks_from_counts(gt, ge, mode)
        want = [oracle_rank(scores[i], int(targets[i]), mode) for i in range(b)]
        np.testing.assert_array_equal(got, want)


def test_rank_counts_nan_target_is_worst() -> None:
    scores = np.array([[0.5, np.nan, 0.1]], dtype=np.float32)
    gt, ge = rank_counts(scores, scores[:, 1])
    assert gt[0] == 3 and ge[0] == 3


def test_metrics_from_ranks_by_hand() -> None:
    m = metrics_from_ranks(np.array([1.0, 2.0, np.inf, 30.0]), [1, 20])
    assert m["recall@20"] == pytest.approx(0.5)
    assert m["mrr@20"] == pytest.approx((1 + 0.5) / 4)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["recall@1"] == pytest.approx(0.25) and m["mrr@1"] == pytest.approx(0.25)
    assert metrics_from_ranks(np.zeros(0), [5])["recall@5"] == 0.0


def test_ranks_from_counts_modes() -> None:
    gt, ge = (
        np.array([0, 2]),
        np.array([3, 2]),
    )  # ge < gt + 1 cannot happen when the target is counted
    np.testing.assert_array_equal(ranks_from_counts(gt, ge, "standard"), [1, 3])
    np.testing.assert_array_equal(ranks_from_counts(gt, ge, "conservative"), [3, 3])
    np.testing.assert_array_equal(ranks_from_counts(gt, ge, "median"), [2, 3])
    with pytest.raises(ValueError):
        ranks_from_counts(gt, ge, "best")


@pytest.mark.parametrize("min_prefix", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 5, 512])
def test_min_prefix_matches_oracle(min_prefix: int, batch_size: int) -> None:
    """min_prefix=m counts the targets with at least m events before them; earlier events are only fed."""
    rng = np.random.default_rng(17)
    sessions = random_sessions(rng, 50)
    cutoffs = [1, 3, 20]
    scorer = PrefixScorer()
    res = evaluate(scorer, make_test(sessions), cutoffs=cutoffs, batch_size=batch_size,
                   min_prefix=min_prefix)
    ranks = [oracle_rank(prefix_scores(s[:k]), s[k], "conservative")
             for s in sessions for k in range(min_prefix, len(s))]
    assert res.n_events == len(ranks) == sum(max(len(s) - min_prefix, 0) for s in sessions)
    for c in cutoffs:
        hits = [r for r in ranks if r <= c]
        assert res.metrics[f"recall@{c}"] == pytest.approx(len(hits) / len(ranks), abs=1e-12)
        assert res.metrics[f"mrr@{c}"] == pytest.approx(sum(1 / r for r in hits) / len(ranks),
                                                        abs=1e-12)
    assert min(int(k.rstrip("+")) for k in res.by_position) == min_prefix
    assert res.to_dict()["min_prefix"] == min_prefix


def test_min_prefix_with_unknown_items() -> None:
    """Unknown items: "miss" counts original positions >= m (an unknown target there is a miss);
    "drop" counts positions after the unknown events are removed."""
    train_ids = [str(i) for i in range(N_ITEMS)]
    sessions = [["1", "x", "2", "3"], ["x", "4", "5"], ["6", "7"], ["8", "9", "x"]]
    test = _mapped(sessions, train_ids)
    miss = evaluate(PrefixScorer(), test, unknown_targets="miss", min_prefix=2, cutoffs=[20])
    assert miss.n_events == 2 + 1 + 0 + 1  # positions >= 2 of the original sessions
    drop = evaluate(PrefixScorer(), test, unknown_targets="drop", min_prefix=2, cutoffs=[20])
    assert drop.n_events == 1 + 0 + 0 + 0  # [1, 2, 3] -> one target at position 2
    assert drop.metrics["recall@20"] == 1.0  # 11 items, cut-off 20: every scored target is a hit


def test_min_prefix_errors() -> None:
    test = make_test([[1, 2, 3]])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="min_prefix"):
            evaluate(PrefixScorer(), test, min_prefix=bad)
    with pytest.raises(ValueError, match="min_prefix applies to targets='all'"):
        evaluate(PrefixScorer(), test, targets="last", min_prefix=2)
