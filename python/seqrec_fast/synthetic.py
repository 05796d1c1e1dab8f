"""A built-in synthetic click log with a learnable next-item structure (the data of ``seqrec demo``).

The generator imitates the structure of e-commerce click logs such as YOOCHOOSE (RSC15) while staying
small, seedable and download-free. Everything is drawn from one ``numpy.random.Generator`` seeded with
``seed``, so the same arguments always give the same log.

Generative model
----------------
Items
    ``n_items`` items with a Zipfian base popularity ``w_i = rank_i ** -zipf_exponent``, the popularity
    ranks being a random permutation of the items (the item id says nothing about popularity). Items are
    split into ``n_topics`` topics of (almost) equal size; a topic's weight is the sum of its items'
    popularities, so topics holding popular items are visited more often.
Sequential patterns
    Inside each topic there are ``n_patterns`` sparse transition tables ("browsing intents"): every item
    has ``n_successors`` successors in its own topic, drawn without replacement with probability
    proportional to ``w ** 0.5``, and followed with geometrically decaying probabilities
    (``successor_decay ** k``, normalised: the first successor is by far the most likely). A session
    follows one pattern throughout, so the last item alone is ambiguous between patterns while the
    session history is not: a model that reads the sequence can beat one that only looks at the last item.
Sessions
    Each session picks a topic with probability proportional to the topic weight, a pattern uniformly, a
    start item in the topic with probability proportional to ``w``, and a length ``2 + Geometric`` with
    mean ``mean_length`` (at most ``max_length``). Each further step

    - with probability ``p_popular``: a glance at a globally popular item (drawn proportional to ``w``);
      the walk then continues from where it was (the popular item is not part of the pattern);
    - with probability ``p_switch``: a jump to a topic drawn by weight (usually another one) and an item
      of it drawn by popularity; the walk continues there;
    - with probability ``p_repeat`` (from the third event on): a return to the item before the last one
      (``a b a``), from which the walk continues;
    - otherwise: the next item of the pattern's transition table for the current item.

    Consecutive duplicates are rare (a glance can hit the current item) and kept, as in raw logs.
Time axis
    Session start times lie on ``n_days`` consecutive days from ``start_time`` (unix seconds, default
    2024-01-01 00:00 UTC) with a day/night cycle (few sessions at night, most in the evening), sorted so
    sessions are ordered by start time. Gaps between the events of a session are log-normal with a median
    of ``median_gap`` seconds, rounded to whole seconds and clipped to [1, 1800] s, so times strictly
    increase within a session. The last day is what the demo's time split (``test_days=1``) uses as test.

Output
------
:func:`generate_sessions` returns a :class:`~seqrec_fast.data.SessionData` whose item map holds all
``n_items`` items (external ids ``1 .. n_items``; internal index ``i`` is id ``i + 1``) and whose session ids
are ``1 .. n_sessions`` in start-time order. :func:`generate_frame` returns the same log as a DataFrame in
the GRU4Rec TSV layout (columns ``SessionId``, ``ItemId``, ``Time``), ready for
:func:`seqrec_fast.preprocess.prepare` or ``to_csv(sep="\\t")``.

Generation is vectorised over sessions (one NumPy pass per position in a session): 100k events take a
fraction of a second.

Examples
--------
>>> from seqrec_fast.synthetic import generate_sessions
>>> data = generate_sessions(n_sessions=2000, n_items=500, seed=1)
>>> data.n_sessions, int(data.session_lengths.min()) >= 2
(2000, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .data import SessionData

__all__ = ["DEFAULT_START_TIME", "generate_frame", "generate_item_features", "generate_sessions"]

#: 2024-01-01 00:00:00 UTC, the default first day of the synthetic log.
DEFAULT_START_TIME = 1_704_067_200.0
_DAY = 86400.0
# Relative session-start intensity for each hour of the day (UTC): quiet nights, an evening peak.
_HOURLY = np.array(
    [2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 9, 10, 10, 9, 9, 10, 11, 13, 15, 16, 14, 9, 5],
    dtype=np.float64,
)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_prob(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not 0 <= value <= 1
    ):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_pos(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _draw_in_groups(
    rng: np.random.Generator,
    cum: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    group: np.ndarray,
) -> np.ndarray:
    """One draw per entry of ``group``: a position in ``[starts[g], ends[g])`` with probability given by
    the increments of the cumulative weights ``cum`` (``cum[j]`` = total weight before position ``j``)."""
    lo = cum[starts[group]]
    hi = cum[ends[group]]
    u = lo + rng.random(group.size) * (hi - lo)
    pos = np.searchsorted(cum, u, side="right") - 1
    return np.clip(pos, starts[group], ends[group] - 1)


def generate_sessions(
    n_sessions: int = 20000,
    n_items: int = 3000,
    seed: int = 0,
    *,
    n_topics: int | None = None,
    n_patterns: int = 3,
    n_successors: int = 5,
    successor_decay: float = 0.4,
    zipf_exponent: float = 0.9,
    mean_length: float = 5.0,
    max_length: int = 50,
    p_popular: float = 0.08,
    p_switch: float = 0.05,
    p_repeat: float = 0.05,
    n_days: float = 8.0,
    start_time: float = DEFAULT_START_TIME,
    median_gap: float = 30.0,
) -> SessionData:
    """Generate a synthetic session click log (see the module docstring for the model).

    Parameters
    ----------
    n_sessions : int, default 20000
        Number of sessions (>= 1).
    n_items : int, default 3000
        Catalogue size N (>= 2). Items that are never clicked stay in the item map.
    seed : int, default 0
        Seed of the ``numpy.random.Generator``; equal arguments give an identical log.
    n_topics : int, optional
        Number of topics; default ``max(1, n_items // 40)``. Capped so that each topic holds at least
        ``n_successors + 1`` items when ``n_items`` allows it.
    n_patterns : int, default 3
        Transition tables (browsing intents) per topic; a session follows one of them.
    n_successors : int, default 5
        Successors per item and pattern (at most the topic size minus one).
    successor_decay : float, default 0.4
        The k-th successor (k = 0, 1, ...) is followed with probability proportional to
        ``successor_decay ** k``.
    zipf_exponent : float, default 0.9
        Exponent s of the base popularity ``rank ** -s``.
    mean_length : float, default 5.0
        Mean session length (>= 2); lengths are ``2 + Geometric``, capped at ``max_length``.
    max_length : int, default 50
        Longest session (>= 2).
    p_popular, p_switch, p_repeat : float, default 0.08, 0.05, 0.05
        Per-step probabilities of a glance at a popular item, a topic switch and a return to the item before
        the last one (their sum must be <= 1).
    n_days : float, default 8.0
        Days covered by the session start times.
    start_time : float, default 2024-01-01 00:00 UTC
        Unix time (seconds) of the start of the first day.
    median_gap : float, default 30.0
        Median gap in seconds between two events of a session.

    Returns
    -------
    SessionData
        ``items`` int32 ``(n_events,)``, ``offsets`` int64 ``(n_sessions + 1,)``, ``item_ids`` int64
        ``(n_items,)`` equal to ``1 .. n_items``, ``times`` float64 ``(n_events,)`` (whole seconds),
        ``session_ids`` int64 ``(n_sessions,)`` equal to ``1 .. n_sessions``; sessions in start-time order.

    Raises
    ------
    ValueError
        For an argument outside its documented range (the message names it and its value).
    TypeError
        For a ``start_time`` that is not a number.
    """
    n_sessions = _check_int("n_sessions", n_sessions, 1)
    n_items = _check_int("n_items", n_items, 2)
    _check_int("seed", seed, 0)
    n_patterns = _check_int("n_patterns", n_patterns, 1)
    n_successors = _check_int("n_successors", n_successors, 1)
    max_length = _check_int("max_length", max_length, 2)
    decay = _check_pos("successor_decay", successor_decay)
    zipf = _check_pos("zipf_exponent", zipf_exponent)
    mean_length = _check_pos("mean_length", mean_length)
    if mean_length < 2:
        raise ValueError(f"mean_length must be >= 2, got {mean_length!r}")
    p_pop = _check_prob("p_popular", p_popular)
    p_sw = _check_prob("p_switch", p_switch)
    p_rep = _check_prob("p_repeat", p_repeat)
    if p_pop + p_sw + p_rep > 1:
        raise ValueError(
            f"p_popular + p_switch + p_repeat must be <= 1, got {p_pop} + {p_sw} + {p_rep}"
        )
    n_days = _check_pos("n_days", n_days)
    median_gap = _check_pos("median_gap", median_gap)
    if isinstance(start_time, bool) or not isinstance(start_time, (int, float, np.number)):
        raise TypeError(f"start_time must be a number of unix seconds, got {start_time!r}")
    if not np.isfinite(start_time):
        raise ValueError(f"start_time must be finite, got {start_time!r}")
    if n_topics is None:
        n_topics = max(1, n_items // 40)
    n_topics = _check_int("n_topics", n_topics, 1)
    n_topics = min(n_topics, max(1, n_items // (n_successors + 1)))

    rng = np.random.default_rng(seed)

    # -- items: Zipfian popularity, topics ---------------------------------------------------------
    rank = rng.permutation(n_items)
    pop = (rank + 1.0) ** -zipf  # base popularity w, by internal item index
    pop /= pop.sum()
    topic_of = np.empty(n_items, dtype=np.int64)
    topic_of[rng.permutation(n_items)] = np.arange(n_items) % n_topics
    by_topic = np.argsort(topic_of, kind="stable")  # items grouped by topic
    t_counts = np.bincount(topic_of, minlength=n_topics)
    t_start = np.concatenate(([0], np.cumsum(t_counts)[:-1]))
    t_end = t_start + t_counts
    cum_pop_topic = np.concatenate(([0.0], np.cumsum(pop[by_topic])))  # cumulative w in topic order
    topic_w = np.bincount(topic_of, weights=pop, minlength=n_topics)
    cum_topic = np.cumsum(topic_w)
    cum_pop = np.cumsum(pop)

    # -- transition tables: succ[p, i, k] = k-th successor of item i in pattern p ------------------
    k_succ = int(min(n_successors, t_counts.min() - 1)) if t_counts.min() > 1 else 0
    if k_succ > 0:
        succ = np.empty((n_patterns, n_items, k_succ), dtype=np.int64)
        log_w = 0.5 * np.log(pop)
        for t in range(n_topics):
            members = by_topic[t_start[t] : t_end[t]]
            m = members.size
            for p in range(n_patterns):
                # Gumbel top-k: k draws without replacement proportional to w**0.5, excluding the item.
                keys = log_w[members][None, :] + rng.gumbel(size=(m, m))
                np.fill_diagonal(keys, -np.inf)
                top = np.argpartition(-keys, k_succ - 1, axis=1)[:, :k_succ]
                order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
                succ[p, members] = members[np.take_along_axis(top, order, axis=1)]
        succ_cum = np.cumsum(decay ** np.arange(k_succ))
        succ_cum /= succ_cum[-1]

    # -- sessions -----------------------------------------------------------------------------------
    lengths = np.minimum(
        2 + rng.geometric(1.0 / (mean_length - 1.0), size=n_sessions) - 1, max_length
    )
    pattern = rng.integers(n_patterns, size=n_sessions)
    topic = np.searchsorted(cum_topic, rng.random(n_sessions) * cum_topic[-1], side="right")
    topic = np.minimum(topic, n_topics - 1)
    cur = by_topic[_draw_in_groups(rng, cum_pop_topic, t_start, t_end, topic)]
    L = int(lengths.max())
    seq = np.full((n_sessions, L), -1, dtype=np.int64)
    seq[:, 0] = cur
    for pos in range(1, L):
        act = np.flatnonzero(lengths > pos)
        if act.size == 0:
            break
        c = cur[act]
        emit = np.empty(act.size, dtype=np.int64)
        u = rng.random(act.size)
        glance = u < p_pop
        switch = (u >= p_pop) & (u < p_pop + p_sw)
        repeat = (u >= p_pop + p_sw) & (u < p_pop + p_sw + p_rep) & (pos >= 2)
        walk = ~(glance | switch | repeat)
        # glance at a popular item; the walk stays where it was
        if glance.any():
            g = np.searchsorted(cum_pop, rng.random(int(glance.sum())) * cum_pop[-1], side="right")
            emit[glance] = np.minimum(g, n_items - 1)
        # switch to another topic; the walk continues there
        if switch.any():
            ns = int(switch.sum())
            nt = np.minimum(
                np.searchsorted(cum_topic, rng.random(ns) * cum_topic[-1], side="right"),
                n_topics - 1,
            )
            emit[switch] = by_topic[_draw_in_groups(rng, cum_pop_topic, t_start, t_end, nt)]
            c[switch] = emit[switch]
        # go back to the item before the last one (a b a)
        if repeat.any():
            emit[repeat] = seq[act[repeat], pos - 2]
            c[repeat] = emit[repeat]
        # follow the session's pattern
        if walk.any():
            if k_succ > 0:
                k = np.searchsorted(succ_cum, rng.random(int(walk.sum())), side="right")
                k = np.minimum(k, k_succ - 1)
                emit[walk] = succ[pattern[act[walk]], c[walk], k]
            else:  # one-item topics: nothing to walk to, pick a popular item instead
                g = np.searchsorted(
                    cum_pop, rng.random(int(walk.sum())) * cum_pop[-1], side="right"
                )
                emit[walk] = np.minimum(g, n_items - 1)
            c[walk] = emit[walk]
        seq[act, pos] = emit
        cur[act] = c

    mask = np.arange(L)[None, :] < lengths[:, None]
    items = seq[mask].astype(np.int32)  # row-major: sessions back to back
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)

    # -- time axis ----------------------------------------------------------------------------------
    hour_cum = np.cumsum(_HOURLY) / _HOURLY.sum()
    day = np.floor(rng.random(n_sessions) * n_days)
    hour = np.minimum(np.searchsorted(hour_cum, rng.random(n_sessions), side="right"), 23)
    within = np.clip(hour + rng.random(n_sessions), 0.0, 24.0) * 3600.0
    start_off = np.minimum(day * _DAY + within, n_days * _DAY - 1.0)
    starts = float(start_time) + np.floor(np.sort(start_off))
    gaps = np.clip(np.rint(median_gap * rng.lognormal(0.0, 1.0, size=items.size)), 1.0, 1800.0)
    first = offsets[:-1]
    gaps[first] = 0.0
    sess_index = np.repeat(np.arange(n_sessions), lengths)
    csum = np.cumsum(gaps)
    times = starts[sess_index] + (csum - csum[first][sess_index])

    return SessionData(
        items,
        offsets,
        np.arange(1, n_items + 1, dtype=np.int64),
        times,
        np.arange(1, n_sessions + 1, dtype=np.int64),
        source="synthetic",
    )


def generate_frame(*args: Any, **kwargs: Any) -> pd.DataFrame:
    """The log of :func:`generate_sessions` (same arguments) as a GRU4Rec-layout DataFrame.

    Returns
    -------
    pandas.DataFrame
        Columns ``SessionId`` (int64), ``ItemId`` (int64), ``Time`` (float64, unix seconds), one row per
        event, sessions in start-time order and events in time order.
    """
    return generate_sessions(*args, **kwargs).to_frame()


def generate_item_features(
    n_items: int = 3000,
    seed: int = 0,
    *,
    n_topics: int | None = None,
    n_successors: int = 5,
    zipf_exponent: float = 0.9,
    code_dim: int = 8,
) -> pd.DataFrame:
    """Item features of the log that :func:`generate_sessions` makes with the same arguments.

    The item structure (popularity ranks, topics) is drawn from the same seeded generator in the
    same order as :func:`generate_sessions`, so the features describe that log's items. Columns:

    - ``ItemId``: 1 .. n_items;
    - ``topic``: the item's topic, as a string (a categorical column: one-hot when encoded);
    - ``pop_bucket``: the decile (0 = most popular) of the item's base popularity, as a string
      (an item-level attribute such as a bestseller tier or a price bucket);
    - ``code``: a per-item vector of ``code_dim`` floats standing in for a text or image embedding:
      a random centroid of the item's topic plus per-item noise of the same scale, plus the
      centred log-popularity on its first component (drawn from a second generator, so the log is
      not changed). 0 turns it off.

    Returns
    -------
    pandas.DataFrame with n_items rows.
    """
    n_items = _check_int("n_items", n_items, 2)
    _check_int("seed", seed, 0)
    n_successors = _check_int("n_successors", n_successors, 1)
    zipf = _check_pos("zipf_exponent", zipf_exponent)
    code_dim = _check_int("code_dim", code_dim, 0)
    if n_topics is None:
        n_topics = max(1, n_items // 40)
    n_topics = _check_int("n_topics", n_topics, 1)
    n_topics = min(n_topics, max(1, n_items // (n_successors + 1)))
    rng = np.random.default_rng(seed)
    rank = rng.permutation(n_items)  # the same two draws as generate_sessions, in its order
    pop = (rank + 1.0) ** -zipf
    topic_of = np.empty(n_items, dtype=np.int64)
    topic_of[rng.permutation(n_items)] = np.arange(n_items) % n_topics
    bucket = np.minimum(rank * 10 // n_items, 9)
    out = pd.DataFrame({
        "ItemId": np.arange(1, n_items + 1, dtype=np.int64),
        "topic": [f"t{t}" for t in topic_of],
        "pop_bucket": [f"p{b}" for b in bucket],
    })
    if code_dim:
        r2 = np.random.default_rng([seed, 1])
        centroid = r2.normal(size=(n_topics, code_dim))
        code = centroid[topic_of] + r2.normal(size=(n_items, code_dim))
        lp = np.log(pop)
        code[:, 0] += (lp - lp.mean()) / lp.std()
        out["code"] = list(code.astype(np.float32))
    return out
