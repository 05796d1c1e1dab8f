"""File formats of session and interaction logs: detection and the readers behind :func:`seqrec_fast.data.load`.

What is here: :data:`FORMATS`, the column-name aliases, :func:`detect_format` (from the file name and its
first lines), and one reader per format that returns flat arrays ``(session keys, item keys, times or
None)`` in file order; small file helpers (existence check, gzip detection by magic bytes, head lines).
What is not: :class:`~seqrec_fast.data.SessionData` and the item map (``data.py``), which turn those arrays
into sessions. Readers are vectorised (pandas / NumPy), except the JSON-lines one, which relies on pandas'
JSON parser.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FORMATS", "detect_format"]

#: Formats understood by :func:`load` (``"auto"`` detects one of them).
FORMATS: tuple[str, ...] = (
    "tsv",  # GRU4Rec TSV: header with SessionId, ItemId, Time (configurable), extra columns ignored
    "csv",  # CSV with a header and named columns
    "parquet",  # Parquet with named columns (needs pyarrow: pip install seqrec-fast[parquet])
    "sessions",  # one session per line, whitespace-separated items, file order = time order
    "user_seq",  # "user i1 i2 ..." per line (user histories, chronological)
    "user_item",  # "user item" per line, chronological per user
    "recbole",  # RecBole atomic .inter file, header "session_id:token\titem_id:token\ttimestamp:float"
    "session_items",  # TSV with SessionId, Time and space-separated Items per row (one row per session)
    "yoochoose",  # raw YOOCHOOSE clicks: headerless CSV SessionId,ISO-8601 time,ItemId,Category
    "jsonl",  # OTTO JSON lines: {"session": s, "events": [{"aid": i, "ts": ms, "type": t}, ...]}
)

# Column-name aliases tried in order when the caller does not name a column explicitly.
_SESSION_ALIASES = (
    "SessionId",
    "session_id",
    "sessionId",
    "session",
    "sid",
    "SessionID",
    "user_id",
    "userId",
    "UserId",
    "user",
    "uid",
)
_ITEM_ALIASES = (
    "ItemId",
    "item_id",
    "itemId",
    "item",
    "aid",
    "ItemID",
    "movieId",
    "movie_id",
    "product_id",
    "productId",
)
_TIME_ALIASES = (
    "Time",
    "timestamp",
    "time",
    "Timestamp",
    "ts",
    "TimeStamp",
    "datetime",
    "eventdate",
)



def _as_id_array(x: Any) -> np.ndarray:
    """External ids as int64 when all are integers, else object array of str."""
    if isinstance(x, (pd.Series, pd.Index)):
        x = x.to_numpy()
    arr = np.asarray(x)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        return arr.astype(str).astype(object)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    obj = arr.astype(object)
    if obj.size:
        kind = pd.api.types.infer_dtype(obj, skipna=False)
        if kind == "integer":
            return obj.astype(np.int64)
    return obj.astype(str).astype(object)


def _check_path(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such file")
    if os.path.isdir(p):
        raise ValueError(f"{p}: is a directory, expected a data file")
    return p


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if raw[:3] == b"\xef\xbb\xbf":
        raw = raw[3:]
    if not raw.strip():
        raise ValueError(f"{path}: file is empty; expected at least one event")
    return raw


def _read_head(path: str, n_bytes: int = 1 << 16) -> bytes:
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            head = f.read(n_bytes)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    if head[:3] == b"\xef\xbb\xbf":
        head = head[3:]
    return head


def _head_lines(head: bytes, max_lines: int = 2000) -> list[str]:
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if len(head) >= (1 << 16) - 4 and len(lines) > 1:
        lines = lines[:-1]  # last line may be cut
    return [ln.rstrip("\r") for ln in lines if ln.strip()][:max_lines]


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _is_iso_time(tok: str) -> bool:
    if len(tok) < 10 or tok[4:5] != "-" or tok[7:8] != "-":
        return False
    try:
        pd.Timestamp(tok)
        return True
    except (ValueError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------------
# format detection
# ---------------------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the format of a data file from its name and its first lines.

    Rules, in order: ``.parquet``/``.pq`` -> parquet; ``.inter`` -> recbole; ``.jsonl``/``.json`` or a
    first line starting with ``{`` -> jsonl; a header with ``name:type`` fields -> recbole; a tab header
    with an ``Items`` column -> session_items; another tab/comma header with non-numeric names -> tsv/csv;
    a headerless comma file whose 2nd field is an ISO-8601 time -> yoochoose; whitespace-separated lines:
    all with exactly two fields and a non-decreasing first field with repeats -> user_item; first field
    equal to the line number (from 0 or 1) -> user_seq; otherwise sessions.

    Returns
    -------
    str
        One of :data:`FORMATS`.
    """
    p = _check_path(path)
    name = p.lower()
    name = name.removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"PAR1":
        return "parquet"
    lines = _head_lines(_read_head(p))
    if not lines:
        raise ValueError(f"{p}: file is empty; expected at least one event")
    first = lines[0]
    if first.lstrip().startswith("{"):
        return "jsonl"
    if "\t" in first or "," in first:
        sep = "\t" if "\t" in first else ","
        fields = [f.strip() for f in first.split(sep)]
        if all(":" in f for f in fields) and any(
            f.split(":")[-1] in ("token", "float", "token_seq", "float_seq") for f in fields
        ):
            return "recbole"
        header_like = any(f and not _is_number(f) and not _is_iso_time(f) for f in fields)
        if header_like:
            if sep == "\t" and any(f.lower() == "items" for f in fields):
                return "session_items"
            return "tsv" if sep == "\t" else "csv"
        if sep == "," and len(fields) >= 3 and _is_iso_time(fields[1]):
            return "yoochoose"
        if sep == ",":
            raise ValueError(
                f"{p}: line 1 looks like data, not a header ({first[:80]!r}); CSV files need a header "
                "naming the session, item and time columns (or pass format='yoochoose' for raw "
                "YOOCHOOSE clicks)"
            )
    toks = [ln.split() for ln in lines]
    if all(len(t) == 2 for t in toks) and len(toks) > 1:
        firsts = [t[0] for t in toks]
        nums = [int(x) for x in firsts] if all(x.lstrip("-").isdigit() for x in firsts) else None
        if nums is not None:
            nondecr = all(a <= b for a, b in zip(nums, nums[1:]))
            if nondecr and len(set(nums)) < len(nums):
                return "user_item"
        elif len(set(firsts)) < len(firsts) and all(
            a == b or a not in firsts[i + 2 :] for i, (a, b) in enumerate(zip(firsts, firsts[1:]))
        ):
            return "user_item"
    firsts = [t[0] for t in toks]
    if len(toks) > 1 and all(x.isdigit() for x in firsts):
        nums = [int(x) for x in firsts]
        if (
            nums[0] in (0, 1)
            and all(b == a + 1 for a, b in zip(nums, nums[1:]))
            and all(len(t) >= 2 for t in toks)
        ):
            return "user_seq"
    return "sessions"


def _pick(
    columns: Sequence[str],
    explicit: str | None,
    aliases: Sequence[str],
    what: str,
    path: str,
    required: bool = True,
) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise ValueError(
                f"{path}: missing column {explicit!r} ({what}) in the header (line 1); found columns "
                f"{list(columns)}"
            )
        return explicit
    for a in aliases:
        if a in columns:
            return a
    lower = {c.lower(): c for c in columns}
    for a in aliases:
        if a.lower() in lower:
            return lower[a.lower()]
    if required:
        raise ValueError(
            f"{path}: missing {what} column in the header (line 1); expected one of {list(aliases[:4])} "
            f"(or pass its name), found columns {list(columns)}"
        )
    return None


def _numeric_time(col: pd.Series, name: str, path: str, line_offset: int) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = col.iloc[i]
        what = "missing value" if pd.isna(raw) else f"non-numeric value {str(raw)!r}"
        raise ValueError(
            f"{path}: line {i + line_offset}, column {name!r}: {what}; expected a numeric time "
            "(unix seconds)"
        )
    return vals


def _check_no_missing(col: pd.Series, name: str, path: str, line_offset: int) -> None:
    na = col.isna().to_numpy()
    if na.any():
        i = int(np.flatnonzero(na)[0])
        raise ValueError(
            f"{path}: line {i + line_offset}, column {name!r}: missing value (ragged line?); expected "
            "a value in every row"
        )


def _load_delimited(
    path: str, fmt: str, *, session_key: str | None, item_key: str | None, time_key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    head = _head_lines(_read_head(path), 1)
    if not head:
        raise ValueError(f"{path}: file is empty; expected a header line and events")
    if fmt == "csv":
        sep = ","
    elif fmt == "recbole":
        sep = "\t"
    else:
        sep = "\t" if "\t" in head[0] else ("," if "," in head[0] else r"\s+")
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            compression="gzip" if _is_gzip(path) else None,
            skip_blank_lines=True,
            engine="c" if sep != r"\s+" else "python",
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty; expected a header line and events") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: ragged line: {str(e).strip()}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from None
    if fmt == "recbole":
        df.columns = [c.split(":")[0] for c in df.columns]
    if len(df) == 0:
        raise ValueError(f"{path}: no events after the header (line 1); expected at least one row")
    cols = list(df.columns)
    s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
    i = _pick(cols, item_key, _ITEM_ALIASES, "item id", path)
    t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
    for c in (s, i):
        _check_no_missing(df[c], c, path, 2)
    times = None if t is None else _numeric_time(df[t], t, path, 2)
    return _ids_from_str(df[s]), _ids_from_str(df[i]), times


def _ids_from_str(col: pd.Series) -> np.ndarray:
    """Parse a string column of ids as int64 when all are integers, else keep strings (object)."""
    vals = col.to_numpy(dtype=object)
    try:
        return vals.astype(np.int64)
    except (ValueError, TypeError, OverflowError):
        return vals.astype(str).astype(object)


def _load_parquet(
    path: str, *, session_key: str | None, item_key: str | None, time_key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        import pyarrow as pa
    except ImportError:
        raise ImportError(
            f"reading Parquet ({path}) needs pyarrow; install it with: pip install 'seqrec-fast[parquet]'"
        ) from None
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ValueError(f"{path}: cannot read as Parquet ({e})") from None
    if len(df) == 0:
        raise ValueError(f"{path}: file is empty; expected at least one event")
    cols = [str(c) for c in df.columns]
    df.columns = cols
    s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
    i = _pick(cols, item_key, _ITEM_ALIASES, "item id", path)
    t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
    for c in (s, i):
        na = df[c].isna().to_numpy()
        if na.any():
            raise ValueError(
                f"{path}: row {int(np.flatnonzero(na)[0])}, column {c!r}: missing value"
            )
    times = None
    if t is not None:
        col = df[t]
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            times = (col.astype("datetime64[ns]").astype("int64") / 1e9).to_numpy(dtype=np.float64)
        else:
            times = _numeric_time(col, t, path, 0)
    return _as_id_array(df[s].to_numpy()), _as_id_array(df[i].to_numpy()), times


def _tokenize(raw: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Whitespace tokens of ``raw`` and the 0-based line of each token, vectorised.

    Returns (tokens as an 'S' array, token line numbers int64, number of lines).
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    ws = (buf == 32) | (buf == 9) | (buf == 10) | (buf == 13) | (buf == 11) | (buf == 12)
    nl = buf == 10
    starts = ~ws
    starts[1:] &= ws[:-1]
    line_of_byte = np.cumsum(nl)
    tok_line = line_of_byte[starts].astype(np.int64)
    tokens = np.array(raw.split())
    n_lines = int(line_of_byte[-1]) + (0 if raw.endswith(b"\n") else 1)
    return tokens, tok_line, n_lines


def _parse_ids(tokens: np.ndarray) -> np.ndarray:
    try:
        return tokens.astype(np.int64)
    except (ValueError, OverflowError):
        return np.char.decode(tokens, "utf-8").astype(object)


def _load_whitespace(path: str, fmt: str) -> tuple[np.ndarray, np.ndarray, None]:
    raw = _read_bytes(path)
    tokens, tok_line, n_lines = _tokenize(raw)
    counts = np.bincount(tok_line, minlength=n_lines)
    if fmt == "sessions":
        # session key = line number; blank lines are skipped
        return tok_line, _parse_ids(tokens), None
    first = np.ones(tokens.size, dtype=bool)
    first[1:] = tok_line[1:] != tok_line[:-1]
    if fmt == "user_item":
        bad = np.flatnonzero((counts != 2) & (counts != 0))
        if bad.size:
            ln = int(bad[0])
            raise ValueError(
                f"{path}: line {ln + 1}: ragged line with {counts[ln]} fields; expected 'user item'"
            )
    else:  # user_seq
        bad = np.flatnonzero(counts == 1)
        if bad.size:
            ln = int(bad[0])
            raise ValueError(
                f"{path}: line {ln + 1}: ragged line with only a user id; expected 'user item1 [item2 ...]'"
            )
    users = _parse_ids(tokens[first])
    user_of_token = np.cumsum(first) - 1
    rest = ~first
    return users[user_of_token[rest]], _parse_ids(tokens[rest]), None


def _load_session_items(
    path: str, *, session_key: str | None, item_key: str | None, time_key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            compression="gzip" if _is_gzip(path) else None,
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty; expected a header line and sessions") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: ragged line: {str(e).strip()}") from None
    if len(df) == 0:
        raise ValueError(f"{path}: no sessions after the header (line 1)")
    cols = list(df.columns)
    s = _pick(cols, session_key, _SESSION_ALIASES, "session id", path)
    i = _pick(
        cols, item_key, ("Items", "items", "ItemIds", "item_id_list", "ItemId"), "items", path
    )
    t = _pick(cols, time_key, _TIME_ALIASES, "time", path, required=False)
    _check_no_missing(df[s], s, path, 2)
    _check_no_missing(df[i], i, path, 2)
    raw = "\n".join(df[i].tolist()).encode() + b"\n"
    tokens, tok_line, _ = _tokenize(raw)
    sess = _ids_from_str(df[s])[tok_line]
    times = None if t is None else _numeric_time(df[t], t, path, 2)[tok_line]
    return sess, _parse_ids(tokens), times


def _load_yoochoose(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        df = pd.read_csv(
            path,
            sep=",",
            header=None,
            dtype=str,
            usecols=[0, 1, 2],
            keep_default_na=False,
            na_values=[""],
            compression="gzip" if _is_gzip(path) else None,
        )
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path}: file is empty; expected 'SessionId,ISO time,ItemId,Category' lines"
        ) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise ValueError(
            f"{path}: ragged line: {str(e).strip()}; expected 'SessionId,ISO time,ItemId,Category'"
        ) from None
    for c in (0, 1, 2):
        _check_no_missing(df[c], f"field {c + 1}", path, 1)
    ts = pd.to_datetime(df[1], errors="coerce", utc=True, format="ISO8601")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: line {i + 1}, field 2 (time): {df[1].iloc[i]!r} is not an ISO-8601 time; expected "
            "e.g. 2014-04-07T10:51:09.277Z"
        )
    times = (ts.astype("datetime64[ns, UTC]").astype("int64") / 1e9).to_numpy(dtype=np.float64)
    return _ids_from_str(df[0]), _ids_from_str(df[2]), times


def _load_jsonl(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    try:
        df = pd.read_json(io.BytesIO(raw), lines=True)
    except ValueError as e:
        raise ValueError(
            f"{path}: not valid JSON lines ({e}); expected one "
            '{"session": id, "events": [{"aid": item, "ts": ms}, ...]} per line'
        ) from None
    for c in ("session", "events"):
        if c not in df.columns:
            raise ValueError(
                f"{path}: missing key {c!r}; expected one "
                '{"session": id, "events": [{"aid": item, "ts": ms}, ...]} per line'
            )
    lengths = df["events"].map(len).to_numpy()
    ev = pd.json_normalize(df["events"].explode().dropna().tolist())
    for c in ("aid", "ts"):
        if c not in ev.columns:
            raise ValueError(
                f"{path}: events lack key {c!r}; expected events like "
                '{"aid": item, "ts": ms, "type": "clicks"}'
            )
    sess = np.repeat(_as_id_array(df["session"].to_numpy()), lengths)
    times = pd.to_numeric(ev["ts"], errors="coerce").to_numpy(dtype=np.float64) / 1000.0
    if np.isnan(times).any():
        raise ValueError(
            f"{path}: event {int(np.flatnonzero(np.isnan(times))[0])}: non-numeric 'ts'; "
            "expected milliseconds since the epoch"
        )
    return sess, _as_id_array(ev["aid"].to_numpy()), times
