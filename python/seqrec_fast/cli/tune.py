"""``seqrec tune``: hyperparameter search on Ray with Optuna (see :mod:`seqrec_fast.tune`)."""

from __future__ import annotations

import argparse
import sys

from .common import (
    CLIError,
    _check_in_path,
    _format_choices,
    _model_param,
    _nonneg_int,
    _positive_int,
    add_valid_protocol_options,
    terminated,
    valid_options,
)


def _register_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="hyperparameter search (Optuna TPE + median pruning, trials as Ray tasks)",
        description="Search SessionRNN hyperparameters on TRAIN for the best validation metric on "
        "VALID. The space is a JSON-lines file in the official GRU4Rec paropt format (configs/spaces/ "
        "ships the official XE and BPR-max spaces). Trials run as Ray tasks, --parallel at a time, "
        "each pinned to --threads-per-trial CPUs; a median pruner stops trials whose per-epoch "
        "validation metric falls behind. DIR receives study.db (SQLite; --resume continues it), "
        "trials.csv, trials.jsonl, best.toml (for 'seqrec train --config') and history.png. "
        "Ctrl-C stops with the study saved.",
    )
    p.add_argument("train", help="training data file (any supported format)")
    p.add_argument("valid", help="validation data file (items unknown to TRAIN are dropped)")
    p.add_argument("--space", required=True, metavar="SPACE", help="search space (JSON lines)")
    p.add_argument("--trials", required=True, type=_positive_int, metavar="N",
                   help="trials in total (with --resume, including those already finished)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--metric", choices=("recall@20", "mrr@20", "ndcg@20"), default="mrr@20",
                   help="validation metric to maximise (default: mrr@20)")
    p.add_argument("--fixed", nargs="+", type=_model_param, default=[], metavar="KEY=VALUE",
                   help="parameters that do not vary (e.g. --fixed n_epochs=5 loss=cross-entropy)")
    p.add_argument("--config", metavar="TOML", default=None,
                   help="TOML file of parameters that do not vary (--fixed and the space override it)")
    p.add_argument("--parallel", type=_positive_int, default=None, metavar="P",
                   help="trials at once (default: the cluster's CPUs / --threads-per-trial)")
    p.add_argument("--threads-per-trial", type=_positive_int, default=1, metavar="T",
                   help="CPUs (Ray num_cpus) and model num_threads of each trial (default: 1)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join ('auto', HOST:PORT or ray://HOST:10001; default: start a "
                   "local Ray sized to the machine)")
    p.add_argument("--seed", type=_nonneg_int, default=0, metavar="S",
                   help="seeds the TPE sampler and every trial's model (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue the study in DIR")
    p.add_argument("--no-prune", action="store_true", help="run every trial to its last epoch")
    p.add_argument("--prune-startup", type=_nonneg_int, default=5, metavar="N",
                   help="trials that finish before pruning starts (default: 5)")
    p.add_argument("--prune-warmup", type=_nonneg_int, default=1, metavar="E",
                   help="epochs a trial runs before it may be pruned (default: 1)")
    p.add_argument("--format", choices=_format_choices(), default="auto",
                   help="format of TRAIN and VALID (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    add_valid_protocol_options(p, "VALID")
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from ..tune import tune

    _check_in_path(args.train, "training data")
    _check_in_path(args.valid, "validation data")
    _check_in_path(args.space, "search space")
    if args.config is not None:
        _check_in_path(args.config, "config file")
    fixed = dict(args.fixed)
    try:
        result = tune(
            args.train, args.valid, args.space, args.trials, args.out, metric=args.metric,
            fixed=fixed, config=args.config, parallel=args.parallel,
            threads_per_trial=args.threads_per_trial, address=args.address, seed=args.seed,
            resume=args.resume, prune=not args.no_prune, pruner_startup_trials=args.prune_startup,
            pruner_warmup_epochs=args.prune_warmup, format=args.format, verbose=not args.quiet,
            valid_options=valid_options(args),
        )
    except TypeError as e:
        raise CLIError(f"bad parameters: {e}") from None
    except KeyboardInterrupt as e:
        term = terminated(e)
        how = "terminated (SIGTERM)" if term else "interrupted"
        print(f"seqrec: {how}; the study is saved in {args.out}/study.db, continue with "
              "--resume", file=sys.stderr)
        return 143 if term else 130
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items()))
    print(f"{sum(result.counts.values())} trials ({counts}) in {result.seconds:.1f}s")
    if result.best_params is None:
        print("no trial completed: no best.toml written", file=sys.stderr)
        return 1
    print(f"best validation {args.metric} {result.best_value:.4f}")
    print(f"best configuration: {args.out}/best.toml")
    return 0
