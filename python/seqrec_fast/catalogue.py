"""The item catalogue of a :class:`~seqrec_fast.model.SessionRNN`: item features, cold-start items,
:meth:`add_items` and the growth of every item table on a warm start (issue 13).

What is here: :class:`CatalogueMixin` (the methods of SessionRNN that read item features, encode them,
append items to ``W_y`` / ``b_y`` / the input tables and their optimizer state, and map a warm start's
data onto the grown catalogue) and the external-id helpers they share with the estimator. What is not:
the feature encoder itself (:mod:`seqrec_fast.features`) and training (:mod:`seqrec_fast.model`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .data import SessionData
    from .model import SessionRNN

__all__ = ["CatalogueMixin"]

_GATES = {"rnn": 1, "gru": 3, "lstm": 4}


class CatalogueMixin:
    """Item-catalogue methods of :class:`~seqrec_fast.model.SessionRNN` (see the module docstring).
    They use the estimator's fitted tables (``params_``, ``param_names_``, ``state1_``/``state2_``,
    ``item_ids_``, ``item_features_``, ``feature_encoder_``) and its ``_check_fitted`` /
    ``_params_changed`` hooks."""

    # -- item features, growing the tables -------------------------------------------------------
    def _read_features(self, p: dict):
        """(ids (n,), encoded rows (n, F_dim) in the model dtype, raw table) of ``item_features``."""
        from .features import read_item_features

        idcol = p["item_features_id_column"]
        df = read_item_features(p["item_features"], idcol)
        return np.asarray(df[idcol].to_numpy()), df.drop(columns=[idcol])

    def _features_for(self, p: dict, train_ids: np.ndarray):
        """Encode ``item_features`` for a fresh fit: (F aligned to train ids + extra ids, the extra
        (feature-only) ids, the encoder), or (None, empty, None) without features."""
        from .features import FeatureEncoder

        if p["item_features"] is None:
            return None, train_ids[:0], None
        fids, table = self._read_features(p)
        encoder = FeatureEncoder(p["item_features_categorical"]).fit(table)
        if encoder.width < 1:
            raise ValueError("item_features encodes to zero columns")
        rows = encoder.transform(table, dtype=np.dtype(p["dtype"]))
        pos = _id_index(fids).get_indexer(_as_lookup(train_ids, fids))
        missing = pos < 0
        if missing.any():
            raise ValueError(
                f"item_features has no row for {int(missing.sum())} of the {len(train_ids)} training "
                f"items (e.g. {train_ids[missing][:5].tolist()!r}); every item with events needs a "
                f"feature row (id column {p['item_features_id_column']!r}, "
                f"dtype {fids.dtype} vs training ids {train_ids.dtype})"
            )
        extra = _id_index(train_ids).get_indexer(_as_lookup(fids, train_ids)) < 0
        F = np.ascontiguousarray(np.concatenate([rows[pos], rows[extra]]))
        return F, fids[extra], encoder

    def _grow_for(self, p: dict, train: SessionData, rng: np.random.Generator) -> np.ndarray:
        """Warm start: check the architecture, append the items of ``train`` (and of
        ``item_features``) the model does not know, and return ``train.items`` in the model's
        internal indices."""
        if p["layers"] != list(self.layers_):
            raise ValueError(f"warm_start cannot change layers ({list(self.layers_)} -> {p['layers']})")
        dt = self.params_[0].dtype
        if np.dtype(p["dtype"]) != dt:
            raise ValueError(f"warm_start cannot change dtype ({dt} -> {p['dtype']})")
        for name in ("cell", "embedding", "optimizer"):
            was = getattr(self, "_fit_arch", {}).get(name, p[name])
            if p[name] != was:
                raise ValueError(f"warm_start cannot change {name} ({was!r} -> {p[name]!r})")
        if p["embedding"] == "separate" and p["embedding_dim"] != self.params_[
                self.param_names_.index("E_in")].shape[1]:
            raise ValueError("warm_start cannot change embedding_dim")
        if (p["optimizer"] == "adam" or p["momentum"] > 0) and any(
                s is None for s in self.state2_):
            self.state2_ = [np.zeros_like(a) for a in self.params_]
        has_f = getattr(self, "item_features_", None) is not None
        if p["item_features"] is not None and not has_f:
            raise ValueError("this model was trained without item features; warm_start cannot add "
                             "them (fit from scratch with item_features)")
        old_ids = np.asarray(self.item_ids_)
        N_old = len(old_ids)
        data_ids = np.asarray(train.item_ids)
        pos = _id_index(old_ids).get_indexer(_as_lookup(data_ids, old_ids))
        new = pos < 0
        new_ids = data_ids[new]
        F_new = None
        if has_f:
            if p["item_features"] is not None:
                fids, table = self._read_features(p)
                rows = self.feature_encoder_.transform(table, dtype=dt)
                fpos = _id_index(fids).get_indexer(_as_lookup(new_ids, fids))
                if (fpos < 0).any():
                    raise ValueError(
                        f"item_features has no row for {int((fpos < 0).sum())} of the {len(new_ids)} "
                        f"items new in the data (e.g. {new_ids[fpos < 0][:5].tolist()!r})"
                    )
                known = np.concatenate([old_ids, new_ids]) if len(new_ids) else old_ids
                extra = _id_index(known).get_indexer(_as_lookup(fids, known)) < 0
                new_ids = _concat_ids(new_ids, fids[extra])
                F_new = np.concatenate([rows[fpos], rows[extra]])
            elif len(new_ids):
                raise ValueError(
                    f"the data has {len(new_ids)} items the model does not know (e.g. "
                    f"{new_ids[:5].tolist()!r}) and the model uses item features: pass item_features "
                    "with rows for them"
                )
        if len(new_ids):
            self._append_items(new_ids, F_new, rng, fresh=not has_f)
        mapping = pos.astype(np.int64)
        mapping[new] = N_old + np.arange(int(new.sum()))
        return mapping[train.items].astype(np.int32)

    def _append_items(self, ids: np.ndarray, F_rows: np.ndarray | None,
                      rng: np.random.Generator | None, fresh: bool) -> None:
        """Append items to every item table and its optimizer state. W_y rows: Glorot-fresh when
        ``fresh`` (no features), else 0 (the vector comes from F·P); b_y 0; E_in / one-hot W_x
        rows fresh (``rng``) or 0. Everything is built first, then swapped in."""
        n = len(ids)
        N_old = len(self.item_ids_)
        N = N_old + n
        names = self.param_names_
        onehot = self.embedding == "onehot"
        params = list(self.params_)
        s1 = list(self.state1_)
        s2 = list(self.state2_)

        def rows_like(a, fill_fresh):
            shape = (n,) + a.shape[1:]
            if fill_fresh and rng is not None and a.ndim == 2:
                G = _GATES[self.cell] if onehot and a is params[0] else 1
                sc = math.sqrt(6.0 / (N + a.shape[1] // G))
                return rng.uniform(-sc, sc, size=shape).astype(a.dtype)
            return np.zeros(shape, a.dtype)

        grow = [names.index("W_y"), names.index("b_y")]
        if "E_in" in names:
            grow.append(names.index("E_in"))
        if onehot:
            grow.append(0)
        for i in grow:
            fresh_i = fresh if names[i] == "W_y" else names[i] != "b_y"
            params[i] = np.concatenate([params[i], rows_like(params[i], fresh_i)])
            s1[i] = np.concatenate([s1[i], np.zeros((n,) + s1[i].shape[1:], s1[i].dtype)])
            if s2[i] is not None:
                s2[i] = np.concatenate([s2[i], np.zeros((n,) + s2[i].shape[1:], s2[i].dtype)])
        F = self.__dict__.get("item_features_")
        if F is not None:
            F = np.ascontiguousarray(np.concatenate([F, F_rows.astype(F.dtype)]))
        item_ids = _concat_ids(np.asarray(self.item_ids_), ids)
        # swap in (nothing above touched the live model)
        self.params_, self.state1_, self.state2_ = params, s1, s2
        self.item_features_ = F
        self.item_ids_ = item_ids
        self._item_map = None
        self._params_changed()

    def add_items(self, ids: Sequence, features: Any = None) -> SessionRNN:
        """Add items to the fitted model without retraining; returns ``self``.

        Parameters
        ----------
        ids : sequence of item ids (n,)
            New external ids (ints for a model with int ids, str for str ids); none may be known.
        features : DataFrame or array_like (n, F_dim), optional
            Required when the model has item features: the raw feature columns (a DataFrame with
            the training columns, rows in the order of ``ids``; encoded with the stored encoder) or
            already-encoded rows (n, F_dim). The new items get ``W_y = 0`` and ``b_y = 0``, so they
            are scored by ``F @ P``. Without features the model must have none; the new items then
            score ``b_y = 0`` and can be recommended only once a warm-start fit has learned them.

        Raises
        ------
        ValueError
            For an id the model already has (or a duplicate), a feature width that differs from
            the model's, NaN / inf features, or features given to / missing for a model without /
            with features. The model is unchanged.
        """
        from .features import check_finite

        self._check_fitted()
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError(f"ids must be a non-empty 1-d sequence of item ids; got shape {ids.shape}")
        old = np.asarray(self.item_ids_)
        str_ids = old.dtype == object or old.dtype.kind in "US"
        if str_ids:
            ids = ids.astype(str).astype(object)
        elif ids.dtype.kind not in "iu":
            raise ValueError(f"this model has integer item ids; got ids of dtype {ids.dtype}")
        else:
            ids = ids.astype(old.dtype)
        dup = pd_duplicated(ids)
        if dup.any():
            raise ValueError(f"ids holds duplicates: {ids[dup][:5].tolist()!r}")
        known = _id_index(old).get_indexer(ids) >= 0
        if known.any():
            raise ValueError(
                f"{int(known.sum())} of the ids are already in the model (e.g. "
                f"{ids[known][:5].tolist()!r}); add_items only adds new items"
            )
        F = self.__dict__.get("item_features_")
        rows = None
        if F is None:
            if features is not None:
                raise ValueError("this model has no item features; call add_items(ids) without features")
        else:
            if features is None:
                raise ValueError(f"this model uses item features: pass features for the {len(ids)} "
                                 f"new items ((n, {F.shape[1]}) rows or a DataFrame)")
            import pandas as pd

            if isinstance(features, pd.DataFrame):
                rows = self.feature_encoder_.transform(features, dtype=F.dtype)
            else:
                rows = np.asarray(features, dtype=np.float64)
                if rows.ndim != 2 or rows.shape[1] != F.shape[1]:
                    raise ValueError(
                        f"features must have shape (n, {F.shape[1]}) (the model's feature width); "
                        f"got {rows.shape}"
                    )
                check_finite(rows, "features")
                rows = rows.astype(F.dtype)
            if rows.shape[0] != len(ids):
                raise ValueError(f"features has {rows.shape[0]} rows for {len(ids)} ids")
            if rows.shape[1] != F.shape[1]:
                raise ValueError(f"features encode to width {rows.shape[1]}; the model's is {F.shape[1]}")
        self._append_items(ids, rows, None, fresh=False)
        return self


def _is_str_ids(ids: np.ndarray) -> bool:
    return ids.dtype == object or ids.dtype.kind in "US"


def _id_index(ids: np.ndarray):
    """A pandas Index over external ids (str ids compared as str)."""
    import pandas as pd

    return pd.Index(ids.astype(str).astype(object) if _is_str_ids(ids) else ids)


def _as_lookup(ids: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``ids`` in the form that matches ``ref``'s index (str when ``ref`` holds str ids)."""
    return ids.astype(str).astype(object) if _is_str_ids(ref) else ids


def _concat_ids(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(b) == 0:
        return a
    if _is_str_ids(a):
        return np.concatenate([a.astype(object), b.astype(str).astype(object)])
    return np.concatenate([a, b.astype(a.dtype)])


def pd_duplicated(ids: np.ndarray) -> np.ndarray:
    return _id_index(ids).duplicated()
