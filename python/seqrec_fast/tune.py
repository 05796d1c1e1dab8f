"""Hyperparameter search on Ray with Optuna (DESIGN.md §8).

``tune(train, valid, space, n_trials, out)`` runs an Optuna study (seeded TPE sampler, median
pruner) whose trials are Ray tasks, ``parallel`` at a time, each pinned to ``threads_per_trial`` CPUs
(the task's ``num_cpus`` and the model's ``num_threads``). A trial trains a
:class:`~seqrec_fast.model.SessionRNN` and reports the validation metric after every epoch through
the model's per-epoch callback; the report travels to the driver through a small Ray actor (a
mailbox), the driver asks the study whether to prune, and the answer goes back the same way, so the
study and its SQLite file stay in one process on the driver's machine (nothing needs a shared file
system or a database server).

The search space is the official GRU4Rec ``paropt.py`` format: JSON lines, one parameter a line,
``{"name": ..., "dtype": "int"|"float"|"categorical", "values": [low, high] or [choices...],
"step": ..., "log": ...}``. Names are this library's (``configs/README.md``); the official names
``dropout_p_embed`` / ``dropout_p_hidden`` are accepted and mapped. ``layers`` as an int means one
layer of that width.

``out`` receives ``study.db`` (SQLite; ``resume=True`` continues an interrupted search),
``trials.csv`` and ``trials.jsonl`` (params, metric per epoch, seconds, state, error),
``best.toml`` (the best configuration; ``seqrec train --config`` takes it as it is) and
``history.png`` (the optimization history). A trial that diverges (NaN loss or metric) or raises is
recorded as failed with its error and the search goes on; Ctrl-C cancels the running trials, records
them as interrupted (not counted on resume) and leaves the study saved.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import MODEL_PARAMS, load_config, validate_params
from .data import SessionData

__all__ = ["METRICS", "OFFICIAL_NAMES", "SearchParam", "TuneResult", "load_space", "tune",
           "write_config"]

METRICS: tuple[str, ...] = ("recall@20", "mrr@20", "ndcg@20")
#: official GRU4Rec parameter names accepted in space files, and ours
OFFICIAL_NAMES: dict[str, str] = {"dropout_p_embed": "dropout_embed",
                                  "dropout_p_hidden": "dropout_hidden"}
_SEARCHABLE = MODEL_PARAMS - {"num_threads", "seed"}
_DTYPES = ("int", "float", "categorical")


# --------------------------------------------------------------------------------------------------
# search space
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchParam:
    """One line of a search space file."""

    name: str
    dtype: str
    values: tuple
    step: float | None = None
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.dtype == "int":
            return trial.suggest_int(self.name, int(self.values[0]), int(self.values[1]),
                                     step=int(self.step or 1), log=self.log)
        if self.dtype == "float":
            v = trial.suggest_float(self.name, float(self.values[0]), float(self.values[1]),
                                    step=None if self.step is None else float(self.step),
                                    log=self.log)
            # a stepped float is low + i * step: drop the binary noise (0.185, not 0.18500000000000003)
            return round(v, 10) if self.step is not None else v
        return trial.suggest_categorical(self.name, list(self.values))

    def to_json(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "values": list(self.values)}
        if self.step is not None:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        return d


def load_space(path: str | os.PathLike) -> list[SearchParam]:
    """Read a search space in the official GRU4Rec JSON-lines format.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file and line: not JSON, unknown keys, an unknown parameter name, a bad dtype, a
        range that is not ``[low, high]`` with ``low <= high``, a non-positive step, ``log`` with a
        step or a non-positive low, an empty categorical, a parameter listed twice, no parameters.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"search space {p}: no such file")
    if os.path.isdir(p):
        raise ValueError(f"search space {p}: is a directory, expected a JSON-lines file")
    out: list[SearchParam] = []
    with open(p, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"search space {p}, line {ln}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg}); expected one object per line like "
                                 '{"name": "learning_rate", "dtype": "float", "values": [0.01, 0.25]}'
                                 ) from None
            out.append(_parse_param(obj, where))
    if not out:
        raise ValueError(f"search space {p}: no parameters; expected one JSON object per line")
    names = [q.name for q in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"search space {p}: parameter(s) listed more than once: {', '.join(dup)}")
    return out


def _parse_param(obj: Any, where: str) -> SearchParam:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")  # noqa: TRY004 (bad file content)
    extra = set(obj) - {"name", "dtype", "values", "step", "log"}
    if extra:
        raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; expected name, dtype, values, "
                         "step, log")
    for key in ("name", "dtype", "values"):
        if key not in obj:
            raise ValueError(f"{where}: missing key {key!r}")
    name = OFFICIAL_NAMES.get(obj["name"], obj["name"])
    validate_params({name: None}, _SEARCHABLE, source=where)
    dtype, values, step, log = obj["dtype"], obj["values"], obj.get("step"), bool(obj.get("log", False))
    if dtype not in _DTYPES:
        raise ValueError(f"{where}: dtype must be one of {_DTYPES}; got {dtype!r}")
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: values must be a non-empty list; got {values!r}")
    if dtype == "categorical":
        if step is not None or log:
            raise ValueError(f"{where}: a categorical parameter takes no step or log")
        return SearchParam(name, dtype, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   for v in values) or values[0] > values[1]:
        raise ValueError(f"{where}: values must be [low, high] numbers with low <= high; got {values!r}")
    if dtype == "int" and not all(float(v).is_integer() for v in values):
        raise ValueError(f"{where}: an int parameter needs integer bounds; got {values!r}")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
        raise ValueError(f"{where}: step must be a positive number; got {step!r}")
    if dtype == "int" and step is not None and not float(step).is_integer():
        raise ValueError(f"{where}: an int parameter needs an integer step; got {step!r}")
    if log and (step not in (None, 1) or values[0] <= 0):
        raise ValueError(f"{where}: log scale needs low > 0 and no step")
    return SearchParam(name, dtype, tuple(values), step, log)


def _model_value(name: str, value: Any) -> Any:
    if name == "layers" and not isinstance(value, (list, tuple)):
        return [int(value)]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


# --------------------------------------------------------------------------------------------------
# best.toml
# --------------------------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"cannot write {f} to TOML")
        return repr(round(f, 12))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} to TOML")


def write_config(path: str | os.PathLike, params: dict, comments: Sequence[str] = ()) -> None:
    """Write a flat TOML config (``seqrec train --config``) atomically; None values are left out."""
    p = os.fspath(path)
    lines = [f"# {c}" for c in comments]
    lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(params.items()) if v is not None]
    _atomic_text(p, "\n".join(lines) + "\n")


def _atomic_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------------
# the trial (runs in a Ray worker) and the mailbox between trials and the study
# --------------------------------------------------------------------------------------------------
class _Mailbox:
    """A Ray actor relaying per-epoch reports to the driver and pruning decisions back."""

    def __init__(self):
        self.reports: list = []
        self.events: dict = {}
        self.decisions: dict = {}

    async def report(self, number: int, epoch: int, value: float) -> bool:
        key = (number, epoch)
        ev = asyncio.Event()
        self.events[key] = ev
        self.reports.append((number, epoch, value))
        await ev.wait()
        return self.decisions.pop(key)

    async def drain(self) -> list:
        out, self.reports = self.reports, []
        return out

    async def decide(self, number: int, epoch: int, prune: bool) -> None:
        key = (number, epoch)
        self.decisions[key] = bool(prune)
        ev = self.events.pop(key, None)
        if ev is not None:
            ev.set()


def _run_trial(train: SessionData, valid: SessionData, params: dict, metric: str, mailbox: Any,
               number: int, valid_options: dict | None = None) -> dict:
    """Train one configuration; returns {state, value, epochs, seconds, error}. Never raises for a
    failing configuration: the failure is the result."""
    import socket

    from .model import SessionRNN

    t0 = time.perf_counter()
    epochs: list = []
    status = {"pruned": False}

    def on_epoch(model, epoch, logs):
        rec = {"epoch": int(epoch), "loss": float(logs["loss"]),
               "recall@20": float(logs["valid_recall@20"]), "mrr@20": float(logs["valid_mrr@20"]),
               "ndcg@20": float(logs["valid_ndcg@20"]), "seconds": float(logs["seconds"])}
        epochs.append(rec)
        if not (math.isfinite(rec["loss"]) and math.isfinite(rec[metric])):
            raise FloatingPointError(f"diverged: loss {rec['loss']}, validation {metric} "
                                     f"{rec[metric]} after epoch {epoch}")
        if mailbox is not None:
            import ray

            if ray.get(mailbox.report.remote(number, int(epoch), rec[metric])):
                status["pruned"] = True
                return True
        return False

    result: dict[str, Any] = {"epochs": epochs, "host": socket.gethostname(), "error": None}
    try:
        model = SessionRNN(**params, progress=False, verbose=False, callbacks=[on_epoch])
        model.fit(train, valid, valid_options=valid_options)
        result["state"] = "pruned" if status["pruned"] else "complete"
        result["value"] = epochs[-1][metric] if epochs else None
    except Exception as e:  # noqa: BLE001 - a failing trial is data, not a crash of the search
        result["state"] = "fail"
        result["value"] = None
        result["error"] = f"{type(e).__name__}: {e}"
    result["seconds"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """What :func:`tune` returns; unpacks as ``study, best_params = tune(...)``."""

    study: Any
    best_params: dict | None
    best_value: float | None
    out: str
    seconds: float
    interrupted: bool = False
    counts: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.study, self.best_params))


def _load_data(x: Any, what: str, fmt: str, item_map: Any = None,
               keep_unknown: bool = False) -> SessionData:
    from .data import load

    if isinstance(x, SessionData):
        return x
    if isinstance(x, (str, os.PathLike)):
        if item_map is None:
            return load(x, fmt)
        return load(x, fmt, item_map=item_map, keep_unknown=keep_unknown)
    raise TypeError(f"{what} must be a path or a SessionData; got {type(x).__name__}")


def tune(
    train: str | os.PathLike | SessionData,
    valid: str | os.PathLike | SessionData,
    space: str | os.PathLike | Sequence[SearchParam],
    n_trials: int,
    out: str | os.PathLike,
    *,
    metric: str = "mrr@20",
    fixed: dict | None = None,
    config: str | os.PathLike | None = None,
    parallel: int | None = None,
    threads_per_trial: int = 1,
    address: str | None = None,
    seed: int = 0,
    resume: bool = False,
    prune: bool = True,
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 1,
    format: str = "auto",
    verbose: bool = True,
    valid_options: dict | None = None,
) -> TuneResult:
    """Search hyperparameters of SessionRNN on ``train`` for the best validation ``metric``.

    Parameters
    ----------
    train, valid : str, os.PathLike or SessionData
        Training and validation data (files in any supported format, or loaded data; a loaded
        ``valid`` must use ``train``'s item map).
    space : str, os.PathLike or sequence of SearchParam
        The search space (:func:`load_space`).
    n_trials : int
        Trials of the study in total (with ``resume``, including those already finished; trials
        interrupted by Ctrl-C do not count).
    out : str or os.PathLike
        Output folder (created). Holds the study (``study.db``) and the reports.
    metric : {"mrr@20", "recall@20", "ndcg@20"}
        Validation metric to maximise, after the last epoch of each trial.
    fixed : dict, optional
        Parameters that do not vary (model parameter names); may not overlap the space.
    config : str or os.PathLike, optional
        A TOML config (``configs/``) of parameters that do not vary; ``fixed`` and the space override
        it.
    parallel : int, optional
        Trials at once (default: the cluster's CPUs / ``threads_per_trial``).
    threads_per_trial : int
        CPUs of each trial's Ray task and the model's ``num_threads``.
    address : str, optional
        Ray cluster to join (default: the Ray this process joined, else a local Ray).
    seed : int
        Seeds the TPE sampler and every trial's model.
    resume : bool
        Continue the study in ``out``; without it, ``out`` must not hold a study yet.
    prune : bool
        Median pruning after every epoch (``pruner_startup_trials`` trials finish unpruned first;
        pruning starts after epoch ``pruner_warmup_epochs``).
    format : str
        Format of ``train`` / ``valid`` files.
    verbose : bool
        One line per finished trial.
    valid_options : dict, optional
        The validation protocol (:meth:`SessionRNN.fit`'s ``valid_options``: ``targets``,
        ``exclude_history``, ``max_history``, ``min_prefix``, ``unknown_targets``), e.g. leave-one-out
        ``{"targets": "last", "exclude_history": True, "max_history": 50}``. Default: every event
        after the first of each validation session, unknown items dropped.

    Returns
    -------
    TuneResult
        ``study`` (optuna.Study), ``best_params`` (full model parameters of the best trial, None if no
        trial completed), ``best_value``, ``counts`` of trials by state.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    from .evaluate import check_valid_options

    valid_options = check_valid_options(valid_options)
    for name, v, lo in (("n_trials", n_trials, 1), ("threads_per_trial", threads_per_trial, 1),
                        ("seed", seed, 0), ("pruner_startup_trials", pruner_startup_trials, 0),
                        ("pruner_warmup_epochs", pruner_warmup_epochs, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}; got {v!r}")
    if parallel is not None and (not isinstance(parallel, (int, np.integer)) or parallel < 1):
        raise ValueError(f"parallel must be None or an int >= 1; got {parallel!r}")
    params_space = list(space) if not isinstance(space, (str, os.PathLike)) else load_space(space)
    if not params_space or not all(isinstance(q, SearchParam) for q in params_space):
        raise TypeError("space must be a search space file or a non-empty sequence of SearchParam")
    base: dict[str, Any] = {}
    if config is not None:
        base.update(load_config(config))
        validate_params(base, source=f"config file {os.fspath(config)}")
    fixed = {k: _model_value(k, v) for k, v in dict(fixed or {}).items()}
    validate_params(fixed, source="fixed parameters")
    both = sorted(set(fixed) & {q.name for q in params_space})
    if both:
        raise ValueError(f"parameter(s) {', '.join(both)} are both fixed and in the search space; "
                         "remove them from one")
    base.update(fixed)
    base["seed"] = int(seed)
    base["num_threads"] = int(threads_per_trial)
    base = {k: _model_value(k, v) for k, v in base.items()}
    # check the fixed part now (a bad value fails every trial otherwise)
    from .model import SessionRNN

    SessionRNN(**base)._validated()

    try:
        import optuna
    except ImportError:
        raise ImportError("seqrec tune needs Optuna and Ray; install the extra with: "
                          "pip install 'seqrec-fast[ray]'") from None

    out_dir = os.fspath(out)
    os.makedirs(out_dir, exist_ok=True)
    db = os.path.join(out_dir, "study.db")
    if os.path.exists(db) and not resume:
        raise ValueError(f"{out_dir} already holds a study (study.db); pass resume=True (--resume) to "
                         "continue it, or choose another output folder")
    if resume and not os.path.exists(db):
        raise FileNotFoundError(f"nothing to resume: {db} does not exist")
    settings = {"metric": metric, "space": [q.to_json() for q in params_space],
                "fixed": json.loads(json.dumps(base, default=str))}
    if valid_options:  # (absent for the default protocol: studies made before it resume)
        settings["valid_options"] = json.loads(json.dumps(valid_options, default=str))
    settings["fixed"].pop("num_threads", None)

    train_d = _load_data(train, "train", format)
    valid_d = _load_data(valid, "valid", format, item_map=train_d,
                         keep_unknown=valid_options.get("unknown_targets") == "miss")
    if valid_d.n_items != train_d.n_items:
        raise ValueError("valid must use train's item map: load(valid_path, item_map=train)")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{os.path.abspath(db)}"
    study = optuna.create_study(study_name="seqrec-tune", storage=storage, direction="maximize",
                                load_if_exists=True)
    from optuna.trial import TrialState

    if resume:
        old = study.user_attrs.get("settings")
        if old is not None and old != settings:
            diff = [k for k in settings if old.get(k) != settings[k]]
            raise ValueError(f"cannot resume {out_dir}: the {', '.join(diff)} differ from the study's; "
                             "use the same space, metric and fixed parameters")
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (process ended)")
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
    else:
        study.set_user_attr("settings", settings)

    def counted(t) -> bool:
        return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))

    n_done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    to_run = max(0, int(n_trials) - n_done)
    # a resumed search must not replay the first sampler draws: offset the seed by the trials so far
    study.sampler = optuna.samplers.TPESampler(
        seed=int(seed) + len(study.get_trials(deepcopy=False)),
        constant_liar=(parallel or 2) > 1)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials,
                                         n_warmup_steps=pruner_warmup_epochs)
    study.pruner = pruner

    from .cluster import default_workers, ray_session

    t0 = time.perf_counter()
    interrupted: KeyboardInterrupt | None = None
    with ray_session(address) as ray:
        P = int(parallel) if parallel is not None else default_workers(threads_per_trial)
        remote = ray.remote(num_cpus=int(threads_per_trial), max_retries=0)(_run_trial)
        mailbox = ray.remote(num_cpus=0)(_Mailbox).remote() if prune else None
        train_ref, valid_ref = ray.put(train_d), ray.put(valid_d)
        running: dict = {}
        trials: dict = {}
        launched = 0
        try:
            while launched < to_run or running:
                while len(running) < P and launched < to_run:
                    trial = study.ask()
                    sampled = {q.name: q.suggest(trial) for q in params_space}
                    params = dict(base)
                    params.update({k: _model_value(k, v) for k, v in sampled.items()})
                    trial.set_user_attr("params", json.loads(json.dumps(params, default=str)))
                    ref = remote.remote(train_ref, valid_ref, params, metric, mailbox, trial.number,
                                        valid_options)
                    running[ref] = trial
                    trials[trial.number] = trial
                    launched += 1
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                if mailbox is not None:
                    for number, epoch, value in ray.get(mailbox.drain.remote()):
                        trial = trials[number]
                        trial.report(value, epoch)
                        mailbox.decide.remote(number, epoch, trial.should_prune())
                for ref in done:
                    trial = running.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - the worker died, the task did not run
                        res = {"state": "fail", "value": None, "epochs": [], "seconds": None,
                               "error": f"{type(e).__name__}: {e}"}
                    _finish(study, trial, res, metric, verbose)
                    _write_reports(study, out_dir, metric, plot=False)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through the CLI (cli.Terminated)
            interrupted = e
            for ref in running:
                ray.cancel(ref, force=True)
            running.clear()
            # Every trial still open in the storage, including one that the interrupt caught inside
            # study.ask() or between ask() and its launch, or between its result and study.tell()
            # (this process is the study's only driver: a resume fails the open trials of a crashed
            # one before it starts).
            why = ("interrupted (SIGTERM)" if type(e).__name__ == "Terminated"
                   else "interrupted (Ctrl-C or SIGTERM)")
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study._storage.set_trial_user_attr(t._trial_id, "error", why)
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study.tell(t.number, state=TrialState.FAIL)
        finally:
            if mailbox is not None:
                ray.kill(mailbox)
    seconds = time.perf_counter() - t0
    best_params, best_value = _write_reports(study, out_dir, metric, plot=True)
    counts: dict = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    result = TuneResult(study, best_params, best_value, out_dir, seconds, interrupted is not None,
                        counts)
    if interrupted is not None:
        if verbose:
            print(f"interrupted: the study is saved in {db}; continue with resume=True (--resume)",
                  flush=True)
        raise interrupted
    return result


def _finish(study: Any, trial: Any, res: dict, metric: str, verbose: bool) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("epochs", res.get("epochs") or [])
    trial.set_user_attr("seconds", res.get("seconds"))
    if res.get("error"):
        trial.set_user_attr("error", res["error"])
    state = res["state"]
    if state == "complete":
        study.tell(trial, float(res["value"]))
    elif state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
    if verbose:
        ep = res.get("epochs") or []
        val = "" if res.get("value") is None else f"  {metric} {res['value']:.4f}"
        sec = "" if res.get("seconds") is None else f"  {res['seconds']:.1f}s"
        err = f"  error: {res['error']}" if res.get("error") else ""
        print(f"trial {trial.number}: {state}{val}  epochs {len(ep)}{sec}{err}", flush=True)


def _trial_records(study: Any, metric: str) -> list[dict]:
    recs = []
    for t in study.get_trials(deepcopy=False):
        epochs = t.user_attrs.get("epochs") or []
        recs.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value if t.value is not None and math.isfinite(t.value) else None,
            "metric": metric,
            "metric_per_epoch": [e.get(metric) for e in epochs],
            "epochs": epochs,
            "seconds": t.user_attrs.get("seconds"),
            "error": t.user_attrs.get("error"),
            "params": t.user_attrs.get("params", {}),
            "sampled": t.params,
            "started": t.datetime_start.isoformat() if t.datetime_start else None,
        })
    return recs


def _write_reports(study: Any, out_dir: str, metric: str, plot: bool):
    """trials.jsonl, trials.csv, best.toml (and history.png); returns (best params, best value)."""
    import pandas as pd
    from optuna.trial import TrialState

    recs = _trial_records(study, metric)
    _atomic_text(os.path.join(out_dir, "trials.jsonl"),
                 "".join(json.dumps(r, default=str) + "\n" for r in recs))
    rows = []
    for r in recs:
        row = {k: r[k] for k in ("number", "state", "value", "seconds", "error")}
        row[f"{metric}_per_epoch"] = " ".join(f"{v:.6f}" for v in r["metric_per_epoch"] if v is not None)
        row.update({f"param_{k}": v for k, v in r["sampled"].items()})
        rows.append(row)
    tmp = os.path.join(out_dir, f"trials.csv.tmp{os.getpid()}")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, os.path.join(out_dir, "trials.csv"))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best_params = best_value = None
    if complete:
        best = max(complete, key=lambda t: t.value)
        best_value = float(best.value)
        best_params = {k: v for k, v in best.user_attrs.get("params", {}).items()
                       if k != "num_threads"}
        write_config(os.path.join(out_dir, "best.toml"), best_params, comments=[
            f"seqrec_fast: best configuration of the search in {out_dir} (trial {best.number},",
            f"validation {metric} {best_value:.6f}). num_threads is left to --threads.",
            "Use: seqrec train TRAIN --out MODEL --config best.toml",
        ])
    if plot and recs:
        _plot_history(recs, metric, os.path.join(out_dir, "history.png"))
    return best_params, best_value


def _plot_history(recs: list, metric: str, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is in the ray extra; without it there is no plot
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    best, xs_best, ys_best = -math.inf, [], []
    for state, color, marker in (("complete", "tab:blue", "o"), ("pruned", "tab:gray", "x")):
        xs = [r["number"] for r in recs if r["state"] == state]
        ys = [(r["value"] if state == "complete" else
               (r["metric_per_epoch"][-1] if r["metric_per_epoch"] else None))
              for r in recs if r["state"] == state]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.scatter(*zip(*pts), c=color, marker=marker, s=22,
                       label=state if state == "complete" else "pruned (last epoch)")
    for r in recs:
        if r["state"] == "complete" and r["value"] is not None:
            best = max(best, r["value"])
        if best > -math.inf:
            xs_best.append(r["number"])
            ys_best.append(best)
    if xs_best:
        ax.step(xs_best, ys_best, where="post", c="tab:red", label="best so far")
    n_fail = sum(r["state"] == "fail" for r in recs)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"optimization history ({len(recs)} trials, {n_fail} failed)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
