"""``seqrec baseline``: the non-neural baselines in the evaluation harness."""

from __future__ import annotations

import argparse
import time

from .common import (
    _format_choices,
    _load,
    _load_test,
    _param,
    add_eval_options,
    eval_kwargs,
    report_evaluation,
)


def _register_baseline(sub: argparse._SubParsersAction) -> None:
    from ..baselines import BASELINES

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
    from ..baselines import get_baseline
    from ..evaluate import evaluate

    model = get_baseline(args.name, **dict(args.param))
    train = _load(args.train, args.format)
    test = _load_test(args, item_map=train)
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    result = evaluate(model, test, **eval_kwargs(args))
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
