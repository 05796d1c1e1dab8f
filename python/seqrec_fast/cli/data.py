"""``seqrec data``: preprocessing protocols and dataset statistics."""

from __future__ import annotations

import argparse
import os
import time

from .common import (
    CLIError,
    _format_choices,
    _load,
    _positive_float,
    _positive_int,
    write_json_atomic,
)


def _register_data(sub: argparse._SubParsersAction) -> None:
    from ..preprocess import PROTOCOLS

    p = sub.add_parser(
        "data",
        help="prepare datasets and print statistics",
        description="Prepare datasets (preprocessing protocols) and print statistics.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="{prepare,split-tail,stats}")
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
    pp.add_argument(
        "--max-history",
        type=_positive_int,
        default=None,
        metavar="N",
        help="loo only: keep the last N+1 events of each training history (e.g. 50 or 200 as "
        "SASRec); test/valid files keep whole histories (see seqrec evaluate --max-history)",
    )
    pp.add_argument("--session-key", default=None, help="session (or user) column name")
    pp.add_argument("--item-key", default=None, help="item column name")
    pp.add_argument("--time-key", default=None, help="time column name")
    pp.add_argument("--gzip", action="store_true", help="write .tsv.gz")
    pp.set_defaults(func=_cmd_data_prepare)

    pt = dsub.add_parser(
        "split-tail",
        help="validation split of a fixed benchmark: the last part of TRAIN, as large as TEST",
        description="Split a benchmark's training file into <prefix>_train_tr.tsv and "
        "<prefix>_train_valid.tsv: the last sessions of TRAIN (by first-event time, or file order "
        "for files without times, e.g. the SR-GNN session files) form the validation part, as "
        "many sessions as TEST has (--like) or --size. Tune on these, then train on the whole "
        "TRAIN and report TEST.",
    )
    pt.add_argument("train", help="the benchmark's training file")
    pt.add_argument("--like", metavar="TEST", default=None,
                    help="make the validation part as large as this test file")
    pt.add_argument("--size", type=_positive_int, default=None,
                    help="validation size (instead of --like)")
    pt.add_argument("--by", choices=("sessions", "events"), default="sessions",
                    help="count the size in sessions or in predictions (events after the first "
                    "of each session) (default: sessions)")
    pt.add_argument("--format", choices=_format_choices(), default="auto",
                    help="format of TRAIN (default: auto)")
    pt.add_argument("--test-format", choices=_format_choices(), default=None,
                    help="format of --like TEST (default: auto)")
    pt.add_argument("--out-dir", required=True, help="output folder (created if missing)")
    pt.add_argument("--prefix", default=None, help="output file prefix (default: TRAIN's stem)")
    pt.add_argument("--gzip", action="store_true", help="write .tsv.gz")
    pt.set_defaults(func=_cmd_data_split_tail)

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
    from ..preprocess import format_stats, prepare, stats, write_splits

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
        max_history=args.max_history,
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


def _prefix_of(path: str) -> str:
    base = os.path.basename(path)
    for suf in (".gz", ".tsv", ".csv", ".txt", ".dat", ".inter", ".parquet", ".jsonl"):
        base = base.removesuffix(suf)
    return base or "data"


def _cmd_data_split_tail(args: argparse.Namespace) -> int:
    import numpy as np

    from ..preprocess import format_stats, stats, tail_split, write_splits

    if (args.like is None) == (args.size is None):
        raise CLIError("give exactly one of --like TEST and --size N")
    data = _load(args.train, args.format)
    if args.like is not None:
        test = _load(args.like, args.test_format or "auto")
        size = (test.n_sessions if args.by == "sessions"
                else int(np.maximum(test.session_lengths - 1, 0).sum()))
    else:
        size = args.size
    try:
        splits = tail_split(data, size, by=args.by)
    except ValueError as e:
        raise CLIError(str(e)) from None
    prefix = args.prefix or _prefix_of(args.train)
    try:
        paths = write_splits(splits, args.out_dir, prefix, gzip=args.gzip)
    except OSError as e:
        raise CLIError(f"cannot write to {args.out_dir}: {e.strerror or e}") from None
    print(f"validation tail: {size:,} {args.by} of {args.train}")
    for name, frame in splits.items():
        print(f"\n== {name}: {paths[name]}")
        print(format_stats(stats(frame)))
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from ..preprocess import format_stats, stats

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
