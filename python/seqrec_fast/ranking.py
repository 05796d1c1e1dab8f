"""Re-ranking a candidate list that another system produced (search results, a retrieval stage).

The result type shared by :meth:`SessionRNN.rank <seqrec_fast.model.SessionRNN.rank>`,
:meth:`Recommender.rank <seqrec_fast.serving.Recommender.rank>` and ``POST /v1/rank``, and the
candidate bookkeeping they share: unknown ids are reported, never an error; duplicates are scored
once; an empty list gives an empty result. The scoring itself is one C++ call (``rank_candidates``,
or ``step_rank`` fused with the recurrent step) that scores only the C candidate rows of the item
table.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["DEFAULT_MAX_CANDIDATES", "Ranking", "check_candidates", "split_candidates"]

DEFAULT_MAX_CANDIDATES = 10_000
"""Default limit on the candidates of one serving request (``Recommender(max_candidates=...)``):
more raise ``ValueError`` in Python and get HTTP 413."""


class Ranking(NamedTuple):
    """Candidates ordered by score.

    Attributes
    ----------
    items : numpy.ndarray (C',)
        The known, distinct candidates (external ids), best first; ties go to the lower internal
        item index, NaN scores last.
    scores : numpy.ndarray (C',)
        Their scores ``h·W_y[j] + b_y[j]`` (float32 for float32 models): the numbers the
        full-catalogue recommendation gives these items, to float32 rounding.
    unknown : list
        Candidates not in the model's item map, in request order, each once.
    """

    items: np.ndarray
    scores: np.ndarray
    unknown: list


def split_candidates(candidates: Any, idx: Any) -> tuple[np.ndarray, list]:
    """Distinct known indices and the unknown candidates.

    Parameters
    ----------
    candidates : sequence
        The candidate ids as given (used only to report the unknown ones).
    idx : sequence of int (C,)
        Internal index of each candidate, -1 if unknown.

    Returns
    -------
    known : int32 ndarray (C',), distinct indices (in first-occurrence order; the ranking order does
        not depend on it)
    unknown : list of the candidates with index -1, first occurrences in order
    """
    if isinstance(idx, np.ndarray):
        idx = idx.tolist()
    distinct = dict.fromkeys(idx)
    unknown: list = []
    if -1 in distinct:
        del distinct[-1]
        seen: dict = {}
        for c, i in zip(candidates, idx):
            if i < 0:
                seen.setdefault(c.item() if isinstance(c, np.generic) else c, None)
        unknown = list(seen)
    return np.fromiter(distinct, np.int32, len(distinct)), unknown


def check_candidates(candidates: Any, limit: int | None = None) -> Any:
    """``candidates`` as a sequence (TypeError for a string or a non-sequence); ValueError when
    there are more than ``limit``."""
    if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__len__"):
        raise TypeError(f"candidates must be a sequence of item ids; got {type(candidates).__name__}")
    if isinstance(candidates, np.ndarray) and candidates.ndim != 1:
        raise ValueError(f"candidates must be 1-D; got shape {candidates.shape}")
    if limit is not None and len(candidates) > limit:
        raise ValueError(f"{len(candidates)} candidates exceed the limit of {limit} per request "
                         "(Recommender(max_candidates=...))")
    return candidates
