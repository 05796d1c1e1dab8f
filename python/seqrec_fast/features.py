"""Item features: reading a feature table and encoding it into the dense matrix F (DESIGN.md §8).

A feature table has one row per item: an id column and any number of feature columns. Encoding, by
column:

- numeric (int, float, bool dtypes) and not named in ``categorical``: used as is (one float column);
- categorical (``object`` / ``string`` / ``category`` dtype, or named in ``categorical``): one-hot
  over the categories seen when the encoder was fitted; a category seen later (``add_items``,
  warm-start data) encodes as all zeros;
- list-like cells (lists, tuples, arrays; e.g. a Parquet ``list<...>`` column): numbers of one
  fixed length are a dense vector (a text or image embedding computed elsewhere), anything else is
  multi-hot over the seen elements.

The encoder's description (columns, kinds, categories) is JSON, stored in the model file, so rows
added to a live model are encoded exactly like the training rows. Missing values (NaN, None) and
infinite numbers are refused: they would silently become a wrong item vector.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FeatureEncoder", "read_item_features"]

KINDS = ("numeric", "onehot", "multihot", "vector")


def read_item_features(source: Any, id_column: str) -> pd.DataFrame:
    """The feature table as a DataFrame: ``source`` is a DataFrame or a path to a Parquet file
    (``.csv`` / ``.tsv`` paths are read with pandas too). Checks the id column exists, has no
    missing values and no duplicates."""
    if isinstance(source, pd.DataFrame):
        df = source
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"item_features: no such file {path!r}")
        low = path.lower()
        if low.endswith((".csv", ".csv.gz")):
            df = pd.read_csv(path)
        elif low.endswith((".tsv", ".tsv.gz")):
            df = pd.read_csv(path, sep="\t")
        else:
            df = pd.read_parquet(path)
    else:
        raise TypeError(
            "item_features must be a pandas DataFrame or a path to a Parquet file; got "
            f"{type(source).__name__}"
        )
    if id_column not in df.columns:
        raise ValueError(
            f"item_features has no id column {id_column!r} (columns: {list(df.columns)}); set "
            "item_features_id_column to the column holding the item ids"
        )
    if len(df.columns) < 2:
        raise ValueError("item_features has no feature column besides the id column")
    ids = df[id_column]
    if ids.isna().any():
        raise ValueError(f"item_features: {int(ids.isna().sum())} rows have no item id")
    dup = ids.duplicated()
    if dup.any():
        raise ValueError(
            f"item_features: {int(dup.sum())} duplicate item ids in column {id_column!r}, e.g. "
            f"{ids[dup].iloc[:3].tolist()!r}"
        )
    return df


def _is_listlike(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


class FeatureEncoder:
    """Turns feature columns into the float matrix F (n_rows, width).

    Parameters
    ----------
    categorical : sequence of str, optional
        Columns to one-hot encode even though their dtype is numeric (e.g. an integer category id).
    """

    def __init__(self, categorical: Sequence[str] | None = None):
        self.categorical = list(categorical or [])
        self.columns_: list[dict] = []

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame) -> FeatureEncoder:
        """Learn the columns, kinds and categories of ``df`` (feature columns only)."""
        missing = [c for c in self.categorical if c not in df.columns]
        if missing:
            raise ValueError(f"item_features_categorical names columns not in the table: {missing}")
        cols = []
        for name in df.columns:
            s = df[name]
            _check_no_missing(s, name)
            spec: dict[str, Any] = {"name": str(name)}
            if name in self.categorical or isinstance(s.dtype, pd.CategoricalDtype) \
                    or s.dtype == object and not s.map(_is_listlike).any() \
                    or pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
                cats = pd.unique(s.astype(object) if not isinstance(s.dtype, pd.CategoricalDtype)
                                 else s.cat.categories.astype(object))
                spec.update(kind="onehot", categories=sorted(map(_key, cats), key=_order))
            elif s.dtype == object:
                if not s.map(_is_listlike).all():
                    raise ValueError(f"item_features column {name!r} mixes lists and scalars")
                lens = s.map(len)
                numeric = all(np.asarray(v).dtype.kind in "iufb" for v in s.iloc[:1000])
                if numeric and lens.nunique() == 1:
                    spec.update(kind="vector", width=int(lens.iloc[0]))
                else:
                    elems = sorted({_key(e) for v in s for e in v}, key=_order)
                    spec.update(kind="multihot", categories=elems)
            elif pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
                spec.update(kind="numeric")
            else:
                raise TypeError(
                    f"item_features column {name!r} has dtype {s.dtype}; expected numbers, "
                    "categories (str / category), or lists"
                )
            cols.append(spec)
        self.columns_ = cols
        return self

    @property
    def width(self) -> int:
        """F_dim: number of encoded columns."""
        return sum(self._col_width(c) for c in self.columns_)

    @staticmethod
    def _col_width(c: dict) -> int:
        if c["kind"] == "numeric":
            return 1
        if c["kind"] == "vector":
            return int(c["width"])
        return len(c["categories"])

    def column_names(self) -> list[str]:
        """Names of the encoded columns (``col``, ``col=category``, ``col[i]``)."""
        out = []
        for c in self.columns_:
            if c["kind"] == "numeric":
                out.append(c["name"])
            elif c["kind"] == "vector":
                out += [f"{c['name']}[{i}]" for i in range(c["width"])]
            else:
                out += [f"{c['name']}={v}" for v in c["categories"]]
        return out

    # -- encoding ----------------------------------------------------------------------------
    def transform(self, df: pd.DataFrame, dtype=np.float32) -> np.ndarray:
        """Encode ``df`` (it must hold every fitted column; others are ignored) into (n, width)."""
        if not self.columns_:
            raise ValueError("FeatureEncoder is not fitted")
        missing = [c["name"] for c in self.columns_ if c["name"] not in df.columns]
        if missing:
            raise ValueError(
                f"item features lack the column(s) {missing} the model was trained with "
                f"(expected {[c['name'] for c in self.columns_]})"
            )
        n = len(df)
        out = np.zeros((n, self.width), dtype=dtype)
        j = 0
        for c in self.columns_:
            s = df[c["name"]]
            _check_no_missing(s, c["name"])
            w = self._col_width(c)
            if c["kind"] == "numeric":
                try:
                    out[:, j] = s.to_numpy(dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(f"item_features column {c['name']!r} must be numeric") from None
            elif c["kind"] == "onehot":
                pos = {v: i for i, v in enumerate(c["categories"])}
                k = np.fromiter((pos.get(_key(v), -1) for v in s.astype(object)), np.int64, n)
                ok = k >= 0
                out[np.flatnonzero(ok), j + k[ok]] = 1
            elif c["kind"] == "multihot":
                pos = {v: i for i, v in enumerate(c["categories"])}
                for r, v in enumerate(s):
                    if not _is_listlike(v):
                        raise ValueError(f"item_features column {c['name']!r} must hold lists")
                    for e in v:
                        i = pos.get(_key(e), -1)
                        if i >= 0:
                            out[r, j + i] = 1
            else:  # vector
                try:
                    block = np.stack([np.asarray(v, dtype=np.float64) for v in s]) if n else \
                        np.zeros((0, w))
                except (TypeError, ValueError):
                    raise ValueError(f"item_features column {c['name']!r} must hold numeric vectors "
                                     f"of length {w}") from None
                if block.shape != (n, w):
                    raise ValueError(
                        f"item_features column {c['name']!r} must hold vectors of length {w}; "
                        f"got shape {block.shape[1:]}"
                    )
                out[:, j : j + w] = block
            j += w
        check_finite(out, "item_features")
        return out

    # -- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"categorical": self.categorical, "columns": self.columns_}

    @classmethod
    def from_json(cls, d: dict) -> FeatureEncoder:
        enc = cls(d.get("categorical"))
        enc.columns_ = [dict(c) for c in d["columns"]]
        for c in enc.columns_:
            if c.get("kind") not in KINDS:
                raise ValueError(f"unknown feature column kind {c.get('kind')!r} in the model file")
        return enc


def _key(v: Any):
    """A JSON-safe category key: ints and floats as Python numbers, everything else as str."""
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if float(v).is_integer() else float(v)
    return str(v)


def _order(v: Any):
    return (isinstance(v, str), v)


def _check_no_missing(s: pd.Series, name: str) -> None:
    if s.dtype == object:
        bad = s.map(lambda v: v is None or (isinstance(v, float) and np.isnan(v)))
    else:
        bad = s.isna()
    if bad.any():
        raise ValueError(f"item_features column {name!r} has {int(bad.sum())} missing values (NaN/None)")


def check_finite(F: np.ndarray, what: str) -> None:
    """Refuse NaN / inf in an encoded feature matrix, naming how many rows hold them."""
    bad = ~np.isfinite(F)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"{what} holds NaN or infinite values in {len(rows)} row(s) (first row {int(rows[0])}); "
            "features must be finite"
        )
