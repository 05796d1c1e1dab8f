"""Session and user vectors: the last layer's final recurrent state as a representation.

A trained network's state after a session's (or a user history's) items is exactly the vector that
scores the next item (``y = h·W_y + b_y``), so it is also a useful representation for similarity,
clustering or a downstream classifier. :meth:`SessionRNN.transform
<seqrec_fast.model.SessionRNN.transform>` computes it for many sessions at once,
:meth:`Recommender.session_vector <seqrec_fast.serving.Recommender.session_vector>` reads it for a
live session, and ``seqrec embed`` writes it to a file.

This module holds the result type, exact cosine search over vectors (:func:`similar_sessions`, one
C++ top-k call) and the vector files (:func:`save_vectors`, :func:`load_vectors`).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, NamedTuple

import numpy as np

__all__ = ["VECTOR_FORMATS", "SessionVectors", "load_vectors", "save_vectors", "similar_sessions"]

VECTOR_FORMATS = (".parquet", ".npy", ".npz")


class SessionVectors(NamedTuple):
    """One vector per session (or user history).

    Attributes
    ----------
    ids : numpy.ndarray (n,)
        The session ids (external ids of the data; positions 0..n-1 when the data had none).
    vectors : numpy.ndarray (n, H_L)
        The last layer's state after each session's last known item (float32 for float32 models).
    """

    ids: np.ndarray
    vectors: np.ndarray


def _unit_rows(V: np.ndarray) -> np.ndarray:
    V = np.asarray(V, dtype=np.float32)
    norms = np.linalg.norm(V, axis=-1, keepdims=True)
    return np.ascontiguousarray(V / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def similar_sessions(vectors: Any, query: Any, k: int = 10, *, num_threads: int = 1):
    """The ``k`` rows of ``vectors`` most similar to ``query`` by cosine similarity (exact).

    Parameters
    ----------
    vectors : array_like (n, H) or SessionVectors
        The vectors searched (e.g. ``model.transform(data)``).
    query : int, array_like (H,) or (m, H)
        A query vector, several query vectors, or a row position of ``vectors`` (that row is then
        left out of its own answer).
    k : int, default 10
        Number of neighbours (fewer when ``vectors`` has fewer eligible rows).
    num_threads : int, default 1
        Threads of the C++ top-k call.

    Returns
    -------
    rows : int32 ndarray (k,) or (m, k)
        Row positions in ``vectors``, most similar first; ties go to the lower row. Use
        ``vectors.ids[rows]`` for session ids.
    scores : float32 ndarray, same shape
        Cosine similarities in [-1, 1]. A zero vector has similarity 0 with everything.

    Notes
    -----
    Rows and queries are normalised to unit length (a float32 copy of ``vectors``, made per call)
    and scored by the serving top-k kernel with a zero bias: every score is computed, nothing is
    approximated.
    """
    from . import _core

    V = vectors.vectors if isinstance(vectors, SessionVectors) else vectors
    V = np.asarray(V)
    if V.ndim != 2 or V.shape[0] < 1 or V.shape[1] < 1:
        raise ValueError(f"vectors must be a non-empty 2-D array (n, H); got shape {V.shape}")
    if not np.issubdtype(V.dtype, np.number):
        raise TypeError(f"vectors must be numeric; got dtype {V.dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1; got {k!r}")
    n, H = V.shape
    exclude = None
    single = True
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        if not -n <= query < n:
            raise IndexError(f"query row {query} is out of range for {n} vectors")
        row = int(query) % n
        Q = V[row][None, :]
        exclude = np.array([[row]], np.int32)
    else:
        Q = np.asarray(query)
        if Q.dtype == object or not np.issubdtype(Q.dtype, np.number):
            raise TypeError(f"query must be a row position or numeric vector(s); got {query!r:.80}")
        if Q.ndim == 1:
            Q = Q[None, :]
        elif Q.ndim == 2:
            single = False
        else:
            raise ValueError(f"query must have shape (H,) or (m, H); got {Q.shape}")
        if Q.shape[1] != H:
            raise ValueError(f"query has width {Q.shape[1]}; the vectors have H = {H}")
    rows, scores = _core.topk(_unit_rows(Q), _unit_rows(V), np.zeros(n, np.float32), int(k),
                              exclude, None, int(num_threads))
    if exclude is not None and rows.shape[1] and rows[0, -1] < 0:  # fewer than k eligible
        keep = int(np.count_nonzero(rows[0] >= 0))
        rows, scores = rows[:, :keep], scores[:, :keep]
    return (rows[0], scores[0]) if single else (rows, scores)


# -- files ------------------------------------------------------------------------------------------
def _suffix(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VECTOR_FORMATS:
        raise ValueError(f"{path}: unknown vector file type {suffix or '(none)'!r}; expected one of "
                         f"{', '.join(VECTOR_FORMATS)}")
    return suffix


def _ids_array(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids


def _atomic(path: str, write, suffix: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ids_path(path: str) -> str:
    """The side file holding the ids of a ``.npy`` vector file: ``x.npy`` -> ``x.ids.npy``."""
    return os.path.splitext(path)[0] + ".ids.npy"


def save_vectors(path: str | os.PathLike[str], vectors: SessionVectors) -> list[str]:
    """Write session vectors atomically; the format follows the suffix.

    Parameters
    ----------
    path : str or os.PathLike
        ``.parquet``: columns ``session_id`` and ``vector`` (a list of H floats per row; needs
        pyarrow). ``.npy``: the (n, H) matrix, with the ids in a side file ``<name>.ids.npy``.
        ``.npz``: arrays ``ids`` and ``vectors``.
    vectors : SessionVectors

    Returns
    -------
    list of str : the files written
    """
    path = os.fspath(path)
    suffix = _suffix(path)
    ids, V = _ids_array(vectors.ids), np.ascontiguousarray(vectors.vectors)
    if V.ndim != 2 or len(ids) != len(V):
        raise ValueError(f"vectors must be (n, H) with n ids; got {V.shape} and {len(ids)} ids")
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("writing Parquet needs pyarrow: pip install 'seqrec-fast[parquet]'") \
                from None
        flat = pa.array(V.reshape(-1))
        col = pa.FixedSizeListArray.from_arrays(flat, V.shape[1])
        table = pa.table({"session_id": pa.array(ids.tolist()), "vector": col})
        _atomic(path, lambda p: pq.write_table(table, p), suffix)
        return [path]
    if suffix == ".npz":
        def write_npz(p):
            with open(p, "wb") as f:
                np.savez(f, ids=ids, vectors=V)
        _atomic(path, write_npz, suffix)
        return [path]
    side = ids_path(path)
    _atomic(side, lambda p: np.save(p, ids, allow_pickle=False), ".npy")
    _atomic(path, lambda p: np.save(p, V, allow_pickle=False), ".npy")
    return [path, side]


def load_vectors(path: str | os.PathLike[str]) -> SessionVectors:
    """Read a file written by :func:`save_vectors` (a ``.npy`` without its ids file gets ids 0..n-1)."""
    path = os.fspath(path)
    suffix = _suffix(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = {"session_id", "vector"} - set(table.column_names)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        V = np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float32)
        ids = np.asarray(table.column("session_id").to_pylist())
        return SessionVectors(ids, V.reshape(len(ids), -1) if len(ids) else V.reshape(0, 0))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return SessionVectors(z["ids"], z["vectors"])
    V = np.load(path, allow_pickle=False)
    side = ids_path(path)
    ids: np.ndarray | None = np.load(side, allow_pickle=False) if os.path.exists(side) else None
    return SessionVectors(np.arange(len(V)) if ids is None else ids, V)
