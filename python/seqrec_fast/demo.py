"""``seqrec demo``: generate (or load) a click log, prepare it, fit baselines and a GRU, compare them.

The pipeline of :func:`run_demo`:

1. data: the built-in synthetic click log of :mod:`seqrec_fast.synthetic` (no download), or a real file
   read with :func:`seqrec_fast.data.load` (it needs event times);
2. preparation with the GRU4Rec 2023 protocol of :mod:`seqrec_fast.preprocess` (consecutive repeats
   removed; item support >= 5 and session length >= 2, iterated; sessions ending in the last day are the
   test set, training uses everything before; test items unknown to training are dropped);
3. statistics of the log, the training set and the test set;
4. the baselines of :mod:`seqrec_fast.baselines` (popularity, item-kNN, sequential rules, V-SKNN by
   default) and a GRU (:class:`seqrec_fast.model.SessionRNN`), each fitted on the training set and
   evaluated with :func:`seqrec_fast.evaluate.evaluate` (full ranking, conservative ties, cut-offs 5, 10,
   20);
5. a comparison table (Recall, MRR and NDCG at the largest cut-off, fit and evaluation seconds) and a few
   example recommendations: a test-session prefix in external item ids, the true next item and the GRU's
   top-5.

With the default synthetic size (20,000 sessions, about 100k events, 3,000 items) the whole demo is meant to
run in well under a minute on 2 cores; ``quick=True`` uses a much smaller log and one epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .data import SessionData

__all__ = ["DEFAULT_BASELINES", "run_demo"]

#: Baselines fitted by default (all fast on the demo data).
DEFAULT_BASELINES: tuple[str, ...] = ("pop", "itemknn", "sr", "vsknn")

_SYNTH_FULL = {"n_sessions": 20000, "n_items": 3000}
_SYNTH_QUICK = {"n_sessions": 3000, "n_items": 600}


def _to_py(x: Any) -> Any:
    """NumPy scalars to plain Python (for printing and JSON)."""
    return x.item() if isinstance(x, np.generic) else x


def _recommend_with_scorer(
    scorer: Any, prefix: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` internal indices and scores of a :class:`NextItemScorer` after feeding ``prefix``."""
    scorer.start(1)
    slot = np.zeros(1, dtype=np.int64)
    scorer.reset(slot)
    scores = None
    for item in prefix.tolist():
        scores = scorer.score(slot, np.array([item], dtype=np.int32))
    s = np.asarray(scores[0], dtype=np.float64)
    top = np.argsort(-s, kind="stable")[:k]  # ties: lower index first
    return top, s[top]


def _compact_stats(name: str, data: SessionData) -> dict[str, Any]:
    from .preprocess import stats

    st = stats(data)
    return {
        "name": name,
        "events": st["events"],
        "sessions": st["sessions"],
        "items": st["items"],
        "length_mean": st.get("length_mean", 0.0),
        "length_max": st.get("length_max", 0),
        "time_start": st.get("time_start", ""),
        "time_end": st.get("time_end", ""),
        "time_span_days": st.get("time_span_days", 0.0),
    }


def _stats_table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'':>8}  {'events':>9}  {'sessions':>8}  {'items':>6}  {'mean len':>8}  {'max len':>7}  span"
    lines = [head]
    for r in rows:
        span = (
            f"{r['time_start'][:16]} .. {r['time_end'][:16]} ({r['time_span_days']:.1f} days)"
            if r["time_start"]
            else "-"
        )
        lines.append(
            f"{r['name']:>8}  {r['events']:>9,}  {r['sessions']:>8,}  {r['items']:>6,}  "
            f"{r['length_mean']:>8.2f}  {r['length_max']:>7,}  {span}"
        )
    return "\n".join(lines)


def _results_table(results: dict[str, dict[str, Any]], k: int) -> str:
    head = (
        f"{'model':<10}  {f'Recall@{k}':>9}  {f'MRR@{k}':>8}  {f'NDCG@{k}':>8}  "
        f"{'fit s':>7}  {'eval s':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(
            f"{name:<10}  {r[f'recall@{k}']:>9.4f}  {r[f'mrr@{k}']:>8.4f}  {r[f'ndcg@{k}']:>8.4f}  "
            f"{r['fit_seconds']:>7.2f}  {r['eval_seconds']:>7.2f}"
        )
    return "\n".join(lines)


def run_demo(
    data: str | os.PathLike[str] | None = None,
    *,
    format: str = "auto",
    seed: int = 0,
    n_epochs: int | None = None,
    quick: bool = False,
    out: Callable[[str], Any] | None = print,
    n_sessions: int | None = None,
    n_items: int | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    cutoffs: Sequence[int] = (5, 10, 20),
    test_days: float = 1.0,
    n_examples: int = 3,
    gru: bool = True,
    layers: Sequence[int] = (100,),
    loss: str = "cross-entropy",
    embedding: str = "constrained",
    batch_size: int = 32,
    n_sample: int = 512,
    sample_alpha: float = 0.5,
    logq: float = 1.0,
    dropout_hidden: float = 0.3,
    learning_rate: float = 0.1,
    momentum: float = 0.2,
    num_threads: int = 2,
) -> dict[str, Any]:
    """Run the demo pipeline (see the module docstring) and return its results.

    Parameters
    ----------
    data : str or os.PathLike, optional
        A click log with event times (any format of :func:`seqrec_fast.data.load`). Default: generate the
        synthetic log of :func:`seqrec_fast.synthetic.generate_sessions`.
    format : str, default "auto"
        Format of ``data`` (see :data:`seqrec_fast.data.FORMATS`).
    seed : int, default 0
        Seed of the synthetic log and of the GRU.
    n_epochs : int, optional
        GRU training epochs; default 5, or 1 with ``quick``.
    quick : bool, default False
        A small synthetic log (3,000 sessions, 600 items) and one epoch: a smoke test in seconds. With
        ``data`` it only sets one epoch.
    out : callable, default print
        Receives each line of the report (``None`` prints nothing).
    n_sessions, n_items : int, optional
        Size of the synthetic log (default 20,000 sessions and 3,000 items; 3,000 and 600 with ``quick``).
    baselines : sequence of str, default ("pop", "itemknn", "sr", "vsknn")
        Names for :func:`seqrec_fast.baselines.get_baseline`, fitted with default parameters.
    cutoffs : sequence of int, default (5, 10, 20)
        Evaluation cut-offs; the table shows the largest.
    test_days : float, default 1.0
        Days at the end of the log used as the test set.
    n_examples : int, default 3
        Example recommendations to print.
    gru : bool, default True
        Train and evaluate the GRU (False: baselines only).
    layers, loss, embedding, batch_size, n_sample, sample_alpha, logq, dropout_hidden, learning_rate, \
momentum, num_threads
        Hyperparameters of :class:`seqrec_fast.model.SessionRNN` (``cell="gru"``). ``n_sample`` defaults to
        512 shared negatives per mini-batch: ample for the 3,000-item demo catalogue and four times cheaper
        per event than GRU4Rec's 2048.

    Returns
    -------
    dict
        ``results``: ``{model: {"recall@K", "mrr@K", "ndcg@K", "hitrate@K" for each cut-off, "n_events",
        "n_dropped", "fit_seconds", "eval_seconds"}}`` in table order (baselines, then ``"gru"``);
        ``data``: source, generator arguments (synthetic only) and compact statistics of the log, the
        training and the test set; ``gru``: its parameters and ``skipped`` (None, or why it did not run);
        ``examples``: ``[{"model", "session", "next", "recommended", "scores", "hit_rank"}]`` with external
        item ids; ``cutoffs``; ``seconds``: total wall time.

    Raises
    ------
    FileNotFoundError
        If ``data`` does not exist.
    ValueError
        For a bad file, data without event times, a split without test sessions, or a bad argument.
    """
    from .baselines import get_baseline
    from .evaluate import evaluate
    from .metrics import check_cutoffs
    from .preprocess import prepare

    t_total = time.perf_counter()
    emit: Callable[[str], Any] = out if out is not None else (lambda _s: None)
    cut = check_cutoffs(cutoffs)
    kmax = max(cut)
    if n_epochs is None:
        n_epochs = 1 if quick else 5
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, (int, np.integer)) or n_epochs < 1:
        raise ValueError(f"n_epochs must be a positive int, got {n_epochs!r}")
    if (
        isinstance(n_examples, bool)
        or not isinstance(n_examples, (int, np.integer))
        or n_examples < 0
    ):
        raise ValueError(f"n_examples must be an int >= 0, got {n_examples!r}")
    models = [get_baseline(name) for name in baselines]  # validates the names up front
    names = [str(n).lower() for n in baselines]

    # -- 1. data ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    generator: dict[str, Any] | None = None
    if data is None:
        from .synthetic import generate_sessions

        size = dict(_SYNTH_QUICK if quick else _SYNTH_FULL)
        if n_sessions is not None:
            size["n_sessions"] = n_sessions
        if n_items is not None:
            size["n_items"] = n_items
        generator = {**size, "seed": seed}
        log = generate_sessions(**generator)
        source = "synthetic"
        emit(
            f"synthetic click log: {log.n_sessions:,} sessions, {log.n_events:,} events, "
            f"{log.n_items:,} items (seed {seed}; generated in {time.perf_counter() - t0:.2f}s)"
        )
    else:
        from .data import load

        source = os.fspath(data)
        log = load(source, format)
        emit(f"loaded {source}: {log.n_events:,} events in {time.perf_counter() - t0:.2f}s")
        if log.times is None:
            raise ValueError(
                f"{source} has no event times; the demo splits train/test by time (last "
                f"{test_days:g} day(s) = test). Use a log with timestamps (e.g. GRU4Rec TSV)"
            )

    # -- 2. preparation -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    splits = prepare(log, "rsc15-2023", test_days=test_days)
    tr, te = splits["train_full"], splits["test"]
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(
            f"{source}: the time split left {len(tr)} training and {len(te)} test events (test = sessions "
            f"ending in the last {test_days:g} day(s), unknown items dropped); the log needs more than "
            f"{test_days:g} day(s) of data"
        )
    train = SessionData.from_events(tr["SessionId"], tr["ItemId"], tr["Time"], source="train")
    test = SessionData.from_events(
        te["SessionId"], te["ItemId"], te["Time"], item_map=train, keep_unknown=True, source="test"
    )
    emit(
        f"prepared (GRU4Rec 2023 protocol, last {test_days:g} day(s) = test) in "
        f"{time.perf_counter() - t0:.2f}s"
    )
    data_stats = [
        _compact_stats("log", log),
        _compact_stats("train", train),
        _compact_stats("test", test),
    ]
    emit(_stats_table(data_stats))

    # -- 3. baselines -------------------------------------------------------------------------------
    results: dict[str, dict[str, Any]] = {}
    fitted: dict[str, Any] = {}

    def run(name: str, model: Any, fit: Callable[[], Any]) -> None:
        t = time.perf_counter()
        fit()
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        res = evaluate(model, test, cutoffs=cut, tie_mode="conservative")
        eval_s = time.perf_counter() - t
        entry = res.to_dict(extras=False)
        entry.update({"fit_seconds": fit_s, "eval_seconds": eval_s})
        results[name] = entry
        fitted[name] = model
        emit(
            f"  {name:<8} Recall@{kmax}={entry[f'recall@{kmax}']:.4f}  MRR@{kmax}="
            f"{entry[f'mrr@{kmax}']:.4f}  (fit {fit_s:.2f}s, eval {eval_s:.2f}s)"
        )

    emit(f"\nbaselines (full ranking over {train.n_items:,} items, conservative ties):")
    for name, model in zip(names, models):
        run(name, model, lambda m=model: m.fit(train))

    # -- 4. the GRU ---------------------------------------------------------------------------------
    gru_params = {
        "cell": "gru",
        "layers": [int(x) for x in layers],
        "loss": loss,
        "embedding": embedding,
        "batch_size": batch_size,
        "n_sample": n_sample,
        "sample_alpha": sample_alpha,
        "logq": logq,
        "dropout_hidden": dropout_hidden,
        "learning_rate": learning_rate,
        "momentum": momentum,
        "n_epochs": int(n_epochs),
        "seed": seed,
        "num_threads": num_threads,
    }
    skipped: str | None = None
    if not gru:
        skipped = "disabled (gru=False)"
    else:
        try:
            from .model import SessionRNN
        except ImportError as e:
            skipped = f"seqrec_fast.model is not available ({e})"
            emit(f"\nGRU skipped: {skipped}")
        else:
            emit(
                f"\nGRU (layers={gru_params['layers']}, loss={loss}, n_sample={n_sample}, "
                f"{n_epochs} epoch(s), {num_threads} thread(s)):"
            )
            model = SessionRNN(**gru_params, progress=False)
            run("gru", model, lambda: model.fit(train))

    # -- 5. table and examples ------------------------------------------------------------------------
    n_pred = next(iter(results.values()))["n_events"] if results else 0
    emit(f"\ncomparison on {test.n_sessions:,} test sessions ({n_pred:,} predictions):")
    emit(_results_table(results, kmax))

    examples: list[dict[str, Any]] = []
    show = "gru" if "gru" in fitted else None
    if show is None and results:
        show = max(results, key=lambda n: results[n][f"mrr@{kmax}"])
    if show is not None and n_examples > 0:
        lengths = test.session_lengths
        cand = np.flatnonzero(lengths >= 3)
        if cand.size == 0:
            cand = np.flatnonzero(lengths >= 2)
        if cand.size:
            pick = cand[np.linspace(0, cand.size - 1, num=min(n_examples, cand.size)).astype(int)]
            label = "GRU" if show == "gru" else f"{show} (best baseline; GRU skipped)"
            emit(f"\nexample recommendations ({label}, top-5, external item ids):")
            for s in pick.tolist():
                sess = test.session(s)
                n_prefix = int(min(3, sess.size - 1))
                prefix_ids = [_to_py(x) for x in test.item_ids[sess[:n_prefix]]]
                true_next = _to_py(test.item_ids[sess[n_prefix]])
                if show == "gru":
                    rec_ids, rec_scores = fitted["gru"].recommend(prefix_ids, k=5)
                    rec_ids = [_to_py(x) for x in rec_ids]
                else:
                    top, sc = _recommend_with_scorer(fitted[show], sess[:n_prefix], 5)
                    rec_ids = [_to_py(x) for x in train.item_ids[top]]
                    rec_scores = sc
                rec_scores = [float(x) for x in rec_scores]
                hit = rec_ids.index(true_next) + 1 if true_next in rec_ids else None
                examples.append(
                    {
                        "model": show,
                        "session": prefix_ids,
                        "next": true_next,
                        "recommended": rec_ids,
                        "scores": rec_scores,
                        "hit_rank": hit,
                    }
                )
                mark = f"hit at {hit}" if hit else "miss"
                emit(f"  {prefix_ids} -> next {true_next}: {rec_ids} ({mark})")

    seconds = time.perf_counter() - t_total
    emit(f"\ndemo finished in {seconds:.1f}s")
    return {
        "results": results,
        "data": {"source": source, "generator": generator, "stats": data_stats},
        "gru": {"params": gru_params, "skipped": skipped},
        "examples": examples,
        "cutoffs": list(cut),
        "seconds": seconds,
    }
