"""Batch scoring: the top-K next items for every session or user history in a file (DESIGN.md §8).

``score(model, sessions, out, k)`` streams the input in chunks (Parquet row groups, text in blocks of
lines), assembles sessions across chunk boundaries, cuts them into blocks of ``block_sessions``
sessions, and per block runs the recurrent network over every history (one ``sequence_forward`` call
per group of similar lengths) and the fused top-K kernel (``_core.topk``, seen items optionally
excluded) on the final states. Results are appended to a Parquet file (written to a temporary name
and renamed when complete) with the columns ``session_id, rank, item_id, score``, one row per
recommendation, sessions in input order.

Engines: ``"local"`` scores the blocks in this process; ``"ray"`` hands them to a pool of Ray actors,
each holding one copy of the model (shipped once through the object store) and pinned to
``threads`` CPUs. Blocks are the same in both engines and a block's result does not depend on where
it is computed, so the two outputs are identical. Plain actors rather than Ray Data's
``map_batches``: a session may straddle a row-group boundary, so sessions must be assembled in input
order before they can be split, and the output must come back in input order; a driver-side reader
with a bounded number of blocks in flight (two per actor) does both with memory bounded by
``chunk_rows`` + ``block_sessions`` x in-flight blocks.

What is not here: per-event serving (``serving/``) and evaluation (``evaluate.py``).

Input contract: a session's events are contiguous in the file (GRU4Rec TSV, Parquet exports and the
line formats are); within a session, events are ordered by the time column when there is one, else
kept in file order. Items unknown to the model are skipped; a session with no known item gets no rows.
JSON-lines and raw YOOCHOOSE files are read whole (no streaming).
"""

from __future__ import annotations

import collections
import gzip
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import _core
from .data import (
    _as_id_array,
    _lookup,
)
from .formats import (
    _ITEM_ALIASES,
    _SESSION_ALIASES,
    _TIME_ALIASES,
    FORMATS,
    _check_path,
    _head_lines,
    _ids_from_str,
    _is_gzip,
    _parse_ids,
    _pick,
    _read_head,
    _tokenize,
    detect_format,
)

__all__ = ["ENGINES", "ScoreStats", "iter_session_blocks", "score"]

ENGINES: tuple[str, ...] = ("local", "ray")
_STREAMED = ("parquet", "tsv", "csv", "recbole", "session_items", "sessions", "user_seq", "user_item")
# floats of the (T, n, E) input of one sequence_forward call
_MAX_INPUT_FLOATS = 1 << 24


@dataclass
class ScoreStats:
    """What :func:`score` did."""

    n_sessions: int  #: sessions read
    n_scored: int  #: sessions with at least one known item (they get rows)
    n_rows: int  #: recommendation rows written
    n_unknown_events: int  #: events skipped because their item is not in the model
    n_blocks: int
    seconds: float
    engine: str
    workers: int

    @property
    def sessions_per_s(self) -> float:
        return self.n_sessions / max(self.seconds, 1e-9)


@dataclass
class _Block:
    session_ids: np.ndarray  # (n,) external ids, sessions with >= 1 known item
    items: np.ndarray  # int32, known items of the sessions back to back
    offsets: np.ndarray  # int64 (n + 1,)


# --------------------------------------------------------------------------------------------------
# reading: chunks of events in file order
# --------------------------------------------------------------------------------------------------
def _event_chunks(
    path: str, fmt: str, chunk_rows: int, session_key: str | None, item_key: str | None,
    time_key: str | None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(session ids, item ids, times or None) per chunk, in file order."""
    if fmt == "parquet":
        yield from _parquet_chunks(path, chunk_rows, session_key, item_key, time_key)
    elif fmt in ("tsv", "csv", "recbole", "session_items"):
        yield from _delimited_chunks(path, fmt, chunk_rows, session_key, item_key, time_key)
    elif fmt in ("sessions", "user_seq", "user_item"):
        yield from _line_chunks(path, fmt, chunk_rows)
    else:
        from .data import load

        d = load(path, fmt)
        sess = d.session_ids if d.session_ids is not None else np.arange(d.n_sessions)
        yield np.repeat(np.asarray(sess), np.diff(d.offsets)), d.item_ids[d.items], None


def _parquet_chunks(path, chunk_rows, session_key, item_key, time_key):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"reading Parquet ({path}) needs pyarrow; install it with: pip install 'seqrec-fast[parquet]'"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ValueError(f"{path}: cannot read as Parquet ({e})") from None
    cols = list(pf.schema_arrow.names)
    s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
    i = _pick(cols, item_key, _ITEM_ALIASES, "item id", path)
    t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
    use = [s, i] + ([t] if t is not None else [])
    row0 = 0
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=use):
        df = batch.to_pandas()
        for c in (s, i):
            na = df[c].isna().to_numpy()
            if na.any():
                raise ValueError(f"{path}: row {row0 + int(np.flatnonzero(na)[0])}, column {c!r}: "
                                 "missing value")
        times = None
        if t is not None:
            col = df[t]
            if pd.api.types.is_datetime64_any_dtype(col.dtype):
                times = (col.astype("datetime64[ns]").astype("int64") / 1e9).to_numpy(np.float64)
            else:
                times = pd.to_numeric(col, errors="coerce").to_numpy(np.float64, na_value=np.nan)
                if np.isnan(times).any():
                    raise ValueError(f"{path}: row {row0 + int(np.flatnonzero(np.isnan(times))[0])}, "
                                     f"column {t!r}: missing or non-numeric time")
        row0 += len(df)
        yield _as_id_array(df[s].to_numpy()), _as_id_array(df[i].to_numpy()), times


def _delimited_chunks(path, fmt, chunk_rows, session_key, item_key, time_key):
    head = _head_lines(_read_head(path), 1)
    if not head:
        raise ValueError(f"{path}: file is empty; expected a header line and events")
    sep = "," if fmt == "csv" else "\t"
    try:
        reader = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                             compression="gzip" if _is_gzip(path) else None, chunksize=chunk_rows)
        line0 = 2
        for df in reader:
            if fmt == "recbole":
                df.columns = [c.split(":")[0] for c in df.columns]
            cols = list(df.columns)
            s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
            if fmt == "session_items":
                i = _pick(cols, item_key, ("Items", "items", "ItemIds", "item_id_list", "ItemId"),
                          "items", path)
            else:
                i = _pick(cols, item_key, _ITEM_ALIASES, "item id", path)
            t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
            for c in (s, i):
                na = df[c].isna().to_numpy()
                if na.any():
                    raise ValueError(f"{path}: line {line0 + int(np.flatnonzero(na)[0])}, column "
                                     f"{c!r}: missing value; expected a value in every row")
            times = None
            if t is not None:
                times = pd.to_numeric(df[t], errors="coerce").to_numpy(np.float64, na_value=np.nan)
                if np.isnan(times).any():
                    raise ValueError(f"{path}: line {line0 + int(np.flatnonzero(np.isnan(times))[0])}"
                                     f", column {t!r}: missing or non-numeric time")
            sess = _ids_from_str(df[s])
            if fmt == "session_items":
                raw = "\n".join(df[i].tolist()).encode() + b"\n"
                tokens, tok_line, _ = _tokenize(raw)
                yield sess[tok_line], _parse_ids(tokens), None if times is None else times[tok_line]
            else:
                yield sess, _ids_from_str(df[i]), times
            line0 += len(df)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty; expected a header line and events") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: ragged line: {str(e).strip()}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from None


def _line_chunks(path, fmt, chunk_rows):
    opener = gzip.open if _is_gzip(path) else open
    line0 = 0
    # ~16 bytes per item id and separator: blocks of about chunk_rows events
    hint = max(1 << 16, 16 * chunk_rows)
    with opener(path, "rb") as f:
        while True:
            lines = f.readlines(hint)
            if not lines:
                break
            raw = b"".join(lines)
            if not raw.endswith(b"\n"):
                raw += b"\n"
            tokens, tok_line, _ = _tokenize(raw)
            tok_line = tok_line + line0
            n_lines = len(lines)
            if fmt == "sessions":
                yield tok_line, _parse_ids(tokens), None
            else:
                first = np.ones(tokens.size, dtype=bool)
                first[1:] = tok_line[1:] != tok_line[:-1]
                counts = np.bincount(tok_line - line0, minlength=n_lines)
                if fmt == "user_item":
                    bad = np.flatnonzero((counts != 2) & (counts != 0))
                    what = "'user item'"
                else:
                    bad = np.flatnonzero(counts == 1)
                    what = "'user item1 [item2 ...]'"
                if bad.size:
                    ln = int(bad[0]) + line0
                    raise ValueError(f"{path}: line {ln + 1}: ragged line with {counts[bad[0]]} "
                                     f"field(s); expected {what}")
                users = _parse_ids(tokens[first])
                user_of_token = np.cumsum(first) - 1
                rest = ~first
                yield users[user_of_token[rest]], _parse_ids(tokens[rest]), None
            line0 += n_lines


# --------------------------------------------------------------------------------------------------
# sessions from chunks, blocks of sessions
# --------------------------------------------------------------------------------------------------
def _same_kind(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.dtype.kind == "i") == (b.dtype.kind == "i")


def iter_session_blocks(
    path: str | os.PathLike[str],
    item_ids: np.ndarray,
    *,
    format: str = "auto",
    block_sessions: int = 4096,
    chunk_rows: int = 1 << 20,
    session_key: str | None = None,
    item_key: str | None = None,
    time_key: str | None = None,
    counters: dict | None = None,
) -> Iterator[_Block]:
    """Blocks of up to ``block_sessions`` complete sessions of ``path``, in input order, with items
    mapped to indices of ``item_ids`` (unknown items dropped; sessions left empty dropped).

    ``counters`` (a dict) receives ``n_sessions`` and ``n_unknown_events`` as reading proceeds.
    """
    p = _check_path(path)
    fmt = {"gru4rec": "tsv", "inter": "recbole", "atomic": "recbole"}.get(format, format)
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    if not isinstance(block_sessions, (int, np.integer)) or block_sessions < 1:
        raise ValueError(f"block_sessions must be a positive int, got {block_sessions!r}")
    if not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    ids = _as_id_array(item_ids)
    index = pd.Index(ids)
    cnt = counters if counters is not None else {}
    cnt.setdefault("n_sessions", 0)
    cnt.setdefault("n_unknown_events", 0)
    carry: tuple | None = None  # (sess, items, times) of the trailing, maybe unfinished session
    sess_kind: np.ndarray | None = None
    pend_ids: list = []
    pend_items: list = []
    pend_len: list = []
    n_pend = 0

    def flush(final: bool):
        nonlocal pend_ids, pend_items, pend_len, n_pend
        while n_pend >= block_sessions or (final and n_pend > 0):
            sid = np.concatenate(pend_ids)
            itm = np.concatenate(pend_items)
            lens = np.concatenate(pend_len)
            take = min(block_sessions, sid.size)
            ev = int(lens[:take].sum())
            yield _Block(sid[:take], itm[:ev],
                         np.concatenate(([0], np.cumsum(lens[:take]))).astype(np.int64))
            pend_ids, pend_items, pend_len = [sid[take:]], [itm[ev:]], [lens[take:]]
            n_pend = sid.size - take

    def complete(sess, items, times):
        """Add complete sessions (contiguous runs of ``sess``) to the pending block."""
        nonlocal n_pend
        if sess.size == 0:
            return
        starts = np.flatnonzero(np.concatenate(([True], sess[1:] != sess[:-1])))
        run_ids = sess[starts]
        if pd.Index(run_ids).has_duplicates:
            dup = pd.Index(run_ids)[pd.Index(run_ids).duplicated()][0]
            raise ValueError(f"{p}: the events of session {dup!r} are not contiguous; sort the file "
                             "by session (then time) first")
        lens = np.diff(np.concatenate((starts, [sess.size])))
        run = np.repeat(np.arange(starts.size), lens)
        if times is not None:
            order = np.lexsort((times, run))
            items = items[order]
        idx = _lookup(index, ids, items)
        known = idx >= 0
        cnt["n_sessions"] += int(starts.size)
        cnt["n_unknown_events"] += int(np.count_nonzero(~known))
        k_len = np.bincount(run[known], minlength=starts.size)
        keep = k_len > 0
        pend_ids.append(run_ids[keep])
        pend_items.append(idx[known].astype(np.int32))
        pend_len.append(k_len[keep].astype(np.int64))
        n_pend += int(keep.sum())

    for sess, items, times in _event_chunks(p, fmt, int(chunk_rows), session_key, item_key,
                                            time_key):
        if sess.size == 0:
            continue
        if sess_kind is None:
            sess_kind = sess[:1]
        elif not _same_kind(sess, sess_kind):
            sess = sess.astype(str).astype(object)
            if sess_kind.dtype.kind == "i":
                raise ValueError(f"{p}: session ids change from integers to text part-way through "
                                 f"(e.g. {sess[0]!r}); expected one kind throughout")
        if carry is not None:
            sess = np.concatenate((carry[0], sess))
            items = np.concatenate((carry[1], items))
            if times is not None and carry[2] is not None:
                times = np.concatenate((carry[2], times))
            elif times is not None or carry[2] is not None:
                times = None
        last = int(np.flatnonzero(np.concatenate(([True], sess[1:] != sess[:-1])))[-1])
        carry = (sess[last:], items[last:], None if times is None else times[last:])
        complete(sess[:last], items[:last], None if times is None else times[:last])
        yield from flush(False)
    if carry is not None:
        complete(*carry)
    yield from flush(True)


# --------------------------------------------------------------------------------------------------
# scoring one block
# --------------------------------------------------------------------------------------------------
class _BlockScorer:
    """Final states and top-K of blocks of sessions for one fitted SessionRNN (float32)."""

    def __init__(self, model: Any, threads: int = 1):
        from .model import _identity

        model._check_fitted()
        self.cell = model.cell
        self.threads = int(threads)
        self.layers = [int(h) for h in model.layers_]
        W = [tuple(np.ascontiguousarray(a, np.float32) for a in w) for w in model._weights()]
        self.W_y = np.ascontiguousarray(model.W_y_, np.float32)
        self.b_y = np.ascontiguousarray(model.b_y_, np.float32)
        emb = model.embedding
        if emb == "onehot":
            # a one-hot input times W_x is a row of W_x: feed that row, with an identity W_x
            self.input_table = W[0][0]
            W = [(_identity(W[0][0].shape[1], "<f4"),) + W[0][1:]] + W[1:]
        elif emb == "separate":
            self.input_table = np.ascontiguousarray(
                model.params_[model.param_names_.index("E_in")], np.float32)
        else:
            self.input_table = self.W_y
        self.weights = W
        self.table = _core.pack_table(self.W_y)

    def final_states(self, items: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Top-layer state (n, H_L) after each session's last item."""
        n = offsets.size - 1
        lens = np.diff(offsets)
        order = np.argsort(lens, kind="stable")
        out = np.empty((n, self.layers[-1]), np.float32)
        E = self.input_table.shape[1]
        g0 = 0
        while g0 < n:
            # at most 512 sessions of similar length per call, fewer when histories are long
            T = int(lens[order[min(n - 1, g0 + 511)]])
            rows = min(512, max(8, (_MAX_INPUT_FLOATS // max(1, T * E)) // 8 * 8))
            g1 = min(n, g0 + rows)
            sel = order[g0:g1]
            T = int(lens[sel].max())
            m = sel.size
            mp = m + (-m) % 8  # whole row panels: same rounding for every row (see model._advance)
            L = np.zeros(mp, np.int64)
            L[:m] = lens[sel]
            L[m:] = 1
            # right-aligned histories: session i occupies steps T - L[i] .. T - 1
            x = np.zeros((T, mp), np.int64)
            t_idx = np.arange(T)[:, None]
            src = offsets[np.concatenate((sel, np.repeat(sel[:1], mp - m)))][None, :] + (
                t_idx - (T - L)[None, :])
            valid = t_idx >= (T - L)[None, :]
            x[valid] = items[src[valid]]
            reset = np.zeros((T, mp), np.uint8)
            reset[T - L, np.arange(mp)] = 1
            X = np.ascontiguousarray(self.input_table[x])
            h0 = [np.zeros((mp, h), np.float32) for h in self.layers]
            c0 = [np.zeros((mp, h), np.float32) for h in self.layers] if self.cell == "lstm" else None
            _, h_last, _, _ = _core.sequence_forward(self.cell, X, h0, c0, reset, self.weights,
                                                     None, self.threads)
            out[sel] = h_last[-1][:m]
            g0 = g1
        return out

    def __call__(self, items: np.ndarray, offsets: np.ndarray, k: int, exclude_seen: bool):
        """(idx int32 (n, k'), scores float32 (n, k')); idx -1 past the eligible items."""
        H = self.final_states(items, offsets)
        exclude = None
        if exclude_seen:
            lens = np.diff(offsets)
            m = int(lens.max()) if lens.size else 0
            exclude = np.full((lens.size, max(1, m)), -1, np.int32)
            row = np.repeat(np.arange(lens.size), lens)
            col = np.arange(items.size) - np.repeat(offsets[:-1], lens)
            exclude[row, col] = items
        return _core.topk(H, self.table, self.b_y, int(k), exclude, None, self.threads)


class _ScoreActor:
    """A Ray actor: one model copy, scores blocks sent to it."""

    def __init__(self, model: Any, threads: int):
        import copy

        # arrays from the object store are read-only views; the kernels want owned arrays
        self.scorer = _BlockScorer(copy.deepcopy(model), threads)

    def score(self, items, offsets, k, exclude_seen):
        return self.scorer(items, offsets, k, exclude_seen)


# --------------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------------
def score(
    model: Any,
    sessions: str | os.PathLike[str],
    out: str | os.PathLike[str],
    k: int = 20,
    *,
    exclude_seen: bool = False,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    format: str = "auto",
    block_sessions: int = 4096,
    chunk_rows: int = 1 << 20,
    row_group_rows: int = 1 << 20,
    session_key: str | None = None,
    item_key: str | None = None,
    time_key: str | None = None,
) -> ScoreStats:
    """Write the top-``k`` next items of every session in ``sessions`` to the Parquet file ``out``.

    Parameters
    ----------
    model : SessionRNN or str or os.PathLike
        A fitted model or a model file.
    sessions : str or os.PathLike
        Sessions or user histories, any format of :func:`seqrec_fast.data.load` (Parquet, TSV, CSV and
        the line formats are streamed; JSON lines and raw YOOCHOOSE are read whole).
    out : str or os.PathLike
        Parquet file to write: columns ``session_id`` (the input's ids), ``rank`` (int32, from 1),
        ``item_id`` (the model's ids), ``score`` (float32). Written atomically.
    k : int
        Recommendations per session (at most the number of items; fewer when ``exclude_seen``
        leaves fewer eligible items).
    exclude_seen : bool
        Do not recommend items already in the session.
    engine : {"local", "ray"}
    address : str, optional
        With ``engine="ray"``: the cluster to join (default: the Ray this process joined, else a
        local Ray sized to the machine).
    workers : int, optional
        With ``engine="ray"``: actors (default: the cluster's CPUs / ``threads``).
    threads : int, optional
        Threads per scorer (default: 1 with Ray, else the model's ``num_threads``).
    format, session_key, item_key, time_key
        As in :func:`seqrec_fast.data.load`.
    block_sessions : int
        Sessions per unit of work.
    chunk_rows : int
        Events read per chunk.
    row_group_rows : int
        Rows per Parquet row group of the output (approximate).

    Returns
    -------
    ScoreStats
    """
    from .model import SessionRNN

    if isinstance(model, (str, os.PathLike)):
        model = SessionRNN.load(_check_path(model))
    if not isinstance(model, SessionRNN):
        raise TypeError(f"model must be a SessionRNN or a model file; got {type(model).__name__}")
    model._check_fitted()
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    for name, v in (("workers", workers), ("threads", threads)):
        if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{name} must be None or a positive int, got {v!r}")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("writing Parquet needs pyarrow; install it with: "
                          "pip install 'seqrec-fast[parquet]'") from None
    out = os.fspath(out)
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder {folder} does not exist")
    if os.path.isdir(out):
        raise ValueError(f"{out}: is a directory, expected a Parquet file path")
    if threads is None:
        threads = 1 if engine == "ray" else model._threads()
    k_eff = int(min(int(k), model.n_items))
    item_ids = np.asarray(model.item_ids_)
    item_type = pa.int64() if item_ids.dtype.kind in "iu" else pa.string()
    counters: dict = {}
    blocks = iter_session_blocks(sessions, item_ids, format=format, block_sessions=block_sessions,
                                 chunk_rows=chunk_rows, session_key=session_key, item_key=item_key,
                                 time_key=time_key, counters=counters)
    tmp = f"{out}.tmp{os.getpid()}"
    writer = None
    pending: list = []
    n_pending = 0
    n_rows = n_scored = n_blocks = 0

    def to_table(block: _Block, idx: np.ndarray, sc: np.ndarray):
        ok = idx >= 0
        row = np.repeat(np.arange(block.session_ids.size), idx.shape[1]).reshape(idx.shape)[ok]
        rank = np.broadcast_to(np.arange(1, idx.shape[1] + 1, dtype=np.int32), idx.shape)[ok]
        sid = block.session_ids[row]
        sid_arr = pa.array(sid, type=pa.int64() if sid.dtype.kind == "i" else pa.string())
        items = item_ids[idx[ok]]
        return pa.table({
            "session_id": sid_arr,
            "rank": pa.array(rank, type=pa.int32()),
            "item_id": pa.array(items if item_type == pa.int64() else items.astype(str),
                                type=item_type),
            "score": pa.array(sc[ok], type=pa.float32()),
        })

    def write(table):
        nonlocal writer, n_pending, pending, n_rows
        n_rows += table.num_rows
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        elif table.schema != writer.schema:
            table = table.cast(writer.schema)
        pending.append(table)
        n_pending += table.num_rows
        if n_pending >= row_group_rows:
            writer.write_table(pa.concat_tables(pending), row_group_size=n_pending)
            pending, n_pending = [], 0

    t0 = time.perf_counter()
    n_workers = 1
    try:
        if engine == "local":
            scorer = _BlockScorer(model, threads)
            for block in blocks:
                idx, sc = scorer(block.items, block.offsets, k_eff, exclude_seen)
                write(to_table(block, idx, sc))
                n_scored += block.session_ids.size
                n_blocks += 1
        else:
            from .cluster import default_workers, ray_session

            with ray_session(address) as ray:
                n_workers = int(workers) if workers is not None else default_workers(threads)
                actor_cls = ray.remote(num_cpus=threads)(_ScoreActor)
                model_ref = ray.put(model)
                actors = [actor_cls.remote(model_ref, threads) for _ in range(n_workers)]
                inflight: collections.deque = collections.deque()
                try:
                    for j, block in enumerate(blocks):
                        if len(inflight) >= 2 * n_workers:
                            b, ref = inflight.popleft()
                            write(to_table(b, *ray.get(ref)))
                        ref = actors[j % n_workers].score.remote(block.items, block.offsets,
                                                                 k_eff, exclude_seen)
                        inflight.append((block, ref))
                        n_scored += block.session_ids.size
                        n_blocks += 1
                    while inflight:
                        b, ref = inflight.popleft()
                        write(to_table(b, *ray.get(ref)))
                finally:
                    for a in actors:
                        ray.kill(a)
        if writer is None:  # no session at all: an empty file with the right columns
            sid_type = pa.int64()
            writer = pq.ParquetWriter(tmp, pa.schema([("session_id", sid_type), ("rank", pa.int32()),
                                                      ("item_id", item_type),
                                                      ("score", pa.float32())]))
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=n_pending)
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return ScoreStats(n_sessions=int(counters.get("n_sessions", 0)), n_scored=int(n_scored),
                      n_rows=int(n_rows), n_unknown_events=int(counters.get("n_unknown_events", 0)),
                      n_blocks=n_blocks, seconds=time.perf_counter() - t0, engine=engine,
                      workers=n_workers)
