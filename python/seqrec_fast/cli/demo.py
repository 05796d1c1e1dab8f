"""``seqrec demo``: the built-in end-to-end demo."""

from __future__ import annotations

import argparse
import os

from .common import CLIError, _format_choices, _nonneg_int, _positive_int, write_json_atomic


def _register_demo(sub: argparse._SubParsersAction) -> None:
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
        "--seed", type=_nonneg_int, default=0, help="seed of the synthetic log and the GRU (default: 0)"
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
    from ..demo import run_demo

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
