"""The synthetic click log: determinism, structure (popularity, lengths, time axis, ids), learnability."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from seqrec_fast.baselines import get_baseline
from seqrec_fast.data import SessionData
from seqrec_fast.evaluate import evaluate
from seqrec_fast.preprocess import prepare
from seqrec_fast.synthetic import DEFAULT_START_TIME, generate_frame, generate_sessions

SMALL = {"n_sessions": 3000, "n_items": 700}


@pytest.fixture(scope="module")
def log() -> SessionData:
    return generate_sessions(n_sessions=6000, n_items=1200, seed=7)


def test_same_seed_same_log() -> None:
    a = generate_sessions(**SMALL, seed=3)
    b = generate_sessions(**SMALL, seed=3)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)


def test_different_seeds_differ() -> None:
    a = generate_sessions(**SMALL, seed=0)
    b = generate_sessions(**SMALL, seed=1)
    n = min(a.n_events, b.n_events)
    assert not np.array_equal(a.offsets, b.offsets)
    # two independent logs agree on only a small fraction of events position by position
    assert np.mean(a.items[:n] == b.items[:n]) < 0.2
    assert not np.array_equal(a.times[:n], b.times[:n])


def test_sizes_and_ids(log: SessionData) -> None:
    assert log.n_sessions == 6000
    assert log.n_items == 1200
    assert log.items.dtype == np.int32 and log.offsets.dtype == np.int64
    assert log.items.min() >= 0 and log.items.max() < 1200
    ids = log.item_ids
    assert ids.dtype.kind == "i" and np.unique(ids).size == ids.size
    assert set(ids.tolist()) == set(range(1, 1201))
    assert np.unique(log.session_ids).size == log.n_sessions
    # almost the whole catalogue is clicked
    assert np.count_nonzero(log.item_support()) > 0.95 * log.n_items


def test_session_lengths(log: SessionData) -> None:
    lengths = log.session_lengths
    assert lengths.min() >= 2
    assert lengths.max() <= 50
    assert 4.5 < lengths.mean() < 5.5  # default mean_length 5
    # geometric-like: many short sessions, a long tail
    assert np.mean(lengths == 2) > 0.15
    assert np.mean(lengths >= 10) > 0.05
    short = generate_sessions(**SMALL, mean_length=2.0, max_length=3)
    assert set(np.unique(short.session_lengths).tolist()) <= {2, 3}
    assert short.session_lengths.mean() == pytest.approx(2.0, abs=0.05)


def test_zipf_like_popularity(log: SessionData) -> None:
    supp = np.sort(log.item_support())[::-1].astype(np.float64)
    share = supp / supp.sum()
    # heavy head: the top 10% of items take far more than 10% of the clicks, the bottom half little
    assert share[: supp.size // 10].sum() > 0.35
    assert share[supp.size // 2 :].sum() < 0.25
    # log-log rank-frequency is close to a straight line with a negative slope
    top = supp[: supp.size // 2]
    x, y = np.log(np.arange(1, top.size + 1)), np.log(top)
    slope = np.polyfit(x, y, 1)[0]
    assert -1.5 < slope < -0.4
    assert np.corrcoef(x, y)[0, 1] < -0.95


def test_time_axis(log: SessionData) -> None:
    t = log.times
    sess = log.session_index()
    same = sess[1:] == sess[:-1]
    gaps = np.diff(t)[same]
    assert np.all(gaps >= 1.0) and np.all(gaps <= 1800.0)  # strictly increasing within sessions
    assert 10 < np.median(gaps) < 90  # seconds to minutes
    starts = t[log.offsets[:-1]]
    assert np.all(np.diff(starts) >= 0)  # sessions ordered by start time
    assert starts.min() >= DEFAULT_START_TIME
    assert starts.max() < DEFAULT_START_TIME + 8 * 86400
    assert (starts.max() - starts.min()) / 86400 > 7.5  # spans the 8 days
    # every day has sessions, and nights are quieter than evenings
    days = ((starts - DEFAULT_START_TIME) // 86400).astype(int)
    assert np.bincount(days, minlength=8).min() > 0.08 * log.n_sessions
    hours = np.array([dt.datetime.fromtimestamp(s, tz=dt.timezone.utc).hour for s in starts[::5]])
    assert np.sum((hours >= 1) & (hours < 5)) * 3 < np.sum((hours >= 18) & (hours < 22))


def test_custom_time_origin() -> None:
    d = generate_sessions(**SMALL, n_days=3, start_time=0.0, median_gap=5.0)
    starts = d.times[d.offsets[:-1]]
    assert starts.min() >= 0 and starts.max() < 3 * 86400
    sess = d.session_index()
    assert np.median(np.diff(d.times)[sess[1:] == sess[:-1]]) < 15


def test_generate_frame_matches_sessions() -> None:
    df = generate_frame(**SMALL, seed=2)
    d = generate_sessions(**SMALL, seed=2)
    assert list(df.columns) == ["SessionId", "ItemId", "Time"]
    assert len(df) == d.n_events
    np.testing.assert_array_equal(df["ItemId"].to_numpy(), d.item_ids[d.items])
    np.testing.assert_array_equal(df["Time"].to_numpy(), d.times)
    # round trip through the GRU4Rec layout keeps the sessions
    back = SessionData.from_events(df["SessionId"], df["ItemId"], df["Time"])
    np.testing.assert_array_equal(back.offsets, d.offsets)
    np.testing.assert_array_equal(back.item_ids[back.items], d.item_ids[d.items])
    assert isinstance(df, pd.DataFrame)


def test_topical_transitions(log: SessionData) -> None:
    """Next items are concentrated: each frequent item has few dominant successors."""
    sess = log.session_index()
    same = sess[1:] == sess[:-1]
    a, b = log.items[:-1][same].astype(np.int64), log.items[1:][same].astype(np.int64)
    pairs = pd.DataFrame({"a": a, "b": b}).value_counts()
    per_item = pairs.groupby(level="a").agg(
        ["sum", lambda c: np.sort(c.to_numpy())[::-1][:5].sum()]
    )
    per_item.columns = ["n", "top5"]
    frequent = per_item[per_item["n"] >= 30]
    assert len(frequent) > 50
    # under a uniform next item the top 5 of >= 30 transitions would be a small share
    assert (frequent["top5"] / frequent["n"]).median() > 0.5


def test_sequential_baselines_beat_popularity() -> None:
    d = generate_sessions(n_sessions=5000, n_items=1000, seed=11)
    splits = prepare(d, "rsc15-2023", test_days=1)
    tr, te = splits["train_full"], splits["test"]
    train = SessionData.from_events(tr["SessionId"], tr["ItemId"], tr["Time"])
    test = SessionData.from_events(
        te["SessionId"], te["ItemId"], te["Time"], item_map=train, keep_unknown=True
    )
    assert test.n_sessions > 200
    res = {}
    for name in ("pop", "sr", "itemknn"):
        m = get_baseline(name).fit(train)
        res[name] = evaluate(m, test, cutoffs=(20,), tie_mode="conservative").metrics
    for name in ("sr", "itemknn"):
        assert res[name]["recall@20"] > 3 * res["pop"]["recall@20"]
        assert res[name]["mrr@20"] > 4 * res["pop"]["mrr@20"]
        assert res[name]["recall@20"] > 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_items": 1},
        {"n_sessions": 0},
        {"mean_length": 1.5},
        {"p_popular": 0.6, "p_switch": 0.3, "p_repeat": 0.2},
        {"p_repeat": -0.1},
        {"zipf_exponent": 0},
        {"seed": -1},
        {"n_days": 0},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    args = {**SMALL, **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        generate_sessions(**args)


def test_tiny_catalogue() -> None:
    d = generate_sessions(n_sessions=50, n_items=2, seed=0)
    assert d.session_lengths.min() >= 2
    assert set(np.unique(d.items).tolist()) <= {0, 1}
