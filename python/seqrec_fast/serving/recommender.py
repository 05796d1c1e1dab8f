"""Low-latency serving: a bounded session-state store and the :class:`Recommender` (DESIGN.md §3.5).

"A user clicked item X in session S; return the next K items now": :meth:`Recommender.recommend`
advances S's hidden state by one step and returns the top K in one kernel call (``step_topk``, which
releases the GIL). The state of each live session is kept in a :class:`SessionStore`, bounded by an
LRU limit and a TTL.

What is deliberately not here: the HTTP layer (``server.py``), and any popularity prior; the only
"no information" answer is the scores of the zero hidden state.

Concurrency model
-----------------
- One store lock guards the session table (lookup, insert, LRU order, eviction, expiry). It is held
  for dictionary operations only, never during a kernel call.
- Each session entry has its own lock, held while that session's state is read or advanced. Events of
  one session are therefore applied one at a time (none is lost), while different sessions run in
  parallel. A batch takes the locks of its sessions in a fixed global order (creation serial), so two
  batches cannot deadlock.
- An entry evicted, expired or reset while an event is in flight on it is simply dropped afterwards:
  that event is answered from the state it started from (it is ordered before the removal).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Callable, Optional

import numpy as np

from .. import _core, reference
from ..ranking import DEFAULT_MAX_CANDIDATES, Ranking, check_candidates, split_candidates

__all__ = [
    "MAX_SEEN",
    "PRECISIONS",
    "UNKNOWN_ITEM_POLICIES",
    "Recommender",
    "SessionStore",
    "UnknownItemError",
    "UnknownSessionError",
]

PRECISIONS = ("float32", "bfloat16", "int8")
UNKNOWN_ITEM_POLICIES = ("skip", "raise")
MAX_SEEN = 512  # distinct items remembered per session for exclude_seen (most recent kept)

_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*\Z")


def _kernels() -> tuple[Callable, Callable]:
    """(step_topk, topk): the C++ serving kernels."""
    return _core.step_topk, _core.topk


class UnknownSessionError(KeyError):
    """A session id that is not live (never seen, reset, evicted or expired); ``session_id`` holds
    it. HTTP answers 404."""

    def __init__(self, session_id: Any):
        self.session_id = session_id
        self.message = f"session {session_id!r} is not live (never seen, reset, evicted or expired)"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class UnknownItemError(KeyError, ValueError):
    """An item id is not in the model's item map (raised under ``unknown_item='raise'``).

    Subclasses both ``KeyError`` and ``ValueError``; ``item`` holds the offending id.
    """

    def __init__(self, item: Any, n_items: int):
        self.item = item
        self.message = f"item id {item!r} is not in the model's item map ({n_items:,} items)"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


# ---------------------------------------------------------------------------------------------------
# session-state store
# ---------------------------------------------------------------------------------------------------
class _Session:
    """State of one live session: per-layer h (and c) as (1, H_l) float32, the seen items, LRU time."""

    __slots__ = ("c", "h", "last", "lock", "n_events", "seen", "serial")

    def __init__(self, h: list, c: Optional[list], serial: int, now: float):
        self.h = h
        self.c = c
        self.seen: dict[int, None] = {}  # insertion-ordered set of internal indices
        self.last = now
        self.lock = threading.Lock()
        self.serial = serial
        self.n_events = 0

    def exclude_with(self, idx: Optional[int]) -> np.ndarray:
        """The seen items plus ``idx`` (if given) as int32 (m,)."""
        out = np.fromiter(self.seen, dtype=np.int32, count=len(self.seen))
        if idx is not None and idx not in self.seen:
            out = np.append(out, np.int32(idx))
        return out

    def add_seen(self, idx: int, max_seen: int) -> None:
        self.seen.pop(idx, None)
        self.seen[idx] = None
        if len(self.seen) > max_seen:
            del self.seen[next(iter(self.seen))]


class SessionStore:
    """Thread-safe map ``session_id -> state`` bounded by an LRU limit and a TTL.

    Parameters
    ----------
    new_state : callable
        ``() -> (h, c)``: fresh zero state of a new session (lists of (1, H_l) float32 arrays; c None
        unless LSTM).
    max_sessions : int
        At most this many sessions are kept; inserting one more evicts the least recently used.
    ttl_seconds : float
        A session not touched for this long is expired: lazily when it is next looked up, and by a
        sweep that runs at every store operation (expired sessions are a prefix of the LRU order, so
        the sweep costs O(number expired)). ``sweep()`` runs it explicitly.
    clock : callable
        Monotonic time in seconds (inject a fake clock in tests).
    """

    def __init__(self, new_state: Callable[[], tuple], max_sessions: int = 100_000,
                 ttl_seconds: float = 1800.0, clock: Callable[[], float] = time.monotonic):
        self._new_state = new_state
        self.max_sessions = int(max_sessions)
        self.ttl_seconds = float(ttl_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._table: OrderedDict[Hashable, _Session] = OrderedDict()
        self._serial = 0
        self.created = 0
        self.evictions = 0
        self.expirations = 0
        self.resets = 0

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, session_id: Hashable) -> bool:
        with self._lock:
            self._sweep_locked(self._clock())
            return session_id in self._table

    def _sweep_locked(self, now: float) -> int:
        table = self._table
        limit = now - self.ttl_seconds
        n = 0
        while table:
            sid = next(iter(table))
            if table[sid].last > limit:
                break
            del table[sid]
            n += 1
        self.expirations += n
        return n

    def sweep(self) -> int:
        """Expire every session idle for longer than the TTL; returns how many."""
        with self._lock:
            return self._sweep_locked(self._clock())

    def get(self, session_id: Hashable, create: bool = True) -> Optional[_Session]:
        """The live entry of ``session_id`` (marked as just used); a new zero-state entry if there is
        none and ``create``, else None."""
        with self._lock:
            now = self._clock()
            self._sweep_locked(now)  # also the lazy TTL check of this session
            table = self._table
            entry = table.get(session_id)
            if entry is not None:
                entry.last = now
                table.move_to_end(session_id)
                return entry
            if not create:
                return None
            h, c = self._new_state()
            self._serial += 1
            entry = _Session(h, c, self._serial, now)
            table[session_id] = entry
            self.created += 1
            while len(table) > self.max_sessions:
                table.popitem(last=False)
                self.evictions += 1
            return entry

    def remove(self, session_id: Hashable) -> bool:
        """Forget ``session_id``; returns whether it was live."""
        with self._lock:
            self._sweep_locked(self._clock())
            found = self._table.pop(session_id, None) is not None
            self.resets += found
            return found

    def clear(self) -> None:
        with self._lock:
            self._table.clear()

    def stats(self) -> dict:
        """Size and counters. ``bytes`` counts the state arrays and the seen-item payload (4 bytes per
        item), not Python object overhead."""
        with self._lock:
            self._sweep_locked(self._clock())
            entries = list(self._table.values())
            out = {
                "sessions": len(entries),
                "max_sessions": self.max_sessions,
                "ttl_seconds": self.ttl_seconds,
                "created": self.created,
                "evictions": self.evictions,
                "expirations": self.expirations,
                "resets": self.resets,
            }
        state = 0
        seen = 0
        if entries:
            e = entries[0]
            state = sum(a.nbytes for a in e.h) + sum(a.nbytes for a in (e.c or ()))
            seen = sum(len(e.seen) for e in entries)
        out["state_bytes_per_session"] = state
        out["seen_items"] = seen
        out["bytes"] = state * len(entries) + 4 * seen
        return out


# ---------------------------------------------------------------------------------------------------
# Recommender
# ---------------------------------------------------------------------------------------------------
Result = tuple[np.ndarray, np.ndarray]


class Recommender:
    """Serve a fitted :class:`~seqrec_fast.model.SessionRNN`: per-session state, one step + top-k per
    event.

    Parameters
    ----------
    model : SessionRNN
        Fitted (or loaded) model. Its parameters are used as they are when float32 (no copy of the item
        table); a float64 model is converted to a float32 copy once, here.
    max_sessions : int, default 100_000
        Bound of the session store (LRU eviction beyond it).
    ttl_seconds : float, default 1800
        Sessions idle longer than this are expired.
    exclude_seen : bool, default False
        Never recommend an item already in the session (the last ``MAX_SEEN`` distinct items of it).
    unknown_item : {'skip', 'raise'}, default 'skip'
        An item id not in the model's item map. ``'skip'``: the session's state is not advanced and the
        recommendations of its current state are returned; for a session that does not exist yet these
        are the scores of the zero hidden state (``b_y`` plus nothing: no popularity prior is added),
        and no session is created. ``'raise'``: :class:`UnknownItemError` (a ``KeyError`` and
        ``ValueError``) naming the item; nothing changes.
    precision : {'float32', 'bfloat16', 'int8'}, default 'float32'
        Table used for scoring. The reduced ones are a copy of ``W_y`` made here
        (:func:`~seqrec_fast.reference.quantize_table`); the input embedding and the recurrent layers
        stay float32. Measure the effect with :meth:`overlap_at_k`.
    num_threads : int, default 1
        Threads per kernel call. One is right for single events (DESIGN.md §3.5); a large batch or a
        catalogue of millions may use more.
    clock : callable, default time.monotonic
        Time source of the TTL (inject a fake one in tests).

    Notes
    -----
    Item ids are external ids in and out; integer ids also match their decimal strings ("123" finds
    123) and string ids match ints by their text. When fewer than ``k`` items are eligible (``k`` larger
    than the catalogue minus exclusions) fewer are returned.
    """

    def __init__(
        self,
        model,
        max_sessions: int = 100_000,
        ttl_seconds: float = 1800.0,
        exclude_seen: bool = False,
        unknown_item: str = "skip",
        precision: str = "float32",
        num_threads: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not hasattr(model, "params_"):
            raise ValueError("model is not fitted; fit it or use SessionRNN.load(path)")
        if not isinstance(max_sessions, (int, np.integer)) or isinstance(max_sessions, bool) \
                or max_sessions < 1:
            raise ValueError(f"max_sessions must be an int >= 1; got {max_sessions!r}")
        try:
            ttl = float(ttl_seconds)
        except (TypeError, ValueError):
            ttl = float("nan")
        if not ttl > 0:
            raise ValueError(f"ttl_seconds must be a number > 0; got {ttl_seconds!r}")
        if unknown_item not in UNKNOWN_ITEM_POLICIES:
            raise ValueError(f"unknown_item must be one of {UNKNOWN_ITEM_POLICIES}; got {unknown_item!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        if not isinstance(num_threads, (int, np.integer)) or isinstance(num_threads, bool) \
                or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1; got {num_threads!r}")
        self.model = model
        self.exclude_seen = bool(exclude_seen)
        self.unknown_item = unknown_item
        self.precision = precision
        self.num_threads = int(num_threads)

        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        names = list(model.param_names_)
        params = model.params_
        self.cell = model.cell
        self.embedding = model.embedding
        self.layers = [int(h) for h in model.layers_]
        L = len(self.layers)
        self._weights = [tuple(f32(a) for a in params[3 * l: 3 * l + 3]) for l in range(L)]
        self._W_y = f32(params[names.index("W_y")])
        self._b_y = f32(params[names.index("b_y")])
        self._E_in = f32(params[names.index("E_in")]) if "E_in" in names else None
        self.n_items = int(self._W_y.shape[0])
        if self.embedding == "onehot":
            # a one-hot input times W_x is a row of W_x: feed that row through an identity W_x
            W_x0, W_h0, b0 = self._weights[0]
            self._seq_weights = [(np.eye(W_x0.shape[1], dtype=np.float32), W_h0, b0)] + self._weights[1:]
            self._input_table = W_x0
        else:
            self._seq_weights = self._weights
            self._input_table = self._W_y if self.embedding == "constrained" else self._E_in
        self._table, self._scales = self._reduced(precision)
        self._step_topk, self._topk = _kernels()

        ids = np.asarray(model.item_ids_)
        self._ids = ids
        self._int_ids = ids.dtype.kind in "iu"
        keys = ids.tolist() if self._int_ids else [str(x) for x in ids.tolist()]
        self._index = dict(zip(keys, range(len(keys))))
        if len(self._index) != len(keys):
            raise ValueError("the model's item ids are not unique")

        self.store = SessionStore(self._zero_state, max_sessions, ttl, clock)

    # -- helpers ----------------------------------------------------------------------------------
    def _reduced(self, precision: str):
        """The scoring table in the packed serving layout (``_core.pack_table``): a float32 copy, or
        a bfloat16 / int8 one with its scales. Made once; W_y itself stays float32 for the input."""
        if precision == "float32":
            return _core.pack_table(self._W_y), None
        q, scales = reference.quantize_table(self._W_y, precision)
        return _core.pack_table(q), scales

    def _zero_state(self, n: int = 1) -> tuple[list, Optional[list]]:
        h = [np.zeros((n, H), np.float32) for H in self.layers]
        c = [np.zeros((n, H), np.float32) for H in self.layers] if self.cell == "lstm" else None
        return h, c

    def _lookup(self, item: Any) -> int:
        """Internal index of an external id, -1 if unknown; TypeError for a type that is no id."""
        if isinstance(item, (bool, np.bool_)):
            raise TypeError(f"item id must be an int or a str; got {item!r}")
        if self._int_ids:
            if isinstance(item, (int, np.integer)):
                key = int(item)
            elif isinstance(item, str):
                if not _INT_TEXT.match(item):
                    return -1
                key = int(item)
            else:
                raise TypeError(f"item id must be an int or a str; got {type(item).__name__} {item!r}")
        elif isinstance(item, (str, int, np.integer)):
            key = str(item)
        else:
            raise TypeError(f"item id must be an int or a str; got {type(item).__name__} {item!r}")
        return self._index.get(key, -1)

    def _resolve(self, item: Any) -> Optional[int]:
        """Internal index, or None for an unknown item under 'skip'; raises under 'raise'."""
        i = self._lookup(item)
        if i >= 0:
            return i
        if self.unknown_item == "raise":
            raise UnknownItemError(item, self.n_items)
        return None

    def index_of(self, item: Any) -> int:
        """Internal index of ``item`` (-1 if unknown). For tests and debugging only."""
        return self._lookup(item)

    @staticmethod
    def _check_k(k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1; got {k!r}")
        return int(k)

    def _external(self, idx: np.ndarray, scores: np.ndarray) -> Result:
        if len(idx) and idx[-1] < 0:  # padding (-1) only ever trails the valid entries
            n = int(np.count_nonzero(idx >= 0))
            idx, scores = idx[:n], scores[:n]
        return self._ids[idx], scores

    def _exclude_matrix(self, rows: list) -> Optional[np.ndarray]:
        """int32 (n, m) padded with -1 from a list of int32 (m_i,) arrays; None if all are empty."""
        m = max((len(r) for r in rows), default=0)
        if m == 0:
            return None
        out = np.full((len(rows), m), -1, np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def _scores_of_states(self, H: np.ndarray, k: int, exclude: Optional[np.ndarray]):
        """Top-k of given top-layer states (n, H_L) without advancing anything."""
        return self._topk(H, self._table, self._b_y, k, exclude, self._scales, self.num_threads)

    # -- single events ------------------------------------------------------------------------------
    def recommend(self, session_id: Hashable, item_id: Any, k: int = 20) -> Result:
        """Feed ``item_id`` to session ``session_id`` and return its top ``k`` next items.

        A new session starts from the zero state. One kernel call (``step_topk``, GIL released); the
        session's lock is held during it, the store's is not.

        Returns
        -------
        item_ids : ndarray (<= k,) of external ids, best first (ties: lower internal index)
        scores : float32 ndarray (<= k,)
        """
        k = self._check_k(k)
        idx = self._resolve(item_id)
        if idx is None:
            return self._current(session_id, k)
        entry = self.store.get(session_id)
        with entry.lock:
            exclude = entry.exclude_with(idx)[None, :] if self.exclude_seen else None
            out_idx, out_sc = self._step_topk(
                self.cell, self.embedding, self._weights, self._E_in, self._W_y, self._b_y,
                entry.h, entry.c, np.array([idx], np.int32), k, exclude, self._table, self._scales,
                self.num_threads)
            if self.exclude_seen:
                entry.add_seen(idx, MAX_SEEN)
            entry.n_events += 1
        return self._external(out_idx[0], out_sc[0])

    def _current(self, session_id: Hashable, k: int) -> Result:
        """Recommendations of the session's current state (zero state if it does not exist)."""
        entry = self.store.get(session_id, create=False)
        if entry is None:
            H = np.zeros((1, self.layers[-1]), np.float32)
            exclude = None
        else:
            with entry.lock:
                H = entry.h[-1].copy()
                exclude = entry.exclude_with(None)[None, :] if self.exclude_seen and entry.seen else None
        idx, sc = self._scores_of_states(H, k, exclude)
        return self._external(idx[0], sc[0])

    def reset(self, session_id: Hashable) -> bool:
        """Forget a session (its next event starts from the zero state); returns whether it existed."""
        return self.store.remove(session_id)

    # -- batches ------------------------------------------------------------------------------------
    def recommend_batch(self, session_ids: Sequence[Hashable], item_ids: Sequence[Any],
                        k: int = 20) -> list[Result]:
        """:meth:`recommend` for many events at once; returns one ``(item_ids, scores)`` per event.

        Events of distinct sessions go to the kernel together (one ``step_topk`` call, states gathered
        into (n, H) arrays and scattered back). A session id that occurs several times in the batch
        has its events applied in batch order, exactly as consecutive :meth:`recommend` calls would:
        the batch is split into rounds (round r holds every session's r-th event), one kernel call per
        round. Under ``unknown_item='raise'`` every item is checked before any state changes.
        """
        k = self._check_k(k)
        session_ids = list(session_ids)
        item_ids = list(item_ids)
        if len(session_ids) != len(item_ids):
            raise ValueError(f"session_ids and item_ids differ in length: {len(session_ids)} != "
                             f"{len(item_ids)}")
        n = len(session_ids)
        if n == 0:
            return []
        idxs = [self._resolve(it) for it in item_ids]
        distinct = list(dict.fromkeys(session_ids))
        with_known = {sid for sid, i in zip(session_ids, idxs) if i is not None}
        if len(with_known) > self.store.max_sessions:
            raise ValueError(f"the batch has {len(with_known)} distinct sessions but the store keeps "
                             f"at most max_sessions={self.store.max_sessions}")
        entries = {sid: self.store.get(sid, create=sid in with_known) for sid in distinct}
        rounds: list[list[int]] = []
        count: dict = {}
        for p, sid in enumerate(session_ids):
            r = count.get(sid, 0)
            count[sid] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(p)
        locked = sorted({id(e): e for e in entries.values() if e is not None}.values(),
                        key=lambda e: e.serial)
        results: list[Optional[Result]] = [None] * n
        for e in locked:
            e.lock.acquire()
        try:
            for rows in rounds:
                self._batch_round(rows, session_ids, idxs, entries, k, results)
        finally:
            for e in locked:
                e.lock.release()
        return results  # type: ignore[return-value]

    def _batch_round(self, rows, session_ids, idxs, entries, k, results) -> None:
        step = [p for p in rows if idxs[p] is not None]
        stay = [p for p in rows if idxs[p] is None]
        if step:
            es = [entries[session_ids[p]] for p in step]
            items = np.array([idxs[p] for p in step], np.int32)
            h = [np.concatenate([e.h[l] for e in es]) for l in range(len(self.layers))]
            c = [np.concatenate([e.c[l] for e in es]) for l in range(len(self.layers))] \
                if self.cell == "lstm" else None
            exclude = (self._exclude_matrix([e.exclude_with(int(i)) for e, i in zip(es, items)])
                       if self.exclude_seen else None)
            out_idx, out_sc = self._step_topk(
                self.cell, self.embedding, self._weights, self._E_in, self._W_y, self._b_y, h, c,
                items, k, exclude, self._table, self._scales, self.num_threads)
            for j, (p, e) in enumerate(zip(step, es)):
                for l in range(len(self.layers)):
                    e.h[l][0] = h[l][j]
                    if c is not None:
                        e.c[l][0] = c[l][j]
                if self.exclude_seen:
                    e.add_seen(int(items[j]), MAX_SEEN)
                e.n_events += 1
                results[p] = self._external(out_idx[j], out_sc[j])
        if stay:
            es = [entries[session_ids[p]] for p in stay]
            H = np.zeros((len(stay), self.layers[-1]), np.float32)
            ex_rows = []
            for j, e in enumerate(es):
                if e is not None:
                    H[j] = e.h[-1][0]
                ex_rows.append(e.exclude_with(None) if (e is not None and self.exclude_seen)
                               else np.zeros(0, np.int32))
            out_idx, out_sc = self._scores_of_states(H, k, self._exclude_matrix(ex_rows))
            for j, p in enumerate(stay):
                results[p] = self._external(out_idx[j], out_sc[j])

    # -- stateless ----------------------------------------------------------------------------------
    def _prefix_indices(self, items: Sequence[Any]) -> list[int]:
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"items must be a sequence of item ids; got {type(items).__name__}")
        out = []
        for it in items:
            i = self._resolve(it)
            if i is not None:
                out.append(i)
        return out

    def _advance_prefix(self, idx: Sequence[int], h: list, c: Optional[list]):
        """Run the recurrent layers over ``idx`` from state (h, c); returns the new (h, c)."""
        X = np.ascontiguousarray(self._input_table[np.asarray(idx, np.int64)])
        _, h_last, c_last, _ = _core.sequence_forward(
            self.cell, X.reshape(len(idx), 1, -1), h, c, None, self._seq_weights, None,
            self.num_threads)
        h = [np.ascontiguousarray(a, dtype=np.float32) for a in h_last]
        c = [np.ascontiguousarray(a, dtype=np.float32) for a in c_last] if c_last is not None else None
        return h, c

    def predict_next(self, items: Sequence[Any], k: int = 20,
                     exclude_seen: Optional[bool] = None) -> Result:
        """Top-``k`` next items after the whole session prefix ``items`` (external ids), statelessly.

        The same result as ``SessionRNN.recommend(items, k, exclude_seen)``. Unknown items follow the
        ``unknown_item`` policy ('skip' drops them; if none is left, the zero state answers).
        ``exclude_seen`` None means the Recommender's setting; with it, every item of the prefix is
        excluded.
        """
        k = self._check_k(k)
        ex_seen = self.exclude_seen if exclude_seen is None else bool(exclude_seen)
        idx = self._prefix_indices(items)
        h, c = self._zero_state(1)
        if not idx:
            out = self._scores_of_states(h[-1], k, None)
            return self._external(out[0][0], out[1][0])
        if len(idx) > 1:
            h, c = self._advance_prefix(idx[:-1], h, c)
        exclude = np.array([list(dict.fromkeys(idx))], np.int32) if ex_seen else None
        out_idx, out_sc = self._step_topk(
            self.cell, self.embedding, self._weights, self._E_in, self._W_y, self._b_y, h, c,
            np.array([idx[-1]], np.int32), k, exclude, self._table, self._scales, self.num_threads)
        return self._external(out_idx[0], out_sc[0])

    # -- vectors and re-ranking ---------------------------------------------------------------------
    # These use the session store only through _session_state (read) and _advance_session (write).
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    """Most candidates one :meth:`rank` / :meth:`rank_prefix` call accepts (ValueError beyond it;
    HTTP 413). A class default; set it on an instance to change it."""

    def _session_state(self, session_id: Hashable) -> tuple[list, list | None] | None:
        """A copy of the live state (h, c) of ``session_id`` (lists of (1, H_l) float32), or None."""
        entry = self.store.get(session_id, create=False)
        if entry is None:
            return None
        with entry.lock:
            return ([a.copy() for a in entry.h],
                    [a.copy() for a in entry.c] if entry.c is not None else None)

    def _advance_session(self, session_id: Hashable, idx: int, kernel: Callable):
        """Feed item ``idx`` to the session (created if new) with ``kernel(h, c)``, which advances
        the state arrays in place and returns the answer; the seen items and event count follow."""
        entry = self.store.get(session_id)
        with entry.lock:
            out = kernel(entry.h, entry.c)
            if self.exclude_seen:
                entry.add_seen(idx, MAX_SEEN)
            entry.n_events += 1
        return out

    def session_vector(self, session_id: Hashable) -> np.ndarray:
        """The session's vector: its last layer's current state (a copy), float32 (H_L,).

        It is exactly the state that scores the session's next item: :meth:`recommend` and
        :meth:`rank` (without ``item_id``) score ``vector · W_y[j] + b_y[j]``.

        Raises
        ------
        UnknownSessionError
            (a ``KeyError``) when the session is not live: never seen, reset, evicted or expired.
        """
        state = self._session_state(session_id)
        if state is None:
            raise UnknownSessionError(session_id)
        return state[0][-1][0]

    def _candidate_index(self, candidates) -> list:
        """Internal index of each candidate, -1 if unknown."""
        if isinstance(candidates, np.ndarray) and candidates.dtype.kind in "iuU":
            candidates = candidates.tolist()
        if self._int_ids and all(type(c) is int for c in candidates):
            get = self._index.get  # plain ints are the map's own keys: no per-item type checks
            return [get(c, -1) for c in candidates]
        return [self._lookup(c) for c in candidates]

    def _ranked(self, candidates, kernel: Callable) -> Ranking:
        """Map ``candidates``, call ``kernel(known (1, C') int32) -> (idx, scores)``, wrap up."""
        check_candidates(candidates, self.max_candidates)
        known, unknown = split_candidates(candidates, self._candidate_index(candidates))
        order, scores = kernel(known[None, :])
        return Ranking(self._ids[order[0]], scores[0], unknown)

    def _rank_state(self, H: np.ndarray, cand: np.ndarray):
        return _core.rank_candidates(H, self._W_y, self._b_y, cand, self.num_threads)

    def _step_rank(self, idx: int, cand: np.ndarray, h: list, c: list | None):
        return _core.step_rank(self.cell, self.embedding, self._weights, self._E_in, self._W_y,
                               self._b_y, h, c, np.array([idx], np.int32), cand, self.num_threads)

    def rank(self, session_id: Hashable, candidates: Sequence[Any], item_id: Any = None) -> Ranking:
        """Order a candidate list (e.g. search results) by the session's next-item scores.

        Only the candidates' rows of the item table are scored: one C++ call, fused with the
        recurrent step when ``item_id`` is given.

        Parameters
        ----------
        session_id : hashable
        candidates : sequence of item ids
            External ids. Unknown ones are returned in ``unknown``, duplicates are scored once, an
            empty list gives an empty result; more than ``max_candidates`` raise ValueError.
        item_id : item id, optional
            An event to feed first: the session advances exactly as with :meth:`recommend` (a new
            session is created; an unknown item follows the ``unknown_item`` policy). Without it,
            nothing changes and a session that is not live ranks from the zero state.

        Returns
        -------
        Ranking
            ``(items, scores, unknown)``: known distinct candidates best first (ties: lower internal
            index), their float32 scores, the unknown candidates. Scores always use the float32
            table, whatever ``precision``; they equal :meth:`recommend`'s to float32 rounding.
        """
        idx = None if item_id is None else self._resolve(item_id)
        if idx is None:
            def kernel(cand):
                state = self._session_state(session_id)
                H = state[0][-1] if state is not None else np.zeros((1, self.layers[-1]), np.float32)
                return self._rank_state(H, cand)
        else:
            def kernel(cand):
                return self._advance_session(session_id, idx,
                                             lambda h, c: self._step_rank(idx, cand, h, c))
        return self._ranked(candidates, kernel)

    def rank_prefix(self, items: Sequence[Any], candidates: Sequence[Any]) -> Ranking:
        """:meth:`rank` after a whole session prefix ``items``, statelessly (no session is touched).

        Unknown prefix items follow the ``unknown_item`` policy ('skip' drops them; with none left
        the zero state ranks). Returns a :class:`~seqrec_fast.ranking.Ranking`.
        """
        idx = self._prefix_indices(items)

        def kernel(cand):
            h, c = self._zero_state(1)
            if not idx:
                return self._rank_state(h[-1], cand)
            if len(idx) > 1:
                h, c = self._advance_prefix(idx[:-1], h, c)
            return self._step_rank(idx[-1], cand, h, c)

        return self._ranked(candidates, kernel)

    # -- reduced precision --------------------------------------------------------------------------
    def _prefix_states(self, prefixes, max_prefixes: int) -> np.ndarray:
        """Top-layer states (n, H_L) after each prefix. A SessionData contributes every prefix of
        every session (all outputs of one pass per session)."""
        from ..data import SessionData

        states = []
        if isinstance(prefixes, SessionData):
            items, offsets = prefixes.items, prefixes.offsets
            for s in range(prefixes.n_sessions):
                seq = items[offsets[s]: offsets[s + 1]]
                seq = seq[seq >= 0]
                if len(seq) == 0:
                    continue
                h, c = self._zero_state(1)
                X = np.ascontiguousarray(self._input_table[seq.astype(np.int64)])
                Y, _, _, _ = _core.sequence_forward(
                    self.cell, X.reshape(len(seq), 1, -1), h, c, None, self._seq_weights, None,
                    self.num_threads)
                states.append(np.asarray(Y, np.float32).reshape(len(seq), -1))
                if sum(len(a) for a in states) >= max_prefixes:
                    break
        else:
            for p in prefixes:
                idx = [i for i in (self._lookup(it) for it in p) if i >= 0]
                if not idx:
                    continue
                h, c = self._advance_prefix(idx, *self._zero_state(1))
                states.append(h[-1])
                if len(states) >= max_prefixes:
                    break
        if not states:
            raise ValueError("no prefix with a known item to evaluate")
        return np.ascontiguousarray(np.concatenate(states)[:max_prefixes], dtype=np.float32)

    def overlap_at_k(self, prefixes, k: int = 20, precision: Optional[str] = None,
                     max_prefixes: int = 10_000) -> float:
        """Mean overlap@k of the reduced-precision top-k against exact float32 scoring.

        Parameters
        ----------
        prefixes : iterable of sequences of external item ids, or a SessionData
            Session prefixes (unknown items are dropped); a SessionData (over the model's item map)
            gives every prefix of every session.
        k : int
        precision : {'bfloat16', 'int8', 'float32'}, optional
            The table to compare (default: this Recommender's). 'float32' gives 1.0.
        max_prefixes : int
            Evaluate at most this many prefixes.

        Returns
        -------
        float : mean over prefixes of |top-k reduced ∩ top-k float32| / k, in [0, 1]
        """
        k = self._check_k(k)
        precision = self.precision if precision is None else precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        H = self._prefix_states(prefixes, int(max_prefixes))
        if precision == "float32":
            return 1.0
        table, scales = (self._table, self._scales) if precision == self.precision \
            else self._reduced(precision)
        exact, _ = self._topk(H, self._W_y, self._b_y, k, None, None, self.num_threads)
        approx, _ = self._topk(H, table, self._b_y, k, None, scales, self.num_threads)
        kk = exact.shape[1]
        total = 0.0
        for a, b in zip(exact, approx):
            total += len(set(a.tolist()) & set(b.tolist())) / kk
        return total / len(H)

    # -- introspection ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    def stats(self) -> dict:
        """Store size and counters (see :meth:`SessionStore.stats`) plus the serving configuration."""
        out = self.store.stats()
        out.update(n_items=self.n_items, precision=self.precision, exclude_seen=self.exclude_seen,
                   unknown_item=self.unknown_item, num_threads=self.num_threads, kernel=self.kernel)
        return out

    @property
    def kernel(self) -> str:
        """'cpp' when the C++ step_topk / topk kernels are used, 'reference' for the NumPy fallback."""
        return "reference" if self._step_topk is reference.step_topk else "cpp"

    def __repr__(self) -> str:
        return (f"Recommender(n_items={self.n_items}, cell={self.cell!r}, layers={self.layers}, "
                f"precision={self.precision!r}, sessions={len(self.store)}/{self.store.max_sessions})")
