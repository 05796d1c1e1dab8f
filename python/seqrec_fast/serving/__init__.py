"""Serving (DESIGN.md §3.5, §8): the :class:`Recommender` and its session-state store.

One module per concern: ``recommender`` (per-event step + top-k over a session store).
"""

from .recommender import (
    MAX_SEEN,
    PRECISIONS,
    UNKNOWN_ITEM_POLICIES,
    Recommender,
    SessionStore,
    UnknownItemError,
    UnknownSessionError,
)

__all__ = [
    "MAX_SEEN",
    "PRECISIONS",
    "UNKNOWN_ITEM_POLICIES",
    "Recommender",
    "SessionStore",
    "UnknownItemError",
    "UnknownSessionError",
]
