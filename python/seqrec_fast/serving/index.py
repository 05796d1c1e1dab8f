"""Approximate top-k for catalogues of millions: an HNSW index over the output layer (DESIGN.md §8).

What is here: :class:`HnswIndex`, built from ``W_y`` (N, H) and ``b_y`` (N,) with the bias folded into
the vectors, item j as ``x_j = [W_y[j], b_y[j]]`` and a query state h as ``q = [h, 1]``, so that
``q·x_j`` is exactly the model's score ``h·W_y[j] + b_y[j]``. Two graph spaces (``space``):

- ``"ip"`` (default): hnswlib's inner-product graph on the folded vectors (ip-NSW, Morozov & Babenko
  2018). Measured at N = 1M (H = 100, clustered synthetic items, M = 16, ef_construction = 100):
  overlap@20 0.61 / 0.73 / 0.81 / 0.88 at ef = 64 / 128 / 256 / 512.
- ``"l2"``: the standard reduction of maximum inner product search to nearest neighbours (Bachrach et
  al. 2014): each item gets one more coordinate ``sqrt(Φ² - |x_j|²)`` (Φ = the largest |x_j|) and each
  query a 0 there, so ``|q' - x_j'|² = |q|² + Φ² - 2 q·x_j`` and the nearest items are exactly the
  highest-scoring ones. Better when a few items with large norms (a dominant bias) hold the top
  (2,000 such items: overlap@10 1.00 against 0.93 for "ip"), worse at scale (the same 1M run: 0.42 /
  0.52 / 0.62 at ef = 64 / 128 / 256), since all items then sit on one sphere far from the queries.

The candidates the index returns are rescored exactly (float32, k·H flops) and sorted by score, ties by
lower index, so scores are exact and only the candidate set is approximate. Saved beside the model with a JSON sidecar naming the model
fingerprint, loaded instead of rebuilt when the fingerprint matches. What is not here: the exact kernel
(``topk.h``, the oracle that overlap@k is measured against) and any training of the index.

Library: hnswlib (extra ``seqrec-fast[index]``). It is a small header-only C++ library with L2 and
inner-product spaces, multi-threaded build, save/load of the graph, and a query that releases the GIL.
faiss-cpu offers the same HNSW (``IndexHNSWFlat``, with the same reduction) but is a ~30 MB wheel
with its own OpenMP and BLAS thread pools, while a serving process keeps one thread pool
(DESIGN.md §3.5); nothing else of faiss is needed here.

Exclusions (``exclude_seen``): the index is asked for ``k + m`` candidates (m = excluded items of the
query, at most a few hundred) with ``ef >= k + m``, and the excluded ones are dropped before the top k
is taken, so an excluded item is never returned and the k others are still found.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Optional

import numpy as np

__all__ = ["HnswIndex"]

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 100
DEFAULT_EF_SEARCH = 256
SPACES = ("ip", "l2")
DEFAULT_SPACE = "ip"


def _hnswlib():
    try:
        import hnswlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"index='hnsw' needs hnswlib: pip install 'seqrec-fast[index]' ({e})") from None
    return hnswlib


class HnswIndex:
    """HNSW index over ``[W_y[j], b_y[j], e_j]`` (``e_j`` = 0 for "ip", ``sqrt(Φ² - |x_j|²)`` for "l2")
    with exact rescoring.

    Use :meth:`build`, :meth:`load` or :meth:`for_model`; ``W_y`` and ``b_y`` are kept as references
    (for the rescoring), never copied.
    """

    def __init__(self, index, W_y: np.ndarray, b_y: np.ndarray, fingerprint: str, meta: dict,
                 ef_search: int = DEFAULT_EF_SEARCH, num_threads: int = 1):
        self._index = index
        self.W_y = W_y
        self.b_y = b_y
        self.fingerprint = fingerprint
        self.meta = meta
        self.ef_search = int(ef_search)
        self.num_threads = int(num_threads)
        self._ef = None
        self._set_ef(max(self.ef_search, 1))

    def _set_ef(self, ef: int) -> None:
        if ef != self._ef:
            self._index.set_ef(int(ef))
            self._ef = int(ef)

    @property
    def n_items(self) -> int:
        return int(self.W_y.shape[0])

    # -- construction -------------------------------------------------------------------------------
    @staticmethod
    def _check(W_y: np.ndarray, b_y: np.ndarray) -> None:
        if not (isinstance(W_y, np.ndarray) and W_y.dtype == np.float32 and W_y.ndim == 2
                and W_y.flags.c_contiguous):
            raise ValueError(f"W_y must be a C-contiguous float32 (N, H) array; got "
                             f"{getattr(W_y, 'dtype', type(W_y))} {getattr(W_y, 'shape', '')}")
        if not (isinstance(b_y, np.ndarray) and b_y.dtype == np.float32 and b_y.shape == W_y.shape[:1]):
            raise ValueError(f"b_y must be float32 ({W_y.shape[0]},); got "
                             f"{getattr(b_y, 'dtype', type(b_y))} {getattr(b_y, 'shape', '')}")

    @classmethod
    def build(cls, W_y: np.ndarray, b_y: np.ndarray, fingerprint: str, M: int = DEFAULT_M,
              ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int = DEFAULT_EF_SEARCH,
              num_threads: int = 1, seed: int = 0, chunk: int = 200_000,
              space: str = DEFAULT_SPACE) -> HnswIndex:
        """Build the index of W_y (N, H) float32 and b_y (N,) float32 (``num_threads`` build threads;
        the folded vectors are made chunk by chunk, never as a second (N, H+2) copy).

        ``space``: ``"ip"`` (hnswlib's inner-product graph on ``[W_y[j], b_y[j], 0]``) or ``"l2"`` (the
        inner product reduced to a Euclidean distance by one extra coordinate)."""
        cls._check(W_y, b_y)
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}; got {space!r}")
        hnswlib = _hnswlib()
        N, H = W_y.shape
        t0 = time.perf_counter()
        norms2 = np.empty(N, np.float64)
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            norms2[s:e] = np.einsum("nh,nh->n", W_y[s:e], W_y[s:e], dtype=np.float64)
        norms2 += b_y.astype(np.float64) ** 2
        phi2 = float(norms2.max()) if N else 0.0
        if space == "ip":
            norms2[:] = phi2  # no extra coordinate: the last one stays 0
        index = hnswlib.Index(space=space, dim=H + 2)
        index.init_index(max_elements=N, ef_construction=int(ef_construction), M=int(M),
                         random_seed=int(seed))
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            block = np.empty((e - s, H + 2), np.float32)
            block[:, :H] = W_y[s:e]
            block[:, H] = b_y[s:e]
            block[:, H + 1] = np.sqrt(np.maximum(phi2 - norms2[s:e], 0.0))
            index.add_items(block, np.arange(s, e), num_threads=int(num_threads))
        meta = {"format": "seqrec_fast.hnsw", "fingerprint": fingerprint, "n_items": N, "dim": H + 2,
                "space": space, "M": int(M), "ef_construction": int(ef_construction),
                "build_seconds": time.perf_counter() - t0, "library": "hnswlib"}
        return cls(index, W_y, b_y, fingerprint, meta, ef_search, num_threads)

    def save(self, path: str) -> None:
        """Write the graph to ``path`` and its metadata to ``path + '.json'`` (each atomically: a
        temporary file in the same folder, then a rename; the sidecar last, so a reader that finds a
        matching sidecar finds the matching graph)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".hnsw-", dir=folder)
        os.close(fd)
        try:
            self._index.save_index(tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        fd, tmp = tempfile.mkstemp(prefix=".hnsw-meta-", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({**self.meta, "bytes": os.path.getsize(path)}, f)
        os.replace(tmp, path + ".json")

    @staticmethod
    def read_meta(path: str) -> Optional[dict]:
        """The sidecar metadata of an index file, None if absent or unreadable."""
        try:
            with open(os.fspath(path) + ".json") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("format") == "seqrec_fast.hnsw" else None

    @classmethod
    def load(cls, path: str, W_y: np.ndarray, b_y: np.ndarray, fingerprint: str,
             ef_search: int = DEFAULT_EF_SEARCH, num_threads: int = 1) -> HnswIndex:
        """Load an index saved by :meth:`save`; ValueError if it belongs to another model (fingerprint)
        or does not match W_y's shape, FileNotFoundError if absent."""
        cls._check(W_y, b_y)
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no index file at {path}")
        meta = cls.read_meta(path)
        if meta is None:
            raise ValueError(f"{path}: missing or unreadable metadata {path}.json")
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(f"{path} was built for model {meta.get('fingerprint')}, not {fingerprint}")
        N, H = W_y.shape
        if meta.get("n_items") != N or meta.get("dim") != H + 2:
            raise ValueError(f"{path}: index of {meta.get('n_items')} x {meta.get('dim')} does not "
                             f"match W_y {N} x {H} (+2: the bias and the norm coordinate)")
        space = meta.get("space")
        if space not in SPACES:
            raise ValueError(f"{path}: unknown index space {space!r}")
        index = _hnswlib().Index(space=space, dim=H + 2)
        index.load_index(path, max_elements=N)
        if index.get_current_count() != N:
            raise ValueError(f"{path}: holds {index.get_current_count()} items; expected {N}")
        return cls(index, W_y, b_y, fingerprint, meta, ef_search, num_threads)

    @classmethod
    def for_model(cls, W_y: np.ndarray, b_y: np.ndarray, fingerprint: str, path: Optional[str] = None,
                  num_threads: int = 1, **options) -> HnswIndex:
        """Load the index at ``path`` when it belongs to this model, else build it (and save it there
        when ``path`` is given). ``options``: ``M``, ``ef_construction``, ``ef_search``."""
        ef_search = options.get("ef_search", DEFAULT_EF_SEARCH)
        if path is not None and os.path.exists(path):
            meta = cls.read_meta(path)
            if meta is not None and meta.get("fingerprint") == fingerprint:
                return cls.load(path, W_y, b_y, fingerprint, ef_search, num_threads)
        index = cls.build(W_y, b_y, fingerprint, num_threads=num_threads, **options)
        if path is not None:
            index.save(path)
        return index

    # -- search -------------------------------------------------------------------------------------
    def search(self, H: np.ndarray, k: int, exclude: Optional[np.ndarray] = None):
        """Approximate top-k of states H (n, H) float32, with exact scores.

        Parameters
        ----------
        H : float32 (n, H)
        k : int >= 1
        exclude : int32 (n, m) or None, -1 entries are padding

        Returns
        -------
        idx : int32 (n, k), best first, padded with -1 when fewer items are eligible
        scores : float32 (n, k), exact ``H·W_y[j] + b_y[j]``, -inf for padding
        """
        H = np.ascontiguousarray(H, dtype=np.float32)
        n, D = H.shape
        N = self.n_items
        m = 0 if exclude is None else exclude.shape[1]
        want = min(N, k + m)
        self._set_ef(max(self.ef_search, want))
        Q = np.zeros((n, D + 2), np.float32)
        Q[:, :D] = H
        Q[:, D] = 1.0
        labels, _ = self._index.knn_query(Q, k=want, num_threads=self.num_threads)
        labels = labels.astype(np.int64)
        out_idx = np.full((n, k), -1, np.int32)
        out_sc = np.full((n, k), -np.inf, np.float32)
        for i in range(n):  # n is one query per event, or a small batch
            cand = labels[i]
            if m:
                ex = exclude[i]
                cand = cand[~np.isin(cand, ex[ex >= 0])]
            s = self.W_y[cand] @ H[i] + self.b_y[cand]
            order = np.lexsort((cand, -s))[:k]
            out_idx[i, : len(order)] = cand[order]
            out_sc[i, : len(order)] = s[order]
        return out_idx, out_sc
