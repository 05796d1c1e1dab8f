"""The shared session store on Redis (DESIGN.md §8; extra ``seqrec-fast[redis]``, redis-py).

What is here: :class:`RedisSessionStore`, a :class:`~seqrec_fast.serving.store.SessionStore` that keeps
each session as one Redis hash ``<prefix>s:<session_id>`` with two fields, ``v`` (version) and ``s``
(the state bytes of :func:`~seqrec_fast.serving.store.encode_state`), and a TTL of ``ttl_seconds``
restarted by every write and by :meth:`touch`. Every read goes to Redis, so any number of processes and
replicas see the same sessions; the one exception is opt-in and cannot change an answer:

``local_cache=N`` (or ``?local_cache=N`` in the URL) keeps the last N states this process wrote, with
their versions. An event's read-modify-write then starts from the cached state
(:meth:`get_for_update`) and costs one round trip (the compare-and-set) instead of two. A cached state
that another process replaced meanwhile carries an old version, so the compare-and-set refuses it and
the Recommender redoes the event on a fresh read: a stale cache costs a retry, never a lost or a wrong
update. Read-only calls (:meth:`get`) always go to Redis. Worth it when a session's events usually reach
the same process (session-affine load balancing, or one process); with round-robin across N processes
most cached states are stale and each costs one extra round trip.

Compare-and-set is one Lua script, atomic on the server: it writes only if the stored version still is
the expected one (absent = 0), takes the new version from a store-wide counter (``<prefix>version``,
no TTL: versions are never reused, so a session deleted and re-created cannot be mistaken for the old
one), and sets the TTL. Two workers racing on one session: the first script to run wins, the other gets
"conflict" and its Recommender recomputes the event on the winner's state; both events are applied, in
the order their writes reached Redis.

Cost and bounds: a session costs its state bytes (``encode_state``: ~40 bytes of header plus the
fingerprint, 4·ΣH_l bytes of h, the same again for LSTM's c, 8 bytes per remembered event with integer
ids) plus Redis' per-key overhead (~100 bytes for a small hash with a TTL). Bound the total with Redis'
``maxmemory`` and ``maxmemory-policy volatile-lru`` (or ``volatile-ttl``): sessions all carry a TTL and
are evicted least-recently-used first, while the version counter (no TTL) is never evicted. An evicted
session simply starts again from the zero state.

Faults: every Redis error (refused connection, timeout, a server still loading) becomes
:class:`~seqrec_fast.serving.store.StoreUnavailableError` (HTTP 503). redis-py's pool reconnects by
itself on the next call once Redis is back; nothing here needs a restart. Malformed state bytes are
logged and deleted (if nobody rewrote them meanwhile) and the session counts as missing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from .store import (
    MalformedStateError,
    SessionState,
    StoreUnavailableError,
    decode_state,
    encode_state,
)

__all__ = ["RedisSessionStore"]

log = logging.getLogger("seqrec_fast.serving.redis")

# KEYS[1] session key, KEYS[2] version counter; ARGV[1] expected version, ARGV[2] state bytes,
# ARGV[3] ttl in ms. Returns the new version, or 0 when the stored version is not the expected one.
_CAS = """
local v = redis.call('HGET', KEYS[1], 'v')
if v == false then v = '0' end
if v ~= ARGV[1] then return 0 end
local nv = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', nv, 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return nv
"""

# delete KEYS[1] only if its version is still ARGV[1] (used to drop malformed bytes)
_CAD = """
local v = redis.call('HGET', KEYS[1], 'v')
if v == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisSessionStore:
    """Sessions in Redis, shared by every worker and replica that uses the same server and prefix.

    Parameters
    ----------
    url : str
        ``redis://[user:password@]host:port/db`` (or ``rediss://`` for TLS, ``unix:///path?db=0``).
    ttl_seconds : float
        Idle expiry of a session (the key's TTL, restarted at each write and touch).
    prefix : str, default ``"seqrec:"``
        Key prefix, so several models or tenants can share one Redis database.
    socket_timeout : float, default 1.0
        Seconds before a Redis call counts as failed (then 503, not a hung request).
    client : redis.Redis, optional
        Use this client instead of one built from ``url``.
    local_cache : int, default 0
        Keep the last this many states written by this process for :meth:`get_for_update` (one round
        trip per event instead of two when a session's events reach this process; see the module
        docstring). 0: off. A ``local_cache=N`` query parameter of ``url`` sets it too.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", ttl_seconds: float = 1800.0,
                 prefix: str = "seqrec:", socket_timeout: float = 1.0, client=None,
                 local_cache: Optional[int] = None):
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the Redis session store needs redis-py: pip install "
                              f"'seqrec-fast[redis]' ({e})") from None
        parsed = urlparse(url)
        query = parse_qsl(parsed.query, keep_blank_values=True)
        from_url = dict(query).get("local_cache")
        if from_url is not None:
            if local_cache is not None and str(local_cache) != from_url:
                raise ValueError(f"local_cache={local_cache!r} conflicts with the URL's "
                                 f"local_cache={from_url}")
            try:
                local_cache = int(from_url)
            except ValueError:
                raise ValueError(f"local_cache in the store URL must be an int >= 0; got "
                                 f"{from_url!r}") from None
            url = urlunparse(parsed._replace(query=urlencode(
                [(k, v) for k, v in query if k != "local_cache"])))
        local_cache = 0 if local_cache is None else local_cache
        if isinstance(local_cache, bool) or not isinstance(local_cache, int) or local_cache < 0:
            raise ValueError(f"local_cache must be an int >= 0; got {local_cache!r}")
        if client is None:
            if parsed.scheme not in ("redis", "rediss", "unix"):
                raise ValueError(f"not a Redis URL: {url!r}; expected redis://host:port/db")
            client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 1), health_check_interval=0)
        self._redis = redis
        self.client = client
        self.url = url
        self.ttl_seconds = float(ttl_seconds)
        self._ttl_ms = max(1, int(round(self.ttl_seconds * 1000)))
        self.prefix = prefix
        self._counter = prefix + "version"
        self._cas = client.register_script(_CAS)
        self._cad = client.register_script(_CAD)
        self._lock = threading.Lock()
        self.conflicts = 0
        self.malformed = 0
        self.errors = 0
        self.local_cache = int(local_cache)
        self._cache: OrderedDict = OrderedDict()  # session id -> SessionState (with its version)
        self.cache_hits = 0

    def __repr__(self) -> str:
        extra = f", local_cache={self.local_cache}" if self.local_cache else ""
        return f"RedisSessionStore({self._safe_url()!r}, ttl_seconds={self.ttl_seconds}{extra})"

    # -- the opt-in local cache of written states ------------------------------------------------
    def _remember(self, session_id: Hashable, state: Optional[SessionState]) -> None:
        if not self.local_cache:
            return
        with self._lock:
            if state is None:
                self._cache.pop(session_id, None)
                return
            self._cache[session_id] = state
            self._cache.move_to_end(session_id)
            while len(self._cache) > self.local_cache:
                self._cache.popitem(last=False)

    def get_for_update(self, session_id: Hashable) -> Optional[SessionState]:
        """The state to start a read-modify-write from: this process's last written state of the
        session when ``local_cache`` holds it (no round trip; its version makes a compare-and-set
        fail if another process wrote since), else :meth:`get`."""
        if self.local_cache:
            with self._lock:
                state = self._cache.get(session_id)
                if state is not None:
                    self._cache.move_to_end(session_id)
                    self.cache_hits += 1
                    return state
        return self.get(session_id)

    def _safe_url(self) -> str:
        p = urlparse(self.url)
        return self.url.replace(p.password, "***") if p.password else self.url

    def key(self, session_id: Hashable) -> str:
        return f"{self.prefix}s:{session_id}"

    def _unavailable(self, e: Exception) -> StoreUnavailableError:
        with self._lock:
            self.errors += 1
        return StoreUnavailableError(f"session store {self._safe_url()} unavailable: "
                                     f"{type(e).__name__}: {e}")

    # -- protocol -----------------------------------------------------------------------------------
    def get(self, session_id: Hashable) -> Optional[SessionState]:
        key = self.key(session_id)
        try:
            v, raw = self.client.hmget(key, "v", "s")
        except self._redis.RedisError as e:
            raise self._unavailable(e) from None
        if v is None:
            self._remember(session_id, None)
            return None
        try:
            state = decode_state(raw if raw is not None else b"", int(v))
            self._remember(session_id, state)
            return state
        except (MalformedStateError, ValueError) as e:
            with self._lock:
                self.malformed += 1
            log.warning("session %r: malformed state bytes in Redis (%s); dropped, the session "
                        "starts again", session_id, e)
            try:
                self._cad(keys=[key], args=[v])
            except self._redis.RedisError as e2:
                raise self._unavailable(e2) from None
            return None

    def compare_and_set(self, session_id: Hashable, expected_version: int,
                        state: SessionState) -> Optional[int]:
        try:
            nv = self._cas(keys=[self.key(session_id), self._counter],
                           args=[int(expected_version), encode_state(state), self._ttl_ms])
        except self._redis.RedisError as e:
            raise self._unavailable(e) from None
        if not nv:
            with self._lock:
                self.conflicts += 1
            self._remember(session_id, None)
            return None
        if self.local_cache:
            self._remember(session_id, state.with_version(int(nv)))
        return int(nv)

    def delete(self, session_id: Hashable) -> bool:
        self._remember(session_id, None)
        try:
            return bool(self.client.delete(self.key(session_id)))
        except self._redis.RedisError as e:
            raise self._unavailable(e) from None

    def touch(self, session_id: Hashable) -> bool:
        try:
            return bool(self.client.pexpire(self.key(session_id), self._ttl_ms))
        except self._redis.RedisError as e:
            raise self._unavailable(e) from None

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except self._redis.RedisError:
            return False

    def __contains__(self, session_id: Hashable) -> bool:
        try:
            return bool(self.client.exists(self.key(session_id)))
        except self._redis.RedisError as e:
            raise self._unavailable(e) from None

    def __len__(self) -> int:
        """Sessions under this prefix (a SCAN: for tests and tools, not for the hot path)."""
        try:
            return sum(1 for _ in self.client.scan_iter(match=f"{self.prefix}s:*", count=1000))
        except self._redis.RedisError as e:
            raise self._unavailable(e) from None

    def clear(self) -> None:
        """Delete every session under this prefix."""
        with self._lock:
            self._cache.clear()
        try:
            keys = list(self.client.scan_iter(match=f"{self.prefix}s:*", count=1000))
            for i in range(0, len(keys), 1000):
                self.client.delete(*keys[i: i + 1000])
        except self._redis.RedisError as e:
            raise self._unavailable(e) from None

    def stats(self) -> dict:
        """Server-wide figures from INFO (keys of the database, used memory, evicted and expired keys)
        and this client's counters; ``available`` False when Redis does not answer."""
        out = {"store": "redis", "url": self._safe_url(), "ttl_seconds": self.ttl_seconds,
               "conflicts": self.conflicts, "malformed": self.malformed, "errors": self.errors,
               "local_cache": self.local_cache, "cache_hits": self.cache_hits,
               "sessions": 0, "bytes": 0, "evictions": 0, "expirations": 0, "available": True}
        try:
            info = self.client.info()
            db = self.client.connection_pool.connection_kwargs.get("db", 0)
            out["sessions"] = int(info.get(f"db{db}", {}).get("keys", 0))
            out["bytes"] = int(info.get("used_memory", 0))
            out["evictions"] = int(info.get("evicted_keys", 0))
            out["expirations"] = int(info.get("expired_keys", 0))
            out["maxmemory"] = int(info.get("maxmemory", 0))
            out["maxmemory_policy"] = info.get("maxmemory_policy")
        except self._redis.RedisError:
            out["available"] = False
        return out
