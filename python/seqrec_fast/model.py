"""SessionRNN: the GRU4Rec-family estimator (DESIGN.md §3).

The estimator follows the scikit-learn contract: ``__init__`` only stores its arguments, ``fit``
returns ``self``, fitted state ends in ``_``, and ``get_params`` / ``set_params`` work. Parameters,
optimizer state and hidden states are NumPy arrays owned here; the C++ core only computes on them.

Differences from the official GRU4Rec that are deliberate (each documented where it matters):

- the GRU is the GRU4Rec (Theano) form with the reset gate applied before the hidden product, as
  DESIGN.md §3.1 specifies; the official PyTorch port uses ``torch.nn.GRUCell`` (reset gate after
  the product);
- ``logq`` applies to every loss (the official code applies it to cross-entropy only), and uses the
  raw support counts as Q, as the official code does;
- in ``onehot`` input mode there is no embedding, so ``dropout_embed`` must be 0 (the official code
  applies it to the first layer's output in that mode); every layer's output uses ``dropout_hidden``;
- at the tail of an epoch idle slots stay in the batch as masked rows instead of being compacted
  away; they contribute no loss, gradient or negatives, so the updates are the same;
- ``bptt > 1`` (not in the official code) makes one update per window of ``bptt`` steps, with the
  window's step losses summed.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from . import _core
from .catalogue import _GATES, CatalogueMixin, _concat_ids
from .data import SessionData
from .sampling import AliasSampler
from .threads import default_num_threads
from .train import Schedule, Throughput, session_parallel_schedule

if TYPE_CHECKING:  # pragma: no cover
    from .ranking import Ranking
    from .vectors import SessionVectors

__all__ = ["NonFiniteLossError", "SessionRNN"]

CELLS = ("rnn", "gru", "lstm")
EMBEDDINGS = ("constrained", "separate", "onehot")
LOSSES = ("cross-entropy", "bpr-max", "top1-max")
OPTIMIZERS = ("adagrad", "adam")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the offending update was not applied."""


def _default_threads() -> int:
    # affinity mask, cgroup CPU quota and SEQREC_NUM_THREADS / OMP_NUM_THREADS (threads.py)
    return default_num_threads()


class SessionRNN(CatalogueMixin):
    """Session-based recommender with a recurrent network (GRU4Rec and its RNN / LSTM variants).

    Parameters
    ----------
    cell : {'gru', 'lstm', 'rnn'}
    layers : sequence of int
        Hidden sizes of the stacked recurrent layers.
    embedding : {'constrained', 'separate', 'onehot'}
        Input representation: the output table ``W_y`` (constrained, input width = last hidden
        size), an own table of width ``embedding_dim`` (separate), or a row of the first layer's
        input weights (onehot).
    embedding_dim : int, optional
        Width of the separate input table (default: ``layers[0]``).
    loss : {'cross-entropy', 'bpr-max', 'top1-max'}
    elu_param : float
        BPR-max applies ``elu(·, elu_param)`` to the scores first when > 0.
    bpreg : float
        BPR-max score regularisation.
    logq : float
        Strength of the logQ (sampling popularity) correction; 0 turns it off.
    n_sample : int
        Extra negatives sampled per step and shared by the batch (0: in-batch negatives only).
    sample_alpha : float
        Negatives are drawn with probability ∝ support^sample_alpha.
    full_softmax : bool
        Score every item instead of the sampled ones (exact, slower for large catalogues).
    batch_size : int
        Session-parallel slots; also the divisor of every step's summed loss.
    dropout_embed, dropout_hidden : float
        Drop probabilities on the input embedding and on each layer's output (training only).
    bptt : int
        Truncated BPTT window; 1 is GRU4Rec's one-step training.
    optimizer : {'adagrad', 'adam'}
        'adagrad' is GRU4Rec's Adagrad with momentum.
    learning_rate, momentum : float
    n_epochs : int
    seed : int or None
        Seeds initialisation, negatives and dropout; training is deterministic for a given seed and
        thread count.
    num_threads : int or None
        Threads of the C++ kernels (default: the cores this process may use).
    dtype : {'float32', 'float64'}
    precision : {None, 'float32', 'bf16'}
        Precision of the training products. None (or the dtype's name) computes them in ``dtype``.
        'bf16' rounds both operands of every training product to bfloat16 and accumulates in
        float32 (AVX-512-BF16, vdpbf16ps), with float32 master weights, optimizer state and
        everything else; it needs ``dtype='float32'``. Where the CPU or the build lacks the
        instructions, training warns (RuntimeWarning) and runs in float32; ``precision_`` says
        what was used. Evaluation and serving always compute in float32.
    progress : bool
        Show a progress bar (tqdm) while training.
    verbose : bool
        Print one line per epoch.
    early_stopping : int or None
        With validation data: stop after this many epochs without a better validation MRR@20, and
        keep the best epoch's weights. None trains all epochs.
    callbacks : sequence of callables, optional
        Each is called as ``cb(model, epoch, logs)`` after every epoch; returning True stops.
    chunk_steps : int
        Steps handed to C++ per call (one Python call per chunk, not per step).
    item_features : DataFrame or path, optional
        Item features: a table with one row per item (a pandas DataFrame, or a path to a Parquet
        file) holding the id column ``item_features_id_column`` and feature columns. Numeric columns
        are used as they are; categorical ones (str / category dtype, or named in
        ``item_features_categorical``) are one-hot encoded; list columns are multi-hot (or a dense
        vector when they hold numbers of one length, e.g. a text embedding); see
        :mod:`seqrec_fast.features`. The encoded matrix F (N, F_dim) extends every item vector to
        ``W_y[j] + F[j] @ P`` with P (F_dim, H_L) trained (scores; and the input under the
        constrained embedding). Every training item needs a row; rows of items without events become
        cold-start items (``W_y[j] = 0``), scored by their features.
    item_features_id_column : str
        Name of the item-id column of ``item_features``.
    item_features_categorical : sequence of str, optional
        Numeric columns of ``item_features`` to one-hot encode (e.g. an integer category id).
    """

    def __init__(
        self,
        cell: str = "gru",
        layers: Sequence[int] = (100,),
        embedding: str = "constrained",
        embedding_dim: Optional[int] = None,
        loss: str = "cross-entropy",
        elu_param: float = 0.5,
        bpreg: float = 1.0,
        logq: float = 0.0,
        n_sample: int = 2048,
        sample_alpha: float = 0.5,
        full_softmax: bool = False,
        batch_size: int = 64,
        dropout_embed: float = 0.0,
        dropout_hidden: float = 0.0,
        bptt: int = 1,
        optimizer: str = "adagrad",
        learning_rate: float = 0.05,
        momentum: float = 0.0,
        n_epochs: int = 10,
        seed: Optional[int] = 0,
        num_threads: Optional[int] = None,
        dtype: str = "float32",
        precision: str | None = None,
        progress: bool = True,
        verbose: bool = True,
        early_stopping: Optional[int] = None,
        callbacks: Optional[Sequence[Callable]] = None,
        chunk_steps: int = 256,
        item_features: Any = None,
        item_features_id_column: str = "ItemId",
        item_features_categorical: Sequence[str] | None = None,
    ):
        self.cell = cell
        self.layers = layers
        self.embedding = embedding
        self.embedding_dim = embedding_dim
        self.loss = loss
        self.elu_param = elu_param
        self.bpreg = bpreg
        self.logq = logq
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.full_softmax = full_softmax
        self.batch_size = batch_size
        self.dropout_embed = dropout_embed
        self.dropout_hidden = dropout_hidden
        self.bptt = bptt
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.n_epochs = n_epochs
        self.seed = seed
        self.num_threads = num_threads
        self.dtype = dtype
        self.precision = precision
        self.progress = progress
        self.verbose = verbose
        self.early_stopping = early_stopping
        self.callbacks = callbacks
        self.chunk_steps = chunk_steps
        self.item_features = item_features
        self.item_features_id_column = item_features_id_column
        self.item_features_categorical = item_features_categorical

    # -- scikit-learn contract ---------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params) -> "SessionRNN":
        names = set(self._param_names())
        for k, v in params.items():
            if k not in names:
                raise ValueError(f"unknown parameter {k!r}; valid parameters: {sorted(names)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        changed = [f"{k}={_short_repr(v)}" for k, v in self.get_params().items()
                   if not _same(defaults.get(k), v)]
        return f"SessionRNN({', '.join(changed)})"

    # -- validation ----------------------------------------------------------------------------
    def _validated(self) -> dict:
        p = self.get_params()

        def choice(name, options):
            if p[name] not in options:
                raise ValueError(f"{name} must be one of {options}; got {p[name]!r}")

        choice("cell", CELLS)
        choice("embedding", EMBEDDINGS)
        choice("loss", LOSSES)
        choice("optimizer", OPTIMIZERS)
        choice("dtype", ("float32", "float64"))
        choice("precision", (None, "float32", "float64", "bf16"))
        if p["precision"] in ("float32", "float64") and p["precision"] != p["dtype"]:
            raise ValueError(f"precision={p['precision']!r} differs from dtype={p['dtype']!r}; use "
                             "precision=None (products in dtype) or 'bf16'")
        if p["precision"] == "bf16" and p["dtype"] != "float32":
            raise ValueError("precision='bf16' trains float32 master weights: it needs "
                             f"dtype='float32'; got dtype={p['dtype']!r}")
        layers = p["layers"]
        if isinstance(layers, (int, np.integer)):
            layers = [int(layers)]
        try:
            layers = [int(h) for h in layers]
        except (TypeError, ValueError):
            raise TypeError(f"layers must be a list of positive ints; got {p['layers']!r}") from None
        if not layers or any(h < 1 for h in layers):
            raise ValueError(f"layers must be a non-empty list of positive ints; got {p['layers']!r}")
        p["layers"] = layers
        for name in ("batch_size", "bptt", "n_epochs", "chunk_steps"):
            if not isinstance(p[name], (int, np.integer)) or p[name] < 1:
                raise ValueError(f"{name} must be an int >= 1; got {p[name]!r}")
        if not isinstance(p["n_sample"], (int, np.integer)) or p["n_sample"] < 0:
            raise ValueError(f"n_sample must be an int >= 0; got {p['n_sample']!r}")
        for name in ("dropout_embed", "dropout_hidden"):
            if not 0.0 <= float(p[name]) < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {p[name]!r}")
        if p["embedding"] == "onehot" and p["dropout_embed"] > 0:
            raise ValueError("dropout_embed must be 0 with embedding='onehot' (there is no embedding)")
        if not float(p["learning_rate"]) > 0:
            raise ValueError(f"learning_rate must be > 0; got {p['learning_rate']!r}")
        for name in ("momentum", "logq", "bpreg", "elu_param", "sample_alpha"):
            if not math.isfinite(float(p[name])) or float(p[name]) < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {p[name]!r}")
        if p["embedding"] == "separate":
            ed = p["embedding_dim"] if p["embedding_dim"] is not None else layers[0]
            if not isinstance(ed, (int, np.integer)) or ed < 1:
                raise ValueError(f"embedding_dim must be an int >= 1; got {ed!r}")
            p["embedding_dim"] = int(ed)
        nt = p["num_threads"] if p["num_threads"] is not None else _default_threads()
        if not isinstance(nt, (int, np.integer)) or nt < 1:
            raise ValueError(f"num_threads must be an int >= 1; got {nt!r}")
        p["num_threads"] = int(nt)
        if p["early_stopping"] is not None and (
            not isinstance(p["early_stopping"], (int, np.integer)) or p["early_stopping"] < 1
        ):
            raise ValueError(f"early_stopping must be None or an int >= 1; got {p['early_stopping']!r}")
        return p

    # -- parameters ----------------------------------------------------------------------------
    def _init_params(self, p: dict, n_items: int, rng: np.random.Generator,
                     feature_dim: int = 0) -> None:
        dt = np.dtype(p["dtype"])
        G = _GATES[p["cell"]]
        layers = p["layers"]
        HL = layers[-1]
        I0 = {"constrained": HL, "separate": p["embedding_dim"], "onehot": n_items}[p["embedding"]]

        def glorot(rows, cols_per_gate, gates=1):
            # Glorot-uniform per gate block: ±sqrt(6 / (fan_in + fan_out)) with fan_out the block width
            s = math.sqrt(6.0 / (rows + cols_per_gate))
            return rng.uniform(-s, s, size=(rows, gates * cols_per_gate)).astype(dt)

        params, names = [], []
        inp = I0
        for l, h in enumerate(layers):
            b = np.zeros(G * h, dt)
            if p["cell"] == "lstm":
                b[h : 2 * h] = 1.0  # forget-gate bias starts at 1
            params += [glorot(inp, h, G), glorot(h, h, G), b]
            names += [f"layer{l}.W_x", f"layer{l}.W_h", f"layer{l}.b"]
            inp = h
        params += [glorot(n_items, HL), np.zeros(n_items, dt)]
        names += ["W_y", "b_y"]
        if p["embedding"] == "separate":
            params.append(glorot(n_items, p["embedding_dim"]))
            names.append("E_in")
        if feature_dim:  # item features: the projection P is the last parameter (train_chunk's layout)
            params.append(glorot(feature_dim, HL))
            names.append("P")
        self.params_ = params
        self.param_names_ = names
        self.state1_ = [np.zeros_like(a) for a in params]
        need2 = p["optimizer"] == "adam" or p["momentum"] > 0
        self.state2_ = [np.zeros_like(a) if need2 else None for a in params]

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return int(self.W_y_.shape[0])

    @property
    def W_y_(self) -> np.ndarray:
        """The item table used for scoring and the constrained input: ``W_y``, or with item
        features the effective table ``W_y + F @ P`` (folded once and cached until the
        parameters change)."""
        W = self.params_[self.param_names_.index("W_y")]
        if self.param_names_[-1] != "P":
            return W
        cached = self.__dict__.get("_W_eff")
        if cached is None:
            cached = W + self.item_features_ @ self.params_[-1]
            self._W_eff = cached
        return cached

    def _params_changed(self) -> None:
        self._W_eff = None

    @property
    def b_y_(self) -> np.ndarray:
        return self.params_[self.param_names_.index("b_y")]

    def _weights(self) -> list[tuple]:
        L = len(self.layers_)
        return [tuple(self.params_[3 * l : 3 * l + 3]) for l in range(L)]

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise ValueError("this SessionRNN is not fitted yet; call fit() or SessionRNN.load()")

    # -- training ------------------------------------------------------------------------------
    def fit(self, train: SessionData, valid: Optional[SessionData] = None,
            warm_start: bool = False, valid_options: Optional[dict] = None) -> "SessionRNN":
        """Train on ``train`` (a :class:`~seqrec_fast.data.SessionData`); returns ``self``.

        With ``valid`` (sessions over the model's item map, e.g. ``load(path, item_map=train)``, or
        ``item_map=model.item_ids_`` when item features add items), Recall@20, MRR@20 and NDCG@20 are
        computed after every epoch, and ``early_stopping`` can use them (MRR@20).
        ``valid_options`` sets the validation protocol: keywords of
        :func:`seqrec_fast.evaluate.evaluate` among ``targets``, ``exclude_history``,
        ``max_history``, ``min_prefix`` and ``unknown_targets`` (e.g. leave-one-out:
        ``{"targets": "last", "exclude_history": True, "max_history": 50}``).

        With ``warm_start=True`` a fitted (or loaded) model continues from its current weights and
        optimizer state (the daily retrain): ``n_epochs`` more epochs on ``train``. Items of
        ``train`` the model does not know are appended to its tables: from their features when the
        model has item features (``item_features`` must then have rows for them; ``W_y`` rows start
        at 0), else freshly initialised. Feature rows of items in neither are appended as
        cold-start items. The architecture (cell, layers, embedding, dtype, optimizer) must not
        change. A model loaded from a file saved without ``optimizer_state=True`` restarts the
        optimizer state from zero.
        """
        if not isinstance(train, SessionData):
            raise TypeError(f"train must be a SessionData (see seqrec_fast.data.load); got {type(train).__name__}")
        if valid is not None and not isinstance(valid, SessionData):
            raise TypeError(f"valid must be a SessionData or None; got {type(valid).__name__}")
        from .evaluate import check_valid_options

        valid_options = check_valid_options(valid_options)
        p = self._validated()
        if train.n_items < 2:
            raise ValueError(f"train has {train.n_items} items; need at least 2")
        if np.any(train.items < 0):
            raise ValueError("train contains events with unknown items (-1); drop them first")
        if warm_start:
            self._check_fitted()
            seed = p["seed"]
            rng = np.random.default_rng(None if seed is None else [seed, int(self.n_updates_)])
            items = self._grow_for(p, train, rng)
        else:
            rng = np.random.default_rng(p["seed"])
            self.layers_ = p["layers"]
            F, extra_ids, encoder = self._features_for(p, np.asarray(train.item_ids))
            self.item_ids_ = _concat_ids(np.asarray(train.item_ids), extra_ids)
            self.item_features_ = F
            self.feature_encoder_ = encoder
            self._init_params(p, len(self.item_ids_), rng, 0 if F is None else F.shape[1])
            self.params_[self.param_names_.index("W_y")][train.n_items:] = 0  # cold-start items
            self._fit_arch = {k: p[k] for k in ("cell", "embedding", "optimizer")}
            self.n_updates_ = 0
            items = train.items
        self._item_map = None
        self._params_changed()
        N = len(self.item_ids_)
        # items with no events (cold-start ones) are never sampled as negatives
        support = np.bincount(items, minlength=N).astype(np.float64)
        schedule = session_parallel_schedule(items, train.offsets, p["batch_size"])
        if valid is not None and valid.n_items != N:
            # item features or a warm start extended the item map: map valid by its external ids
            valid = valid.with_item_map(self.item_ids_)
        sampler = None
        if p["n_sample"] > 0 and not p["full_softmax"]:
            w = np.where(support > 0, np.maximum(support, 1e-12) ** p["sample_alpha"], 0.0)
            sampler = AliasSampler(w)
        log_support = np.log(np.maximum(support, 1.0)).astype(p["dtype"])
        self.precision_ = _training_precision(p)
        self.history_ = []
        best = None
        patience = 0
        for epoch in range(1, p["n_epochs"] + 1):
            logs = self._run_epoch(p, epoch, schedule, sampler, log_support, rng)
            if valid is not None:
                from .evaluate import evaluate

                res = evaluate(self, valid, cutoffs=(20,), batch_size=512, **valid_options)
                logs["valid_recall@20"] = float(res["recall@20"])
                logs["valid_mrr@20"] = float(res["mrr@20"])
                logs["valid_ndcg@20"] = float(res["ndcg@20"])
            self.history_.append(logs)
            if p["verbose"]:
                line = (f"epoch {epoch}/{p['n_epochs']}  loss {logs['loss']:.4f} "
                        f"(GRU4Rec's average {logs['loss_gru4rec']:.4f})  "
                        f"{logs['seconds']:.1f}s  {logs['events_per_s']:,.0f} events/s")
                if valid is not None:
                    line += f"  valid Recall@20 {logs['valid_recall@20']:.4f} MRR@20 {logs['valid_mrr@20']:.4f}"
                print(line, flush=True)
            stop = False
            if valid is not None and p["early_stopping"] is not None:
                score = logs["valid_mrr@20"]
                if best is None or score > best[0]:
                    best = (score, epoch, [a.copy() for a in self.params_])
                    patience = 0
                else:
                    patience += 1
                    stop = patience >= p["early_stopping"]
            for cb in p["callbacks"] or ():
                if cb(self, epoch, logs):
                    stop = True
            if stop:
                break
        if best is not None:
            self.params_ = best[2]
            self.best_epoch_ = best[1]
            self._params_changed()
        self.train_stats_ = {
            "n_events": int(schedule.n_events),
            "n_sessions": int(train.n_sessions),
            "n_items": int(N),
            "epochs": len(self.history_),
            "history": self.history_,
        }
        return self

    def _run_epoch(self, p: dict, epoch: int, schedule: Schedule, sampler, log_support, rng) -> dict:
        dt = np.dtype(p["dtype"])
        T = p["bptt"]
        B = p["batch_size"]
        xs, ys, rs = schedule.windows(T)
        n_win = xs.shape[0]
        K = max(1, p["chunk_steps"] // T)
        hidden = [np.zeros((B, h), dt) for h in self.layers_]
        cstate = [np.zeros((B, h), dt) for h in self.layers_] if p["cell"] == "lstm" else None
        I0 = self.params_[0].shape[0] if p["embedding"] != "onehot" else None
        config = {
            "loss": p["loss"], "bpreg": p["bpreg"], "elu_param": p["elu_param"],
            "logq": p["logq"], "sample_alpha": p["sample_alpha"],
            "full_softmax": p["full_softmax"], "batch_size": B, "optimizer": p["optimizer"],
            "learning_rate": p["learning_rate"], "momentum": p["momentum"],
            "precision": self.precision_,
        }
        S = p["n_sample"] if sampler is not None else 0
        meter = Throughput()
        loss_sum = 0.0
        step_loss_sum = 0.0  # Σ over steps of (row-loss sum / batch_size): GRU4Rec's accumulator
        bar = None
        if p["progress"]:
            from tqdm.auto import tqdm

            bar = tqdm(total=schedule.n_events, unit="ev", desc=f"epoch {epoch}", leave=False,
                       mininterval=0.5)
        try:
            for k0 in range(0, n_win, K):
                k1 = min(n_win, k0 + K)
                kk = k1 - k0
                neg = sampler.draw(rng, (kk, T, S)) if S else None
                de = dh = None
                if p["dropout_embed"] > 0:
                    keep = 1.0 - p["dropout_embed"]
                    de = (rng.random((kk, T, B, I0), dtype=np.float32) < keep).astype(dt)
                    de *= dt.type(1.0 / keep)
                if p["dropout_hidden"] > 0:
                    keep = 1.0 - p["dropout_hidden"]
                    dh = []
                    for h in self.layers_:
                        m = (rng.random((kk, T, B, h), dtype=np.float32) < keep).astype(dt)
                        m *= dt.type(1.0 / keep)
                        dh.append(m)
                config["step"] = self.n_updates_ + 1
                losses, counts, done, non_finite, updates = _core.train_chunk(
                    p["cell"], p["embedding"], self.params_, self.state1_, self.state2_, hidden,
                    cstate, xs[k0:k1], ys[k0:k1], rs[k0:k1], neg, de, dh, log_support, config,
                    p["num_threads"], features=self.item_features_,
                )
                self._params_changed()
                self.n_updates_ += int(updates)
                if non_finite:
                    raise NonFiniteLossError(
                        f"the training loss became {losses[done]} in epoch {epoch} at step "
                        f"{(k0 + done) * T + 1} of {n_win * T}; the update was not applied. "
                        "Lower learning_rate or check the data."
                    )
                step_loss_sum += float(np.dot(losses, np.ones_like(losses)))
                loss_sum = step_loss_sum * B
                meter.add(int(counts.sum()))
                if bar is not None:
                    bar.update(int(counts.sum()))
                    bar.set_postfix(loss=f"{loss_sum / max(meter.events, 1):.4f}",
                                    ev_s=f"{meter.rate:,.0f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        return {
            "epoch": epoch,
            # mean loss per predicted event
            "loss": loss_sum / max(meter.events, 1),
            # the figure the official GRU4Rec prints: the mean over the epoch's steps of the step loss
            # (row sum / batch_size), so the shrinking last batches pull it down (docs/loss.md)
            "loss_gru4rec": step_loss_sum / max(schedule.n_steps, 1),
            "seconds": meter.seconds,
            "events": meter.events,
            "events_per_s": meter.rate,
        }

    # -- scoring: the NextItemScorer protocol of evaluate.py ------------------------------------
    def start(self, n_slots: int) -> None:
        """Allocate zero hidden states for ``n_slots`` concurrent sessions."""
        self._check_fitted()
        dt = self.params_[0].dtype
        self._h = [np.zeros((n_slots, h), dt) for h in self.layers_]
        self._c = [np.zeros((n_slots, h), dt) for h in self.layers_] if self.cell == "lstm" else None
        # score_counts scores every step against the whole table: pack it once per evaluation
        # (float32; the kernel's register-tiled layout). Rebuilt by every start().
        self._packed_Wy = _core.pack_table(self.W_y_) if dt == np.float32 else None

    def reset(self, slots: np.ndarray) -> None:
        """Start an empty session in each of ``slots``."""
        for h in self._h:
            h[slots] = 0
        if self._c is not None:
            for c in self._c:
                c[slots] = 0

    def _step(self, h: list, c, items: np.ndarray):
        """Advance states (lists of (n, H_l)) by one item per row; returns (h, c, top output)."""
        n = len(items)
        emb = self.embedding
        W = self._weights()
        nt = self._threads()
        if emb == "onehot":
            # a one-hot input times W_x is a row of W_x: use that row as the layer-0 input product
            W_x0, W_h0, b0 = W[0]
            X = np.ascontiguousarray(W_x0[items])
            eye_w = (_identity(W_x0.shape[1], X.dtype.str), W_h0, b0)
            W = [eye_w] + W[1:]
        else:
            table = self.W_y_ if emb == "constrained" else self.params_[self.param_names_.index("E_in")]
            X = np.ascontiguousarray(table[items])
        Y, h_last, c_last, _ = _core.sequence_forward(
            self.cell, X.reshape(1, n, -1), h, c, None, W, None, nt)
        return h_last, c_last, Y[0]

    def _advance(self, slots, items) -> np.ndarray:
        """Advance the given slots by one item each; returns the top-layer outputs (n, H_L)."""
        slots = np.asarray(slots)
        items = np.asarray(items, dtype=np.int64)
        # Eigen computes rows left over after its row panels (n % 4 of them) on another path whose
        # rounding differs: pad the batch to a multiple of 8 rows so a session's scores never depend
        # on how sessions are batched or partitioned (evaluate's batch_size, Ray partitions).
        n = slots.size
        pad = (-n) % 8
        rows = np.concatenate([slots, np.repeat(slots[:1], pad)]) if pad and n else slots
        h = [np.ascontiguousarray(a[rows]) for a in self._h]
        c = [np.ascontiguousarray(a[rows]) for a in self._c] if self._c is not None else None
        h, c, out = self._step(h, c, np.concatenate([items, np.repeat(items[:1], pad)])
                               if pad and n else items)
        if pad and n:
            h = [a[:n] for a in h]
            c = [a[:n] for a in c] if c is not None else None
            out = out[:n]
        for l in range(len(self._h)):
            self._h[l][slots] = h[l]
            if c is not None:
                self._c[l][slots] = c[l]
        return out

    def _threads(self) -> int:
        return int(self.num_threads) if self.num_threads else 1

    def score(self, slots: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Feed ``items[i]`` to slot ``slots[i]`` and return float32 scores (len(slots), n_items)."""
        out = self._advance(slots, items)
        scores = out @ self.W_y_.T
        scores += self.b_y_
        return scores.astype(np.float32, copy=False)

    def score_counts(self, slots: np.ndarray, items: np.ndarray, targets: np.ndarray,
                     exclude: np.ndarray | None = None):
        """Evaluation fast path: feed ``items`` like :meth:`score`, then count per row the items
        scoring > and >= the row's target (C++, no (n, n_items) score array). ``exclude``: None or
        int32 (n, m) padded with -1, items not counted (e.g. the user's history). Returns (gt, ge)."""
        out = self._advance(slots, items)
        table = getattr(self, "_packed_Wy", None)
        if table is None:
            table = self.W_y_
        if exclude is not None:
            exclude = np.ascontiguousarray(exclude, dtype=np.int32)
        return _core.score_rank_counts(np.ascontiguousarray(out), table, self.b_y_,
                                       np.ascontiguousarray(targets, dtype=np.int32),
                                       self._threads(), exclude)

    def advance(self, slots: np.ndarray, items: np.ndarray) -> None:
        """Feed ``items`` to ``slots`` without scoring (evaluation steps that predict nothing)."""
        self._advance(slots, items)

    # -- convenience ----------------------------------------------------------------------------
    def _to_index(self, items) -> np.ndarray:
        if self._item_map is None:
            self._item_map = SessionData(np.zeros(0, np.int32), np.zeros(1, np.int64), self.item_ids_)
        return self._item_map.item_to_index(np.asarray(list(items), dtype=object))

    def score_prefix(self, items: Sequence) -> np.ndarray:
        """Scores (n_items,) of the next item after the session prefix ``items`` (external ids)."""
        self._check_fitted()
        idx = self._to_index(items)
        if len(idx) == 0:
            raise ValueError("items is empty; give at least one item of the session")
        bad = [it for it, i in zip(items, idx) if i < 0]
        if bad:
            raise ValueError(f"unknown item id(s) {bad[:5]!r}: not in the training item map")
        self.start(1)
        for i in idx:
            s = self.score(np.array([0]), np.array([i]))
        return s[0]

    def recommend(self, items: Sequence, k: int = 20, exclude_seen: bool = False):
        """Top-``k`` next items after the session prefix ``items``.

        Returns
        -------
        item_ids : ndarray (k,) of external ids, best first (ties: lower internal index first)
        scores : float32 ndarray (k,)
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1; got {k!r}")
        s = self.score_prefix(items).copy()
        if exclude_seen:
            s[self._to_index(items)] = -np.inf
        k = min(int(k), len(s))
        order = np.argsort(-s, kind="stable")[:k]
        return self.item_ids_[order], s[order]

    # -- representations and re-ranking ---------------------------------------------------------
    def _stack_weights(self) -> tuple[list, np.ndarray]:
        """(weights, input table) for running the layers on table rows: in 'onehot' mode the rows
        are W_x's and layer 0 gets an identity input matrix (see :meth:`_step`)."""
        W = self._weights()
        if self.embedding == "onehot":
            W_x0, W_h0, b0 = W[0]
            return [(_identity(W_x0.shape[1], W_x0.dtype.str), W_h0, b0)] + W[1:], W_x0
        if self.embedding == "constrained":
            return W, self.W_y_
        return W, self.params_[self.param_names_.index("E_in")]

    def _final_states(self, items: np.ndarray, offsets: np.ndarray,
                      max_cells: int = 1 << 15) -> np.ndarray:
        """Last-layer state after every (non-empty) session: (n_sessions, H_L). Sessions of similar
        length run together (sorted by length, left-padded; a reset at each session's first step
        discards the padding's state), at most ``max_cells`` (steps x rows) per kernel call."""
        lengths = np.diff(offsets)
        dt = self.params_[0].dtype
        out = np.zeros((len(lengths), self.layers_[-1]), dt)
        W, table = self._stack_weights()
        nt = self._threads()
        order = np.argsort(lengths, kind="stable")
        order = order[lengths[order] > 0]
        a = 0
        while a < len(order):
            T = int(lengths[order[a]])
            b = a + 1
            # grow the group while (longest length) x (rows) stays within the budget
            while b < len(order) and int(lengths[order[b]]) * (b + 1 - a) <= max_cells:
                T = int(lengths[order[b]])
                b += 1
            rows = order[a:b]
            B = len(rows)
            lens = lengths[rows]
            starts = T - lens  # first real step of each row
            row_of = np.repeat(np.arange(B), lens)
            pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            x = np.zeros((T, B), np.int64)
            x[starts[row_of] + pos, row_of] = items[np.repeat(offsets[rows], lens) + pos]
            reset = np.zeros((T, B), np.uint8)
            reset[starts, np.arange(B)] = 1
            X = np.ascontiguousarray(table[x])
            h0 = [np.zeros((B, h), dt) for h in self.layers_]
            c0 = [np.zeros((B, h), dt) for h in self.layers_] if self.cell == "lstm" else None
            _, h_last, _, _ = _core.sequence_forward(self.cell, X, h0, c0, reset, W, None, nt)
            out[rows] = h_last[-1]
            a = b
        return out

    def transform(self, data) -> SessionVectors:
        """One vector per session (or user history): the last layer's state after its items.

        The vector ``h`` of a session is exactly the state that scores its next item
        (``scores = h @ W_y_.T + b_y_``), so sessions that the model expects to continue alike get
        similar vectors. Use it for similarity (:func:`~seqrec_fast.vectors.similar_sessions`),
        clustering or as features of a downstream model.

        Parameters
        ----------
        data : SessionData or sequence of sequences of item ids
            Sessions (external ids are mapped onto the model's items; a SessionData over another
            item map is re-mapped). Items unknown to the model are skipped; a session without any
            known item gets no row.

        Returns
        -------
        SessionVectors
            ``ids`` (n,): the session ids of ``data`` (positions when it has none, and for a list
            of sequences); ``vectors`` (n, H_L) of the model's dtype, in the order of ``data``.
        """
        from .vectors import SessionVectors

        self._check_fitted()
        if isinstance(data, SessionData):
            same = data.item_ids is self.item_ids_ or (
                len(data.item_ids) == len(self.item_ids_)
                and np.array_equal(np.asarray(data.item_ids, dtype=object),
                                   np.asarray(self.item_ids_, dtype=object)))
            sess_ids = (data.session_ids if data.session_ids is not None
                        else np.arange(data.n_sessions))
            items, offsets = data.items, data.offsets
            if not same:  # re-map the events, keeping the session structure
                idx = self._to_index(np.asarray(data.item_ids, dtype=object))
                known = items >= 0
                items = np.where(known, idx[np.where(known, items, 0)], -1).astype(np.int32)
        elif isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
            raise TypeError("data must be a SessionData or a sequence of sessions (sequences of item "
                            f"ids); got {type(data).__name__}")
        else:
            sessions = [list(s) for s in data]
            lengths = np.array([len(s) for s in sessions], np.int64)
            offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
            flat = [x for s in sessions for x in s]
            items = self._to_index(flat) if flat else np.zeros(0, np.int32)
            sess_ids = np.arange(len(sessions))
        # drop unknown events (-1), keeping the session boundaries
        keep = items >= 0
        if not keep.all():
            n_sess = len(offsets) - 1
            sess_of = np.repeat(np.arange(n_sess), np.diff(offsets))
            counts = np.bincount(sess_of[keep], minlength=n_sess)
            items = items[keep]
            offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        lengths = np.diff(offsets)
        vecs = self._final_states(np.ascontiguousarray(items, np.int32), offsets)
        present = lengths > 0
        return SessionVectors(np.asarray(sess_ids)[present], vecs[present])

    def rank(self, items: Sequence, candidates: Sequence) -> Ranking:
        """Order a candidate list by the model's scores after the session prefix ``items``.

        Only the candidates' rows of the item table are scored (one C++ call fused with the last
        step), so ranking C candidates costs C dot products instead of N.

        Parameters
        ----------
        items : sequence of item ids
            The session so far (external ids; every one must be known, as for :meth:`recommend`).
        candidates : sequence of item ids
            The items to order. Unknown ids are returned in ``unknown``, duplicates are scored
            once, an empty list gives an empty result. There is no size limit here (the serving
            ``Recommender`` has one).

        Returns
        -------
        Ranking
            ``(items, scores, unknown)``: the known distinct candidates best first (ties: lower
            internal index), their scores, and the unknown candidates.
        """
        from .ranking import Ranking, check_candidates, split_candidates

        self._check_fitted()
        check_candidates(candidates)
        idx = self._to_index(items)
        if len(idx) == 0:
            raise ValueError("items is empty; give at least one item of the session")
        bad = [it for it, i in zip(items, idx) if i < 0]
        if bad:
            raise ValueError(f"unknown item id(s) {bad[:5]!r}: not in the training item map")
        cand = self._to_index(candidates) if len(candidates) else np.zeros(0, np.int32)
        known, unknown = split_candidates(candidates, cand)
        dt = self.params_[0].dtype
        h = [np.zeros((1, hh), dt) for hh in self.layers_]
        c = [np.zeros((1, hh), dt) for hh in self.layers_] if self.cell == "lstm" else None
        if len(idx) > 1:
            W, table = self._stack_weights()
            X = np.ascontiguousarray(table[idx[:-1].astype(np.int64)]).reshape(len(idx) - 1, 1, -1)
            _, h, c, _ = _core.sequence_forward(self.cell, X, h, c, None, W, None, self._threads())
            h = [np.ascontiguousarray(a) for a in h]
            c = [np.ascontiguousarray(a) for a in c] if c is not None else None
        E_in = self.params_[self.param_names_.index("E_in")] if self.embedding == "separate" else None
        order, scores = _core.step_rank(self.cell, self.embedding, self._weights(), E_in, self.W_y_,
                                        self.b_y_, h, c, np.array([idx[-1]], np.int32),
                                        known[None, :], self._threads())
        return Ranking(self.item_ids_[order[0]], scores[0], unknown)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path, optimizer_state: bool = False) -> None:
        """Write the fitted model to ``path`` (one .npz with a JSON header; atomic; no pickle).

        The item feature matrix F and its encoding (columns, categories) are saved with P, so a
        loaded model scores and adds items like this one. ``optimizer_state=True`` also saves the
        optimizer state and update count (about 2-3x the file size), so that ``SessionRNN.load``
        followed by ``fit(..., warm_start=True)`` continues exactly where this model stopped.
        """
        from .io import save_model_file

        self._check_fitted()
        for name, a in zip(self.param_names_, self.params_):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"refusing to save: parameter {name} holds NaN or inf")
        arrays = dict(zip(self.param_names_, self.params_))
        ids = np.asarray(self.item_ids_)
        arrays["item_ids"] = ids.astype(str) if ids.dtype == object else ids
        params = {k: v for k, v in self.get_params().items() if k != "callbacks"}
        params["layers"] = list(self.layers_)
        params["item_features"] = None  # the encoded matrix is stored instead of the source
        F = self.__dict__.get("item_features_")
        extra: dict = {"fit_arch": getattr(self, "_fit_arch", {})}
        if F is not None:
            arrays["item_features"] = F
            extra["item_features"] = self.feature_encoder_.to_json()
        if optimizer_state:
            for name, a, b in zip(self.param_names_, self.state1_, self.state2_):
                arrays["state1." + name] = a
                if b is not None:
                    arrays["state2." + name] = b
            extra["n_updates"] = int(getattr(self, "n_updates_", 0))
        header = {
            "model": "SessionRNN",
            "params": json.loads(json.dumps(params, default=_jsonable)),
            "param_names": self.param_names_,
            "item_ids_kind": "str" if ids.dtype == object or ids.dtype.kind == "U" else "int",
            "train_stats": json.loads(json.dumps(getattr(self, "train_stats_", {}), default=_jsonable)),
            **extra,
        }
        save_model_file(path, arrays, header)

    @classmethod
    def load(cls, path) -> "SessionRNN":
        """Read a model written by :meth:`save`."""
        from .io import load_model_file

        arrays, header = load_model_file(path)
        if header.get("model") != "SessionRNN":
            raise ValueError(f"{path}: not a SessionRNN model file (model = {header.get('model')!r})")
        params = dict(header.get("params", {}))
        names = header.get("param_names")
        if not isinstance(names, list) or any(n not in arrays for n in names) or "item_ids" not in arrays:
            raise ValueError(f"{path}: model file is missing parameter arrays")
        valid = set(cls._param_names())
        model = cls(**{k: v for k, v in params.items() if k in valid})
        p = model._validated()
        model.layers_ = p["layers"]
        model.params_ = [np.ascontiguousarray(arrays[n]) for n in names]
        model.param_names_ = list(names)
        ids = arrays["item_ids"]
        model.item_ids_ = ids.astype(object) if header.get("item_ids_kind") == "str" else ids
        model._item_map = None
        model.train_stats_ = header.get("train_stats", {})
        model._fit_arch = dict(header.get("fit_arch") or
                               {k: p[k] for k in ("cell", "embedding", "optimizer")})
        model.item_features_ = None
        model.feature_encoder_ = None
        if "P" in names:
            from .features import FeatureEncoder

            if "item_features" not in arrays or "item_features" not in header:
                raise ValueError(f"{path}: model file has P but no item feature matrix")
            F = np.ascontiguousarray(arrays["item_features"])
            if F.shape != (len(ids), model.params_[-1].shape[0]):
                raise ValueError(f"{path}: item feature matrix has shape {F.shape}; expected "
                                 f"({len(ids)}, {model.params_[-1].shape[0]})")
            model.item_features_ = F
            model.feature_encoder_ = FeatureEncoder.from_json(header["item_features"])
        model._params_changed()
        # optimizer state: restored when saved with optimizer_state=True, else zero (a warm start
        # then restarts the accumulators)
        need2 = p["optimizer"] == "adam" or p["momentum"] > 0
        model.state1_ = [np.ascontiguousarray(arrays["state1." + n]) if "state1." + n in arrays
                         else np.zeros_like(a) for n, a in zip(names, model.params_)]
        model.state2_ = [np.ascontiguousarray(arrays["state2." + n]) if "state2." + n in arrays
                         else (np.zeros_like(a) if need2 else None)
                         for n, a in zip(names, model.params_)]
        model.n_updates_ = int(header.get("n_updates", 0))
        return model


def _same(a: Any, b: Any) -> bool:
    """Equality for __repr__ that also works for DataFrames and arrays (identity, then ==)."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _short_repr(v: Any) -> str:
    if hasattr(v, "shape") and hasattr(v, "columns"):
        return f"<DataFrame {v.shape[0]}x{v.shape[1]}>"
    return repr(v)


def _training_precision(p: dict) -> str:
    """The precision the products will run in: 'bf16' where asked for and the CPU and build have
    AVX-512-BF16, else the dtype's name (with a RuntimeWarning when bf16 was asked for)."""
    if p["precision"] != "bf16":
        return p["dtype"]
    if _core.bf16_available():
        return "bf16"
    if not _core.cpu_supports("avx512bf16"):
        reason = "this CPU lacks AVX-512-BF16 (avx512_bf16)"
    else:
        reason = (f"the loaded kernel variant is {getattr(_core, '_isa', '?')!r}, not 'avx512' "
                  "(SEQREC_FAST_ISA, or the avx512 module is missing from this build)")
    warnings.warn(f"precision='bf16' needs bfloat16 dot-product instructions, but {reason}; "
                  "training in float32 instead (precision_ = 'float32')", RuntimeWarning, stacklevel=3)
    return "float32"


@functools.lru_cache(maxsize=8)
def _identity(n: int, dtype: str) -> np.ndarray:
    """A read-only identity matrix, made once per size: the one-hot input's "W_x" after the row
    lookup, so the scoring path does not allocate an (n, n) matrix on every step."""
    eye = np.eye(n, dtype=np.dtype(dtype))
    eye.setflags(write=False)
    return eye


def _jsonable(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)
