"""The ``seqrec`` command line.

Commands are registered by small functions ``_register_<name>(subparsers)`` listed in
:data:`COMMAND_REGISTRARS`; each adds one subparser and sets ``func`` (``args -> int``). Adding a command
is writing one such function and appending it to the list.

User errors (bad path, bad format, bad file, bad value) print ``seqrec: error: ...`` on stderr and exit
with status 2, without a traceback; argparse misuse exits 2 as usual.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

__all__ = ["COMMAND_REGISTRARS", "CLIError", "build_parser", "main", "write_json_atomic"]

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as ``seqrec: error: <message>``, exit status 2."""


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file in the same folder + os.replace)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"cannot write {path}: folder {folder} does not exist")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _param(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), _parse_value(v.strip())


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _format_choices() -> list[str]:
    from .data import FORMATS

    return ["auto", *FORMATS]


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that evaluates (``baseline``, ``evaluate``)."""
    from .evaluate import TARGET_MODES, UNKNOWN_TARGET_MODES
    from .metrics import TIE_MODES

    p.add_argument(
        "--cutoffs",
        type=_positive_int,
        nargs="+",
        default=[1, 5, 10, 20],
        metavar="K",
        help="cut-offs for the metrics (default: 1 5 10 20)",
    )
    p.add_argument(
        "--tie-mode",
        choices=TIE_MODES,
        default="conservative",
        help="rank of a target tied with other items (default: conservative)",
    )
    p.add_argument(
        "--unknown-targets",
        choices=UNKNOWN_TARGET_MODES,
        default="drop",
        help="test items unknown to training: drop them (GRU4Rec) or count them as misses "
        "(SR-GNN papers) (default: drop)",
    )
    p.add_argument(
        "--targets",
        choices=TARGET_MODES,
        default="all",
        help="predict every event after the first (all) or only the last one of each test "
        "session (last: leave-one-out) (default: all)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=512,
        help="session-parallel evaluation slots (default: 512)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT (atomic)")
    p.add_argument(
        "--test-format",
        choices=_format_choices(),
        default=None,
        help="format of TEST (default: same as --format)",
    )


def _load(path: str, fmt: str, **kw: Any) -> Any:
    from .data import load

    return load(path, fmt, **kw)


def _load_test(args: argparse.Namespace, item_map: Any) -> Any:
    """Load ``args.test`` onto a training item map (a SessionData or the external ids by internal index).

    Unknown test items are kept as ``-1`` so that :func:`evaluate` applies ``--unknown-targets`` (drop or
    miss) and counts them; shared by ``baseline`` and ``evaluate``.
    """
    return _load(args.test, args.test_format or args.format, item_map=item_map, keep_unknown=True)


def report_evaluation(
    result: Any, args: argparse.Namespace, title: str, extra: dict[str, Any] | None = None
) -> None:
    """Print the result table and write ``--json`` if asked (shared by baseline / evaluate)."""
    print(title)
    print(result.format_table())
    if args.json:
        out = result.to_dict()
        if extra:
            out.update(extra)
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")


# ---------------------------------------------------------------------------------------------------
# data prepare | stats
# ---------------------------------------------------------------------------------------------------
def _register_data(sub: argparse._SubParsersAction) -> None:
    from .preprocess import PROTOCOLS

    p = sub.add_parser(
        "data",
        help="prepare datasets and print statistics",
        description="Prepare datasets (preprocessing protocols) and print statistics.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="{prepare,stats}")
    dsub.required = True

    pp = dsub.add_parser(
        "prepare",
        help="run a preprocessing protocol and write GRU4Rec TSV splits",
        description="Run a preprocessing protocol on a click log and write GRU4Rec TSV files "
        "<out-dir>/<prefix>_{train_full,test,train_tr,train_valid}.tsv. rsc15-2015: one-pass "
        "filters (sessions >= 2, items >= 5, sessions >= 2); rsc15-2023: consecutive repeats "
        "removed, filters iterated to a fixpoint; both: sessions assigned to test by their end "
        "time (last D days), unknown test items dropped. loo: leave-one-out on user histories.",
    )
    pp.add_argument("input", help="input file (any supported format, optionally .gz)")
    pp.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="rsc15-2023",
        help="preprocessing protocol (default: rsc15-2023)",
    )
    pp.add_argument(
        "--format", choices=_format_choices(), default="auto", help="input format (default: auto)"
    )
    pp.add_argument("--out-dir", required=True, help="output folder (created if missing)")
    pp.add_argument("--prefix", default=None, help="output file prefix (default: input file stem)")
    pp.add_argument(
        "--test-days",
        type=_positive_float,
        default=1.0,
        help="days at the end used as test (default: 1)",
    )
    pp.add_argument(
        "--valid-days",
        type=_positive_float,
        default=1.0,
        help="days at the end of train used as validation (default: 1)",
    )
    pp.add_argument(
        "--session-gap",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="sessionise a user log: start a new session after this idle gap (the session "
        "column then holds user ids)",
    )
    pp.add_argument(
        "--split-by",
        choices=("end", "start"),
        default="end",
        help="session time that decides train/test (default: end, as the official code)",
    )
    pp.add_argument(
        "--min-item-support",
        type=_positive_int,
        default=5,
        help="minimum item support (default: 5)",
    )
    pp.add_argument(
        "--min-session-length",
        type=_positive_int,
        default=2,
        help="minimum session length (default: 2)",
    )
    pp.add_argument("--session-key", default=None, help="session (or user) column name")
    pp.add_argument("--item-key", default=None, help="item column name")
    pp.add_argument("--time-key", default=None, help="time column name")
    pp.add_argument("--gzip", action="store_true", help="write .tsv.gz")
    pp.set_defaults(func=_cmd_data_prepare)

    ps = dsub.add_parser(
        "stats",
        help="print dataset statistics",
        description="Print events, sessions, items, session length distribution and time span.",
    )
    ps.add_argument("path", help="data file (any supported format, optionally .gz)")
    ps.add_argument(
        "--format", choices=_format_choices(), default="auto", help="input format (default: auto)"
    )
    ps.add_argument(
        "--json", metavar="OUT", help="also write the statistics as JSON to OUT (atomic)"
    )
    ps.set_defaults(func=_cmd_data_stats)


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from .preprocess import format_stats, prepare, stats, write_splits

    data = _load(
        args.input,
        args.format,
        session_key=args.session_key,
        item_key=args.item_key,
        time_key=args.time_key,
    )
    t0 = time.perf_counter()
    splits = prepare(
        data,
        args.protocol,
        test_days=args.test_days,
        valid_days=args.valid_days,
        min_item_support=args.min_item_support,
        min_session_length=args.min_session_length,
        session_gap=args.session_gap,
        split_by=args.split_by,
    )
    prefix = args.prefix
    if prefix is None:
        base = os.path.basename(args.input)
        for suf in (".gz", ".tsv", ".csv", ".txt", ".dat", ".inter", ".parquet", ".jsonl"):
            base = base.removesuffix(suf)
        prefix = base or "data"
    try:
        paths = write_splits(splits, args.out_dir, prefix, gzip=args.gzip)
    except OSError as e:
        raise CLIError(f"cannot write to {args.out_dir}: {e.strerror or e}") from None
    print(
        f"protocol {args.protocol}: {data.n_events:,} input events -> {time.perf_counter() - t0:.1f}s"
    )
    for name, frame in splits.items():
        print(f"\n== {name}: {paths[name]}")
        if len(frame):
            print(format_stats(stats(frame)))
        else:
            print("  (empty)")
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from .preprocess import format_stats, stats

    data = _load(args.path, args.format)
    st = stats(data)
    print(args.path)
    print(format_stats(st))
    if args.json:
        write_json_atomic(args.json, st)
    return 0


# ---------------------------------------------------------------------------------------------------
# baseline
# ---------------------------------------------------------------------------------------------------
def _register_baseline(sub: argparse._SubParsersAction) -> None:
    from .baselines import BASELINES

    p = sub.add_parser(
        "baseline",
        help="fit a baseline on TRAIN and evaluate it on TEST",
        description="Fit a baseline on TRAIN and run the next-item full-ranking evaluation on TEST. "
        "Parameters per baseline: "
        + "; ".join(f"{k}: {', '.join(v._params) or '-'}" for k, v in BASELINES.items()),
    )
    p.add_argument("name", choices=list(BASELINES), help="baseline name")
    p.add_argument("train", help="training data file")
    p.add_argument("test", help="test data file")
    p.add_argument(
        "--format", choices=_format_choices(), default="auto", help="data format (default: auto)"
    )
    p.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="baseline parameter, repeatable (e.g. --param k=50)",
    )
    add_eval_options(p)
    p.set_defaults(func=_cmd_baseline)


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .baselines import get_baseline
    from .evaluate import evaluate

    model = get_baseline(args.name, **dict(args.param))
    train = _load(args.train, args.format)
    test = _load_test(args, item_map=train)
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    result = evaluate(
        model,
        test,
        cutoffs=args.cutoffs,
        tie_mode=args.tie_mode,
        unknown_targets=args.unknown_targets,
        batch_size=args.batch_size,
        targets=args.targets,
    )
    report_evaluation(
        result,
        args,
        f"baseline {args.name} {model.get_params()} (fit {fit_s:.2f}s)",
        extra={
            "model": args.name,
            "params": model.get_params(),
            "fit_seconds": fit_s,
            "train": args.train,
            "test": args.test,
        },
    )
    return 0


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------
def _register_demo(sub: argparse._SubParsersAction) -> None:
    def seed(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
        return v

    p = sub.add_parser(
        "demo",
        help="synthetic click log -> baselines and a GRU -> comparison table",
        description="Generate the built-in synthetic click log (Zipfian popularity, topical sessions "
        "with sequential patterns, 8 days; no download) or load --data, prepare it (GRU4Rec 2023 "
        "protocol: last day = test, unknown test items dropped), fit the baselines (pop, itemknn, sr, "
        "vsknn) and a GRU, evaluate all of them (full ranking, conservative ties, cut-offs 5 10 20) and "
        "print a comparison table and example recommendations.",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="run on this click log (needs event times) instead of the synthetic one",
    )
    p.add_argument(
        "--format",
        choices=_format_choices(),
        default="auto",
        help="format of --data (default: auto)",
    )
    p.add_argument(
        "--seed", type=seed, default=0, help="seed of the synthetic log and the GRU (default: 0)"
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="GRU training epochs (default: 5, or 1 with --quick)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small synthetic log and one epoch: a smoke test in a few seconds",
    )
    p.add_argument(
        "--json", metavar="OUT", help="also write the comparison metrics as JSON to OUT (atomic)"
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder):  # fail before the run, not after it
            raise CLIError(f"cannot write {args.json}: folder {folder} does not exist")
    if args.data is not None and not os.path.exists(args.data):
        raise CLIError(f"--data {args.data}: no such file")
    result = run_demo(
        args.data, format=args.format, seed=args.seed, n_epochs=args.epochs, quick=args.quick
    )
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------------
# train | evaluate | recommend (SessionRNN)
# ---------------------------------------------------------------------------------------------------
def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _model_param(text: str) -> tuple[str, Any]:
    from .config import parse_param

    try:
        return parse_param(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _check_out_path(path: str, what: str) -> None:
    """Fail before a long run, not after it, when ``path`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"cannot write {what} {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"cannot write {what} {path}: it is a directory")


def _check_in_path(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{what} {path}: is a directory, expected a file")


def _model_params(args: argparse.Namespace) -> dict[str, Any]:
    """Hyperparameters from --config < --param < --threads / --seed, names validated."""
    from .config import MODEL_PARAMS, load_config, validate_params

    params: dict[str, Any] = {}
    if args.config is not None:
        conf = load_config(args.config)
        validate_params(conf, MODEL_PARAMS, source=f"config file {args.config}")
        params.update(conf)
    overrides = dict(args.param)
    validate_params(overrides, MODEL_PARAMS, source="--param")
    params.update(overrides)
    if args.threads is not None:
        params["num_threads"] = args.threads
    if args.seed is not None:
        params["seed"] = args.seed
    if isinstance(params.get("layers"), int) and not isinstance(params["layers"], bool):
        params["layers"] = [params["layers"]]  # --param layers=100 means one layer of 100
    return params


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
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    params = _model_params(args)
    if args.early_stopping is not None and args.valid is None:
        raise CLIError("--early-stopping needs --valid")
    _check_out_path(args.out, "model file")
    _check_in_path(args.train, "training data")
    if args.valid is not None:
        _check_in_path(args.valid, "validation data")
    train = _load(args.train, args.format)
    valid = _load(args.valid, args.format, item_map=train) if args.valid is not None else None

    from .model import SessionRNN

    extra: dict[str, Any] = {"progress": not args.quiet, "early_stopping": args.early_stopping}
    if args.quiet and "verbose" in inspect.signature(SessionRNN).parameters:
        extra["verbose"] = False  # per-epoch log lines, where the model has them
    try:
        model = SessionRNN(**params, **extra)
    except TypeError as e:
        raise CLIError(f"bad hyperparameters: {e}") from None
    t0 = time.perf_counter()
    try:
        model.fit(train, valid)
    except FloatingPointError as e:
        raise CLIError(f"training diverged: {e}") from None
    seconds = time.perf_counter() - t0
    try:
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
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    _check_in_path(args.model, "model file")
    _check_in_path(args.test, "test data")
    if args.json:
        _check_out_path(args.json, "JSON file")

    from .model import SessionRNN

    model = SessionRNN.load(args.model)
    if args.threads is not None:
        model.set_params(num_threads=args.threads)
    test = _load_test(args, item_map=model.item_ids_)
    result = evaluate(
        model,
        test,
        cutoffs=args.cutoffs,
        tie_mode=args.tie_mode,
        unknown_targets=args.unknown_targets,
        batch_size=args.batch_size,
        targets=args.targets,
    )
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


def _to_py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _match_item_ids(tokens: Sequence[str], item_ids: Any) -> tuple[list[Any], list[str]]:
    """Map command-line item tokens onto the model's external ids: (known ids as stored, unknown)."""
    import numpy as np
    import pandas as pd

    ids = np.asarray(item_ids)
    if ids.dtype.kind in "iu":
        keys: list[Any] = []
        for t in tokens:
            try:
                keys.append(int(t))
            except ValueError:
                keys.append(None)
        index = pd.Index(ids)
    else:
        keys = list(tokens)
        index = pd.Index(ids.astype(str))
    known: list[Any] = []
    unknown: list[str] = []
    for tok, key in zip(tokens, keys):
        pos = index.get_indexer([key])[0] if key is not None else -1
        if pos < 0:
            unknown.append(tok)
        else:
            known.append(_to_py(ids[pos]))
    return known, unknown


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
    from .model import SessionRNN

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


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a saved model over HTTP (needs the 'serve' extra)",
        description="Load MODEL and serve session recommendations over HTTP (Starlette + uvicorn): "
        "POST /v1/sessions/{id}/events, POST /v1/recommend, DELETE /v1/sessions/{id}, GET /healthz, "
        "GET /metrics. Needs: pip install 'seqrec-fast[serve]'.",
    )
    p.add_argument("model", help="model file (.npz) written by 'seqrec train'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes, each loading the model (default: 1). Sessions live in the worker "
        "that served them: with more than one, a session's events must reach the same worker "
        "(keep-alive connection or sticky balancing)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="kernel threads per request (default: 1, right for single events)",
    )
    p.add_argument(
        "--max-sessions",
        type=_positive_int,
        default=100_000,
        help="session-state store bound per worker, LRU eviction (default: 100000)",
    )
    p.add_argument(
        "--ttl", type=_positive_float, default=1800.0, help="session idle expiry in seconds (default: 1800)"
    )
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "int8"],
        default="float32",
        help="item table used for scoring (default: float32, exact)",
    )
    p.add_argument(
        "--exclude-seen", action="store_true", help="never recommend items already in the session"
    )
    p.add_argument(
        "--unknown-item",
        choices=["skip", "raise"],
        default="skip",
        help="an item not in the model: skip the step (default) or answer 422",
    )
    p.add_argument("--max-k", type=_positive_int, default=1000, help="largest k accepted (default: 1000)")
    p.add_argument(
        "--max-body", type=_positive_int, default=65536, help="request body limit in bytes (default: 65536)"
    )
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    _check_in_path(args.model, "model file")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535]; got {args.port}")
    try:
        from .server import serve
    except ImportError as e:
        raise CLIError(
            f"'seqrec serve' needs the serve extra: pip install 'seqrec-fast[serve]' ({e})"
        ) from None
    serve(
        args.model,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        num_threads=args.threads,
        max_sessions=args.max_sessions,
        ttl_seconds=args.ttl,
        precision=args.precision,
        exclude_seen=args.exclude_seen,
        unknown_item=args.unknown_item,
        max_k=args.max_k,
        max_body_bytes=args.max_body,
    )
    return 0


def _register_bench(sub: argparse._SubParsersAction) -> None:
    from .bench import add_arguments
    from .bench import run as _run_bench

    p = sub.add_parser(
        "bench",
        help="benchmark the C++ core against the NumPy reference and PyTorch (report + plots)",
        description="Run the comparison matrix (kernels, training, serving; C++ vs the NumPy "
        "reference vs PyTorch, at 1 and 2 threads pinned on every side) from the repository's bench/ "
        "scripts, validating every case before timing, and write records.jsonl, report.md and PNG "
        "plots (matplotlib: pip install 'seqrec-fast[bench]') into --out.",
    )
    add_arguments(p)
    p.set_defaults(func=_run_bench)


# ---------------------------------------------------------------------------------------------------
# Commands from the serving issue register here: _register_serve
# Each is `def _register_<name>(sub) -> None` adding one subparser with set_defaults(func=...);
# append it to COMMAND_REGISTRARS below. Reuse add_eval_options / report_evaluation for `evaluate`.
# ---------------------------------------------------------------------------------------------------
COMMAND_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_data,
    _register_baseline,
    _register_demo,
    _register_train,
    _register_evaluate,
    _register_recommend,
    _register_serve,
    _register_bench,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``seqrec`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="seqrec",
        description="Session-based recommendation with recurrent networks (GRU4Rec family): data "
        "preparation, baselines, training and evaluation.",
    )
    try:
        from . import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"seqrec {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in COMMAND_REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error or misuse)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or misuse (2); argparse already printed the message
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    try:
        return int(args.func(args) or 0)
    except (
        CLIError,
        FileNotFoundError,
        ValueError,
        ImportError,
        IsADirectoryError,
        PermissionError,
    ) as e:
        print(f"seqrec: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("seqrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
