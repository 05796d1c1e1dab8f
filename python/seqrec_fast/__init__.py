"""seqrec_fast: session-based recommendation with recurrent networks (GRU4Rec family), C++ core.

The names people reach for, importable from the top level::

    import seqrec_fast as sf

    train = sf.load_data("train.tsv.gz")                  # a click log -> SessionData
    model = sf.SessionRNN(layers=[100], n_epochs=10).fit(train)
    sf.evaluate(model, sf.load_data("test.tsv.gz", item_map=train))
    model.save("gru.npz")
    model = sf.load("gru.npz")                            # a saved model file -> SessionRNN
    rec = sf.Recommender(model)                           # per-event serving
    rows, cos = sf.similar_sessions(model.transform(train), 0, k=10)

They are imported lazily, on first use: ``import seqrec_fast`` itself loads neither the C++ module nor
pandas (about a second). The submodules (``seqrec_fast.model``, ``.data``, ``.evaluate``,
``.serving``, ...) stay what they are; ``sf.evaluate`` is the :mod:`seqrec_fast.evaluate` module, made
callable as its :func:`~seqrec_fast.evaluate.evaluate` function.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_LAZY = {
    "SessionRNN": ("seqrec_fast.model", "SessionRNN"),
    "Recommender": ("seqrec_fast.serving", "Recommender"),
    "evaluate": ("seqrec_fast.evaluate", None),
    "similar_sessions": ("seqrec_fast.vectors", "similar_sessions"),
    "load_data": ("seqrec_fast.data", "load"),
    "SessionData": ("seqrec_fast.data", "SessionData"),
    "SessionVectors": ("seqrec_fast.vectors", "SessionVectors"),
    "Ranking": ("seqrec_fast.ranking", "Ranking"),
}

__all__ = [
    "Ranking",
    "Recommender",
    "SessionData",
    "SessionRNN",
    "SessionVectors",
    "__version__",
    "evaluate",
    "load",
    "load_data",
    "similar_sessions",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import evaluate as evaluate
    from .data import SessionData as SessionData
    from .data import load as load_data
    from .model import SessionRNN as SessionRNN
    from .ranking import Ranking as Ranking
    from .serving import Recommender as Recommender
    from .vectors import SessionVectors as SessionVectors
    from .vectors import similar_sessions as similar_sessions


def load(path: str | os.PathLike[str]) -> SessionRNN:
    """Load a saved model file (written by :meth:`SessionRNN.save
    <seqrec_fast.model.SessionRNN.save>` or ``seqrec train``).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` model file.

    Returns
    -------
    SessionRNN
        The fitted model, ready for ``recommend``, ``rank``, ``transform``, :func:`evaluate` or a
        :class:`Recommender`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not a seqrec_fast model file (a click log is loaded with :func:`load_data`).
    """
    from .model import SessionRNN

    try:
        return SessionRNN.load(path)
    except ValueError as e:
        raise ValueError(f"{e} (sf.load reads model files; load a click log with "
                         "seqrec_fast.load_data)") from None


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'seqrec_fast' has no attribute {name!r}") from None
    mod = import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
