"""Hyperparameter configuration: TOML config files and ``--param key=value`` overrides.

A config file is a flat TOML document of ``name = value`` lines using the parameter names of
:class:`seqrec_fast.model.SessionRNN` (:data:`MODEL_PARAMS`); ``configs/`` at the repository root ships the
official GRU4Rec best settings in this form.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MODEL_PARAMS", "load_config", "parse_param", "parse_value", "validate_params"]

#: Hyperparameter names of SessionRNN that a config file or ``--param`` may set.
MODEL_PARAMS: frozenset[str] = frozenset(
    {
        "cell",
        "layers",
        "embedding",
        "embedding_dim",
        "loss",
        "elu_param",
        "bpreg",
        "logq",
        "n_sample",
        "sample_alpha",
        "full_softmax",
        "batch_size",
        "dropout_embed",
        "dropout_hidden",
        "bptt",
        "optimizer",
        "learning_rate",
        "momentum",
        "n_epochs",
        "seed",
        "num_threads",
        "precision",
    }
)

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _toml_module() -> Any:
    try:
        import tomllib  # Python 3.11+

        return tomllib
    except ImportError:
        pass
    try:
        import tomli

        return tomli
    except ImportError:
        raise ImportError(
            "reading TOML config files needs Python 3.11+ or the 'tomli' package (pip install tomli)"
        ) from None


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a flat TOML config file of hyperparameters.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        ``name -> value`` as TOML typed them (int, float, bool, str, list).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file: a directory, not UTF-8, invalid TOML (with TOML's line and column), or a
        table (``[section]``) where a flat ``name = value`` was expected.
    ImportError
        On Python < 3.11 without the ``tomli`` package.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"config file {p}: no such file")
    if os.path.isdir(p):
        raise ValueError(f"config file {p}: is a directory, expected a TOML file")
    toml = _toml_module()
    with open(p, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {p}: not UTF-8 text ({e})") from None
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise ValueError(f"config file {p}: invalid TOML: {e}") from None
    tables = sorted(k for k, v in data.items() if isinstance(v, dict))
    if tables:
        raise ValueError(
            f"config file {p}: tables are not supported ({', '.join(f'[{t}]' for t in tables)}); "
            "write the parameters as top-level 'name = value' lines"
        )
    return dict(data)


def parse_value(text: str) -> Any:
    """Parse the value of a ``--param``: bool, None, int, float, list or str.

    ``true``/``false`` (any case) -> bool; ``none``/``null`` -> None; ``100`` -> int; ``0.5``, ``1e-3``
    -> float; ``100,100`` or ``[100, 100]`` -> list (elements parsed the same way; ``[]`` is empty);
    ``"text"`` or ``'text'`` -> the text unquoted; anything else -> the str as given.
    """
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    if s.startswith("[") and s.endswith("]"):
        inner = s[1:-1].strip()
        return _parse_list(inner, text) if inner else []
    if "," in s:
        return _parse_list(s, text)
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        pass
    return s


def _parse_list(inner: str, text: str) -> list[Any]:
    parts = inner.split(",")
    if any(not x.strip() for x in parts):
        raise ValueError(f"empty list element in {text!r}; expected e.g. 100,100 or [100,100]")
    return [parse_value(x) for x in parts]


def parse_param(text: str) -> tuple[str, Any]:
    """Split and parse one ``--param key=value`` override.

    Returns
    -------
    (key, value)
        ``value`` is parsed by :func:`parse_value`.

    Raises
    ------
    ValueError
        If ``text`` is not ``key=value`` with a valid identifier as the key.
    """
    if "=" not in text:
        raise ValueError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    if not _KEY.match(key):
        raise ValueError(f"expected key=value with a parameter name as key, got {text!r}")
    return key, parse_value(value)


def validate_params(
    params: Mapping[str, Any], allowed: Iterable[str] = MODEL_PARAMS, *, source: str | None = None
) -> None:
    """Raise ValueError if ``params`` has a name outside ``allowed``.

    The message names every unknown key, a close match for each when there is one, and the allowed
    names. ``source`` (e.g. the config file) is prefixed to the message.
    """
    allowed_set = set(allowed)
    unknown = [k for k in params if k not in allowed_set]
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(str(k), sorted(allowed_set), n=1, cutoff=0.6)
        parts.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
    noun = "parameter" if len(unknown) == 1 else "parameters"
    prefix = f"{source}: " if source else ""
    raise ValueError(
        f"{prefix}unknown {noun} {', '.join(parts)}; allowed: {', '.join(sorted(allowed_set))}"
    )
