"""The model side of serving: everything a :class:`~seqrec_fast.serving.Recommender` derives from one
fitted model, as one immutable ``_Engine`` (float32 weights, the packed scoring table, the item map,
the fingerprint, the optional approximate index) that a reload swaps as a whole, and the kernels it
calls (DESIGN.md §3.5).

Not here: sessions, stores and their concurrency (``recommender.py``, ``store.py``), the HNSW index
itself (``index.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from .. import _core, reference
from .store import SessionState

_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*\Z")


def _kernels() -> tuple[Callable, Callable]:
    """(step_topk, topk): the C++ serving kernels."""
    return _core.step_topk, _core.topk


def model_fingerprint(model) -> str:
    """``"sha256:<hex>"`` of a fitted SessionRNN: the ``checksum`` its model file's header holds
    (the same hash over the same arrays, see :mod:`seqrec_fast.io`), for saved or unsaved models."""
    from ..io import _checksum

    arrays = dict(zip(model.param_names_, model.params_))
    ids = np.asarray(model.item_ids_)
    arrays["item_ids"] = ids.astype(str) if ids.dtype == object else ids
    F = getattr(model, "item_features_", None)
    if F is not None:  # saved beside P (SessionRNN.save): part of the model
        arrays["item_features"] = F
    return _checksum(arrays)


# ---------------------------------------------------------------------------------------------------
# the model side: immutable, swapped as a whole on reload
# ---------------------------------------------------------------------------------------------------
def _check_threads(num_threads) -> None:
    if not isinstance(num_threads, (int, np.integer)) or isinstance(num_threads, bool) \
            or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1; got {num_threads!r}")


class _Engine:
    """Everything the Recommender derives from one model: float32 weights, the packed scoring table,
    the item map, the fingerprint and the optional approximate index."""

    def __init__(self, model, precision: str, num_threads: int, index: Optional[str],
                 index_path: Optional[str], index_options: dict):
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        names = list(model.param_names_)
        params = model.params_
        self.model = model
        self.precision = precision
        self.num_threads = num_threads
        self.cell = model.cell
        self.embedding = model.embedding
        self.layers = [int(h) for h in model.layers_]
        L = len(self.layers)
        self.weights = [tuple(f32(a) for a in params[3 * l: 3 * l + 3]) for l in range(L)]
        # with item features: W_y + F @ P, folded once here (serving pays nothing per event)
        self.W_y = f32(model.W_y_)
        self.b_y = f32(params[names.index("b_y")])
        self.E_in = f32(params[names.index("E_in")]) if "E_in" in names else None
        self.n_items = int(self.W_y.shape[0])
        if self.embedding == "onehot":
            # a one-hot input times W_x is a row of W_x: feed that row through an identity W_x
            W_x0, W_h0, b0 = self.weights[0]
            self.seq_weights = [(np.eye(W_x0.shape[1], dtype=np.float32), W_h0, b0)] + self.weights[1:]
            self.input_table = W_x0
        else:
            self.seq_weights = self.weights
            self.input_table = self.W_y if self.embedding == "constrained" else self.E_in
        self.table, self.scales = self.reduced(precision)
        self.step_topk, self.topk = _kernels()

        ids = np.asarray(model.item_ids_)
        self.ids = ids
        self.int_ids = ids.dtype.kind in "iu"
        keys = ids.tolist() if self.int_ids else [str(x) for x in ids.tolist()]
        self.index = dict(zip(keys, range(len(keys))))
        if len(self.index) != len(keys):
            raise ValueError("the model's item ids are not unique")
        if self.int_ids:
            self.sorted_order = np.argsort(ids, kind="stable").astype(np.int32)
            self.sorted_ids = ids[self.sorted_order].astype(np.int64)
        self.fingerprint = model_fingerprint(model)

        self.ann = None
        if index == "hnsw":
            from .index import HnswIndex

            self.ann = HnswIndex.for_model(self.W_y, self.b_y, self.fingerprint, path=index_path,
                                           num_threads=num_threads, **index_options)

    def reduced(self, precision: str):
        """The scoring table in the packed serving layout (``_core.pack_table``): a float32 copy, or
        a bfloat16 / int8 one with its scales. Made once; W_y itself stays float32 for the input."""
        if precision == "float32":
            return _core.pack_table(self.W_y), None
        q, scales = reference.quantize_table(self.W_y, precision)
        return _core.pack_table(q), scales

    def zero_state(self, n: int = 1) -> tuple[list, Optional[list]]:
        h = [np.zeros((n, H), np.float32) for H in self.layers]
        c = [np.zeros((n, H), np.float32) for H in self.layers] if self.cell == "lstm" else None
        return h, c

    def lookup(self, item: Any) -> int:
        """Internal index of an external id, -1 if unknown; TypeError for a type that is no id."""
        if isinstance(item, (bool, np.bool_)):
            raise TypeError(f"item id must be an int or a str; got {item!r}")
        if self.int_ids:
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
        return self.index.get(key, -1)

    def indices_of(self, recent: np.ndarray) -> np.ndarray:
        """Internal indices (int32, -1 for unknown) of an array of external ids (vectorised for int
        ids)."""
        if len(recent) == 0:
            return np.zeros(0, np.int32)
        if self.int_ids and recent.dtype.kind in "iu":
            pos = np.searchsorted(self.sorted_ids, recent)
            pos = np.minimum(pos, len(self.sorted_ids) - 1)
            hit = self.sorted_ids[pos] == recent
            return np.where(hit, self.sorted_order[pos], -1).astype(np.int32)
        return np.array([self.lookup(x) for x in recent.tolist()], np.int32)

    def recent_dtype(self):
        return np.int64 if self.int_ids else object

    def exclude_of(self, recent: np.ndarray, idx: Optional[int]) -> np.ndarray:
        """Distinct internal indices of the recent items plus ``idx`` (if given), int32 (m,)."""
        known = self.indices_of(recent)
        known = known[known >= 0]
        if idx is not None:
            known = np.append(known, np.int32(idx))
        return np.unique(known).astype(np.int32)

    def advance(self, idx: Sequence[int], h: list, c: Optional[list]):
        """Run the recurrent layers over ``idx`` from state (h, c); returns the new (h, c)."""
        X = np.ascontiguousarray(self.input_table[np.asarray(idx, np.int64)])
        _, h_last, c_last, _ = _core.sequence_forward(
            self.cell, X.reshape(len(idx), 1, -1), h, c, None, self.seq_weights, None,
            self.num_threads)
        h = [np.ascontiguousarray(a, dtype=np.float32) for a in h_last]
        c = [np.ascontiguousarray(a, dtype=np.float32) for a in c_last] if c_last is not None else None
        return h, c

    def scores_of_states(self, H: np.ndarray, k: int, exclude: Optional[np.ndarray]):
        """Top-k of given top-layer states (n, H_L) without advancing anything."""
        if self.ann is not None:
            return self.ann.search(H, k, exclude)
        return self.topk(H, self.table, self.b_y, k, exclude, self.scales, self.num_threads)

    def step(self, h: list, c: Optional[list], items: np.ndarray, k: int,
             exclude: Optional[np.ndarray]):
        """Advance states (h, c: lists of (n, H_l), updated in place) by ``items`` int32 (n,) and
        return their top k: one ``step_topk`` call, or a step plus an index search."""
        if self.ann is None:
            return self.step_topk(self.cell, self.embedding, self.weights, self.E_in, self.W_y,
                                  self.b_y, h, c, items, k, exclude, self.table, self.scales,
                                  self.num_threads)
        X = np.ascontiguousarray(self.input_table[items.astype(np.int64)])
        _, h_last, c_last, _ = _core.sequence_forward(
            self.cell, X.reshape(1, len(items), -1), h, c, None, self.seq_weights, None,
            self.num_threads)
        for l in range(len(self.layers)):
            h[l][...] = h_last[l]
            if c is not None:
                c[l][...] = c_last[l]
        return self.ann.search(h[-1], k, exclude)

    def rebuild(self, state: SessionState) -> SessionState:
        """``state`` (made by another model) replayed through this one: its recent items, from the zero
        state. Items this model does not know are skipped; the recent items and the event count stay."""
        h, c = self.zero_state(1)
        idx = self.indices_of(state.recent)
        idx = idx[idx >= 0]
        if len(idx):
            h, c = self.advance(idx.tolist(), h, c)
        return SessionState(self.fingerprint, tuple(h), tuple(c) if c is not None else None,
                            state.recent, state.n_events, state.version)

    def fits(self, state: SessionState) -> bool:
        """Whether a state of this model's fingerprint has this model's shapes."""
        if len(state.h) != len(self.layers) or (state.c is not None) != (self.cell == "lstm"):
            return False
        for l, H in enumerate(self.layers):
            if state.h[l].shape != (1, H) or (state.c is not None and state.c[l].shape != (1, H)):
                return False
        return True
