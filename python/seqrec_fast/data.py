"""Session data: the in-memory event layout and loaders for common click-log formats.

:class:`SessionData` stores a log of sessions as flat arrays:

- ``items``   int32 ``(n_events,)`` internal item indices, sessions back to back
  (``-1`` marks an item unknown to the item map, only when built with ``keep_unknown=True``);
- ``offsets`` int64 ``(n_sessions + 1,)``; session ``s`` is ``items[offsets[s]:offsets[s + 1]]``;
- ``item_ids`` ``(n_items,)`` external item ids (int64 or object/str) indexed by internal index;
- ``times``   optional float64 ``(n_events,)`` event times (unix seconds);
- ``session_ids`` optional ``(n_sessions,)`` external session (or user) ids.

Order: when times exist, sessions are ordered by the time of their first event and events inside a
session by time, both stable (ties keep file order). Without times, file order is kept.

:func:`load` reads every format listed in :data:`FORMATS`; ``format="auto"`` detects it from the file
name and its first lines (see :func:`detect_format`). Every text format may be gzip-compressed (detected
from the magic bytes, not the suffix). The readers themselves live in :mod:`seqrec_fast.formats`; this
module turns their flat arrays into sessions over an item map.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FORMATS",
    "SessionData",
    "detect_format",
    "load",
]

from .formats import (  # noqa: F401 - FORMATS and detect_format are part of this module's API
    FORMATS,
    _as_id_array,
    _check_path,
    _load_delimited,
    _load_jsonl,
    _load_parquet,
    _load_session_items,
    _load_whitespace,
    _load_yoochoose,
    detect_format,
)


# ---------------------------------------------------------------------------------------------------
# SessionData
# ---------------------------------------------------------------------------------------------------
class SessionData:
    """Sessions of item events, stored as flat contiguous arrays.

    Parameters
    ----------
    items : array_like of int, shape (n_events,)
        Internal item indices in ``[0, n_items)``, sessions back to back. ``-1`` marks an event whose
        item is unknown to ``item_ids`` (only meaningful for test data mapped onto a training map).
        Stored as C-contiguous int32.
    offsets : array_like of int, shape (n_sessions + 1,)
        Session boundaries: ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == n_events``.
        Stored as int64.
    item_ids : array_like, shape (n_items,)
        External item id of each internal index (ints or strings), unique.
    times : array_like of float, shape (n_events,), optional
        Event times (unix seconds), stored as float64.
    session_ids : array_like, shape (n_sessions,), optional
        External session (or user) ids.
    n_unknown : int, default 0
        Number of events whose item was unknown to the item map when this object was built
        (dropped, or kept as ``-1``).
    source : str, optional
        Where the data came from (used in messages).
    """

    def __init__(
        self,
        items: Any,
        offsets: Any,
        item_ids: Any,
        times: Any = None,
        session_ids: Any = None,
        *,
        n_unknown: int = 0,
        source: str | None = None,
    ) -> None:
        items = np.ascontiguousarray(items, dtype=np.int32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        item_ids = _as_id_array(item_ids)
        if items.ndim != 1:
            raise ValueError(f"items must be 1-D, got shape {items.shape}")
        if offsets.ndim != 1 or offsets.size < 1:
            raise ValueError(
                f"offsets must be 1-D with n_sessions + 1 >= 1 entries, got shape {offsets.shape}"
            )
        if offsets[0] != 0 or offsets[-1] != items.size or np.any(np.diff(offsets) < 0):
            raise ValueError(
                "offsets must start at 0, be non-decreasing and end at n_events="
                f"{items.size}; got first={offsets[0]}, last={offsets[-1]}"
            )
        if item_ids.ndim != 1:
            raise ValueError(f"item_ids must be 1-D, got shape {item_ids.shape}")
        if items.size and (items.min() < -1 or items.max() >= item_ids.size):
            raise ValueError(
                f"items must lie in [-1, n_items={item_ids.size}), got range [{items.min()}, {items.max()}]"
            )
        if times is not None:
            times = np.ascontiguousarray(times, dtype=np.float64)
            if times.shape != items.shape:
                raise ValueError(
                    f"times must have shape {items.shape} like items, got {times.shape}"
                )
        if session_ids is not None:
            session_ids = _as_id_array(session_ids)
            if session_ids.shape != (offsets.size - 1,):
                raise ValueError(
                    f"session_ids must have shape ({offsets.size - 1},), got {session_ids.shape}"
                )
        self.items = items
        self.offsets = offsets
        self.item_ids = item_ids
        self.times = times
        self.session_ids = session_ids
        self.n_unknown = int(n_unknown)
        self.source = source
        self._index: pd.Index | None = None

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def n_events(self) -> int:
        """Number of events (including events marked unknown)."""
        return int(self.items.size)

    @property
    def n_sessions(self) -> int:
        """Number of sessions."""
        return int(self.offsets.size - 1)

    @property
    def n_items(self) -> int:
        """Size of the item map (number of internal indices)."""
        return int(self.item_ids.size)

    @property
    def session_lengths(self) -> np.ndarray:
        """int64 array, shape (n_sessions,): events per session."""
        return np.diff(self.offsets)

    @property
    def has_unknown(self) -> bool:
        """True when some events are marked ``-1`` (unknown item)."""
        return bool(self.items.size and self.items.min() < 0)

    def __len__(self) -> int:
        return self.n_sessions

    def __repr__(self) -> str:
        return (
            f"SessionData(n_sessions={self.n_sessions}, n_events={self.n_events}, n_items={self.n_items}, "
            f"times={'yes' if self.times is not None else 'no'}, n_unknown={self.n_unknown}"
            + (f", source={self.source!r}" if self.source else "")
            + ")"
        )

    def session(self, s: int) -> np.ndarray:
        """Internal item indices of session ``s`` (a view), int32 ``(length,)``."""
        if not 0 <= s < self.n_sessions:
            raise IndexError(f"session index {s} out of range [0, {self.n_sessions})")
        return self.items[self.offsets[s] : self.offsets[s + 1]]

    def session_index(self) -> np.ndarray:
        """int64 array, shape (n_events,): the session number of each event."""
        return np.repeat(np.arange(self.n_sessions, dtype=np.int64), self.session_lengths)

    def item_support(self) -> np.ndarray:
        """int64 array, shape (n_items,): number of events of each item (unknown events ignored)."""
        known = self.items[self.items >= 0]
        return np.bincount(known, minlength=self.n_items).astype(np.int64)

    # -- item map ----------------------------------------------------------------------------------
    def _item_index(self) -> pd.Index:
        if self._index is None:
            idx = pd.Index(self.item_ids)
            if not idx.is_unique:
                raise ValueError(f"item_ids of {self.source or 'SessionData'} are not unique")
            self._index = idx
        return self._index

    def item_to_index(self, external_ids: Any) -> np.ndarray:
        """Map external item ids to internal indices.

        Parameters
        ----------
        external_ids : array_like, shape (n,)
            External ids (ints or strings; ints and their decimal strings are matched with each other).

        Returns
        -------
        numpy.ndarray of int32, shape (n,)
            Internal indices, ``-1`` where the id is unknown.
        """
        return _lookup(self._item_index(), self.item_ids, _as_id_array(external_ids))

    def index_of(self, external_id: Any) -> int:
        """Internal index of one external item id; raises KeyError if unknown."""
        idx = int(self.item_to_index(np.array([external_id], dtype=object))[0])
        if idx < 0:
            raise KeyError(f"item id {external_id!r} is not in the item map ({self.n_items} items)")
        return idx

    def with_item_map(
        self, item_map: SessionData | Any, *, keep_unknown: bool = False
    ) -> SessionData:
        """Re-express these sessions with another item map (typically the training data's).

        Parameters
        ----------
        item_map : SessionData or array_like of shape (n_items,)
            The target map: a SessionData (its ``item_ids`` are used and shared) or the external ids
            indexed by internal index.
        keep_unknown : bool, default False
            If False, events whose item is not in ``item_map`` are removed before sessions are formed
            (the GRU4Rec protocol) and empty sessions are dropped. If True they are kept as ``-1``.

        Returns
        -------
        SessionData
            New object; ``n_unknown`` counts the events with an unknown item (plus those already
            counted in ``self.n_unknown``).
        """
        ids, index = _map_arrays(item_map)
        ext = np.empty(self.n_events, dtype=self.item_ids.dtype)
        known = self.items >= 0
        ext[known] = self.item_ids[self.items[known]]
        new_items = np.full(self.n_events, -1, dtype=np.int32)
        if known.any():
            new_items[known] = _lookup(index, ids, ext[known])
        unknown = new_items < 0
        n_unknown = int(unknown.sum()) - int((~known).sum()) + self.n_unknown
        if keep_unknown or not unknown.any():
            out = SessionData(
                new_items,
                self.offsets,
                ids,
                self.times,
                self.session_ids,
                n_unknown=n_unknown,
                source=self.source,
            )
        else:
            keep = ~unknown
            sess = self.session_index()[keep]
            lengths = np.bincount(sess, minlength=self.n_sessions)
            nonempty = lengths > 0
            offsets = np.concatenate(([0], np.cumsum(lengths[nonempty])))
            out = SessionData(
                new_items[keep],
                offsets,
                ids,
                None if self.times is None else self.times[keep],
                None if self.session_ids is None else self.session_ids[nonempty],
                n_unknown=n_unknown,
                source=self.source,
            )
        if isinstance(item_map, SessionData):
            out._index = item_map._item_index()
        return out

    # -- selection and export ----------------------------------------------------------------------
    def subset(self, sessions: Any) -> SessionData:
        """Keep the given sessions (bool mask of shape (n_sessions,) or int indices), same item map."""
        sessions = np.asarray(sessions)
        if sessions.dtype == bool:
            if sessions.shape != (self.n_sessions,):
                raise ValueError(f"mask must have shape ({self.n_sessions},), got {sessions.shape}")
            sessions = np.flatnonzero(sessions)
        sessions = sessions.astype(np.int64, copy=False)
        if sessions.size and (sessions.min() < 0 or sessions.max() >= self.n_sessions):
            raise IndexError(f"session indices must lie in [0, {self.n_sessions})")
        lengths = self.session_lengths[sessions]
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        ev = _ranges(self.offsets[sessions], lengths)
        out = SessionData(
            self.items[ev],
            offsets,
            self.item_ids,
            None if self.times is None else self.times[ev],
            None if self.session_ids is None else self.session_ids[sessions],
            n_unknown=0,
            source=self.source,
        )
        out._index = self._index
        return out

    def to_frame(self) -> pd.DataFrame:
        """Events as a DataFrame with columns SessionId, ItemId (external ids) and Time (if present).

        Unknown events (``-1``) are omitted. Without session ids, SessionId is the session number.
        """
        keep = self.items >= 0
        sess = self.session_index()
        sid = self.session_ids[sess] if self.session_ids is not None else sess
        cols: dict[str, Any] = {"SessionId": sid[keep], "ItemId": self.item_ids[self.items[keep]]}
        if self.times is not None:
            cols["Time"] = self.times[keep]
        return pd.DataFrame(cols)

    def to_tsv(self, path: str | os.PathLike[str]) -> None:
        """Write GRU4Rec TSV (SessionId, ItemId, Time; gzip if the name ends in .gz), atomically."""
        frame = self.to_frame()
        if "Time" not in frame:
            frame["Time"] = np.arange(len(frame), dtype=np.float64)
        _atomic_write_frame(frame, os.fspath(path))

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_events(
        cls,
        session_keys: Any,
        item_keys: Any,
        times: Any = None,
        *,
        item_map: SessionData | Any = None,
        keep_unknown: bool = False,
        source: str | None = None,
    ) -> SessionData:
        """Build from event-level arrays (any order).

        Parameters
        ----------
        session_keys : array_like, shape (n_events,)
            Session (or user) id of each event.
        item_keys : array_like, shape (n_events,)
            External item id of each event.
        times : array_like of float, shape (n_events,), optional
            Event times. Sessions are ordered by first-event time and events inside a session by time
            (stable). Without times the order of first appearance / file order is kept.
        item_map : SessionData or array_like, optional
            Use this item map (e.g. the training data's) instead of building one from the data.
        keep_unknown : bool, default False
            With ``item_map``: keep events with unknown items as ``-1`` instead of dropping them.
        source : str, optional
            Name used in messages.

        Returns
        -------
        SessionData
        """
        sess = _as_id_array(session_keys)
        itm = _as_id_array(item_keys)
        if sess.shape != itm.shape or sess.ndim != 1:
            raise ValueError(
                f"session_keys and item_keys must be 1-D of equal length, got {sess.shape}, {itm.shape}"
            )
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != sess.shape:
                raise ValueError(f"times must have shape {sess.shape}, got {times.shape}")
            if np.isnan(times).any():
                raise ValueError(
                    f"{source or 'times'}: times contain NaN at event {int(np.flatnonzero(np.isnan(times))[0])}"
                )
        if sess.size == 0:
            raise ValueError(f"{source or 'data'}: no events")
        codes, uniques = pd.factorize(sess)
        n_sess = uniques.size
        if times is not None:
            order = np.lexsort((times, codes))
            first_pos = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=n_sess))[:-1]))
            first_time = times[order][first_pos]
            sess_order = np.argsort(first_time, kind="stable")
        else:
            sess_order = np.arange(n_sess)
        rank = np.empty(n_sess, dtype=np.int64)
        rank[sess_order] = np.arange(n_sess)
        ev_rank = rank[codes]
        ev_order = (
            np.lexsort((times, ev_rank))
            if times is not None
            else np.argsort(ev_rank, kind="stable")
        )
        items_sorted = itm[ev_order]
        lengths = np.bincount(ev_rank, minlength=n_sess)
        session_ids = np.asarray(uniques)[sess_order]
        times_sorted = None if times is None else times[ev_order]
        # Internal indices in order of first appearance in the sorted events (as GRU4Rec's unique()).
        idx, ids = pd.factorize(items_sorted)
        local = cls(
            idx,
            np.concatenate(([0], np.cumsum(lengths))),
            _as_id_array(np.asarray(ids)),
            times_sorted,
            session_ids,
            source=source,
        )
        if item_map is None:
            return local
        return local.with_item_map(item_map, keep_unknown=keep_unknown)

    @classmethod
    def from_sessions(
        cls,
        sessions: Iterable[Sequence[Any]],
        *,
        item_map: SessionData | Any = None,
        keep_unknown: bool = False,
        times: Iterable[Sequence[float]] | None = None,
    ) -> SessionData:
        """Build from a list of sessions (lists of external item ids); convenient for small data.

        Sessions keep their given order; ``times`` (same nesting) is optional.
        """
        sessions = [list(s) for s in sessions]
        lengths = np.array([len(s) for s in sessions], dtype=np.int64)
        if lengths.size == 0 or lengths.sum() == 0:
            raise ValueError("from_sessions needs at least one non-empty session")
        flat = _as_id_array(np.array([x for s in sessions for x in s], dtype=object))
        keys = np.repeat(np.arange(lengths.size), lengths)
        t = None
        if times is not None:
            t = np.array([x for s in times for x in s], dtype=np.float64)
            if t.shape != flat.shape:
                raise ValueError(
                    f"times must match sessions: {t.size} times for {flat.size} events"
                )
        return cls.from_events(keys, flat, t, item_map=item_map, keep_unknown=keep_unknown)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _map_arrays(item_map: Any) -> tuple[np.ndarray, pd.Index]:
    if isinstance(item_map, SessionData):
        return item_map.item_ids, item_map._item_index()
    ids = _as_id_array(item_map)
    if ids.ndim != 1:
        raise ValueError(
            f"item_map must be a SessionData or a 1-D array of external ids, got shape {ids.shape}"
        )
    idx = pd.Index(ids)
    if not idx.is_unique:
        raise ValueError("item_map ids are not unique")
    return ids, idx


def _lookup(index: pd.Index, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Internal indices of ``values`` in ``index`` (-1 if absent); ints and strings match by text."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int32)
    if (ids.dtype.kind == "i") != (values.dtype.kind == "i"):
        index = pd.Index(ids.astype(str))
        values = values.astype(str)
    return index.get_indexer(values).astype(np.int32)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each pair, vectorised; int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    nz = lengths > 0
    starts, lengths = np.asarray(starts, dtype=np.int64)[nz], lengths[nz]
    step = np.ones(total, dtype=np.int64)
    pos = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    step[pos] = starts - np.concatenate(([0], starts[:-1] + lengths[:-1] - 1))
    step[0] = starts[0]
    return np.cumsum(step)


def _atomic_write_frame(frame: pd.DataFrame, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        frame.to_csv(
            tmp, sep="\t", index=False, compression="gzip" if path.endswith(".gz") else None
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------------
def load(
    path: str | os.PathLike[str],
    format: str = "auto",
    *,
    session_key: str | None = None,
    item_key: str | None = None,
    time_key: str | None = None,
    item_map: SessionData | Any = None,
    keep_unknown: bool = False,
) -> SessionData:
    """Load a session / interaction file into :class:`SessionData`.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Text formats may be gzip-compressed.
    format : str, default "auto"
        One of :data:`FORMATS` or ``"auto"`` (:func:`detect_format`). ``"gru4rec"`` is an alias of
        ``"tsv"`` and ``"inter"`` of ``"recbole"``.
    session_key, item_key, time_key : str, optional
        Column names for the named-column formats (tsv, csv, parquet, recbole, session_items). When
        omitted, common names are tried (``SessionId``/``session_id``/``user_id``/..., ``ItemId``/
        ``item_id``/..., ``Time``/``timestamp``/...). The time column is optional unless named.
    item_map : SessionData or array_like, optional
        Map items with this (training) item map instead of building a new one.
    keep_unknown : bool, default False
        With ``item_map``: keep events with unknown items as ``-1`` rather than dropping them; either way
        ``n_unknown`` reports how many there were.

    Returns
    -------
    SessionData

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unknown format or a bad file; the message names the file, the line or column, and what
        was expected.
    ImportError
        For Parquet without pyarrow (install the ``seqrec-fast[parquet]`` extra).
    """
    p = _check_path(path)
    fmt = {"gru4rec": "tsv", "inter": "recbole", "atomic": "recbole"}.get(format, format)
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}"
        )
    kw = {"session_key": session_key, "item_key": item_key, "time_key": time_key}
    if fmt in ("tsv", "csv", "recbole"):
        sess, itm, t = _load_delimited(p, fmt, **kw)
    elif fmt == "parquet":
        sess, itm, t = _load_parquet(p, **kw)
    elif fmt == "session_items":
        sess, itm, t = _load_session_items(p, **kw)
    elif fmt in ("sessions", "user_seq", "user_item"):
        sess, itm, t = _load_whitespace(p, fmt)
    elif fmt == "yoochoose":
        sess, itm, t = _load_yoochoose(p)
    else:
        sess, itm, t = _load_jsonl(p)
    return SessionData.from_events(
        sess, itm, t, item_map=item_map, keep_unknown=keep_unknown, source=p
    )
