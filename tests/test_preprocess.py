"""Preprocessing steps, the RSC15 protocols, leave-one-out and statistics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from seqrec_fast.data import SessionData, load
from seqrec_fast.preprocess import (
    DAY,
    drop_unknown_items,
    filter_sessions_items,
    leave_one_out,
    prepare,
    remove_consecutive_duplicates,
    sessionize,
    split_by_time,
    stats,
    write_splits,
)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SEQREC_DATA_DIR", REPO.parent / "shared" / "data"))


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])


def random_log(seed: int = 0, n: int = 4000, days: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sess = rng.integers(0, 700, n)
    start = rng.uniform(0, days * DAY, 700)
    t = start[sess] + rng.uniform(0, 3600, n)
    items = (rng.zipf(1.6, n) % 300).astype(np.int64)
    return frame(list(zip(sess.tolist(), items.tolist(), t.tolist())))


def test_sessionize_by_idle_gap() -> None:
    df = frame(
        [("u1", 1, 0.0), ("u1", 2, 100.0), ("u1", 3, 5000.0), ("u2", 4, 50.0), ("u1", 5, 5100.0)]
    )
    out = sessionize(df, gap=1800)
    groups = out.groupby("SessionId")["ItemId"].apply(list).tolist()
    assert sorted(groups) == sorted([[1, 2], [3, 5], [4]])
    assert set(out["UserId"]) == {"u1", "u2"}
    with pytest.raises(ValueError, match="gap"):
        sessionize(df, gap=0)


def test_remove_consecutive_duplicates() -> None:
    df = frame(
        [(1, "a", 1), (1, "a", 2), (1, "b", 3), (1, "a", 4), (1, "a", 5), (2, "a", 1), (2, "a", 2)]
    )
    out = remove_consecutive_duplicates(df)
    assert out.groupby("SessionId")["ItemId"].apply(list).to_dict() == {
        1: ["a", "b", "a"],
        2: ["a"],
    }


def test_iterated_filter_reaches_fixpoint() -> None:
    df = random_log()
    out = filter_sessions_items(df, 5, 2, iterate=True)
    assert len(out) > 0
    assert out.groupby("ItemId").size().min() >= 5
    assert out.groupby("SessionId").size().min() >= 2
    # one pass need not reach the fixpoint but never keeps more than the input
    one = filter_sessions_items(df, 5, 2, iterate=False)
    assert len(out) <= len(one) <= len(df)
    assert one.groupby("SessionId").size().min() >= 2


def test_filter_cascade_by_hand() -> None:
    # item z has support 5 only thanks to session 9, which is too short once rare item q is removed
    rows = [(s, "z", s) for s in range(4)] + [(s, "y", s + 0.5) for s in range(4)]
    rows += [(9, "z", 10), (9, "q", 11)]
    df = frame(rows)
    out = filter_sessions_items(df, min_item_support=5, min_session_length=2, iterate=True)
    assert len(out) == 0  # q goes -> session 9 too short -> z support 4 -> everything goes
    one = filter_sessions_items(df, min_item_support=5, min_session_length=2, iterate=False)
    assert set(one["ItemId"]) == set()  # one pass: y has support 4, so sessions 0-3 become length 1


def test_split_by_session_end_time() -> None:
    df = frame(
        [
            (1, "a", 0.0),
            (1, "b", 10.0),
            (2, "a", 2 * DAY - 100),
            (2, "b", 2 * DAY + 100),
            (3, "a", 2.5 * DAY),
            (3, "c", 3 * DAY),
        ]
    )
    train, test = split_by_time(df, days=1, by="end")
    assert set(train["SessionId"]) == {1} and set(test["SessionId"]) == {2, 3}
    train_s, test_s = split_by_time(df, days=1, by="start")
    assert set(train_s["SessionId"]) == {1, 2} and set(test_s["SessionId"]) == {3}
    # sessions are never split
    for tr, te in ((train, test), (train_s, test_s)):
        assert not set(tr["SessionId"]) & set(te["SessionId"])


def test_drop_unknown_items() -> None:
    train = frame([(1, "a", 0), (1, "b", 1)])
    test = frame([(5, "a", 9), (5, "x", 10), (5, "b", 11), (6, "a", 9), (6, "x", 10)])
    out = drop_unknown_items(test, train)
    assert out.groupby("SessionId")["ItemId"].apply(list).to_dict() == {5: ["a", "b"]}


@pytest.mark.parametrize("protocol", ["rsc15-2015", "rsc15-2023"])
def test_rsc15_protocol_properties(protocol: str) -> None:
    df = random_log(1)
    sp = prepare(df, protocol, test_days=1, valid_days=1)
    assert set(sp) == {"train_full", "test", "train_tr", "train_valid"}
    tmax = df["Time"].max()
    train, test = sp["train_full"], sp["test"]
    assert len(train) and len(test)
    assert set(test["ItemId"]) <= set(train["ItemId"])
    assert set(sp["train_valid"]["ItemId"]) <= set(sp["train_tr"]["ItemId"])
    assert test.groupby("SessionId").size().min() >= 2
    assert test.groupby("SessionId")["Time"].max().min() >= tmax - DAY
    assert train.groupby("SessionId")["Time"].max().max() < tmax - DAY
    assert not set(train["SessionId"]) & set(test["SessionId"])
    # validation is carved out of train_full
    assert set(sp["train_tr"]["SessionId"]) | set(sp["train_valid"]["SessionId"]) <= set(
        train["SessionId"]
    )
    if protocol == "rsc15-2023":
        # official 2023 split: test = sessions starting in the last day; train = events before it
        assert train.groupby("SessionId").size().min() >= 2
        assert test.groupby("SessionId")["Time"].min().min() >= tmax - DAY
        assert train["Time"].max() < tmax - DAY


def test_rsc15_2023_removes_repeats_before_filtering_and_cuts_straddling_sessions() -> None:
    # items a..e have support >= 5 through sessions 10..14; session 1 has a repeat, session 2
    # straddles the test boundary, session 3 starts inside the last day
    rows = []
    for s in range(10, 15):
        rows += [(s, it, 100.0 * s + k) for k, it in enumerate("abcde")]
    t_end = 10 * DAY
    rows += [(1, "a", 5000.0), (1, "a", 5001.0), (1, "b", 5002.0)]
    rows += [(2, "c", t_end - DAY - 100), (2, "d", t_end - DAY - 50), (2, "e", t_end - 10)]
    rows += [(3, "a", t_end - 500), (3, "b", t_end)]
    sp = prepare(frame(rows), "rsc15-2023", test_days=1, valid_days=1)
    train, test = sp["train_full"], sp["test"]
    s1 = train[train["SessionId"] == 1]["ItemId"].tolist()
    assert s1 == ["a", "b"]  # the repeat was removed
    assert train[train["SessionId"] == 2]["ItemId"].tolist() == ["c", "d"]  # cut at the boundary
    assert set(test["SessionId"]) == {3}


def test_prepare_needs_times() -> None:
    with pytest.raises(ValueError, match="needs event times"):
        prepare(SessionData.from_sessions([[1, 2, 3]]), "rsc15-2015")
    with pytest.raises(ValueError, match="unknown protocol"):
        prepare(SessionData.from_sessions([[1, 2, 3]]), "rsc16")


def test_leave_one_out() -> None:
    d = SessionData.from_sessions([[1, 2, 3, 4], [5, 6], [7]])
    sp = leave_one_out(d)
    seq = {
        k: v.groupby("SessionId", sort=False)["ItemId"].apply(list).tolist() for k, v in sp.items()
    }
    assert seq["test"] == [[1, 2, 3, 4], [5, 6]]
    assert seq["train_full"] == [[1, 2, 3], [5], [7]]
    assert seq["train_valid"] == [[1, 2, 3]]
    assert seq["train_tr"] == [[1, 2], [5], [7]]


def test_write_splits_roundtrip(tmp_path: Path) -> None:
    sp = prepare(random_log(2), "rsc15-2023")
    paths = write_splits(sp, tmp_path, "x", gzip=True)
    for name, p in paths.items():
        assert p.endswith(f"x_{name}.tsv.gz")
        back = load(p)
        assert back.n_events == len(sp[name])
        assert back.n_sessions == sp[name]["SessionId"].nunique()


def test_stats_by_hand() -> None:
    d = SessionData.from_sessions([[1, 2, 3], [1], [2, 2]])
    st = stats(d)
    assert st["events"] == 6 and st["sessions"] == 3 and st["items"] == 3
    assert st["length_min"] == 1 and st["length_max"] == 3 and st["length_median"] == 2
    assert st["length_mean"] == pytest.approx(2.0) and st["sessions_len1"] == 1
    t = SessionData.from_sessions([[1, 2], [3]], times=[[0, 10], [2 * DAY]])
    st2 = stats(t)
    assert st2["time_span_days"] == pytest.approx(2.0)
    assert st2["time_start"].startswith("1970-01-01")


def test_shared_raw_sample_prepares() -> None:
    path = DATA_DIR / "raw_samples_srgtm" / "sample_yoochoose.csv"
    if not path.exists():
        pytest.skip(f"shared dataset {path} not found (set SEQREC_DATA_DIR)")
    sp = prepare(load(path), "rsc15-2015", min_item_support=2)
    assert set(sp["test"]["ItemId"]) <= set(sp["train_full"]["ItemId"])
    rr = DATA_DIR / "raw_samples_srgtm" / "sample_retailrocket.tsv"
    if rr.exists():
        # treat users as the log and cut sessions at 30 minutes of inactivity
        data = load(rr, session_key="user_id")
        sp2 = prepare(data, "rsc15-2023", session_gap=1800, min_item_support=2)
        assert len(sp2["train_full"]) > 0
        assert sp2["train_full"].groupby("SessionId").size().min() >= 2
