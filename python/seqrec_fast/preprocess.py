"""Preprocessing protocols: the GRU4Rec RSC15 protocols (2015 and 2023), leave-one-out, statistics.

All steps work on an event DataFrame with columns ``SessionId``, ``ItemId`` (external ids) and ``Time``
(unix seconds), as produced by :meth:`SessionData.to_frame`, and are vectorised with pandas / NumPy.

Protocols (``D`` = ``test_days``, one day = 86,400 s):

``rsc15-2015`` -- the preprocessing of the original GRU4Rec code (Hidasi et al., ICLR 2016):
  1. drop sessions of length 1; 2. drop items with support < 5; 3. drop sessions shorter than 2
  (one pass each, not iterated); 4. time split: a session goes to test when its *end* time (last event)
  lies in the last D days of the data (``Time_max - D*86400 <= session end``), otherwise to train;
  5. drop test events whose item is not in train, then test sessions shorter than 2; 6. the same split
  applied to train gives ``train_tr`` / ``train_valid``.

``rsc15-2023`` -- the preprocessing of Hidasi & Czapp (RecSys 2023), as in their published scripts
  (``hidasib/gru4rec_third_party_comparison``, ``*_preproc.py``): 1. remove consecutive duplicate items
  inside a session (once); 2. drop sessions of length 1 and items with support < 5, *iterated* until
  nothing changes; 3. time split at ``b = Time_max - D*86400``: test = the sessions that *start* at or
  after b; train = the *events* before b (a session straddling b keeps its early events in train and is
  not in test), then train sessions shorter than 2 dropped; 4. validation: the same inside train with the
  boundary D days earlier (session starts judged on the full data); 5. unknown test (validation) items
  dropped, then sessions shorter than 2 (the published scripts leave this to the evaluation).
  ``split_by`` does not apply.

Either protocol may start with :func:`sessionize` (``session_gap``) to cut a user log into sessions at idle
gaps longer than the gap. For ``rsc15-2015``, ``split_by="start"`` assigns sessions by their first event
instead of their last.

``loo`` -- leave-one-out for user histories: per user, the last item is the test target and the
second-to-last the validation target (users need >= 2 events for a test target and >= 3 for a
validation target; shorter histories stay in training). Test/validation files hold the *whole* history
(inputs plus target); evaluate them with ``targets="last"`` (CLI: ``seqrec evaluate --protocol loo
--exclude-history``, which also removes the history items from the ranking as S3-Rec / ICLRec do).
``max_history`` (e.g. 50 or 200, SASRec's ``maxlen``) keeps only the last ``max_history + 1`` events
of each *training* history (``max_history`` predictions each); test and validation files keep the
whole history (the evaluation feeds the last ``max_history`` items with ``max_history=`` but excludes
the whole history). The published S3-Rec / ICLRec figures train on ``train_tr`` (each history without
its last two items), select on ``train_valid`` and report ``test`` with that same model.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import numpy as np
import pandas as pd

from .data import SessionData

__all__ = [
    "DAY",
    "PROTOCOLS",
    "drop_unknown_items",
    "filter_sessions_items",
    "format_stats",
    "leave_one_out",
    "prepare",
    "remove_consecutive_duplicates",
    "sessionize",
    "split_by_time",
    "stats",
    "tail_split",
    "write_splits",
]

PROTOCOLS: tuple[str, ...] = ("rsc15-2015", "rsc15-2023", "loo")
DAY = 86400.0
_COLS = ("SessionId", "ItemId", "Time")


def _check_frame(df: Any, need_time: bool = True) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"expected a pandas DataFrame with columns {_COLS}, got {type(df).__name__}"
        )
    need = _COLS if need_time else _COLS[:2]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks column(s) {missing}; expected columns {list(need)}")
    return df


def _sort(df: pd.DataFrame) -> pd.DataFrame:
    """Events sorted by session then time (stable)."""
    return df.sort_values(["SessionId", "Time"], kind="stable").reset_index(drop=True)


def sessionize(df: pd.DataFrame, gap: float) -> pd.DataFrame:
    """Cut each user's event stream into sessions at idle gaps longer than ``gap`` seconds.

    Parameters
    ----------
    df : DataFrame
        Columns SessionId (here: the user id), ItemId, Time.
    gap : float
        Idle gap in seconds (> 0); a new session starts when the time since the user's previous event
        exceeds it.

    Returns
    -------
    DataFrame
        Columns SessionId (new int64 session ids, numbered in (user, time) order), UserId, ItemId, Time.
    """
    df = _check_frame(df)
    if not isinstance(gap, (int, float, np.number)) or not gap > 0:
        raise ValueError(f"session gap must be a positive number of seconds, got {gap!r}")
    df = _sort(df)
    user = df["SessionId"].to_numpy()
    t = df["Time"].to_numpy(dtype=np.float64)
    new = np.ones(len(df), dtype=bool)
    if len(df) > 1:
        new[1:] = (user[1:] != user[:-1]) | ((t[1:] - t[:-1]) > gap)
    out = df.rename(columns={"SessionId": "UserId"})
    out.insert(0, "SessionId", np.cumsum(new).astype(np.int64) - 1)
    return out


def remove_consecutive_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Drop an event when it repeats the previous item of the same session (``a a b a`` -> ``a b a``)."""
    df = _sort(_check_frame(df))
    s = df["SessionId"].to_numpy()
    i = df["ItemId"].to_numpy()
    keep = np.ones(len(df), dtype=bool)
    if len(df) > 1:
        keep[1:] = (s[1:] != s[:-1]) | (i[1:] != i[:-1])
    return df[keep].reset_index(drop=True)


def _session_length_filter(df: pd.DataFrame, min_len: int) -> pd.DataFrame:
    lengths = df.groupby("SessionId", sort=False)["ItemId"].transform("size")
    return df[lengths.to_numpy() >= min_len]


def _item_support_filter(df: pd.DataFrame, min_support: int) -> pd.DataFrame:
    supp = df.groupby("ItemId", sort=False)["SessionId"].transform("size")
    return df[supp.to_numpy() >= min_support]


def filter_sessions_items(
    df: pd.DataFrame,
    min_item_support: int = 5,
    min_session_length: int = 2,
    iterate: bool = True,
    max_iter: int = 100,
) -> pd.DataFrame:
    """Filter items with support < ``min_item_support`` and sessions shorter than ``min_session_length``.

    Parameters
    ----------
    df : DataFrame with SessionId, ItemId
    min_item_support, min_session_length : int
    iterate : bool, default True
        Repeat both filters until nothing changes (2023 protocol). If False, one pass of: sessions of
        length 1, items, sessions (the 2015 protocol).
    max_iter : int
        Safety bound on the iterations.

    Returns
    -------
    DataFrame
        The surviving events; with ``iterate`` every item has support >= min_item_support and every
        session length >= min_session_length.
    """
    _check_frame(df, need_time=False)
    for name, v in (
        ("min_item_support", min_item_support),
        ("min_session_length", min_session_length),
    ):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not iterate:
        df = _session_length_filter(df, 2)
        df = _item_support_filter(df, min_item_support)
        return _session_length_filter(df, min_session_length).reset_index(drop=True)
    for _ in range(max_iter):
        n = len(df)
        df = _item_support_filter(df, min_item_support)
        df = _session_length_filter(df, min_session_length)
        if len(df) == n:
            break
    return df.reset_index(drop=True)


def split_by_time(
    df: pd.DataFrame, days: float = 1.0, by: str = "end"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split sessions into (before, last ``days`` days) by session end (or start) time.

    A session goes to the second part when its end time (``by="end"``, the official GRU4Rec code) or start
    time (``by="start"``) is ``>= Time.max() - days * 86400``.
    """
    df = _check_frame(df)
    if not isinstance(days, (int, float, np.number)) or not days > 0:
        raise ValueError(f"days must be a positive number, got {days!r}")
    if by not in ("end", "start"):
        raise ValueError(f"split by must be 'end' or 'start', got {by!r}")
    if len(df) == 0:
        return df.copy(), df.copy()
    tmax = float(df["Time"].max())
    agg = "max" if by == "end" else "min"
    st = df.groupby("SessionId", sort=False)["Time"].transform(agg).to_numpy()
    late = st >= tmax - days * DAY
    return df[~late].reset_index(drop=True), df[late].reset_index(drop=True)


def drop_unknown_items(
    test: pd.DataFrame, train: pd.DataFrame, min_session_length: int = 2
) -> pd.DataFrame:
    """Remove test events whose item is not in ``train``, then test sessions shorter than the minimum."""
    _check_frame(test, need_time=False)
    _check_frame(train, need_time=False)
    test = test[test["ItemId"].isin(pd.unique(train["ItemId"])).to_numpy()]
    return _session_length_filter(test, min_session_length).reset_index(drop=True)


def _rsc15(
    df: pd.DataFrame,
    *,
    protocol: str,
    test_days: float,
    valid_days: float,
    min_item_support: int,
    min_session_length: int,
    session_gap: float | None,
    split_by: str,
) -> dict[str, pd.DataFrame]:
    df = _check_frame(df)[list(_COLS)]
    if session_gap is not None:
        df = sessionize(df, session_gap)[list(_COLS)]
    if protocol == "rsc15-2023":
        # As the official 2023 scripts (hidasib/gru4rec_third_party_comparison, *_preproc.py):
        # consecutive repeats removed once, then session-length and item-support filters iterated
        # until nothing changes.
        df = remove_consecutive_duplicates(df)
        df = filter_sessions_items(df, min_item_support, min_session_length, iterate=True)
    else:
        df = filter_sessions_items(df, min_item_support, min_session_length, iterate=False)
    if len(df) == 0:
        raise ValueError(
            "no events left after filtering; lower --min-item-support / --min-session-length"
        )
    if protocol == "rsc15-2023":
        train, test, train_tr, valid = _split_2023(df, test_days, valid_days, min_session_length)
    else:
        train, test = split_by_time(df, test_days, split_by)
        train_tr, valid = split_by_time(train, valid_days, split_by)
    test = drop_unknown_items(test, train, min_session_length)
    valid = drop_unknown_items(valid, train_tr, min_session_length)
    return {"train_full": train, "test": test, "train_tr": train_tr, "train_valid": valid}


def _split_2023(df: pd.DataFrame, test_days: float, valid_days: float, min_session_length: int):
    """The 2023 time split: test = sessions *starting* in the last ``test_days``; train = the events
    before that boundary (a session that straddles it keeps its early events in train and is not in
    test), minus sessions left too short. Validation repeats this inside train with the boundary
    ``valid_days`` earlier, still judging session starts on the full data."""
    if not test_days > 0 or not valid_days > 0:
        raise ValueError(f"test_days and valid_days must be positive, got {test_days!r}, {valid_days!r}")
    tmax = float(df["Time"].max())
    start = df.groupby("SessionId", sort=False)["Time"].transform("min").to_numpy()
    t = df["Time"].to_numpy()
    b1 = tmax - test_days * DAY
    b2 = b1 - valid_days * DAY
    test = df[start >= b1]
    train_mask = t < b1
    train = _session_length_filter(df[train_mask], min_session_length)
    start_tr = start[train_mask][df[train_mask]["SessionId"].isin(pd.unique(train["SessionId"])).to_numpy()]
    t_tr = train["Time"].to_numpy()
    valid = train[start_tr >= b2]
    train_tr = _session_length_filter(train[t_tr < b2], min_session_length)
    return (train.reset_index(drop=True), test.reset_index(drop=True),
            train_tr.reset_index(drop=True), valid.reset_index(drop=True))


def leave_one_out(data: SessionData, max_history: int | None = None) -> dict[str, pd.DataFrame]:
    """Leave-one-out split of user histories (see the module docstring).

    Parameters
    ----------
    data : SessionData
        One "session" per user, events in time (or file) order.
    max_history : int, optional
        Keep only the last ``max_history + 1`` events of each training history.

    Returns
    -------
    dict of DataFrame
        ``train_full`` (histories without the last item), ``test`` (full histories of users with >= 2
        events; the target is the last event), ``train_tr`` (without the last two items) and
        ``train_valid`` (``train_full`` histories of users with >= 3 events; target = last event).
        Time is the data's time or, without times, the event's index in the file order.
    """
    if not isinstance(data, SessionData):
        raise TypeError(f"leave_one_out expects a SessionData, got {type(data).__name__}")
    df = data.to_frame()
    if "Time" not in df:
        df["Time"] = np.arange(len(df), dtype=np.float64)

    def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        s = frame["SessionId"].to_numpy()
        n = len(frame)
        last = np.ones(n, dtype=bool)
        if n > 1:
            last[:-1] = s[:-1] != s[1:]
        length = frame.groupby("SessionId", sort=False)["ItemId"].transform("size").to_numpy()
        in_eval = length >= 2
        train = frame[~(last & in_eval)].reset_index(drop=True)
        return train, frame[in_eval].reset_index(drop=True)

    if max_history is not None and (
        not isinstance(max_history, (int, np.integer)) or isinstance(max_history, bool)
        or max_history < 1
    ):
        raise ValueError(f"max_history must be a positive int or None, got {max_history!r}")

    def clip(frame: pd.DataFrame) -> pd.DataFrame:
        if max_history is None:
            return frame
        from_end = frame.groupby("SessionId", sort=False).cumcount(ascending=False).to_numpy()
        return frame[from_end <= max_history].reset_index(drop=True)

    train_full, test = split(df)
    train_tr, valid = split(train_full)
    return {"train_full": clip(train_full), "test": test, "train_tr": clip(train_tr),
            "train_valid": valid}


def tail_split(data: SessionData, size: int, by: str = "sessions") -> dict[str, pd.DataFrame]:
    """Validation split for a fixed train/test benchmark: the last part of the training data.

    The sessions are taken in the order ``data`` stores them: by first-event time for logs with
    times, file order for files without (the SR-GNN / GCE-GNN session files are chronological). The
    tail becomes ``train_valid``, the rest ``train_tr``; tune on them, then train on the whole file
    and report the test.

    Parameters
    ----------
    data : SessionData
        The benchmark's training file.
    size : int
        Size of the validation part: a number of sessions (``by="sessions"``) or of predictions,
        i.e. events after the first of each session (``by="events"``: the shortest tail holding at
        least that many). Use the test file's ``n_sessions`` (or its number of predictions) to make
        the validation part as large as the test.
    by : {"sessions", "events"}

    Returns
    -------
    dict of DataFrame
        ``train_tr`` and ``train_valid`` (columns SessionId, ItemId, Time; Time is the data's time
        or, without times, the event's index in the file order).
    """
    if not isinstance(data, SessionData):
        raise TypeError(f"tail_split expects a SessionData, got {type(data).__name__}")
    if by not in ("sessions", "events"):
        raise ValueError(f"by must be 'sessions' or 'events', got {by!r}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    n = data.n_sessions
    if by == "sessions":
        k = int(size)
    else:
        preds_from_end = np.cumsum(np.maximum(data.session_lengths - 1, 0)[::-1])
        k = int(np.searchsorted(preds_from_end, size) + 1)
    if k >= n:
        raise ValueError(
            f"a validation tail of {size} {by} needs {k} of the {n} training sessions; nothing "
            "would be left to train on"
        )
    df = data.to_frame()
    if "Time" not in df:
        df["Time"] = np.arange(len(df), dtype=np.float64)
    sess = data.session_index()[data.items >= 0]
    valid = sess >= n - k
    return {"train_tr": df[~valid].reset_index(drop=True),
            "train_valid": df[valid].reset_index(drop=True)}


def prepare(
    data: SessionData | pd.DataFrame,
    protocol: str = "rsc15-2023",
    *,
    test_days: float = 1.0,
    valid_days: float = 1.0,
    min_item_support: int = 5,
    min_session_length: int = 2,
    session_gap: float | None = None,
    split_by: str = "end",
    max_history: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Run a preprocessing protocol.

    Parameters
    ----------
    data : SessionData or DataFrame (SessionId, ItemId, Time)
    protocol : {"rsc15-2015", "rsc15-2023", "loo"}
    test_days, valid_days : float
        Days at the end used as test, and (from the remaining train) as validation.
    min_item_support, min_session_length : int
    session_gap : float, optional
        Idle gap in seconds to sessionise a user log first (rsc15 protocols only).
    split_by : {"end", "start"}
        Which session time decides the split.
    max_history : int, optional
        ``loo`` only: training histories keep their last ``max_history + 1`` events.

    Returns
    -------
    dict of DataFrame
        Keys ``train_full``, ``test``, ``train_tr``, ``train_valid``; columns SessionId, ItemId, Time.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if protocol == "loo":
        if not isinstance(data, SessionData):
            data = SessionData.from_events(data["SessionId"], data["ItemId"], data.get("Time"))
        return leave_one_out(data, max_history=max_history)
    if max_history is not None:
        raise ValueError(f"max_history applies to protocol 'loo' only, not {protocol!r}")
    if isinstance(data, SessionData):
        if data.times is None:
            raise ValueError(
                f"protocol {protocol!r} needs event times, but {data.source or 'the data'} has none; use "
                "--protocol loo for time-less user histories"
            )
        df = data.to_frame()
    else:
        df = data
    return _rsc15(
        df,
        protocol=protocol,
        test_days=test_days,
        valid_days=valid_days,
        min_item_support=min_item_support,
        min_session_length=min_session_length,
        session_gap=session_gap,
        split_by=split_by,
    )


def write_splits(
    splits: dict[str, pd.DataFrame],
    out_dir: str | os.PathLike[str],
    prefix: str,
    gzip: bool = False,
) -> dict[str, str]:
    """Write each split as GRU4Rec TSV ``<out_dir>/<prefix>_<split>.tsv[.gz]`` (atomically).

    Returns the written paths by split name.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, frame in splits.items():
        path = os.path.join(out_dir, f"{prefix}_{name}.tsv" + (".gz" if gzip else ""))
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            frame[list(_COLS)].to_csv(
                tmp, sep="\t", index=False, compression="gzip" if gzip else None
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        paths[name] = path
    return paths


def stats(data: SessionData | pd.DataFrame) -> dict[str, Any]:
    """Descriptive statistics of a session dataset.

    Returns
    -------
    dict
        ``events``, ``sessions``, ``items`` (distinct items occurring), ``length_min/median/mean/max``,
        ``length_p{5,25,75,95,99}``, ``sessions_len1`` (sessions of one event), ``item_support_min/
        median/max``, and with times ``time_start``/``time_end`` (ISO-8601 UTC) and ``time_span_days``.
    """
    if isinstance(data, pd.DataFrame):
        d = _check_frame(data, need_time=False)
        data = SessionData.from_events(d["SessionId"], d["ItemId"], d.get("Time"))
    if not isinstance(data, SessionData):
        raise TypeError(f"stats expects a SessionData or DataFrame, got {type(data).__name__}")
    lengths = data.session_lengths
    supp = data.item_support()
    supp = supp[supp > 0]
    out: dict[str, Any] = {
        "events": data.n_events,
        "sessions": data.n_sessions,
        "items": int(supp.size),
    }
    if lengths.size:
        out.update(
            {
                "length_min": int(lengths.min()),
                "length_median": float(np.median(lengths)),
                "length_mean": float(lengths.mean()),
                "length_max": int(lengths.max()),
            }
        )
        for p in (5, 25, 75, 95, 99):
            out[f"length_p{p}"] = float(np.percentile(lengths, p))
        out["sessions_len1"] = int(np.count_nonzero(lengths == 1))
    if supp.size:
        out.update(
            {
                "item_support_min": int(supp.min()),
                "item_support_median": float(np.median(supp)),
                "item_support_max": int(supp.max()),
            }
        )
    if data.times is not None and data.n_events:
        t0, t1 = float(data.times.min()), float(data.times.max())
        out["time_start"] = _iso(t0)
        out["time_end"] = _iso(t1)
        out["time_span_days"] = (t1 - t0) / DAY
    return out


def _iso(t: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(t)


def format_stats(st: dict[str, Any]) -> str:
    """Render :func:`stats` output as aligned ``key: value`` lines."""
    lines = []
    for k, v in st.items():
        if isinstance(v, float):
            v = f"{v:,.2f}"
        elif isinstance(v, (int, np.integer)):
            v = f"{v:,}"
        lines.append(f"{k:>20}: {v}")
    return "\n".join(lines)
