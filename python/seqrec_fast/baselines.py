"""Baselines for next-item recommendation, all implementing the :class:`~seqrec_fast.evaluate.NextItemScorer`
protocol so that they run in the same harness as the learned models.

=========  ====================================================================================
name       model
=========  ====================================================================================
pop        item popularity (number of training events)
spop       session popularity: items already in the current session first (by their count there),
           then global popularity
itemknn    item-to-item kNN on session co-occurrence, the baseline of the GRU4Rec paper:
           ``sim(i, j) = c(i, j) / ((s_i + lambda)^alpha (s_j + lambda)^(1 - alpha))`` with c the
           co-occurrence count of events in the same session and s the item support; scores are the
           similarities to the last item (top ``n_sims`` kept per item)
sr         sequential rules (Ludewig & Jannach 2018): rule ``a -> b`` gains ``1/d`` each time b follows a
           at distance ``d <= steps`` in a session; scores are the rules of the last item (top
           ``pruning`` kept per item, 0 = all)
sknn       session-kNN: candidate neighbours are the ``sample_size`` most recent training sessions that
           share an item with the current session; the ``k`` most similar (cosine on item sets) vote for
           their items with their similarity
vsknn      V-SKNN: as sknn, but the current session is a vector with linearly decaying position weights
           (most recent item 1, then -0.1 per step back, floor 0) and ``sim = sum_{i in A and B} w_i / |A|``
=========  ====================================================================================

Estimators follow the scikit-learn contract: ``__init__`` stores the arguments, ``fit(train)`` returns
self, fitted state ends in ``_``, ``get_params``/``set_params``. Items never scored by a model get 0 (ties
are then resolved by the evaluation's tie mode). "Recent" training sessions are those with the latest last
event (by time when the training data has times, else by position in the data).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .data import SessionData

__all__ = [
    "BASELINES",
    "SKNN",
    "VSKNN",
    "ItemKNN",
    "Popularity",
    "SequentialRules",
    "SessionPopularity",
    "get_baseline",
]


class _Baseline:
    """Shared plumbing: parameters, fitted checks, per-slot last item and session history."""

    _params: tuple[str, ...] = ()
    _uses_history = False

    # -- scikit-learn contract ----------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters as a dict."""
        return {k: getattr(self, k) for k in self._params}

    def set_params(self, **params: Any) -> _Baseline:
        """Set constructor parameters; unknown names raise ValueError."""
        for k, v in params.items():
            if k not in self._params:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {k!r}; valid: {list(self._params)}"
                )
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitting helpers ----------------------------------------------------------------------------
    @staticmethod
    def _check_train(train: Any) -> SessionData:
        if not isinstance(train, SessionData):
            raise TypeError(f"fit expects a SessionData, got {type(train).__name__}")
        if train.n_items == 0 or train.n_events == 0:
            raise ValueError("fit needs non-empty training data")
        return train

    @property
    def n_items(self) -> int:
        """Number of training items (after fit)."""
        self._check_fitted()
        return int(self.n_items_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train) first")

    # -- scorer protocol ----------------------------------------------------------------------------
    def start(self, n_slots: int) -> None:
        """Allocate state for ``n_slots`` concurrent sessions."""
        self._check_fitted()
        if int(n_slots) < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        self._last = np.full(int(n_slots), -1, dtype=np.int32)
        if self._uses_history:
            self._hist: list[list[int]] = [[] for _ in range(int(n_slots))]

    def reset(self, slots: np.ndarray) -> None:
        """Start new empty sessions in ``slots`` (int64, shape (k,))."""
        slots = np.asarray(slots, dtype=np.int64)
        self._last[slots] = -1
        if self._uses_history:
            for s in slots.tolist():
                self._hist[s] = []

    def score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Feed ``items`` (int32, shape (k,)) into ``slots``; return float32 scores, shape (k, n_items)."""
        if not hasattr(self, "_last"):
            raise RuntimeError("call start(n_slots) before score()")
        slots = np.asarray(slots, dtype=np.int64)
        items = np.asarray(items, dtype=np.int32)
        if slots.shape != items.shape or slots.ndim != 1:
            raise ValueError(
                f"slots and items must be 1-D of equal length, got {slots.shape}, {items.shape}"
            )
        if items.size and (items.min() < 0 or items.max() >= self.n_items_):
            raise ValueError(
                f"items must lie in [0, {self.n_items_}), got [{items.min()}, {items.max()}]"
            )
        self._last[slots] = items
        if self._uses_history:
            hist = self._hist
            for s, i in zip(slots.tolist(), items.tolist()):
                hist[s].append(i)
        return self._score(slots, items)

    def _score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _histories(
        self, slots: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flattened histories of ``slots``: (row, item, position) int64 arrays and lengths."""
        hs = [self._hist[s] for s in slots.tolist()]
        lens = np.fromiter((len(h) for h in hs), dtype=np.int64, count=len(hs))
        flat = np.fromiter((x for h in hs for x in h), dtype=np.int64, count=int(lens.sum()))
        rows = np.repeat(np.arange(len(hs), dtype=np.int64), lens)
        pos = np.arange(flat.size, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        return rows, flat, pos, lens


def _session_item_matrix(train: SessionData, binary: bool) -> sp.csr_matrix:
    """(n_sessions, n_items) CSR: event counts (or 0/1) of each item in each training session."""
    known = train.items >= 0
    rows = train.session_index()[known]
    cols = train.items[known].astype(np.int64)
    m = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float64), (rows, cols)),
        shape=(train.n_sessions, train.n_items),
    )
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m


def _prune_rows(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each CSR row (ties: lower column first)."""
    m = m.tocsr()
    m.sum_duplicates()
    if k <= 0 or m.nnz == 0:
        return m
    counts = np.diff(m.indptr)
    if counts.max() <= k:
        return m
    rows = np.repeat(np.arange(m.shape[0]), counts)
    order = np.lexsort((m.indices, -m.data, rows))
    rank = np.arange(m.nnz) - m.indptr[:-1][rows[order]]
    keep = order[rank < k]
    out = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
    out.sort_indices()
    return out


def _check_positive(name: str, value: Any, minimum: float = 0, integer: bool = False) -> None:
    ok = (
        isinstance(value, (int, np.integer))
        if integer
        else isinstance(value, (int, float, np.number))
    )
    if not ok or isinstance(value, bool) or value < minimum:
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------------
class Popularity(_Baseline):
    """Most popular items: score = number of training events of the item (scaled to [0, 1])."""

    _params = ()

    def fit(self, train: SessionData) -> Popularity:
        """Count item support in ``train``; returns self."""
        train = self._check_train(train)
        supp = train.item_support().astype(np.float64)
        self.n_items_ = train.n_items
        self.scores_ = (supp / max(supp.max(), 1.0)).astype(np.float32)
        return self

    def _score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.scores_, (slots.size, self.n_items_))


class SessionPopularity(_Baseline):
    """Session popularity: items of the current session by their count in it, then global popularity.

    Score of item j = (#times j occurred in the current session) + support_j / (max support + 1).
    """

    _params = ()
    _uses_history = True

    def fit(self, train: SessionData) -> SessionPopularity:
        """Count item support in ``train``; returns self."""
        train = self._check_train(train)
        supp = train.item_support().astype(np.float64)
        self.n_items_ = train.n_items
        self.pop_ = (supp / (supp.max() + 1.0)).astype(np.float32)
        return self

    def _score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows, flat, _, _ = self._histories(slots)
        out = np.tile(self.pop_, (slots.size, 1))
        np.add.at(out, (rows, flat), np.float32(1.0))
        return out


class ItemKNN(_Baseline):
    """Item-kNN on session co-occurrence (GRU4Rec paper baseline).

    Parameters
    ----------
    n_sims : int, default 100
        Neighbours kept per item (0 = all).
    lmbd : float, default 20
        Regularisation lambda added to the supports.
    alpha : float, default 0.5
        Balance of the two supports in the normaliser (0.5 = cosine-like).
    """

    _params = ("n_sims", "lmbd", "alpha")

    def __init__(self, n_sims: int = 100, lmbd: float = 20.0, alpha: float = 0.5) -> None:
        self.n_sims = n_sims
        self.lmbd = lmbd
        self.alpha = alpha

    def fit(self, train: SessionData) -> ItemKNN:
        """Build the pruned item-item similarity matrix (CSR, n_items x n_items); returns self."""
        train = self._check_train(train)
        _check_positive("n_sims", self.n_sims, 0, integer=True)
        _check_positive("lmbd", self.lmbd, 0)
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        x = _session_item_matrix(train, binary=False)
        co = (x.T @ x).tocsr()
        co.setdiag(0.0)
        co.eliminate_zeros()
        supp = train.item_support().astype(np.float64) + float(self.lmbd)
        left = np.power(supp, float(self.alpha))
        right = np.power(supp, 1.0 - float(self.alpha))
        left[left == 0] = 1.0
        right[right == 0] = 1.0
        sims = sp.diags(1.0 / left) @ co @ sp.diags(1.0 / right)
        self.sims_ = _prune_rows(sp.csr_matrix(sims, dtype=np.float32), int(self.n_sims))
        self.n_items_ = train.n_items
        return self

    def _score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.sims_[items].toarray()


class SequentialRules(_Baseline):
    """Sequential rules (Ludewig & Jannach): weighted "b follows a within ``steps``" counts.

    Parameters
    ----------
    steps : int, default 10
        Maximal distance d between a and b; each occurrence adds ``1/d`` to rule ``a -> b``.
    pruning : int, default 20
        Rules kept per item, the strongest (0 = keep all).
    """

    _params = ("steps", "pruning")

    def __init__(self, steps: int = 10, pruning: int = 20) -> None:
        self.steps = steps
        self.pruning = pruning

    def fit(self, train: SessionData) -> SequentialRules:
        """Collect the rules as a CSR matrix (n_items x n_items); returns self."""
        train = self._check_train(train)
        _check_positive("steps", self.steps, 1, integer=True)
        _check_positive("pruning", self.pruning, 0, integer=True)
        items = train.items.astype(np.int64)
        sess = train.session_index()
        rows, cols, vals = [], [], []
        for d in range(1, int(self.steps) + 1):
            if d >= items.size:
                break
            ok = (sess[d:] == sess[:-d]) & (items[d:] >= 0) & (items[:-d] >= 0)
            if not ok.any():
                break
            rows.append(items[:-d][ok])
            cols.append(items[d:][ok])
            vals.append(np.full(int(ok.sum()), 1.0 / d))
        n = train.n_items
        if rows:
            rules = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
            )
        else:
            rules = sp.csr_matrix((n, n))
        self.rules_ = _prune_rows(sp.csr_matrix(rules, dtype=np.float32), int(self.pruning))
        self.n_items_ = n
        return self

    def _score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.rules_[items].toarray()


class SKNN(_Baseline):
    """Session-kNN (Ludewig & Jannach).

    Parameters
    ----------
    k : int, default 100
        Neighbours that vote.
    sample_size : int, default 500
        Candidate neighbours: the most recent training sessions sharing an item with the current session
        (0 = all sessions sharing an item).
    """

    _params = ("k", "sample_size")
    _uses_history = True
    _weighted = False

    def __init__(self, k: int = 100, sample_size: int = 500) -> None:
        self.k = k
        self.sample_size = sample_size

    def fit(self, train: SessionData) -> SKNN:
        """Index training sessions by item (most recent first); returns self."""
        train = self._check_train(train)
        _check_positive("k", self.k, 1, integer=True)
        _check_positive("sample_size", self.sample_size, 0, integer=True)
        x = _session_item_matrix(train, binary=True)
        # Relabel sessions so that a larger index means a more recent session.
        if train.times is not None:
            last = np.full(train.n_sessions, -np.inf)
            ends = train.offsets[1:] - 1
            nonempty = train.session_lengths > 0
            last[nonempty] = train.times[ends[nonempty]]
            recency = np.argsort(last, kind="stable")
        else:
            recency = np.arange(train.n_sessions)
        x = x[recency].tocsr()
        self.x_ = x  # (S, N) binary, rows by recency
        self.session_size_ = np.asarray(x.sum(axis=1)).ravel()  # distinct items per session
        xt = x.T.tocsr()
        xt.sort_indices()
        m = int(self.sample_size)
        if m > 0:
            # Keep the m most recent sessions of each item: the m most recent sessions of a union of
            # item lists always lie in the union of each list's m most recent, so this is exact.
            counts = np.diff(xt.indptr)
            rows = np.repeat(np.arange(xt.shape[0]), counts)
            keep = (np.arange(xt.nnz) - xt.indptr[:-1][rows]) >= (counts[rows] - m)
            xt = sp.csr_matrix((xt.data[keep], (rows[keep], xt.indices[keep])), shape=xt.shape)
            xt.sort_indices()
        self.xt_ = xt  # (N, S) item -> recent sessions
        self.n_items_ = train.n_items
        return self

    def _query(self, slots: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """Current sessions as (k, N) CSR of weights and their normaliser (shape (k,))."""
        rows, flat, pos, lens = self._histories(slots)
        # keep the last occurrence of each (row, item)
        key = rows * self.n_items_ + flat
        _, last_idx = np.unique(key[::-1], return_index=True)
        sel = key.size - 1 - last_idx
        r, c = rows[sel], flat[sel]
        if self._weighted:
            back = (lens[r] - 1 - pos[sel]).astype(np.float64)
            w = np.maximum(0.0, 1.0 - 0.1 * back)
        else:
            w = np.ones(r.size)
        q = sp.csr_matrix((w, (r, c)), shape=(slots.size, self.n_items_))
        n_distinct = np.bincount(r, minlength=slots.size).astype(np.float64)
        return q, n_distinct

    def _score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        q, n_distinct = self._query(slots)
        qb = q.copy()
        qb.data[:] = 1.0
        cand = (qb @ self.xt_).tocsr()  # (k, S): candidates; columns = recency rank
        cand.sort_indices()
        counts = np.diff(cand.indptr)
        rows = np.repeat(np.arange(cand.shape[0]), counts)
        m = int(self.sample_size)
        if m > 0:
            keep = (np.arange(cand.nnz) - cand.indptr[:-1][rows]) >= (counts[rows] - m)
            rows, sess = rows[keep], cand.indices[keep]
        else:
            sess = cand.indices
        # Overlaps from the truncated item->sessions index are exact for the selected candidates: if a
        # selected session s holds item i but is not among i's m most recent sessions, then i has m more
        # recent candidate sessions and s would not have been selected.
        if self._weighted:
            cw = (q @ self.xt_).tocsr()
            cw.sort_indices()
            wrows = np.repeat(np.arange(cw.shape[0]), np.diff(cw.indptr))
            n_cols = self.x_.shape[0]
            wkey = wrows * n_cols + cw.indices
            key = rows * n_cols + sess
            if wkey.size:
                at = np.minimum(np.searchsorted(wkey, key), wkey.size - 1)
                overlap = np.where(wkey[at] == key, cw.data[at], 0.0)
            else:
                overlap = np.zeros(key.size)
        else:
            overlap = cand.data[keep] if m > 0 else cand.data
        if self._weighted:
            sim = overlap / np.maximum(n_distinct[rows], 1.0)
        else:
            sim = overlap / np.sqrt(np.maximum(n_distinct[rows] * self.session_size_[sess], 1.0))
        # top-k neighbours per query by similarity (ties: more recent first)
        order = np.lexsort((-sess, -sim, rows))
        starts = np.searchsorted(rows[order], np.arange(slots.size))
        rank = np.arange(order.size) - starts[rows[order]]
        top = order[(rank < int(self.k)) & (sim[order] > 0)]
        w = sp.csr_matrix((sim[top], (rows[top], sess[top])), shape=(slots.size, self.x_.shape[0]))
        return np.asarray((w @ self.x_).toarray(), dtype=np.float32)


class VSKNN(SKNN):
    """V-SKNN (Ludewig & Jannach): SKNN with linearly decaying weights on the current session's items.

    The most recent item has weight 1, each step back 0.1 less (floor 0); a repeated item takes the
    weight of its last occurrence. ``sim(A, B) = sum_{i in A and B} w_i / |A|``. Parameters as
    :class:`SKNN`.
    """

    _weighted = True


BASELINES: dict[str, type[_Baseline]] = {
    "pop": Popularity,
    "spop": SessionPopularity,
    "itemknn": ItemKNN,
    "sr": SequentialRules,
    "sknn": SKNN,
    "vsknn": VSKNN,
}


def get_baseline(name: str, **params: Any) -> _Baseline:
    """Construct a baseline by name (one of :data:`BASELINES`) with keyword parameters.

    Raises
    ------
    ValueError
        For an unknown name or parameter (the message lists the valid ones).
    """
    key = str(name).lower()
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    cls = BASELINES[key]
    bad = [p for p in params if p not in cls._params]
    if bad:
        valid = list(cls._params) or "none"
        raise ValueError(f"baseline {key!r} has no parameter(s) {bad}; valid parameters: {valid}")
    return cls(**params)
