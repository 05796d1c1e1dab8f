"""Low-latency serving: the :class:`Recommender` over a session store (DESIGN.md §3.5, §8).

"A user clicked item X in session S; return the next K items now": :meth:`Recommender.recommend`
reads S's state from the store, advances it by one step and returns the top K in one kernel call
(``step_topk``, GIL released), then commits the new state with a compare-and-set on the session's
version. The store is in this process (:class:`~seqrec_fast.serving.store.MemorySessionStore`, LRU +
TTL, the default) or shared (``redis://host:port/db``); the Recommender never assumes the state is
local.

What is deliberately not here: the model side (``engine.py``: weights, packed table, item map,
fingerprint), the HTTP layer (``server.py``), the stores (``store.py``, ``redis_store.py``), the
approximate index (``index.py``), and any popularity prior; the only "no information" answer is the
scores of the zero hidden state.

Concurrency model
-----------------
- Everything derived from the model (weights, packed tables, item map, fingerprint, index) is one
  immutable ``_Engine``; a request takes ``self._engine`` once and uses it throughout, so
  :meth:`Recommender.reload` swaps the model atomically under live traffic.
- Events of one session are optimistic: read (state, version), compute, ``compare_and_set``. When two
  events of one session race, the first write to commit wins the slot and the other one is recomputed
  on top of it, so both are applied, in commit order (none is lost). Different sessions never wait for
  each other.
- A state stamped with another model's fingerprint is rebuilt by replaying its recent items through
  the current model (:meth:`Recommender._load_session`), then the event is applied to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Callable, Optional

import numpy as np

from .. import _core, reference
from ..ranking import DEFAULT_MAX_CANDIDATES, Ranking, check_candidates, split_candidates
from .engine import _check_threads, _Engine, model_fingerprint
from .store import MalformedStateError, SessionState, SessionStore, open_store

__all__ = [
    "MAX_SEEN",
    "PRECISIONS",
    "UNKNOWN_ITEM_POLICIES",
    "Recommender",
    "UnknownItemError",
    "UnknownSessionError",
    "model_fingerprint",
]

log = logging.getLogger("seqrec_fast.serving")

PRECISIONS = ("float32", "bfloat16", "int8")
UNKNOWN_ITEM_POLICIES = ("skip", "raise")
INDEXES = (None, "exact", "hnsw")
MAX_SEEN = 512  # events remembered per session (exclude_seen and replay after a model reload)
MAX_CAS_RETRIES = 1000


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


class StoreConflictError(RuntimeError):
    """A session's compare-and-set kept failing (``MAX_CAS_RETRIES`` concurrent writers in a row)."""


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
        Bound of the in-memory store (LRU eviction beyond it). Not used by a Redis store: bound Redis
        with ``maxmemory`` and an eviction policy.
    ttl_seconds : float, default 1800
        Sessions idle longer than this are expired (a Redis store sets it as each key's TTL).
    exclude_seen : bool, default False
        Never recommend an item among the session's last ``max_recent`` events.
    unknown_item : {'skip', 'raise'}, default 'skip'
        An item id not in the model's item map. ``'skip'``: the session's state is not advanced and the
        recommendations of its current state are returned; for a session that does not exist yet these
        are the scores of the zero hidden state (``b_y`` plus nothing: no popularity prior is added),
        and no session is created. ``'raise'``: :class:`UnknownItemError` (a ``KeyError`` and
        ``ValueError``) naming the item; nothing changes. :meth:`unknown_items` names them without
        raising (the HTTP server returns them as ``"unknown"``).
    precision : {'float32', 'bfloat16', 'int8'}, default 'float32'
        Table used for scoring. The reduced ones are a copy of ``W_y`` made here
        (:func:`~seqrec_fast.reference.quantize_table`); the input embedding and the recurrent layers
        stay float32. Measure the effect with :meth:`overlap_at_k`.
    num_threads : int, default 1
        Threads per kernel call. One is right for single events (DESIGN.md §3.5); a large batch or a
        catalogue of millions may use more.
    clock : callable, default time.monotonic
        Time source of the in-memory store's TTL (inject a fake one in tests).
    store : SessionStore, str or None, default None
        Where session states live: None or ``"memory"`` (a
        :class:`~seqrec_fast.serving.store.MemorySessionStore` with ``max_sessions``, ``ttl_seconds``
        and ``clock``), ``"redis://host:port/db"`` (a shared
        :class:`~seqrec_fast.serving.redis_store.RedisSessionStore`, extra ``seqrec-fast[redis]``), or
        any object following the :class:`~seqrec_fast.serving.store.SessionStore` protocol.
    index : {None, 'exact', 'hnsw'}, default None
        Top-k search. None / ``'exact'``: the fused exact kernel. ``'hnsw'``: an approximate HNSW
        index (:class:`~seqrec_fast.serving.index.HnswIndex`, extra ``seqrec-fast[index]``) over
        ``[W_y[j], b_y[j]]`` queried with ``[h, 1]``; the candidates it returns are rescored exactly.
        For catalogues of millions; float32 only.
    index_path : str, optional
        File of the HNSW index: loaded when it exists and belongs to this model (same fingerprint),
        else built and saved there. None: built in memory.
    index_options : dict, optional
        ``M``, ``ef_construction``, ``ef_search`` of :meth:`HnswIndex.build`.
    max_recent : int, default ``MAX_SEEN`` (512)
        Events remembered per session, for ``exclude_seen`` and for the replay after a model reload.

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
        store: Any = None,
        index: Optional[str] = None,
        index_path: Optional[str] = None,
        index_options: Optional[dict] = None,
        max_recent: int = MAX_SEEN,
    ):
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
        _check_threads(num_threads)
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}; got {index!r}")
        if index == "hnsw" and precision != "float32":
            raise ValueError(f"index='hnsw' searches float32 vectors; precision must be 'float32', "
                             f"got {precision!r}")
        if not isinstance(max_recent, (int, np.integer)) or isinstance(max_recent, bool) \
                or max_recent < 0:
            raise ValueError(f"max_recent must be an int >= 0; got {max_recent!r}")
        self.exclude_seen = bool(exclude_seen)
        self.unknown_item = unknown_item
        self.precision = precision
        self._num_threads = int(num_threads)
        self.index = None if index == "exact" else index
        self.index_path = None if index_path is None else str(index_path)
        self.index_options = dict(index_options or {})
        self.max_recent = int(max_recent)
        self._engine = self._make_engine(model)
        self.store: SessionStore = open_store(store, max_sessions, ttl, clock)
        self.reloads = 0
        self.rebuilt = 0
        self.malformed = 0

    def _make_engine(self, model) -> _Engine:
        if not hasattr(model, "params_"):
            raise ValueError("model is not fitted; fit it or use SessionRNN.load(path)")
        return _Engine(model, self.precision, self.num_threads, self.index, self.index_path,
                       self.index_options)

    @property
    def num_threads(self) -> int:
        """Threads per kernel call. Settable: the served engine (and its index) use the new count
        from the next call on; nothing is rebuilt."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        _check_threads(value)
        self._num_threads = int(value)
        eng = self._engine
        eng.num_threads = int(value)
        if eng.ann is not None and hasattr(eng.ann, "num_threads"):
            eng.ann.num_threads = int(value)

    # -- the model side (read-only views of the current engine) ----------------------------------
    model = property(lambda self: self._engine.model)
    fingerprint = property(lambda self: self._engine.fingerprint, doc="sha256 of the model served")
    n_items = property(lambda self: self._engine.n_items)
    cell = property(lambda self: self._engine.cell)
    embedding = property(lambda self: self._engine.embedding)
    layers = property(lambda self: self._engine.layers)
    _W_y = property(lambda self: self._engine.W_y)
    _b_y = property(lambda self: self._engine.b_y)
    _E_in = property(lambda self: self._engine.E_in)
    _weights = property(lambda self: self._engine.weights)
    _table = property(lambda self: self._engine.table)
    _scales = property(lambda self: self._engine.scales)
    _step_topk = property(lambda self: self._engine.step_topk)
    _topk = property(lambda self: self._engine.topk)
    _ids = property(lambda self: self._engine.ids)
    _index = property(lambda self: self._engine.index)
    _int_ids = property(lambda self: self._engine.int_ids)

    def reload(self, model, index_path: Optional[str] = None) -> str:
        """Serve ``model`` from now on; returns its fingerprint.

        Everything derived from the model (tables, item map, index) is built first, then swapped in
        with one assignment: a request in flight finishes on the model it started with, the next one
        uses the new model. Sessions stay in the store; a session whose state came from another model
        is rebuilt at its next event by replaying its recent items through the new one.
        """
        if index_path is not None:
            self.index_path = str(index_path)
        engine = self._make_engine(model)
        old = self._engine.fingerprint
        self._engine = engine
        self.reloads += 1
        log.info("model reloaded: %s -> %s (%d items)", old, engine.fingerprint, engine.n_items)
        return engine.fingerprint

    def add_items(self, ids: Sequence[Any], features: Any = None) -> None:
        """Add new items to the live model without retraining (see
        :meth:`SessionRNN.add_items <seqrec_fast.model.SessionRNN.add_items>`): with item features
        they are scored by ``F @ P`` from the next request on.

        The model grows (new arrays; the served ones are not touched), then a new engine is built
        (the table ``W_y + F @ P`` folded once) and swapped in with one assignment, as
        :meth:`reload` does: a request in flight finishes on the old tables. Raises ValueError (an id
        the model already has, a feature width that differs from the model's, NaN / inf features);
        the model and this recommender are then unchanged.
        """
        model = self.model
        model.add_items(ids, features)
        self._engine = self._make_engine(model)

    # -- helpers ----------------------------------------------------------------------------------
    def _zero_state(self, n: int = 1) -> tuple[list, Optional[list]]:
        return self._engine.zero_state(n)

    def _lookup(self, item: Any) -> int:
        return self._engine.lookup(item)

    def _resolve(self, item: Any, eng: Optional[_Engine] = None) -> Optional[int]:
        """Internal index, or None for an unknown item under 'skip'; raises under 'raise'."""
        eng = eng or self._engine
        i = eng.lookup(item)
        if i >= 0:
            return i
        if self.unknown_item == "raise":
            raise UnknownItemError(item, eng.n_items)
        return None

    def index_of(self, item: Any) -> int:
        """Internal index of ``item`` (-1 if unknown). For tests and debugging only."""
        return self._engine.lookup(item)

    def unknown_items(self, items: Iterable[Any]) -> list:
        """The ids among ``items`` that the model does not know, in order (TypeError for a non-id)."""
        eng = self._engine
        return [it for it in items if eng.lookup(it) < 0]

    @staticmethod
    def _check_k(k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1; got {k!r}")
        return int(k)

    @staticmethod
    def _external_of(eng: _Engine, idx: np.ndarray, scores: np.ndarray) -> Result:
        if len(idx) and idx[-1] < 0:  # padding (-1) only ever trails the valid entries
            n = int(np.count_nonzero(idx >= 0))
            idx, scores = idx[:n], scores[:n]
        return eng.ids[idx], scores

    def _external(self, idx: np.ndarray, scores: np.ndarray) -> Result:
        return self._external_of(self._engine, idx, scores)

    @staticmethod
    def _exclude_matrix(rows: list) -> Optional[np.ndarray]:
        """int32 (n, m) padded with -1 from a list of int32 (m_i,) arrays; None if all are empty."""
        m = max((len(r) for r in rows), default=0)
        if m == 0:
            return None
        out = np.full((len(rows), m), -1, np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def _scores_of_states(self, H: np.ndarray, k: int, exclude: Optional[np.ndarray]):
        return self._engine.scores_of_states(H, k, exclude)

    # -- state access: the one place that reads the store -----------------------------------------
    def _load_session(self, eng: _Engine, session_id: Hashable,
                      for_update: bool = False) -> tuple[Optional[SessionState], int]:
        """The session's state as ``eng`` sees it, and the stored version to commit against.

        ``for_update``: the read starts a read-modify-write (the first attempt of an event), so a
        store's ``get_for_update`` may answer from its local cache (a stale answer only makes the
        compare-and-set fail and the event retry on a fresh read).

        Returns ``(None, 0)`` for no session; ``(None, v)`` for a stored state that is malformed (it
        counts as missing and is logged; the next write replaces it); ``(state, v)`` otherwise, with a
        state of another model's fingerprint rebuilt by replaying its recent items through ``eng``.
        Raises :class:`~seqrec_fast.serving.store.StoreUnavailableError` when the store is down.
        """
        get = self.store.get
        if for_update:
            get = getattr(self.store, "get_for_update", get)
        try:
            state = get(session_id)
        except MalformedStateError as e:  # a store that hands malformed bytes up instead of dropping
            self.malformed += 1
            log.warning("session %r: malformed state (%s); treated as a new session", session_id, e)
            return None, int(getattr(e, "version", 0))
        if state is None:
            return None, 0
        if state.fingerprint != eng.fingerprint:
            self.rebuilt += 1
            return eng.rebuild(state), state.version
        if not eng.fits(state):
            self.malformed += 1
            log.warning("session %r: stored state does not fit the model (layers %s); treated as a "
                        "new session", session_id, [a.shape for a in state.h])
            return None, state.version
        return state, state.version

    def _commit(self, session_id: Hashable, version: int, state: SessionState) -> bool:
        return self.store.compare_and_set(session_id, version, state) is not None

    def _next_recent(self, eng: _Engine, state: Optional[SessionState], idx: int) -> np.ndarray:
        recent = state.recent if state is not None else np.zeros(0, eng.recent_dtype())
        if self.max_recent == 0:
            return recent[:0]
        new = np.empty(min(len(recent) + 1, self.max_recent), dtype=eng.recent_dtype())
        keep = len(new) - 1
        if keep:
            new[:keep] = recent[len(recent) - keep:]
        new[-1] = eng.ids[idx]
        return new

    # -- single events ------------------------------------------------------------------------------
    def recommend(self, session_id: Hashable, item_id: Any, k: int = 20) -> Result:
        """Feed ``item_id`` to session ``session_id`` and return its top ``k`` next items.

        A new session starts from the zero state. One kernel call (``step_topk``, GIL released) between
        a read and a compare-and-set of the session's state; a concurrent event of the same session
        that commits first makes this one recompute on top of it.

        Returns
        -------
        item_ids : ndarray (<= k,) of external ids, best first (ties: lower internal index)
        scores : float32 ndarray (<= k,)
        """
        k = self._check_k(k)
        eng = self._engine
        idx = self._resolve(item_id, eng)
        if idx is None:
            return self._current(eng, session_id, k)
        items = np.array([idx], np.int32)
        for attempt in range(MAX_CAS_RETRIES):
            state, version = self._load_session(eng, session_id, for_update=attempt == 0)
            if state is None:
                h, c = eng.zero_state(1)
                recent = np.zeros(0, eng.recent_dtype())
            else:
                h = [a.copy() for a in state.h]
                c = [a.copy() for a in state.c] if state.c is not None else None
                recent = state.recent
            exclude = eng.exclude_of(recent, idx)[None, :] if self.exclude_seen else None
            out_idx, out_sc = eng.step(h, c, items, k, exclude)
            new = SessionState(eng.fingerprint, tuple(h), tuple(c) if c is not None else None,
                               self._next_recent(eng, state, idx),
                               (state.n_events if state is not None else 0) + 1)
            if self._commit(session_id, version, new):
                return self._external_of(eng, out_idx[0], out_sc[0])
            if attempt > 8:
                time.sleep(1e-4 * min(attempt, 50))
        raise StoreConflictError(f"session {session_id!r}: {MAX_CAS_RETRIES} concurrent writes in a row")

    def _current(self, eng: _Engine, session_id: Hashable, k: int) -> Result:
        """Recommendations of the session's current state (zero state if it does not exist)."""
        state, _ = self._load_session(eng, session_id)
        if state is None:
            H = np.zeros((1, eng.layers[-1]), np.float32)
            exclude = None
        else:
            H = state.h[-1]
            exclude = None
            if self.exclude_seen and len(state.recent):
                ex = eng.exclude_of(state.recent, None)
                exclude = ex[None, :] if len(ex) else None
        idx, sc = eng.scores_of_states(H, k, exclude)
        return self._external_of(eng, idx[0], sc[0])

    def reset(self, session_id: Hashable) -> bool:
        """Forget a session (its next event starts from the zero state); returns whether it existed."""
        return self.store.delete(session_id)

    # -- batches ------------------------------------------------------------------------------------
    def recommend_batch(self, session_ids: Sequence[Hashable], item_ids: Sequence[Any],
                        k: int = 20) -> list[Result]:
        """:meth:`recommend` for many events at once; returns one ``(item_ids, scores)`` per event.

        Events of distinct sessions go to the kernel together (one ``step_topk`` call, states gathered
        into (n, H) arrays and scattered back). A session id that occurs several times in the batch
        has its events applied in batch order, exactly as consecutive :meth:`recommend` calls would:
        the batch is split into rounds (round r holds every session's r-th event), one kernel call per
        round. Each session's new state is committed with its own compare-and-set; the sessions whose
        write lost a race are recomputed from their fresh state. Under ``unknown_item='raise'`` every
        item is checked before any state changes.
        """
        k = self._check_k(k)
        eng = self._engine
        session_ids = list(session_ids)
        item_ids = list(item_ids)
        if len(session_ids) != len(item_ids):
            raise ValueError(f"session_ids and item_ids differ in length: {len(session_ids)} != "
                             f"{len(item_ids)}")
        n = len(session_ids)
        if n == 0:
            return []
        idxs = [self._resolve(it, eng) for it in item_ids]
        with_known = {sid for sid, i in zip(session_ids, idxs) if i is not None}
        max_sessions = getattr(self.store, "max_sessions", None)
        if max_sessions is not None and len(with_known) > max_sessions:
            raise ValueError(f"the batch has {len(with_known)} distinct sessions but the store keeps "
                             f"at most max_sessions={max_sessions}")
        results: list[Optional[Result]] = [None] * n
        todo = list(dict.fromkeys(session_ids))
        for _attempt in range(MAX_CAS_RETRIES):
            loaded = {sid: self._load_session(eng, sid, for_update=_attempt == 0) for sid in todo}
            states = {sid: st for sid, (st, _v) in loaded.items()}
            mine = set(todo)
            positions = [p for p in range(n) if session_ids[p] in mine]
            rounds: list[list[int]] = []
            count: dict = {}
            for p in positions:
                r = count.get(session_ids[p], 0)
                count[session_ids[p]] = r + 1
                if r == len(rounds):
                    rounds.append([])
                rounds[r].append(p)
            staged: dict = {}
            for rows in rounds:
                self._batch_round(eng, rows, session_ids, idxs, states, k, staged)
            failed = []
            for sid in todo:
                if sid in with_known and not self._commit(sid, loaded[sid][1], states[sid]):
                    failed.append(sid)
            for p in positions:
                if session_ids[p] not in failed:
                    results[p] = staged[p]
            if not failed:
                return results  # type: ignore[return-value]
            todo = failed
        raise StoreConflictError(f"sessions {todo[:3]!r}: {MAX_CAS_RETRIES} concurrent writes in a row")

    def _batch_round(self, eng: _Engine, rows, session_ids, idxs, states: dict, k: int,
                     staged: dict) -> None:
        """One round of a batch: advance the sessions of ``rows`` (at most one event each) in one
        kernel call; ``states`` is updated with the new states, ``staged`` with each row's result."""
        step = [p for p in rows if idxs[p] is not None]
        stay = [p for p in rows if idxs[p] is None]
        L = len(eng.layers)
        if step:
            sts = [states[session_ids[p]] for p in step]
            items = np.array([idxs[p] for p in step], np.int32)
            zh, zc = eng.zero_state(1)
            h = [np.concatenate([s.h[l] if s is not None else zh[l] for s in sts]) for l in range(L)]
            c = [np.concatenate([s.c[l] if s is not None else zc[l] for s in sts]) for l in range(L)] \
                if eng.cell == "lstm" else None
            exclude = None
            if self.exclude_seen:
                exclude = self._exclude_matrix([
                    eng.exclude_of(s.recent if s is not None else np.zeros(0, eng.recent_dtype()),
                                   int(i)) for s, i in zip(sts, items)])
            out_idx, out_sc = eng.step(h, c, items, k, exclude)
            for j, (p, s) in enumerate(zip(step, sts)):
                states[session_ids[p]] = SessionState(
                    eng.fingerprint, tuple(h[l][j: j + 1].copy() for l in range(L)),
                    tuple(c[l][j: j + 1].copy() for l in range(L)) if c is not None else None,
                    self._next_recent(eng, s, int(items[j])),
                    (s.n_events if s is not None else 0) + 1)
                staged[p] = self._external_of(eng, out_idx[j], out_sc[j])
        if stay:
            sts = [states[session_ids[p]] for p in stay]
            H = np.zeros((len(stay), eng.layers[-1]), np.float32)
            ex_rows = []
            for j, s in enumerate(sts):
                if s is not None:
                    H[j] = s.h[-1][0]
                ex_rows.append(eng.exclude_of(s.recent, None) if (s is not None and self.exclude_seen)
                               else np.zeros(0, np.int32))
            out_idx, out_sc = eng.scores_of_states(H, k, self._exclude_matrix(ex_rows))
            for j, p in enumerate(stay):
                staged[p] = self._external_of(eng, out_idx[j], out_sc[j])

    # -- stateless ----------------------------------------------------------------------------------
    def _prefix_indices(self, items: Sequence[Any], eng: Optional[_Engine] = None) -> list[int]:
        eng = eng or self._engine
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"items must be a sequence of item ids; got {type(items).__name__}")
        out = []
        for it in items:
            i = self._resolve(it, eng)
            if i is not None:
                out.append(i)
        return out

    def _advance_prefix(self, idx: Sequence[int], h: list, c: Optional[list]):
        """Run the recurrent layers over ``idx`` from state (h, c); returns the new (h, c)."""
        return self._engine.advance(idx, h, c)

    def predict_next(self, items: Sequence[Any], k: int = 20,
                     exclude_seen: Optional[bool] = None) -> Result:
        """Top-``k`` next items after the whole session prefix ``items`` (external ids), statelessly.

        The same result as ``SessionRNN.recommend(items, k, exclude_seen)``. Unknown items follow the
        ``unknown_item`` policy ('skip' drops them; if none is left, the zero state answers).
        ``exclude_seen`` None means the Recommender's setting; with it, every item of the prefix is
        excluded. Never touches the session store.
        """
        k = self._check_k(k)
        eng = self._engine
        ex_seen = self.exclude_seen if exclude_seen is None else bool(exclude_seen)
        idx = self._prefix_indices(items, eng)
        h, c = eng.zero_state(1)
        if not idx:
            out = eng.scores_of_states(h[-1], k, None)
            return self._external_of(eng, out[0][0], out[1][0])
        if len(idx) > 1:
            h, c = eng.advance(idx[:-1], h, c)
        exclude = np.array([list(dict.fromkeys(idx))], np.int32) if ex_seen else None
        out_idx, out_sc = eng.step(h, c, np.array([idx[-1]], np.int32), k, exclude)
        return self._external_of(eng, out_idx[0], out_sc[0])

    # -- vectors and re-ranking ---------------------------------------------------------------------
    # These use the session store only through _session_state (read) and _advance_session (write).
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    """Most candidates one :meth:`rank` / :meth:`rank_prefix` call accepts (ValueError beyond it;
    HTTP 413). A class default; set it on an instance to change it."""

    def _session_state(self, session_id: Hashable) -> Optional[tuple[list, Optional[list]]]:
        """A copy of the live state (h, c) of ``session_id`` (lists of (1, H_l) float32), or None.
        Reads through :meth:`_load_session` (a state of another model is replayed first)."""
        state, _version = self._load_session(self._engine, session_id)
        if state is None:
            return None
        return ([a.copy() for a in state.h],
                [a.copy() for a in state.c] if state.c is not None else None)

    def _advance_session(self, session_id: Hashable, idx: int, kernel: Callable):
        """Feed item ``idx`` to the session (created if new) with ``kernel(h, c)``, which advances
        the state arrays in place and returns the answer; the recent items and event count follow.
        Committed with a compare-and-set like :meth:`recommend` (recomputed on a lost race)."""
        eng = self._engine
        for attempt in range(MAX_CAS_RETRIES):
            state, version = self._load_session(eng, session_id, for_update=attempt == 0)
            if state is None:
                h, c = eng.zero_state(1)
            else:
                h = [a.copy() for a in state.h]
                c = [a.copy() for a in state.c] if state.c is not None else None
            out = kernel(h, c)
            new = SessionState(eng.fingerprint, tuple(h), tuple(c) if c is not None else None,
                               self._next_recent(eng, state, idx),
                               (state.n_events if state is not None else 0) + 1)
            if self._commit(session_id, version, new):
                return out
            if attempt > 8:
                time.sleep(1e-4 * min(attempt, 50))
        raise StoreConflictError(f"session {session_id!r}: {MAX_CAS_RETRIES} concurrent writes in a row")

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

    def _step_rank(self, idx: int, cand: np.ndarray, h: list, c: Optional[list]):
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

    # -- approximate scoring: reduced precision, index --------------------------------------------
    def _prefix_states(self, prefixes, max_prefixes: int, eng: Optional[_Engine] = None) -> np.ndarray:
        """Top-layer states (n, H_L) after each prefix. A SessionData contributes every prefix of
        every session (all outputs of one pass per session)."""
        from ..data import SessionData

        eng = eng or self._engine
        states = []
        if isinstance(prefixes, SessionData):
            items, offsets = prefixes.items, prefixes.offsets
            for s in range(prefixes.n_sessions):
                seq = items[offsets[s]: offsets[s + 1]]
                seq = seq[seq >= 0]
                if len(seq) == 0:
                    continue
                h, c = eng.zero_state(1)
                X = np.ascontiguousarray(eng.input_table[seq.astype(np.int64)])
                Y, _, _, _ = _core.sequence_forward(
                    eng.cell, X.reshape(len(seq), 1, -1), h, c, None, eng.seq_weights, None,
                    self.num_threads)
                states.append(np.asarray(Y, np.float32).reshape(len(seq), -1))
                if sum(len(a) for a in states) >= max_prefixes:
                    break
        else:
            for p in prefixes:
                idx = [i for i in (eng.lookup(it) for it in p) if i >= 0]
                if not idx:
                    continue
                h, c = eng.advance(idx, *eng.zero_state(1))
                states.append(h[-1])
                if len(states) >= max_prefixes:
                    break
        if not states:
            raise ValueError("no prefix with a known item to evaluate")
        return np.ascontiguousarray(np.concatenate(states)[:max_prefixes], dtype=np.float32)

    def overlap_at_k(self, prefixes, k: int = 20, precision: Optional[str] = None,
                     max_prefixes: int = 10_000) -> float:
        """Mean overlap@k of the approximate top-k against exact float32 scoring.

        The approximation is the reduced-precision table (``precision`` other than float32) or, for a
        float32 Recommender with ``index='hnsw'``, the index.

        Parameters
        ----------
        prefixes : iterable of sequences of external item ids, or a SessionData
            Session prefixes (unknown items are dropped); a SessionData (over the model's item map)
            gives every prefix of every session.
        k : int
        precision : {'bfloat16', 'int8', 'float32'}, optional
            The table to compare (default: this Recommender's). 'float32' without an index gives 1.0.
        max_prefixes : int
            Evaluate at most this many prefixes.

        Returns
        -------
        float : mean over prefixes of |top-k approximate ∩ top-k float32| / k, in [0, 1]
        """
        k = self._check_k(k)
        eng = self._engine
        precision = self.precision if precision is None else precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        H = self._prefix_states(prefixes, int(max_prefixes), eng)
        if precision == "float32" and eng.ann is None:
            return 1.0
        exact, _ = eng.topk(H, eng.W_y, eng.b_y, k, None, None, self.num_threads)
        if precision == "float32":
            approx, _ = eng.ann.search(H, k, None)
        else:
            table, scales = (eng.table, eng.scales) if precision == self.precision \
                else eng.reduced(precision)
            approx, _ = eng.topk(H, table, eng.b_y, k, None, scales, self.num_threads)
        kk = exact.shape[1]
        total = 0.0
        for a, b in zip(exact, approx):
            total += len(set(a.tolist()) & set(b.tolist()) - {-1}) / kk
        return total / len(H)

    # -- introspection ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    def stats(self) -> dict:
        """Store size and counters (the store's ``stats()``) plus the serving configuration."""
        out = self.store.stats()
        eng = self._engine
        out.update(n_items=eng.n_items, precision=self.precision, exclude_seen=self.exclude_seen,
                   unknown_item=self.unknown_item, num_threads=self.num_threads, kernel=self.kernel,
                   index=self.index or "exact", fingerprint=eng.fingerprint, reloads=self.reloads,
                   rebuilt_sessions=self.rebuilt, malformed_states=self.malformed)
        return out

    @property
    def kernel(self) -> str:
        """'cpp' when the C++ step_topk / topk kernels are used, 'reference' for the NumPy fallback."""
        return "reference" if self._engine.step_topk is reference.step_topk else "cpp"

    def __repr__(self) -> str:
        return (f"Recommender(n_items={self.n_items}, cell={self.cell!r}, layers={self.layers}, "
                f"precision={self.precision!r}, index={self.index or 'exact'!r}, store={self.store!r})")
