"""Serving (DESIGN.md §3.5, §8): the :class:`Recommender`, its session stores and the index.

One module per concern: ``recommender`` (per-event step + top-k over a session store), ``engine``
(what serving derives from one model: weights, packed table, item map, fingerprint), ``store`` (the
session state value, the :class:`SessionStore` protocol, the in-memory store), ``redis_store`` (the
shared Redis store, extra ``redis``), ``index`` (the approximate HNSW top-k index, extra ``index``).
"""

from .recommender import (
    MAX_SEEN,
    PRECISIONS,
    UNKNOWN_ITEM_POLICIES,
    Recommender,
    StoreConflictError,
    UnknownItemError,
    UnknownSessionError,
    model_fingerprint,
)
from .store import (
    MalformedStateError,
    MemorySessionStore,
    SessionState,
    SessionStore,
    StoreUnavailableError,
    open_store,
)

__all__ = [
    "MAX_SEEN",
    "PRECISIONS",
    "UNKNOWN_ITEM_POLICIES",
    "MalformedStateError",
    "MemorySessionStore",
    "Recommender",
    "SessionState",
    "SessionStore",
    "StoreConflictError",
    "StoreUnavailableError",
    "UnknownItemError",
    "UnknownSessionError",
    "model_fingerprint",
    "open_store",
]
