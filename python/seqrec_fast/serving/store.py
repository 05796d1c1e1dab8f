"""Session state as a value, the :class:`SessionStore` protocol and the in-memory store (DESIGN.md §8).

What is here: :class:`SessionState` (what a live session is), its byte encoding
(:func:`encode_state` / :func:`decode_state`, used by stores that keep bytes), the
:class:`SessionStore` protocol (get, compare-and-set on a per-session version, delete, touch), the
errors a store raises, and :class:`MemorySessionStore` (LRU + TTL in this process, the default).
What is not: the Redis store (``redis_store.py``, optional extra) and anything model-specific; a store
never looks inside a state except to count bytes.

Versions. Every committed write gets a fresh version number, unique for the store's lifetime (a global
counter, so a session deleted and created again never reuses a version: no ABA). A reader gets
``state.version``; a writer commits with ``compare_and_set(sid, state.version, new)``; 0 means "the
session must not exist yet". The write fails (returns None) when another write came in between; the
caller then re-reads and applies its event on top. So two concurrent events of one session are both
applied, in the order in which their writes commit: the event whose write commits first is first in the
session's history, the other one is recomputed from the state that includes it.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "MalformedStateError",
    "MemorySessionStore",
    "SessionState",
    "SessionStore",
    "StoreUnavailableError",
    "decode_state",
    "encode_state",
    "open_store",
]


class StoreUnavailableError(RuntimeError):
    """The session store cannot be reached (e.g. Redis is down). Session endpoints answer 503."""


class MalformedStateError(ValueError):
    """Stored state bytes that do not decode to a :class:`SessionState` (truncated, wrong widths...)."""


@dataclass(frozen=True)
class SessionState:
    """One live session, as a value.

    Attributes
    ----------
    fingerprint : str
        The model's fingerprint (``"sha256:<hex>"``, the checksum of its model file) that produced
        ``h`` / ``c``. A state with another fingerprint is rebuilt by replaying ``recent``.
    h : tuple of float32 (1, H_l) arrays, one per layer
    c : tuple of float32 (1, H_l) arrays (LSTM) or None
    recent : 1-D array of external item ids, oldest first
        The session's last events (at most the Recommender's ``max_recent``), repeats included: the
        items ``exclude_seen`` removes, and what a replay feeds through a new model.
    n_events : int
        Events applied to the session since it started.
    version : int
        Set by the store on read (0 for a state not read from a store).
    """

    fingerprint: str
    h: tuple
    c: Optional[tuple]
    recent: np.ndarray
    n_events: int
    version: int = field(default=0, compare=False)

    @property
    def nbytes(self) -> int:
        """Payload bytes: the state arrays plus the recent item ids."""
        n = sum(a.nbytes for a in self.h) + sum(a.nbytes for a in (self.c or ()))
        r = self.recent
        return n + (r.nbytes if r.dtype.kind in "iu" else sum(len(str(x)) for x in r.tolist()))

    def with_version(self, version: int) -> SessionState:
        return replace(self, version=int(version))


# ---------------------------------------------------------------------------------------------------
# byte encoding: b"SQS1" | u16 len(fp) fp | u8 flags | u16 L | L x u32 H_l | u64 n_events | u32 n_recent
#                | float32 h (all layers) | float32 c (LSTM) | recent (int64 x n, or JSON list of str)
# ---------------------------------------------------------------------------------------------------
_MAGIC = b"SQS1"
_LSTM, _STR_IDS = 1, 2


def encode_state(state: SessionState) -> bytes:
    """The byte form of ``state`` (the version is not part of it: stores keep it beside)."""
    fp = state.fingerprint.encode("utf-8")
    recent = state.recent
    str_ids = recent.dtype.kind not in "iu"
    flags = (_LSTM if state.c is not None else 0) | (_STR_IDS if str_ids else 0)
    widths = [int(a.shape[-1]) for a in state.h]
    parts = [_MAGIC, struct.pack("<H", len(fp)), fp,
             struct.pack(f"<BH{len(widths)}IQI", flags, len(widths), *widths, int(state.n_events),
                         len(recent))]
    parts += [np.ascontiguousarray(a, np.float32).tobytes() for a in state.h]
    if state.c is not None:
        parts += [np.ascontiguousarray(a, np.float32).tobytes() for a in state.c]
    if str_ids:
        parts.append(json.dumps([str(x) for x in recent.tolist()]).encode("utf-8"))
    else:
        parts.append(np.ascontiguousarray(recent, "<i8").tobytes())
    return b"".join(parts)


def decode_state(raw: bytes, version: int = 0) -> SessionState:
    """Inverse of :func:`encode_state`; raises :class:`MalformedStateError` on any inconsistency."""
    try:
        mv = memoryview(raw)
        if bytes(mv[:4]) != _MAGIC:
            raise MalformedStateError(f"bad magic {bytes(mv[:4])!r}; expected {_MAGIC!r}")
        (n_fp,) = struct.unpack_from("<H", mv, 4)
        fp = bytes(mv[6: 6 + n_fp]).decode("utf-8")
        pos = 6 + n_fp
        flags, L = struct.unpack_from("<BH", mv, pos)
        pos += 3
        if not 1 <= L <= 64:
            raise MalformedStateError(f"{L} layers in a stored state")
        widths = struct.unpack_from(f"<{L}I", mv, pos)
        pos += 4 * L
        n_events, n_recent = struct.unpack_from("<QI", mv, pos)
        pos += 12
        if any(not 1 <= w <= 1 << 16 for w in widths):
            raise MalformedStateError(f"layer widths {widths} in a stored state")

        def take_arrays():
            nonlocal pos
            out = []
            for w in widths:
                end = pos + 4 * w
                if end > len(mv):
                    raise MalformedStateError(f"state bytes truncated ({len(mv)} bytes)")
                out.append(np.frombuffer(mv[pos:end], "<f4").astype(np.float32).reshape(1, w))
                pos = end
            return tuple(out)

        h = take_arrays()
        c = take_arrays() if flags & _LSTM else None
        rest = bytes(mv[pos:])
        if flags & _STR_IDS:
            ids = json.loads(rest.decode("utf-8"))
            if not isinstance(ids, list) or len(ids) != n_recent:
                raise MalformedStateError("recent items do not match their count")
            recent = np.asarray(ids, dtype=object) if ids else np.zeros(0, dtype=object)
        else:
            if len(rest) != 8 * n_recent:
                raise MalformedStateError(f"{len(rest)} bytes of recent items; expected {8 * n_recent}")
            recent = np.frombuffer(rest, "<i8").astype(np.int64)
    except MalformedStateError:
        raise
    except (struct.error, ValueError, UnicodeDecodeError, TypeError) as e:
        raise MalformedStateError(f"undecodable state bytes: {e}") from None
    return SessionState(fp, h, c, recent, int(n_events), int(version))


# ---------------------------------------------------------------------------------------------------
# protocol
# ---------------------------------------------------------------------------------------------------
@runtime_checkable
class SessionStore(Protocol):
    """Where session states live. Implementations: :class:`MemorySessionStore` (this process, LRU +
    TTL) and :class:`~seqrec_fast.serving.redis_store.RedisSessionStore` (shared, Redis TTLs).

    Every method may raise :class:`StoreUnavailableError` when the backend cannot be reached. ``get``
    and ``compare_and_set`` are the whole state access of the Recommender.
    """

    ttl_seconds: float

    def get(self, session_id: Hashable) -> Optional[SessionState]:
        """The session's state with its current ``version``, or None if there is none (never stored,
        expired, evicted, deleted, or its stored bytes are malformed)."""

    def compare_and_set(self, session_id: Hashable, expected_version: int,
                        state: SessionState) -> Optional[int]:
        """Store ``state`` if the session's version is still ``expected_version`` (0: it must not
        exist); returns the new version, or None (nothing written) if another write came first.
        A successful write also restarts the session's TTL."""

    def delete(self, session_id: Hashable) -> bool:
        """Forget the session; returns whether it existed."""

    def touch(self, session_id: Hashable) -> bool:
        """Restart the session's TTL without changing it; returns whether it exists."""

    def ping(self) -> bool:
        """Whether the backend answers now (never raises)."""

    def stats(self) -> dict:
        """Counters for /metrics: at least ``sessions``, ``bytes``, ``evictions``, ``expirations``."""


# ---------------------------------------------------------------------------------------------------
# in-memory store
# ---------------------------------------------------------------------------------------------------
class MemorySessionStore:
    """Thread-safe in-process store bounded by an LRU limit and a TTL (the default store).

    Parameters
    ----------
    max_sessions : int
        At most this many sessions are kept; inserting one more evicts the least recently used.
    ttl_seconds : float
        A session not read or written for this long is expired: lazily when it is next looked up, and by
        a sweep at every store operation (expired sessions are a prefix of the LRU order, so a sweep
        costs O(number expired)). ``sweep()`` runs it explicitly.
    clock : callable
        Monotonic time in seconds (inject a fake clock in tests).

    States are kept as the (immutable) :class:`SessionState` objects, not as bytes. One lock guards the
    table and is held for dictionary operations only.
    """

    def __init__(self, max_sessions: int = 100_000, ttl_seconds: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_sessions = int(max_sessions)
        self.ttl_seconds = float(ttl_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        # sid -> [state (version set), last use]
        self._table: OrderedDict[Hashable, list] = OrderedDict()
        self._version = 0
        self.created = 0
        self.evictions = 0
        self.expirations = 0
        self.resets = 0
        self.conflicts = 0

    def __repr__(self) -> str:
        return f"MemorySessionStore(max_sessions={self.max_sessions}, ttl_seconds={self.ttl_seconds})"

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
            if table[sid][1] > limit:
                break
            del table[sid]
            n += 1
        self.expirations += n
        return n

    def sweep(self) -> int:
        """Expire every session idle for longer than the TTL; returns how many."""
        with self._lock:
            return self._sweep_locked(self._clock())

    def get(self, session_id: Hashable) -> Optional[SessionState]:
        with self._lock:
            now = self._clock()
            self._sweep_locked(now)  # also the lazy TTL check of this session
            entry = self._table.get(session_id)
            if entry is None:
                return None
            entry[1] = now
            self._table.move_to_end(session_id)
            return entry[0]

    def compare_and_set(self, session_id: Hashable, expected_version: int,
                        state: SessionState) -> Optional[int]:
        with self._lock:
            now = self._clock()
            self._sweep_locked(now)
            table = self._table
            entry = table.get(session_id)
            current = 0 if entry is None else entry[0].version
            if current != expected_version:
                self.conflicts += 1
                return None
            self._version += 1
            v = self._version
            if entry is None:
                table[session_id] = [state.with_version(v), now]
                self.created += 1
                while len(table) > self.max_sessions:
                    table.popitem(last=False)
                    self.evictions += 1
            else:
                entry[0] = state.with_version(v)
                entry[1] = now
                table.move_to_end(session_id)
            return v

    def delete(self, session_id: Hashable) -> bool:
        with self._lock:
            self._sweep_locked(self._clock())
            found = self._table.pop(session_id, None) is not None
            self.resets += found
            return found

    def touch(self, session_id: Hashable) -> bool:
        return self.get(session_id) is not None

    def ping(self) -> bool:
        return True

    def clear(self) -> None:
        with self._lock:
            self._table.clear()

    def stats(self) -> dict:
        """Size and counters. ``bytes`` counts the state arrays and the recent item ids (8 bytes per
        integer id), not Python object overhead."""
        with self._lock:
            self._sweep_locked(self._clock())
            states = [e[0] for e in self._table.values()]
            out = {
                "store": "memory",
                "sessions": len(states),
                "max_sessions": self.max_sessions,
                "ttl_seconds": self.ttl_seconds,
                "created": self.created,
                "evictions": self.evictions,
                "expirations": self.expirations,
                "resets": self.resets,
                "conflicts": self.conflicts,
            }
        arrays = 0
        if states:
            s = states[0]
            arrays = sum(a.nbytes for a in s.h) + sum(a.nbytes for a in (s.c or ()))
        out["state_bytes_per_session"] = arrays
        out["recent_items"] = sum(len(s.recent) for s in states)
        out["bytes"] = sum(s.nbytes for s in states)
        return out


def open_store(store, max_sessions: int = 100_000, ttl_seconds: float = 1800.0,
               clock: Callable[[], float] = time.monotonic) -> SessionStore:
    """A store from an object (returned as it is), None / ``"memory"`` (a :class:`MemorySessionStore`)
    or a URL ``redis://host:port/db`` (a :class:`~seqrec_fast.serving.redis_store.RedisSessionStore`,
    needs the ``redis`` extra)."""
    if store is None or store == "memory" or store == "memory://":
        return MemorySessionStore(max_sessions, ttl_seconds, clock)
    if isinstance(store, str):
        if store.startswith(("redis://", "rediss://", "unix://")):
            from .redis_store import RedisSessionStore

            return RedisSessionStore(store, ttl_seconds=ttl_seconds)
        raise ValueError(f"store must be 'memory', a 'redis://host:port/db' URL or a SessionStore "
                         f"object; got {store!r}")
    missing = [m for m in ("get", "compare_and_set", "delete", "touch") if not callable(
        getattr(store, m, None))]
    if missing:
        raise TypeError(f"store object {type(store).__name__} lacks SessionStore method(s) {missing}")
    return store
