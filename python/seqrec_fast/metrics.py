"""Rank counting and ranking metrics for full-ranking next-item evaluation (DESIGN §3.4).

The rank of a target is never found by sorting the N scores: :func:`rank_counts` counts the items whose
score beats the target's, and :func:`ranks_from_counts` turns the counts into a rank under a tie mode:

- ``conservative`` (default): rank = #items with score >= target's (the target counts itself, so every
  tied item is placed before it);
- ``standard``: rank = #items with score > target's, + 1 (ties placed after it);
- ``median``: the mean of the two bounds.

:func:`rank_counts` is the function a fused C++ kernel will replace; it is vectorised NumPy here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "TIE_MODES",
    "check_cutoffs",
    "metrics_from_ranks",
    "rank_counts",
    "ranks_from_counts",
]

TIE_MODES: tuple[str, ...] = ("conservative", "standard", "median")

# Rows per chunk in rank_counts: bounds the size of the boolean temporaries.
_CHUNK_ELEMS = 1 << 22


def rank_counts(scores: np.ndarray, target_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count, per row, the items scoring above and at-or-above the target.

    Parameters
    ----------
    scores : numpy.ndarray of float, shape (B, N)
        Scores of all N items for B queries.
    target_scores : numpy.ndarray of float, shape (B,)
        The score of each query's target item (normally ``scores[b, target[b]]``).

    Returns
    -------
    n_greater : numpy.ndarray of int64, shape (B,)
        Number of items with score strictly greater than the target's.
    n_greater_equal : numpy.ndarray of int64, shape (B,)
        Number of items with score greater than or equal to the target's (includes the target itself
        when its score is taken from ``scores``).

    Notes
    -----
    A NaN target score compares false with everything; a NaN target is therefore treated as the worst
    possible score: both counts are set to N.
    """
    scores = np.asarray(scores)
    target_scores = np.asarray(target_scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, N), got {scores.shape}")
    if target_scores.shape != (scores.shape[0],):
        raise ValueError(
            f"target_scores must have shape ({scores.shape[0]},), got {target_scores.shape}"
        )
    b, n = scores.shape
    n_gt = np.empty(b, dtype=np.int64)
    n_ge = np.empty(b, dtype=np.int64)
    step = max(1, _CHUNK_ELEMS // max(n, 1))
    for lo in range(0, b, step):
        hi = min(b, lo + step)
        s = scores[lo:hi]
        t = target_scores[lo:hi, None].astype(s.dtype, copy=False)
        n_gt[lo:hi] = np.count_nonzero(s > t, axis=1)
        n_ge[lo:hi] = np.count_nonzero(s >= t, axis=1)
    nan = np.isnan(target_scores)
    if nan.any():
        n_gt[nan] = n
        n_ge[nan] = n
    return n_gt, n_ge


def ranks_from_counts(
    n_greater: np.ndarray, n_greater_equal: np.ndarray, tie_mode: str = "conservative"
) -> np.ndarray:
    """1-based ranks from :func:`rank_counts` under a tie mode.

    Parameters
    ----------
    n_greater, n_greater_equal : numpy.ndarray of int, shape (B,)
    tie_mode : {"conservative", "standard", "median"}

    Returns
    -------
    numpy.ndarray of float64, shape (B,)
        conservative: ``max(n_greater_equal, 1)``; standard: ``n_greater + 1``; median: their mean.
    """
    if tie_mode not in TIE_MODES:
        raise ValueError(f"tie_mode must be one of {TIE_MODES}, got {tie_mode!r}")
    gt = np.asarray(n_greater, dtype=np.float64)
    ge = np.maximum(np.asarray(n_greater_equal, dtype=np.float64), gt + 1.0)
    if tie_mode == "conservative":
        return ge
    if tie_mode == "standard":
        return gt + 1.0
    return 0.5 * (gt + 1.0 + ge)


def check_cutoffs(cutoffs: Any) -> tuple[int, ...]:
    """Validate cut-offs: a non-empty sequence of positive ints; returns them sorted and unique."""
    if isinstance(cutoffs, (int, np.integer)):
        cutoffs = (int(cutoffs),)
    try:
        vals = [int(k) for k in cutoffs]
    except (TypeError, ValueError):
        raise TypeError(f"cutoffs must be a sequence of positive ints, got {cutoffs!r}") from None
    if not vals or any(k < 1 for k in vals) or any(int(k) != k for k in cutoffs):
        raise ValueError(f"cutoffs must be a non-empty sequence of positive ints, got {cutoffs!r}")
    return tuple(sorted(set(vals)))


def metrics_from_ranks(ranks: np.ndarray, cutoffs: Sequence[int]) -> dict[str, float]:
    """Micro-averaged Recall, HitRate, MRR and NDCG at each cut-off.

    Parameters
    ----------
    ranks : numpy.ndarray of float, shape (n_events,)
        1-based ranks; ``inf`` for a miss (e.g. an unknown target).
    cutoffs : sequence of int

    Returns
    -------
    dict
        ``recall@K``, ``hitrate@K`` (equal to recall for one target per event), ``mrr@K`` and
        ``ndcg@K`` for every K; all 0.0 when there are no events.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    n = ranks.size
    for k in check_cutoffs(cutoffs):
        hit = ranks <= k
        if n == 0:
            rec = mrr = ndcg = 0.0
        else:
            r = ranks[hit]
            rec = float(hit.sum()) / n
            mrr = float(np.sum(1.0 / r)) / n
            ndcg = float(np.sum(1.0 / np.log2(r + 1.0))) / n
        out[f"recall@{k}"] = rec
        out[f"mrr@{k}"] = mrr
        out[f"ndcg@{k}"] = ndcg
        out[f"hitrate@{k}"] = rec
    return out
