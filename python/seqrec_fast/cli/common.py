"""Shared helpers of the ``seqrec`` commands: user errors, atomic JSON output, value parsing,
evaluation options and reports, model parameters, item-id matching."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

EXIT_USAGE = 2


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM during a command."""


_TERM = {"received": False}  # set by the CLI's SIGTERM handler (cli._sigterm_as_interrupt)


def terminated(e: BaseException | None = None) -> bool:
    """Whether this interrupt came from SIGTERM: a :class:`Terminated`, or any KeyboardInterrupt
    after the handler ran (Ray, for one, re-raises interrupts as plain KeyboardInterrupt)."""
    return isinstance(e, Terminated) or _TERM["received"]


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
    from ..data import FORMATS

    return ["auto", *FORMATS]


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that evaluates (``baseline``, ``evaluate``)."""
    from ..evaluate import TARGET_MODES, UNKNOWN_TARGET_MODES
    from ..metrics import TIE_MODES

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
        default=None,
        help="test items unknown to training: drop them (GRU4Rec) or count them as misses "
        "(SR-GNN papers) (default: drop; miss with --protocol loo, where dropping an unknown "
        "last item would make the previous item the target)",
    )
    p.add_argument(
        "--targets",
        choices=TARGET_MODES,
        default="all",
        help="predict every event after the first (all) or only the last one of each test "
        "session (last: leave-one-out) (default: all)",
    )
    p.add_argument(
        "--protocol",
        choices=("next", "loo"),
        default="next",
        help="next: next-item prediction as set by --targets (default); loo: leave-one-out on "
        "user histories (files from 'seqrec data prepare --protocol loo'): only the last item of "
        "each history is predicted (implies --targets last)",
    )
    p.add_argument(
        "--exclude-history",
        action="store_true",
        help="remove the items of the user's history before the target from the ranking "
        "(S3-Rec / ICLRec full ranking); a target seen before counts as a miss",
    )
    p.add_argument(
        "--max-history",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --protocol loo: feed only the last N items before the target (e.g. 50 as "
        "SASRec); exclusion still uses the whole history",
    )
    p.add_argument(
        "--min-prefix",
        type=_positive_int,
        default=1,
        metavar="N",
        help="with --targets all: count only targets with at least N events before them in their "
        "session (default 1: every event after the first; 2: the 'prefixes of length >= 2' "
        "protocol)",
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


def add_valid_protocol_options(p: argparse.ArgumentParser, what: str) -> None:
    """The validation-protocol options of ``train --valid`` and ``tune`` (``what``: the data they
    apply to, for the help texts); read back with :func:`valid_options`."""
    from ..evaluate import UNKNOWN_TARGET_MODES

    g = p.add_argument_group(f"validation protocol (applied to {what})")
    g.add_argument("--protocol", choices=("next", "loo"), default="next",
                   help="next: every event after the first of each session is predicted (default); "
                   "loo: leave-one-out, only the last item of each history (files from 'seqrec data "
                   "prepare --protocol loo')")
    g.add_argument("--exclude-history", action="store_true",
                   help="remove the user's earlier items from each ranking (S3-Rec / ICLRec)")
    g.add_argument("--max-history", type=_positive_int, default=None, metavar="N",
                   help="with --protocol loo: feed only the last N items before the target")
    g.add_argument("--min-prefix", type=_positive_int, default=1, metavar="N",
                   help="with --protocol next: count only targets with at least N events before them")
    g.add_argument("--unknown-targets", choices=UNKNOWN_TARGET_MODES, default=None,
                   help="validation items unknown to training: drop (default; miss with --protocol "
                   "loo) or count as misses")


def valid_options(args: argparse.Namespace) -> dict[str, Any]:
    """``SessionRNN.fit(valid_options=...)`` / ``tune(valid_options=...)`` from
    :func:`add_valid_protocol_options`' options ({} for the default protocol)."""
    loo = args.protocol == "loo"
    if args.max_history is not None and not loo:
        raise CLIError("--max-history needs --protocol loo")
    if args.min_prefix > 1 and loo:
        raise CLIError("--min-prefix applies to --protocol next")
    out: dict[str, Any] = {}
    if loo:
        out["targets"] = "last"
    if args.exclude_history:
        out["exclude_history"] = True
    if args.max_history is not None:
        out["max_history"] = args.max_history
    if args.min_prefix > 1:
        out["min_prefix"] = args.min_prefix
    unknown = args.unknown_targets or ("miss" if loo else None)
    if unknown is not None:
        out["unknown_targets"] = unknown
    return out


def eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluate() keywords of the shared options (``--protocol loo`` means targets="last")."""
    targets = "last" if args.protocol == "loo" else args.targets
    if args.max_history is not None and targets != "last":
        raise CLIError("--max-history needs --protocol loo (or --targets last)")
    min_prefix = getattr(args, "min_prefix", 1)
    if min_prefix > 1 and targets != "all":
        raise CLIError("--min-prefix applies to --targets all (not to --protocol loo)")
    return {
        "cutoffs": args.cutoffs,
        "tie_mode": args.tie_mode,
        "unknown_targets": args.unknown_targets
        or ("miss" if args.protocol == "loo" else "drop"),
        "batch_size": args.batch_size,
        "targets": targets,
        "exclude_history": bool(args.exclude_history),
        "max_history": args.max_history,
        "min_prefix": min_prefix,
    }


def _load(path: str, fmt: str, **kw: Any) -> Any:
    from ..data import load

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


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _model_param(text: str) -> tuple[str, Any]:
    from ..config import parse_param

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
    from ..config import MODEL_PARAMS, load_config, validate_params

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


