"""Model persistence: one ``.npz`` file holding NumPy arrays plus a JSON header, no pickle anywhere.

File layout (a plain, uncompressed NumPy ``.npz`` zip archive, readable by ``np.load``):

- one ``<name>.npy`` member per array (numeric or fixed-width unicode/bytes dtypes; object arrays are
  refused, so string item ids must be stored as ``np.asarray(ids, dtype=str)`` or in the header);
- a ``__header__.npy`` member: a 1-D uint8 array holding the UTF-8 JSON header.

The header carries ``format`` (``"seqrec_fast.model"``), ``format_version`` (:data:`FORMAT_VERSION`),
``library_version``, ``created`` (ISO-8601 UTC), ``arrays`` (name -> dtype and shape of every array) and
``checksum`` (``"sha256:<hex>"`` over every array's name, dtype, shape and bytes, in sorted name order),
plus whatever the caller put in it (hyperparameters, training stats, ...).

Writes are atomic: the archive is written to a temporary file in the destination folder, flushed and
fsynced, then moved over ``path`` with :func:`os.replace`. On any failure the temporary file is removed and
an existing file at ``path`` is left untouched.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "HEADER_KEY", "load_model_file", "save_model_file"]

FORMAT_NAME = "seqrec_fast.model"
FORMAT_VERSION = 1
HEADER_KEY = "__header__"

_ZIP_MAGIC = b"PK\x03\x04"
_RESERVED = ("format", "format_version", "library_version", "created", "arrays", "checksum")


def _library_version() -> str:
    try:
        from . import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return str(__version__)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"header value of type {type(o).__name__} is not JSON serialisable")


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over (name, dtype, shape, C-order bytes) of every array, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(name.encode("utf-8") + b"\0")
        h.update(a.dtype.str.encode("ascii") + b"\0")
        h.update(repr(tuple(int(s) for s in a.shape)).encode("ascii") + b"\0")
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    return "sha256:" + h.hexdigest()


def _check_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a dict of name -> array, got {type(arrays).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("__") or "/" in name:
            raise ValueError(
                f"array name {name!r} is not allowed: expected a non-empty str without '/' that does "
                "not start with '__'"
            )
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(
                f"array {name!r} has dtype object, which cannot be saved without pickle; store strings "
                "as a fixed-width unicode array (np.asarray(ids, dtype=str)) or in the header"
            )
        out[name] = a
    return out


def save_model_file(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]
) -> None:
    """Write ``arrays`` and the JSON ``header`` to one ``.npz`` file at ``path``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (written as given; no suffix is added). Its folder must exist.
    arrays : dict of str -> np.ndarray
        The arrays to store (any shape; numeric, bool or fixed-width str/bytes dtypes). Names must be
        non-empty, without ``/``, and must not start with ``__``.
    header : dict
        JSON-serialisable metadata (NumPy scalars and arrays are converted). The keys ``format``,
        ``format_version``, ``library_version``, ``created``, ``arrays`` and ``checksum`` are set by this
        function and overwrite any given value.

    Raises
    ------
    ValueError
        For an object array, a bad array name or a missing destination folder.
    TypeError
        If ``header`` is not JSON serialisable.
    OSError
        If the file cannot be written; any existing file at ``path`` is then left untouched.
    """
    path = os.fspath(path)
    arrs = _check_arrays(arrays)
    if not isinstance(header, Mapping):
        raise TypeError(f"header must be a dict, got {type(header).__name__}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path}: it is a directory")

    full = {k: v for k, v in dict(header).items() if k not in _RESERVED}
    full.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        library_version=_library_version(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        arrays={k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in sorted(arrs.items())},
        checksum=_checksum(arrs),
    )
    header_bytes = json.dumps(full, default=_json_default, ensure_ascii=False).encode("utf-8")
    header_arr = np.frombuffer(header_bytes, dtype=np.uint8)

    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, {HEADER_KEY: header_arr, **arrs})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """The layout of ``np.savez`` (uncompressed, one ``.npy`` member per array), pickle refused."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)


def _fsync_dir(folder: str) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def load_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_model_file` and verify it.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    arrays : dict of str -> np.ndarray
        Every stored array, bit-identical to what was saved.
    header : dict
        The JSON header, including ``format``, ``format_version``, ``library_version``, ``created``,
        ``arrays`` and ``checksum``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file, if it is a directory, not an npz archive, truncated or damaged, has no or a bad
        header, is not a seqrec_fast model, was written by a newer format version, has missing arrays, or
        fails its checksum.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected a seqrec_fast model file (.npz)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _ZIP_MAGIC:
        raise ValueError(
            f"{path}: not a seqrec_fast model file (expected an .npz zip archive, "
            f"file starts with {magic!r})"
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: damaged model file: the zip archive is truncated or corrupted")

    damaged = (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if HEADER_KEY not in names:
                raise _Bad(
                    f"{path}: not a seqrec_fast model file (no {HEADER_KEY} entry; arrays: "
                    f"{', '.join(sorted(names)) or 'none'})"
                )
            for name in names:
                value = npz[name]
                if not isinstance(value, np.ndarray):  # a zip member that is not a .npy array
                    raise _Bad(
                        f"{path}: not a seqrec_fast model file (entry {name!r} is not an array)"
                    )
                arrays[name] = value
            header_arr = arrays.pop(HEADER_KEY)
    except _Bad as e:
        raise ValueError(str(e)) from None
    except damaged as e:
        raise ValueError(f"{path}: damaged model file (truncated or corrupted): {e}") from None

    header = _parse_header(path, header_arr)

    manifest = header.get("arrays")
    if not isinstance(manifest, dict):  # a bad file, not a bad argument
        raise ValueError(  # noqa: TRY004
            f"{path}: bad model header: 'arrays' must be an object, got {manifest!r}"
        )
    missing = sorted(set(manifest) - set(arrays))
    if missing:
        raise ValueError(
            f"{path}: damaged model file: missing arrays {', '.join(missing)} "
            f"(the header lists {len(manifest)}, the file holds {len(arrays)})"
        )
    unexpected = sorted(set(arrays) - set(manifest))
    if unexpected:
        raise ValueError(
            f"{path}: damaged model file: arrays not listed in the header: {', '.join(unexpected)}"
        )
    checksum = _checksum(arrays)
    if checksum != header.get("checksum"):
        raise ValueError(
            f"{path}: damaged model file: checksum mismatch (header {header.get('checksum')!r}, "
            f"contents {checksum!r})"
        )
    return arrays, header


class _Bad(Exception):
    pass


def _parse_header(path: str, header_arr: np.ndarray) -> dict[str, Any]:
    if header_arr.dtype != np.uint8 or header_arr.ndim != 1:
        raise ValueError(
            f"{path}: bad model header: expected a 1-D uint8 array, got dtype {header_arr.dtype} "
            f"shape {header_arr.shape}"
        )
    try:
        header = json.loads(header_arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: bad model header (not UTF-8 JSON): {e}") from None
    if not isinstance(header, dict):  # a bad file, not a bad argument
        raise ValueError(  # noqa: TRY004
            f"{path}: bad model header: expected a JSON object, got {type(header).__name__}"
        )
    fmt = header.get("format")
    if fmt != FORMAT_NAME:
        raise ValueError(
            f"{path}: not a seqrec_fast model file (header format {fmt!r}, expected {FORMAT_NAME!r})"
        )
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"{path}: bad model header: format_version must be a positive integer, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: model file format version {version} was written by a newer seqrec_fast "
            f"(library {header.get('library_version', 'unknown')}); this version "
            f"({_library_version()}) reads format versions up to {FORMAT_VERSION}: upgrade seqrec_fast"
        )
    return header
