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
from the magic bytes, not the suffix). Loading is vectorised (pandas / NumPy), without per-row Python loops,
except for the JSON-lines reader, which relies on pandas' JSON parser.
"""

from __future__ import annotations

import gzip
import io
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

#: Formats understood by :func:`load` (``"auto"`` detects one of them).
FORMATS: tuple[str, ...] = (
    "tsv",  # GRU4Rec TSV: header with SessionId, ItemId, Time (configurable), extra columns ignored
    "csv",  # CSV with a header and named columns
    "parquet",  # Parquet with named columns (needs pyarrow: pip install seqrec-fast[parquet])
    "sessions",  # one session per line, whitespace-separated items, file order = time order
    "user_seq",  # "user i1 i2 ..." per line (user histories, chronological)
    "user_item",  # "user item" per line, chronological per user
    "recbole",  # RecBole atomic .inter file, header "session_id:token\titem_id:token\ttimestamp:float"
    "session_items",  # TSV with SessionId, Time and space-separated Items per row (one row per session)
    "yoochoose",  # raw YOOCHOOSE clicks: headerless CSV SessionId,ISO-8601 time,ItemId,Category
    "jsonl",  # OTTO JSON lines: {"session": s, "events": [{"aid": i, "ts": ms, "type": t}, ...]}
)

# Column-name aliases tried in order when the caller does not name a column explicitly.
_SESSION_ALIASES = (
    "SessionId",
    "session_id",
    "sessionId",
    "session",
    "sid",
    "SessionID",
    "user_id",
    "userId",
    "UserId",
    "user",
    "uid",
)
_ITEM_ALIASES = (
    "ItemId",
    "item_id",
    "itemId",
    "item",
    "aid",
    "ItemID",
    "movieId",
    "movie_id",
    "product_id",
    "productId",
)
_TIME_ALIASES = (
    "Time",
    "timestamp",
    "time",
    "Timestamp",
    "ts",
    "TimeStamp",
    "datetime",
    "eventdate",
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
def _as_id_array(x: Any) -> np.ndarray:
    """External ids as int64 when all are integers, else object array of str."""
    if isinstance(x, (pd.Series, pd.Index)):
        x = x.to_numpy()
    arr = np.asarray(x)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        return arr.astype(str).astype(object)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    obj = arr.astype(object)
    if obj.size:
        kind = pd.api.types.infer_dtype(obj, skipna=False)
        if kind == "integer":
            return obj.astype(np.int64)
    return obj.astype(str).astype(object)


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


def _check_path(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such file")
    if os.path.isdir(p):
        raise ValueError(f"{p}: is a directory, expected a data file")
    return p


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if raw[:3] == b"\xef\xbb\xbf":
        raw = raw[3:]
    if not raw.strip():
        raise ValueError(f"{path}: file is empty; expected at least one event")
    return raw


def _read_head(path: str, n_bytes: int = 1 << 16) -> bytes:
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            head = f.read(n_bytes)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    if head[:3] == b"\xef\xbb\xbf":
        head = head[3:]
    return head


def _head_lines(head: bytes, max_lines: int = 2000) -> list[str]:
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if len(head) >= (1 << 16) - 4 and len(lines) > 1:
        lines = lines[:-1]  # last line may be cut
    return [ln.rstrip("\r") for ln in lines if ln.strip()][:max_lines]


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _is_iso_time(tok: str) -> bool:
    if len(tok) < 10 or tok[4:5] != "-" or tok[7:8] != "-":
        return False
    try:
        pd.Timestamp(tok)
        return True
    except (ValueError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------------
# format detection
# ---------------------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the format of a data file from its name and its first lines.

    Rules, in order: ``.parquet``/``.pq`` -> parquet; ``.inter`` -> recbole; ``.jsonl``/``.json`` or a
    first line starting with ``{`` -> jsonl; a header with ``name:type`` fields -> recbole; a tab header
    with an ``Items`` column -> session_items; another tab/comma header with non-numeric names -> tsv/csv;
    a headerless comma file whose 2nd field is an ISO-8601 time -> yoochoose; whitespace-separated lines:
    all with exactly two fields and a non-decreasing first field with repeats -> user_item; first field
    equal to the line number (from 0 or 1) -> user_seq; otherwise sessions.

    Returns
    -------
    str
        One of :data:`FORMATS`.
    """
    p = _check_path(path)
    name = p.lower()
    name = name.removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"PAR1":
        return "parquet"
    lines = _head_lines(_read_head(p))
    if not lines:
        raise ValueError(f"{p}: file is empty; expected at least one event")
    first = lines[0]
    if first.lstrip().startswith("{"):
        return "jsonl"
    if "\t" in first or "," in first:
        sep = "\t" if "\t" in first else ","
        fields = [f.strip() for f in first.split(sep)]
        if all(":" in f for f in fields) and any(
            f.split(":")[-1] in ("token", "float", "token_seq", "float_seq") for f in fields
        ):
            return "recbole"
        header_like = any(f and not _is_number(f) and not _is_iso_time(f) for f in fields)
        if header_like:
            if sep == "\t" and any(f.lower() == "items" for f in fields):
                return "session_items"
            return "tsv" if sep == "\t" else "csv"
        if sep == "," and len(fields) >= 3 and _is_iso_time(fields[1]):
            return "yoochoose"
        if sep == ",":
            raise ValueError(
                f"{p}: line 1 looks like data, not a header ({first[:80]!r}); CSV files need a header "
                "naming the session, item and time columns (or pass format='yoochoose' for raw "
                "YOOCHOOSE clicks)"
            )
    toks = [ln.split() for ln in lines]
    if all(len(t) == 2 for t in toks) and len(toks) > 1:
        firsts = [t[0] for t in toks]
        nums = [int(x) for x in firsts] if all(x.lstrip("-").isdigit() for x in firsts) else None
        if nums is not None:
            nondecr = all(a <= b for a, b in zip(nums, nums[1:]))
            if nondecr and len(set(nums)) < len(nums):
                return "user_item"
        elif len(set(firsts)) < len(firsts) and all(
            a == b or a not in firsts[i + 2 :] for i, (a, b) in enumerate(zip(firsts, firsts[1:]))
        ):
            return "user_item"
    firsts = [t[0] for t in toks]
    if len(toks) > 1 and all(x.isdigit() for x in firsts):
        nums = [int(x) for x in firsts]
        if (
            nums[0] in (0, 1)
            and all(b == a + 1 for a, b in zip(nums, nums[1:]))
            and all(len(t) >= 2 for t in toks)
        ):
            return "user_seq"
    return "sessions"


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


def _pick(
    columns: Sequence[str],
    explicit: str | None,
    aliases: Sequence[str],
    what: str,
    path: str,
    required: bool = True,
) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise ValueError(
                f"{path}: missing column {explicit!r} ({what}) in the header (line 1); found columns "
                f"{list(columns)}"
            )
        return explicit
    for a in aliases:
        if a in columns:
            return a
    lower = {c.lower(): c for c in columns}
    for a in aliases:
        if a.lower() in lower:
            return lower[a.lower()]
    if required:
        raise ValueError(
            f"{path}: missing {what} column in the header (line 1); expected one of {list(aliases[:4])} "
            f"(or pass its name), found columns {list(columns)}"
        )
    return None


def _numeric_time(col: pd.Series, name: str, path: str, line_offset: int) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = col.iloc[i]
        what = "missing value" if pd.isna(raw) else f"non-numeric value {str(raw)!r}"
        raise ValueError(
            f"{path}: line {i + line_offset}, column {name!r}: {what}; expected a numeric time "
            "(unix seconds)"
        )
    return vals


def _check_no_missing(col: pd.Series, name: str, path: str, line_offset: int) -> None:
    na = col.isna().to_numpy()
    if na.any():
        i = int(np.flatnonzero(na)[0])
        raise ValueError(
            f"{path}: line {i + line_offset}, column {name!r}: missing value (ragged line?); expected "
            "a value in every row"
        )


def _load_delimited(
    path: str, fmt: str, *, session_key: str | None, item_key: str | None, time_key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    head = _head_lines(_read_head(path), 1)
    if not head:
        raise ValueError(f"{path}: file is empty; expected a header line and events")
    if fmt == "csv":
        sep = ","
    elif fmt == "recbole":
        sep = "\t"
    else:
        sep = "\t" if "\t" in head[0] else ("," if "," in head[0] else r"\s+")
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            compression="gzip" if _is_gzip(path) else None,
            skip_blank_lines=True,
            engine="c" if sep != r"\s+" else "python",
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty; expected a header line and events") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: ragged line: {str(e).strip()}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from None
    if fmt == "recbole":
        df.columns = [c.split(":")[0] for c in df.columns]
    if len(df) == 0:
        raise ValueError(f"{path}: no events after the header (line 1); expected at least one row")
    cols = list(df.columns)
    s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
    i = _pick(cols, item_key, _ITEM_ALIASES, "item id", path)
    t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
    for c in (s, i):
        _check_no_missing(df[c], c, path, 2)
    times = None if t is None else _numeric_time(df[t], t, path, 2)
    return _ids_from_str(df[s]), _ids_from_str(df[i]), times


def _ids_from_str(col: pd.Series) -> np.ndarray:
    """Parse a string column of ids as int64 when all are integers, else keep strings (object)."""
    vals = col.to_numpy(dtype=object)
    try:
        return vals.astype(np.int64)
    except (ValueError, TypeError, OverflowError):
        return vals.astype(str).astype(object)


def _load_parquet(
    path: str, *, session_key: str | None, item_key: str | None, time_key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        import pyarrow as pa
    except ImportError:
        raise ImportError(
            f"reading Parquet ({path}) needs pyarrow; install it with: pip install 'seqrec-fast[parquet]'"
        ) from None
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ValueError(f"{path}: cannot read as Parquet ({e})") from None
    if len(df) == 0:
        raise ValueError(f"{path}: file is empty; expected at least one event")
    cols = [str(c) for c in df.columns]
    df.columns = cols
    s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
    i = _pick(cols, item_key, _ITEM_ALIASES, "item id", path)
    t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
    for c in (s, i):
        na = df[c].isna().to_numpy()
        if na.any():
            raise ValueError(
                f"{path}: row {int(np.flatnonzero(na)[0])}, column {c!r}: missing value"
            )
    times = None
    if t is not None:
        col = df[t]
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            times = (col.astype("datetime64[ns]").astype("int64") / 1e9).to_numpy(dtype=np.float64)
        else:
            times = _numeric_time(col, t, path, 0)
    return _as_id_array(df[s].to_numpy()), _as_id_array(df[i].to_numpy()), times


def _tokenize(raw: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Whitespace tokens of ``raw`` and the 0-based line of each token, vectorised.

    Returns (tokens as an 'S' array, token line numbers int64, number of lines).
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    ws = (buf == 32) | (buf == 9) | (buf == 10) | (buf == 13) | (buf == 11) | (buf == 12)
    nl = buf == 10
    starts = ~ws
    starts[1:] &= ws[:-1]
    line_of_byte = np.cumsum(nl)
    tok_line = line_of_byte[starts].astype(np.int64)
    tokens = np.array(raw.split())
    n_lines = int(line_of_byte[-1]) + (0 if raw.endswith(b"\n") else 1)
    return tokens, tok_line, n_lines


def _parse_ids(tokens: np.ndarray) -> np.ndarray:
    try:
        return tokens.astype(np.int64)
    except (ValueError, OverflowError):
        return np.char.decode(tokens, "utf-8").astype(object)


def _load_whitespace(path: str, fmt: str) -> tuple[np.ndarray, np.ndarray, None]:
    raw = _read_bytes(path)
    tokens, tok_line, n_lines = _tokenize(raw)
    counts = np.bincount(tok_line, minlength=n_lines)
    if fmt == "sessions":
        # session key = line number; blank lines are skipped
        return tok_line, _parse_ids(tokens), None
    first = np.ones(tokens.size, dtype=bool)
    first[1:] = tok_line[1:] != tok_line[:-1]
    if fmt == "user_item":
        bad = np.flatnonzero((counts != 2) & (counts != 0))
        if bad.size:
            ln = int(bad[0])
            raise ValueError(
                f"{path}: line {ln + 1}: ragged line with {counts[ln]} fields; expected 'user item'"
            )
    else:  # user_seq
        bad = np.flatnonzero(counts == 1)
        if bad.size:
            ln = int(bad[0])
            raise ValueError(
                f"{path}: line {ln + 1}: ragged line with only a user id; expected 'user item1 [item2 ...]'"
            )
    users = _parse_ids(tokens[first])
    user_of_token = np.cumsum(first) - 1
    rest = ~first
    return users[user_of_token[rest]], _parse_ids(tokens[rest]), None


def _load_session_items(
    path: str, *, session_key: str | None, item_key: str | None, time_key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            compression="gzip" if _is_gzip(path) else None,
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty; expected a header line and sessions") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: ragged line: {str(e).strip()}") from None
    if len(df) == 0:
        raise ValueError(f"{path}: no sessions after the header (line 1)")
    cols = list(df.columns)
    s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
    i = _pick(
        cols, item_key, ("Items", "items", "ItemIds", "item_id_list", "ItemId"), "items", path
    )
    t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
    _check_no_missing(df[s], s, path, 2)
    _check_no_missing(df[i], i, path, 2)
    raw = "\n".join(df[i].tolist()).encode() + b"\n"
    tokens, tok_line, _ = _tokenize(raw)
    sess = _ids_from_str(df[s])[tok_line]
    times = None if t is None else _numeric_time(df[t], t, path, 2)[tok_line]
    return sess, _parse_ids(tokens), times


def _load_yoochoose(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        df = pd.read_csv(
            path,
            sep=",",
            header=None,
            dtype=str,
            usecols=[0, 1, 2],
            keep_default_na=False,
            na_values=[""],
            compression="gzip" if _is_gzip(path) else None,
        )
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path}: file is empty; expected 'SessionId,ISO time,ItemId,Category' lines"
        ) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise ValueError(
            f"{path}: ragged line: {str(e).strip()}; expected 'SessionId,ISO time,ItemId,Category'"
        ) from None
    for c in (0, 1, 2):
        _check_no_missing(df[c], f"field {c + 1}", path, 1)
    ts = pd.to_datetime(df[1], errors="coerce", utc=True, format="ISO8601")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: line {i + 1}, field 2 (time): {df[1].iloc[i]!r} is not an ISO-8601 time; expected "
            "e.g. 2014-04-07T10:51:09.277Z"
        )
    times = (ts.astype("datetime64[ns, UTC]").astype("int64") / 1e9).to_numpy(dtype=np.float64)
    return _ids_from_str(df[0]), _ids_from_str(df[2]), times


def _load_jsonl(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    try:
        df = pd.read_json(io.BytesIO(raw), lines=True)
    except ValueError as e:
        raise ValueError(
            f"{path}: not valid JSON lines ({e}); expected one "
            '{"session": id, "events": [{"aid": item, "ts": ms}, ...]} per line'
        ) from None
    for c in ("session", "events"):
        if c not in df.columns:
            raise ValueError(
                f"{path}: missing key {c!r}; expected one "
                '{"session": id, "events": [{"aid": item, "ts": ms}, ...]} per line'
            )
    lengths = df["events"].map(len).to_numpy()
    ev = pd.json_normalize(df["events"].explode().dropna().tolist())
    for c in ("aid", "ts"):
        if c not in ev.columns:
            raise ValueError(
                f"{path}: events lack key {c!r}; expected events like "
                '{"aid": item, "ts": ms, "type": "clicks"}'
            )
    sess = np.repeat(_as_id_array(df["session"].to_numpy()), lengths)
    times = pd.to_numeric(ev["ts"], errors="coerce").to_numpy(dtype=np.float64) / 1000.0
    if np.isnan(times).any():
        raise ValueError(
            f"{path}: event {int(np.flatnonzero(np.isnan(times))[0])}: non-numeric 'ts'; "
            "expected milliseconds since the epoch"
        )
    return sess, _as_id_array(ev["aid"].to_numpy()), times
