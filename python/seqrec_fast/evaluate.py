"""Next-item full-ranking evaluation (DESIGN §3.4) through one small scorer interface.

Every model and baseline implements :class:`NextItemScorer`: ``start(n_slots)`` allocates per-slot
state, ``reset(slots)`` starts a new session in those slots (state back to zero), and
``score(slots, items)`` feeds one item into each slot's session and returns the scores of all training
items for the next event. :func:`evaluate` drives it with session-parallel batches over the test sessions:
for every event after the first, the previous item is fed and the target is ranked against all
``n_items`` training items by counting the items that beat it (:func:`seqrec_fast.metrics.rank_counts`);
nothing is sorted.

Unknown test items (not in the training item map, marked ``-1`` in the test :class:`SessionData`):

- ``unknown_targets="drop"`` (GRU4Rec): events with unknown items are removed before sessions are formed;
  sessions are then evaluated as if those events never happened. ``n_dropped`` counts them.
- ``unknown_targets="miss"`` (SR-GNN papers): every event after the first of the *original* session is a
  prediction. An unknown target is a miss. An unknown *input* is not fed: the session state is advanced with
  the known items only, so the next known target is predicted from the state after the last known item.
  A known target with no known item before it in its session cannot be scored and is also a miss. Hence
  ``n_events`` equals the sum of ``length - 1`` over the original sessions.

Leave-one-out on user histories (``targets="last"``, see :func:`seqrec_fast.preprocess.leave_one_out`):
only the last event of each test history is a prediction; the events before it are fed (without
scoring, when the scorer has ``advance``). ``max_history`` feeds only the last that many items before
the target (as SASRec's ``maxlen``). ``exclude_history=True`` removes the items of the user's history
before the target from the ranking, as the S3-Rec / ICLRec evaluation does (it sets their scores to 0
before the top-k): the history is the whole history, not only the fed part; a target the user already
interacted with is then a miss (ICLRec zeroes its score too) and is counted in ``n_target_in_history``.
The exclusion runs in the C++ rank-count kernel (``score_rank_counts(..., exclude=...)``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .data import SessionData
from .metrics import TIE_MODES, check_cutoffs, metrics_from_ranks, rank_counts, ranks_from_counts

__all__ = [
    "TARGET_MODES",
    "UNKNOWN_TARGET_MODES",
    "EvalResult",
    "NextItemScorer",
    "evaluate",
    "prepare_test",
]

UNKNOWN_TARGET_MODES: tuple[str, ...] = ("drop", "miss")
TARGET_MODES: tuple[str, ...] = ("all", "last")
ENGINES: tuple[str, ...] = ("local", "ray")


@runtime_checkable
class NextItemScorer(Protocol):
    """What :func:`evaluate` needs from a model: session-parallel next-item scoring.

    Attributes
    ----------
    n_items : int
        Number of training items; internal indices are ``0 .. n_items - 1``.
    """

    n_items: int

    def start(self, n_slots: int) -> None:
        """Allocate per-slot state for ``n_slots`` concurrent sessions (all empty)."""

    def reset(self, slots: np.ndarray) -> None:
        """Start a new, empty session in each of ``slots`` (int64, shape (k,))."""

    def score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Feed ``items[i]`` (int32 internal index) to slot ``slots[i]``'s session; return float32 scores
        of shape ``(len(slots), n_items)`` for the next event of each of those sessions."""

    # Optional fast path: a scorer may also define
    #     score_counts(slots, items, targets, exclude=None) -> (n_greater, n_greater_equal)
    # which advances the sessions like ``score`` and returns the rank counts of ``targets`` directly
    # (SessionRNN does this in C++; ``exclude`` is None or int32 (n, m) padded with -1: items not
    # counted), and
    #     advance(slots, items) -> None
    # which only advances (steps that predict nothing). ``evaluate`` uses them when present.


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes
    ----------
    metrics : dict
        ``recall@K``, ``mrr@K``, ``ndcg@K``, ``hitrate@K`` for every cut-off K.
    n_events : int
        Predictions in the denominator (scored events plus misses of unknown targets in "miss" mode).
    n_dropped : int
        Test events removed because their item is unknown to training ("drop" mode).
    n_scored : int
        Predictions actually scored by the model.
    n_unknown_targets : int
        Predictions counted as misses without scoring ("miss" mode).
    by_position : dict
        Per target position (number of events before the target in its session: "1", "2", ...,
        "P+" for the last bucket): ``{"n": count, "recall@K": ..., ...}``.
    seconds : float
        Wall time of the scoring loop.
    """

    metrics: dict[str, float]
    n_events: int
    n_dropped: int
    n_scored: int
    n_unknown_targets: int
    by_position: dict[str, dict[str, float]]
    seconds: float
    cutoffs: tuple[int, ...]
    tie_mode: str
    unknown_targets: str
    targets: str = "all"
    ranks: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    exclude_history: bool = False
    n_target_in_history: int = 0
    max_history: int | None = None
    min_prefix: int = 1

    @property
    def events_per_s(self) -> float:
        """Scored predictions per second of the scoring loop."""
        return self.n_scored / self.seconds if self.seconds > 0 else float("inf")

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def to_dict(self, extras: bool = True) -> dict[str, Any]:
        """Flat JSON-ready dict: every metric key, ``n_events``, ``n_dropped`` and (with ``extras``) the
        counts, timing, settings and the per-position breakdown."""
        out: dict[str, Any] = dict(self.metrics)
        out["n_events"] = self.n_events
        out["n_dropped"] = self.n_dropped
        if extras:
            out["n_scored"] = self.n_scored
            out["n_unknown_targets"] = self.n_unknown_targets
            out["seconds"] = self.seconds
            out["events_per_s"] = self.events_per_s
            out["tie_mode"] = self.tie_mode
            out["unknown_targets"] = self.unknown_targets
            out["targets"] = self.targets
            out["exclude_history"] = self.exclude_history
            out["n_target_in_history"] = self.n_target_in_history
            out["max_history"] = self.max_history
            out["min_prefix"] = self.min_prefix
            out["by_position"] = self.by_position
        return out

    def format_table(self) -> str:
        """Human-readable table: one row per cut-off, then counts and timing."""
        lines = [f"{'cutoff':>6}  {'recall':>8}  {'mrr':>8}  {'ndcg':>8}  {'hitrate':>8}"]
        for k in self.cutoffs:
            m = self.metrics
            lines.append(
                f"{'@' + str(k):>6}  {m[f'recall@{k}']:8.4f}  {m[f'mrr@{k}']:8.4f}  "
                f"{m[f'ndcg@{k}']:8.4f}  {m[f'hitrate@{k}']:8.4f}"
            )
        lines.append(
            f"events={self.n_events} (scored {self.n_scored}, unknown-target misses "
            f"{self.n_unknown_targets}) dropped={self.n_dropped} tie_mode={self.tie_mode} "
            f"unknown_targets={self.unknown_targets}"
        )
        if self.exclude_history or self.max_history is not None:
            lines.append(
                f"targets={self.targets} exclude_history={self.exclude_history} "
                f"(targets seen before, counted as misses: {self.n_target_in_history}) "
                f"max_history={self.max_history}"
            )
        lines.append(f"time={self.seconds:.2f}s ({self.events_per_s:,.0f} events/s)")
        return "\n".join(lines)


@dataclass
class _Prepared:
    items: np.ndarray  # int32, known items only, compressed sessions of length >= 2
    offsets: np.ndarray  # int64
    positions: np.ndarray  # int64 per compressed event: original position in its session
    n_events: int
    n_dropped: int
    miss_positions: np.ndarray  # int64 original positions of the unscorable (missed) targets
    is_target: (
        np.ndarray
    )  # bool per compressed event: counts as a prediction (targets="last" filter)


def prepare_test(
    test: SessionData, n_items: int, unknown_targets: str = "drop", targets: str = "all",
    min_prefix: int = 1,
) -> _Prepared:
    """Compress test sessions to known items and count drops / misses (see the module docstring).
    ``min_prefix`` (targets "all"): only targets at position >= min_prefix of their session count
    (positions after the drop of unknown events with "drop", original positions with "miss")."""
    if targets not in TARGET_MODES:
        raise ValueError(f"targets must be one of {TARGET_MODES}, got {targets!r}")
    if unknown_targets not in UNKNOWN_TARGET_MODES:
        raise ValueError(
            f"unknown_targets must be one of {UNKNOWN_TARGET_MODES}, got {unknown_targets!r}"
        )
    if test.n_items != n_items:
        raise ValueError(
            f"test data has an item map of {test.n_items} items but the scorer has n_items={n_items}; "
            "map the test set with the training item map: load(path, item_map=train, keep_unknown=True) "
            "or test.with_item_map(train, keep_unknown=True)"
        )
    n_marked = int(np.count_nonzero(test.items < 0))
    if unknown_targets == "miss" and test.n_unknown > n_marked:
        raise ValueError(
            f"unknown_targets='miss' needs the unknown test events, but {test.n_unknown - n_marked} were "
            "already dropped when the test set was built; build it with keep_unknown=True"
        )
    lengths = test.session_lengths
    sess = test.session_index()
    pos = np.arange(test.n_events, dtype=np.int64) - test.offsets[:-1][sess]
    known = test.items >= 0
    k_sess = sess[known]
    k_len = np.bincount(k_sess, minlength=test.n_sessions)
    k_pos_orig = pos[known]
    # position of each known event within the compressed session
    k_offsets = np.concatenate(([0], np.cumsum(k_len)))
    k_rank = np.arange(k_sess.size, dtype=np.int64) - k_offsets[:-1][k_sess]
    keep_sess = k_len >= 2
    keep_ev = keep_sess[k_sess]
    items = test.items[known][keep_ev]
    offsets = np.concatenate(([0], np.cumsum(k_len[keep_sess]))).astype(np.int64)
    last_only = targets == "last"
    if unknown_targets == "drop":
        positions = k_rank[keep_ev]
        # marked events are dropped here; events dropped when the test set was built count too
        n_dropped = max(n_marked, test.n_unknown)
        is_target = (
            (k_rank == k_len[k_sess] - 1)[keep_ev] if last_only else positions >= min_prefix
        )
        n_events = (int(keep_sess.sum()) if last_only
                    else int(np.sum(np.maximum(k_len - min_prefix, 0)[keep_sess])))
        return _Prepared(
            items, offsets, positions, n_events, n_dropped, np.zeros(0, np.int64), is_target
        )
    positions = k_pos_orig[keep_ev]
    is_last = pos == lengths[sess] - 1
    if last_only:
        n_events = int(np.count_nonzero(lengths >= 2))
        is_target = is_last[known][keep_ev]
        unknown_targets_pos = pos[(~known) & (pos >= 1) & is_last]
        first_known_missed = k_pos_orig[(k_rank == 0) & (k_pos_orig >= 1) & is_last[known]]
    else:
        n_events = int(np.sum(np.maximum(lengths - min_prefix, 0)))
        is_target = positions >= min_prefix
        unknown_targets_pos = pos[(~known) & (pos >= min_prefix)]
        first_known_missed = k_pos_orig[(k_rank == 0) & (k_pos_orig >= min_prefix)]
    miss_positions = np.concatenate((unknown_targets_pos, first_known_missed)).astype(np.int64)
    return _Prepared(items, offsets, positions, n_events, 0, miss_positions, is_target)


VALID_OPTIONS = ("targets", "exclude_history", "max_history", "min_prefix", "unknown_targets")


def check_valid_options(options: dict | None) -> dict:
    """The validation-protocol keywords of :meth:`SessionRNN.fit` (a copy; {} for None), checked:
    only the :func:`~seqrec_fast.evaluate.evaluate` keywords in :data:`VALID_OPTIONS`."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"valid_options must be a dict or None; got {type(options).__name__}")
    bad = sorted(set(options) - set(VALID_OPTIONS))
    if bad:
        raise ValueError(f"valid_options: unknown key(s) {', '.join(map(repr, bad))}; expected some "
                         f"of {', '.join(VALID_OPTIONS)}")
    o = dict(options)
    if o.get("targets", "all") not in TARGET_MODES:
        raise ValueError(f"valid_options['targets'] must be one of {TARGET_MODES}; got {o['targets']!r}")
    if o.get("unknown_targets", "drop") not in UNKNOWN_TARGET_MODES:
        raise ValueError(f"valid_options['unknown_targets'] must be one of {UNKNOWN_TARGET_MODES}; "
                         f"got {o['unknown_targets']!r}")
    if not isinstance(o.get("exclude_history", False), (bool, np.bool_)):
        raise TypeError(f"valid_options['exclude_history'] must be a bool; got {o['exclude_history']!r}")
    for k in ("max_history", "min_prefix"):
        v = o.get(k)
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise ValueError(f"valid_options[{k!r}] must be a positive int; got {v!r}")
    if o.get("max_history") is not None and o.get("targets", "all") != "last":
        raise ValueError("valid_options: max_history applies to targets='last' (leave-one-out) only")
    if (o.get("min_prefix") or 1) > 1 and o.get("targets", "all") != "all":
        raise ValueError("valid_options: min_prefix applies to targets='all' only")
    return o


def evaluate(
    scorer: NextItemScorer,
    test: SessionData,
    *,
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    tie_mode: str = "conservative",
    unknown_targets: str = "drop",
    batch_size: int = 512,
    max_position: int = 10,
    targets: str = "all",
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    exclude_history: bool = False,
    max_history: int | None = None,
    min_prefix: int = 1,
) -> EvalResult:
    """Next-item full-ranking evaluation of ``scorer`` on ``test``.

    Parameters
    ----------
    scorer : NextItemScorer
        A fitted model or baseline.
    test : SessionData
        Test sessions expressed with the *training* item map (``test.n_items == scorer.n_items``);
        unknown items marked ``-1`` (``keep_unknown=True``) or already dropped.
    cutoffs : sequence of int, default (1, 5, 10, 20)
    tie_mode : {"conservative", "standard", "median"}, default "conservative"
        See :mod:`seqrec_fast.metrics`.
    unknown_targets : {"drop", "miss"}, default "drop"
        See the module docstring.
    batch_size : int, default 512
        Number of session-parallel slots.
    max_position : int, default 10
        Last bucket of the per-position breakdown (``"10+"``).
    targets : {"all", "last"}, default "all"
        ``"all"``: every event after the first is a prediction (session-based protocol). ``"last"``: only
        the last event of each test session is (leave-one-out on user histories; earlier events are only
        fed as inputs).
    engine : {"local", "ray"}, default "local"
        ``"ray"`` splits the test sessions into contiguous partitions, counts each partition's ranks in a
        Ray task (one copy of ``scorer`` per task, ``scorer.num_threads`` CPUs each) and concatenates
        the counts in order: the metrics are identical to the local run's (rank counts of a session do
        not depend on which sessions it is batched with). Needs the ``ray`` extra.
    address : str, optional
        With ``engine="ray"``: the cluster to join (see :func:`seqrec_fast.cluster.ray_session`);
        default: the Ray this process joined, else a local Ray.
    workers : int, optional
        With ``engine="ray"``: number of partitions (default: the cluster's CPUs / threads per task).
    exclude_history : bool, default False
        Remove the items of the session (user history) before each target from its ranking (S3-Rec /
        ICLRec full-ranking protocol); a target that occurs in its history is a miss.
    max_history : int, optional
        With ``targets="last"``: feed at most this many items before the target (the earliest are
        skipped; the exclusion still uses the whole history).
    min_prefix : int, default 1
        With ``targets="all"``: count only the targets with at least this many events before them in
        their (original) session; the earlier events are still fed. 1: every event after the first
        (the SR-GNN protocol); 2: the "prefixes of length >= 2" protocol of some session benchmarks.

    Returns
    -------
    EvalResult
    """
    if tie_mode not in TIE_MODES:
        raise ValueError(f"tie_mode must be one of {TIE_MODES}, got {tie_mode!r}")
    cut = check_cutoffs(cutoffs)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_position, (int, np.integer)) or max_position < 1:
        raise ValueError(f"max_position must be a positive int, got {max_position!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"workers must be None or a positive int, got {workers!r}")
    if not isinstance(exclude_history, (bool, np.bool_)):
        raise TypeError(f"exclude_history must be a bool, got {exclude_history!r}")
    if max_history is not None:
        if not isinstance(max_history, (int, np.integer)) or isinstance(max_history, bool) \
                or max_history < 1:
            raise ValueError(f"max_history must be a positive int or None, got {max_history!r}")
        if targets != "last":
            raise ValueError("max_history applies to targets='last' (leave-one-out) only; "
                             f"got targets={targets!r}")
    n_items = int(scorer.n_items)
    if not isinstance(min_prefix, (int, np.integer)) or isinstance(min_prefix, bool) \
            or min_prefix < 1:
        raise ValueError(f"min_prefix must be a positive int, got {min_prefix!r}")
    if min_prefix > 1 and targets != "all":
        raise ValueError(f"min_prefix applies to targets='all' only; got targets={targets!r}")
    prep = prepare_test(test, n_items, unknown_targets, targets, int(min_prefix))
    t0 = time.perf_counter()
    if engine == "local":
        n_gt, n_ge, scored, in_history = _count_ranks(
            scorer, prep.items, prep.offsets, batch_size, prep.is_target, exclude_history,
            max_history)
    else:
        n_gt, n_ge, scored, in_history = _count_ranks_ray(
            scorer, prep.items, prep.offsets, batch_size, address, workers, prep.is_target,
            exclude_history, max_history)
    seconds = time.perf_counter() - t0

    scored &= prep.is_target
    ranks_scored = ranks_from_counts(n_gt[scored], n_ge[scored], tie_mode)
    seen_before = in_history[scored]
    ranks_scored = np.where(seen_before, np.inf, ranks_scored)  # ICLRec: a seen target scores 0
    pos_scored = prep.positions[scored]
    ranks = np.concatenate((ranks_scored, np.full(prep.miss_positions.size, np.inf)))
    positions = np.concatenate((pos_scored, prep.miss_positions))
    assert ranks.size == prep.n_events, (ranks.size, prep.n_events)
    metrics = metrics_from_ranks(ranks, cut)
    by_position: dict[str, dict[str, float]] = {}
    bucket = np.minimum(positions, max_position)
    for p in range(1, max_position + 1):
        sel = bucket == p
        if not sel.any():
            continue
        label = f"{p}+" if p == max_position else str(p)
        entry: dict[str, float] = {"n": int(sel.sum())}
        entry.update(metrics_from_ranks(ranks[sel], cut))
        by_position[label] = entry
    return EvalResult(
        metrics=metrics,
        n_events=int(prep.n_events),
        n_dropped=int(prep.n_dropped),
        n_scored=int(ranks_scored.size),
        n_unknown_targets=int(prep.miss_positions.size),
        by_position=by_position,
        seconds=seconds,
        cutoffs=cut,
        tie_mode=tie_mode,
        unknown_targets=unknown_targets,
        targets=targets,
        ranks=ranks,
        exclude_history=bool(exclude_history),
        n_target_in_history=int(seen_before.sum()),
        max_history=None if max_history is None else int(max_history),
        min_prefix=int(min_prefix),
    )


def _count_ranks(
    scorer: NextItemScorer, items: np.ndarray, offsets: np.ndarray, batch_size: int,
    is_target: np.ndarray | None = None, exclude_history: bool = False,
    max_history: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Session-parallel counting over compressed sessions: per event, the items scoring above
    (n_gt) and at least (n_ge) its target, and whether it was scored (every event but the first of
    each session, or only the ``is_target`` events when the scorer can ``advance`` without scoring).
    ``exclude_history`` removes each target's earlier session items from its ranking and flags the
    targets found among them; ``max_history`` starts each session that many items before its last.
    Returns (n_gt int64, n_ge int64, scored bool, in_history bool), each (len(items),)."""
    n_items = int(scorer.n_items)
    n_sess = offsets.size - 1
    n_gt = np.zeros(items.size, dtype=np.int64)
    n_ge = np.zeros(items.size, dtype=np.int64)
    scored = np.zeros(items.size, dtype=bool)
    in_history = np.zeros(items.size, dtype=bool)
    if is_target is None:
        is_target = np.ones(items.size, dtype=bool)

    fused = getattr(scorer, "score_counts", None)
    advance = getattr(scorer, "advance", None)
    if n_sess > 0:
        lengths = np.diff(offsets)
        # first position fed of each session: max_history keeps the last items before the target
        skip = (np.zeros(n_sess, np.int64) if max_history is None
                else np.maximum(lengths - 1 - int(max_history), 0))
        n_slots = int(min(batch_size, n_sess))
        scorer.start(n_slots)
        slot_sess = np.arange(n_slots, dtype=np.int64)
        slot_pos = skip[:n_slots].copy()
        active = np.ones(n_slots, dtype=bool)
        scorer.reset(np.arange(n_slots, dtype=np.int64))
        next_sess = n_slots
        while True:
            act = np.flatnonzero(active).astype(np.int64)
            if act.size == 0:
                break
            ev = offsets[slot_sess[act]] + slot_pos[act]
            inp = items[ev]
            tgt_ev = ev + 1
            need = is_target[tgt_ev]
            if advance is not None and not need.all():
                # steps that predict nothing (leave-one-out history) are only fed
                advance(act[~need], inp[~need])
                rows, inp, ev, tgt_ev = act[need], inp[need], ev[need], tgt_ev[need]
            else:
                rows = act
            if rows.size:
                tgt = items[tgt_ev]
                ex = None
                if exclude_history:
                    # the history before each target (inputs up to and including ev), padded with -1
                    first = offsets[slot_sess[rows]]
                    hist_len = ev - first + 1
                    cols = np.arange(int(hist_len.max()), dtype=np.int64)
                    inside = cols[None, :] < hist_len[:, None]
                    ex = np.where(inside, items[np.minimum(first[:, None] + cols, items.size - 1)],
                                  -1).astype(np.int32)
                    in_history[tgt_ev] = (ex == tgt[:, None]).any(axis=1)
                if fused is not None:
                    # the scorer counts ranks itself (C++), without an (n, n_items) score array
                    gt, ge = fused(rows, inp, tgt) if ex is None else fused(rows, inp, tgt, exclude=ex)
                else:
                    scores = scorer.score(rows, inp)
                    if not isinstance(scores, np.ndarray) or scores.shape != (rows.size, n_items):
                        raise ValueError(
                            f"{type(scorer).__name__}.score returned shape "
                            f"{getattr(scores, 'shape', None)}; expected ({rows.size}, {n_items})"
                        )
                    if ex is not None:
                        scores = np.array(scores, dtype=np.float64)
                        r, c = np.nonzero((ex >= 0) & (ex != tgt[:, None]))
                        scores[r, ex[r, c]] = -np.inf
                    gt, ge = rank_counts(scores, scores[np.arange(rows.size), tgt])
                n_gt[tgt_ev] = gt
                n_ge[tgt_ev] = ge
                scored[tgt_ev] = True
            slot_pos[act] += 1
            done = act[slot_pos[act] + 1 >= lengths[slot_sess[act]]]
            if done.size:
                k = int(min(done.size, n_sess - next_sess))
                if k > 0:
                    new = done[:k]
                    slot_sess[new] = np.arange(next_sess, next_sess + k)
                    slot_pos[new] = skip[next_sess:next_sess + k]
                    scorer.reset(new)
                    next_sess += k
                active[done[k:]] = False
    return n_gt, n_ge, scored, in_history


def _count_ranks_ray(
    scorer: NextItemScorer,
    items: np.ndarray,
    offsets: np.ndarray,
    batch_size: int,
    address: str | None,
    workers: int | None,
    is_target: np.ndarray | None = None,
    exclude_history: bool = False,
    max_history: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_count_ranks` over contiguous partitions of the sessions, one Ray task each; the
    per-event outputs are concatenated in session order. A session's counts (its exclusion and history
    window included) depend on that session alone, so the result equals the local one."""
    from .cluster import default_workers, ray_session

    threads = max(1, int(getattr(scorer, "num_threads", None) or 1))
    n_sess = offsets.size - 1
    with ray_session(address) as ray:
        n_parts = int(workers) if workers is not None else default_workers(threads)
        n_parts = max(1, min(n_parts, n_sess))
        # balance events: cut where the cumulative event count crosses i / n_parts of the total
        cuts = np.searchsorted(offsets, np.linspace(0, offsets[-1], n_parts + 1)[1:-1])
        bounds = np.unique(np.concatenate(([0], cuts, [n_sess]))).astype(np.int64)
        remote = ray.remote(num_cpus=threads)(_count_partition)
        scorer_ref = ray.put(scorer)
        refs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            e0, e1 = offsets[a], offsets[b]
            tgt = None if is_target is None else is_target[e0:e1]
            refs.append(remote.remote(scorer_ref, items[e0:e1], offsets[a : b + 1] - e0, batch_size,
                                      tgt, exclude_history, max_history))
        parts = ray.get(refs)
    if not parts:
        z = np.zeros(0, np.int64)
        return z, z.copy(), np.zeros(0, bool), np.zeros(0, bool)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def _count_partition(scorer, items, offsets, batch_size, is_target=None, exclude_history=False,
                     max_history=None):
    """A Ray task: the outputs of :func:`_count_ranks` for one partition of the test sessions (on a
    private copy of the stateful scorer; its arrays come from the object store as read-only views)."""
    import copy

    return _count_ranks(copy.deepcopy(scorer), items, offsets, batch_size, is_target,
                        exclude_history, max_history)


class _CallableModule(type(sys.modules[__name__])):
    """``seqrec_fast.evaluate`` is both this module and, called, its :func:`evaluate`: the top level
    exposes ``sf.evaluate(model, test)`` while the submodule keeps its name (DESIGN.md §2)."""

    def __call__(self, scorer: NextItemScorer, test: SessionData, **kwargs: Any) -> EvalResult:
        return evaluate(scorer, test, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
