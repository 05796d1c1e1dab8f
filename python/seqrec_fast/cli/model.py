"""``seqrec train``, ``seqrec evaluate`` and ``seqrec recommend``: the model commands."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from typing import Any

from .common import (
    CLIError,
    _check_in_path,
    _check_out_path,
    _format_choices,
    _json_default,
    _load,
    _load_test,
    _match_item_ids,
    _model_param,
    _model_params,
    _nonneg_int,
    _positive_int,
    _to_py,
    add_eval_options,
    add_valid_protocol_options,
    eval_kwargs,
    report_evaluation,
    valid_options,
)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a recurrent session model (GRU4Rec family) on TRAIN and save it",
        description="Train a SessionRNN on TRAIN and save it to MODEL (one .npz file, written "
        "atomically). Hyperparameters come from --config (a flat TOML file; configs/ ships the official "
        "GRU4Rec best settings), then --param overrides, then --threads / --seed. Parameter names: "
        "cell, layers, embedding, embedding_dim, loss, elu_param, bpreg, logq, n_sample, sample_alpha, "
        "full_softmax, batch_size, dropout_embed, dropout_hidden, bptt, optimizer, learning_rate, "
        "momentum, n_epochs, seed, num_threads.",
    )
    p.add_argument("train", help="training data file (any supported format, optionally .gz)")
    p.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.npz)")
    p.add_argument(
        "--valid",
        metavar="VALID",
        default=None,
        help="validation data: Recall@20 and MRR@20 after each epoch (items unknown to TRAIN are "
        "dropped)",
    )
    p.add_argument("--config", metavar="TOML", default=None, help="hyperparameter file (TOML)")
    p.add_argument(
        "--param",
        type=_model_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="hyperparameter override, repeatable (e.g. --param layers=100,100 --param loss=bpr-max)",
    )
    p.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N", help="sets num_threads"
    )
    p.add_argument("--seed", type=_nonneg_int, default=None, metavar="S", help="sets seed")
    p.add_argument(
        "--format",
        choices=_format_choices(),
        default="auto",
        help="format of TRAIN and VALID (default: auto)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar; only the final summary is printed"
    )
    p.add_argument(
        "--early-stopping",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N epochs without a better validation MRR@20 and keep the best epoch's "
        "weights (needs --valid)",
    )
    p.add_argument(
        "--item-features",
        metavar="TABLE",
        default=None,
        help="item feature table (Parquet, or .csv/.tsv): one row per item, an id column and feature "
        "columns; items with features but no events become cold-start items",
    )
    p.add_argument("--item-features-id-column", metavar="NAME", default="ItemId",
                   help="id column of --item-features (default: ItemId)")
    p.add_argument("--item-features-categorical", metavar="COL", nargs="+", default=None,
                   help="numeric columns of --item-features to one-hot encode")
    p.add_argument(
        "--warm-start",
        metavar="MODEL",
        default=None,
        help="continue training this model file on TRAIN (weights and, when it was saved with "
        "--save-optimizer-state, optimizer state); new items are appended",
    )
    p.add_argument("--save-optimizer-state", action="store_true",
                   help="also save the optimizer state, for a later --warm-start")
    add_valid_protocol_options(p, "--valid")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    params = _model_params(args)
    if args.early_stopping is not None and args.valid is None:
        raise CLIError("--early-stopping needs --valid")
    v_opts = valid_options(args)
    if v_opts and args.valid is None:
        raise CLIError("--protocol, --exclude-history, --max-history, --min-prefix and "
                       "--unknown-targets set the validation protocol: they need --valid")
    _check_out_path(args.out, "model file")
    _check_in_path(args.train, "training data")
    if args.valid is not None:
        _check_in_path(args.valid, "validation data")
    train = _load(args.train, args.format)
    valid = (_load(args.valid, args.format, item_map=train,
                   keep_unknown=v_opts.get("unknown_targets") == "miss")
             if args.valid is not None else None)

    from ..model import SessionRNN

    extra: dict[str, Any] = {"progress": not args.quiet, "early_stopping": args.early_stopping}
    if args.quiet and "verbose" in inspect.signature(SessionRNN).parameters:
        extra["verbose"] = False  # per-epoch log lines, where the model has them
    if args.item_features is not None:
        _check_in_path(args.item_features, "item feature table")
        extra.update(item_features=args.item_features,
                     item_features_id_column=args.item_features_id_column,
                     item_features_categorical=args.item_features_categorical)
    try:
        if args.warm_start is not None:
            _check_in_path(args.warm_start, "model file")
            model = SessionRNN.load(args.warm_start)
            model.set_params(**params, **extra)
        else:
            model = SessionRNN(**params, **extra)
    except TypeError as e:
        raise CLIError(f"bad hyperparameters: {e}") from None
    t0 = time.perf_counter()
    try:
        fit_kw = {"valid_options": v_opts} if v_opts else {}
        if args.warm_start is not None:
            model.fit(train, valid, warm_start=True, **fit_kw)
        else:
            model.fit(train, valid, **fit_kw)
    except FloatingPointError as e:
        raise CLIError(f"training diverged: {e}") from None
    except ValueError as e:
        if args.item_features is None and args.warm_start is None:
            raise
        raise CLIError(str(e)) from None
    seconds = time.perf_counter() - t0
    try:
        if args.save_optimizer_state:
            model.save(args.out, optimizer_state=True)
        else:
            model.save(args.out)
    except OSError as e:
        raise CLIError(f"cannot write model file {args.out}: {e.strerror or e}") from None

    valid_txt = (
        f"; valid: {valid.n_events:,} events, {valid.n_sessions:,} sessions"
        f" ({valid.n_unknown:,} unknown-item events dropped)"
        if valid is not None
        else ""
    )
    print(
        f"trained on {args.train}: {train.n_events:,} events, {train.n_sessions:,} sessions, "
        f"{train.n_items:,} items{valid_txt}"
    )
    print(f"fit {seconds:.1f}s")
    print(f"params {json.dumps(model.get_params(), default=_json_default, sort_keys=True)}")
    print(f"saved {args.out} ({os.path.getsize(args.out):,} bytes)")
    return 0


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a saved model on TEST (next-item full ranking)",
        description="Load MODEL (written by 'seqrec train') and run the next-item full-ranking "
        "evaluation on TEST: for every event after the first of each test session the previous item "
        "is fed and the target is ranked against all training items. TEST is mapped onto the model's "
        "item map; unknown items are handled by --unknown-targets.",
    )
    p.add_argument("model", help="model file (.npz) written by 'seqrec train'")
    p.add_argument("test", help="test data file")
    p.add_argument(
        "--format", choices=_format_choices(), default="auto", help="format of TEST (default: auto)"
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="scoring threads (default: the model's num_threads)",
    )
    add_eval_options(p)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local, or ray: test sessions split across Ray workers, rank counts "
                   "combined (identical metrics; default: local)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join with --engine ray (default: a local Ray)")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="W",
                   help="partitions with --engine ray (default: the cluster's CPUs / threads)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate

    _check_in_path(args.model, "model file")
    _check_in_path(args.test, "test data")
    if args.json:
        _check_out_path(args.json, "JSON file")

    from ..model import SessionRNN

    model = SessionRNN.load(args.model)
    if args.threads is not None:
        model.set_params(num_threads=args.threads)
    test = _load_test(args, item_map=model.item_ids_)
    result = evaluate(model, test, **eval_kwargs(args), engine=args.engine,
                      address=args.address, workers=args.workers)
    params = model.get_params()
    desc = ", ".join(
        f"{k}={params[k]}" for k in ("cell", "layers", "loss", "embedding") if k in params
    )
    report_evaluation(
        result,
        args,
        f"model {args.model} ({desc}; {model.n_items:,} items) on {args.test}",
        extra={"model": args.model, "params": params, "test": args.test},
    )
    return 0



def _register_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend",
        help="top-k next items for a session with a saved model",
        description="Load MODEL and print the top-k next items (external ids, descending score) for "
        "the session made of --items, in click order. Items unknown to the model are skipped with a "
        "warning.",
    )
    p.add_argument("model", help="model file (.npz) written by 'seqrec train'")
    p.add_argument(
        "--items",
        nargs="+",
        required=True,
        metavar="ITEM",
        help="the session so far: external item ids, oldest first",
    )
    p.add_argument(
        "-k", type=_positive_int, default=20, help="number of recommendations (default: 20)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_recommend)


def _cmd_recommend(args: argparse.Namespace) -> int:
    _check_in_path(args.model, "model file")
    from ..model import SessionRNN

    model = SessionRNN.load(args.model)
    known, unknown = _match_item_ids(args.items, model.item_ids_)
    if unknown:
        if not known:
            raise CLIError(
                f"none of the items is in the model's item map ({model.n_items:,} items): "
                f"{', '.join(unknown)}"
            )
        print(
            f"seqrec: warning: skipped items not in the model's item map: {', '.join(unknown)}",
            file=sys.stderr,
        )
    k = min(args.k, int(model.n_items))
    try:
        rec_ids, scores = model.recommend(known, k=k)
    except KeyError as e:
        raise CLIError(f"unknown item: {e}") from None
    recs = [{"item": _to_py(i), "score": float(s)} for i, s in zip(rec_ids, scores)]
    if args.json:
        out = {"session": known, "skipped": unknown, "k": k, "recommendations": recs}
        print(json.dumps(out, default=_json_default))
    else:
        print(f"session: {' '.join(str(x) for x in known)}")
        width = max([4] + [len(str(r["item"])) for r in recs])
        print(f"{'rank':>4}  {'item':<{width}}  {'score':>10}")
        for rank, r in enumerate(recs, 1):
            print(f"{rank:>4}  {r['item']!s:<{width}}  {r['score']:10.4f}")
    return 0
