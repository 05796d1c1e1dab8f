"""PyTorch baselines for the training benchmark (bench/bench_train.py). Optional: needs torch.

Two implementations:

- :func:`train_chunk` -- the PyTorch *twin* of ``seqrec_fast.reference.train_chunk`` for the GRU4Rec
  setting the benchmark measures: cell 'gru' (GRU4Rec form, reset gate before the hidden product),
  embedding 'constrained' (input = rows of ``W_y``), loss 'cross-entropy' with the logQ correction
  or 'bpr-max' (with ``elu_param`` and ``bpreg``; the Diginetica setting) over in-batch targets + the
  step's shared sampled negatives, optimizer 'adagrad' (GRU4Rec's Adagrad
  with momentum), dropout on every layer's output (masks given), ``bptt = 1``. Same parameter layout
  (per layer ``W_x (E, 3H)``, ``W_h (H, 3H)``, ``b (3H,)``; then ``W_y (N, H)``, ``b_y (N,)``), same
  arguments, same in-place semantics: the NumPy arrays it is handed are updated through
  ``torch.from_numpy`` views. The forward is written in torch ops and the backward is autograd; the
  optimizer runs under ``torch.no_grad``: dense for the recurrent weights, lazy for ``W_y`` / ``b_y``
  (only the rows touched in the step; duplicate-row gradients summed with ``torch.unique`` +
  ``index_add_`` first, as the official GRU4Rec's ``IndexedAdagradM`` coalesces its sparse gradients).
  Agreement with the reference is checked in bench/test_torch_agreement.py and before every timing.

- :class:`IdiomaticGRU4Rec` -- GRU4Rec as it is usually written in PyTorch: ``nn.Embedding`` +
  ``nn.GRUCell`` + ``nn.Dropout`` + a full-softmax ``F.cross_entropy`` over all N items + dense
  ``torch.optim.Adagrad``. **Different semantics** (PyTorch's GRU form with the reset gate after the
  hidden product, a separate input embedding, no sampling and no logQ, dense updates of every item
  row, no momentum); timed for context only.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IdiomaticGRU4Rec", "TorchGRU4RecTwin", "train_chunk"]

LOSS_EPS = 1e-24  # as reference.LOSS_EPS: -log(softmax + eps)


def _t(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    """A torch view of a NumPy array (no copy), or None."""
    return None if a is None else torch.from_numpy(a)


class TorchGRU4RecTwin:
    """Holds torch views of the caller's NumPy parameters, optimizer state and hidden state.

    Parameters
    ----------
    params : list of ndarrays
        ``[W_x, W_h, b] * L + [W_y, b_y]`` (the layout of ``SessionRNN.params_``), float32 or float64.
    state1, state2 : lists of ndarrays like params
        Adagrad accumulators and momentum buffers (``state2`` entries None when momentum is 0).
    hidden : list of L ndarrays (B, H_l)
        Carried hidden state (already dropped out), updated in place.
    log_support : ndarray (N,)
        ``log(support)`` per item, for the logQ correction.
    config : dict
        The reference's config keys: ``logq``, ``sample_alpha``, ``batch_size``, ``learning_rate``,
        ``momentum`` (and ``eps``, default 1e-6), ``loss`` with ``elu_param`` and ``bpreg``. Losses
        'cross-entropy' and 'bpr-max'; optimizer 'adagrad' only.
    """

    def __init__(self, params, state1, state2, hidden, log_support, config):
        self.loss = config.get("loss", "cross-entropy")
        if self.loss not in ("cross-entropy", "bpr-max"):
            raise ValueError("the torch twin implements loss='cross-entropy' and 'bpr-max' only")
        self.elu = float(config.get("elu_param", 0.0))
        self.bpreg = float(config.get("bpreg", 1.0))
        if config.get("optimizer", "adagrad") != "adagrad":
            raise ValueError("the torch twin implements optimizer='adagrad' only")
        if config.get("full_softmax", False):
            raise ValueError("the torch twin implements the sampled loss only (full_softmax=False)")
        self.L = (len(params) - 2) // 3
        if len(params) != 3 * self.L + 2:
            raise ValueError("params must be [W_x, W_h, b] * L + [W_y, b_y] (embedding='constrained')")
        self.p = [_t(a) for a in params]
        self.s1 = [_t(a) for a in state1]
        self.mu = float(config.get("momentum", 0.0))
        self.s2 = [_t(a) for a in state2] if (state2 is not None and self.mu > 0) else None
        self.h = [_t(a) for a in hidden]
        self.W_y, self.b_y = self.p[3 * self.L], self.p[3 * self.L + 1]
        self.dense = self.p[: 3 * self.L]
        for w in self.dense:
            w.requires_grad_(True)
        dt = self.W_y.dtype
        self.log_support = torch.from_numpy(np.ascontiguousarray(log_support)).to(dt)
        self.logq = float(config.get("logq", 0.0))
        self.alpha = float(config.get("sample_alpha", 0.5))
        self.inv_batch = 1.0 / float(config.get("batch_size", 32))
        self.lr = float(config.get("learning_rate", 0.05))
        self.eps = float(config.get("eps", 1e-6))

    # -- optimizer (GRU4Rec's Adagrad with momentum; reference.opt_update) ----------------------
    def _adagrad_(self, p, g, acc, v):
        acc.addcmul_(g, g)
        denom = acc.add(self.eps).sqrt_()
        if v is not None:  # v = mu·v − lr·g/sqrt(acc + eps); p += v
            v.mul_(self.mu).addcdiv_(g, denom, value=-self.lr)
            p.add_(v)
        else:
            p.addcdiv_(g, denom, value=-self.lr)

    def _adagrad_rows_(self, rows, G, p, acc, v):
        """Lazy update of the distinct ``rows`` from their summed gradients G."""
        sub_p, sub_a = p.index_select(0, rows), acc.index_select(0, rows)
        sub_v = v.index_select(0, rows) if v is not None else None
        self._adagrad_(sub_p, G, sub_a, sub_v)
        p.index_copy_(0, rows, sub_p)
        acc.index_copy_(0, rows, sub_a)
        if v is not None:
            v.index_copy_(0, rows, sub_v)

    def _bpr_max(self, R, n):
        """Summed BPR-max of the rows (reference.bpr_max_loss): -log(Σ_j s_j σ(o_p − o_j) + ε) +
        bpreg·Σ_j s_j o_j², s the softmax of o = elu(R) over the negatives; positive in column i."""
        o = F.elu(R, alpha=self.elu) if self.elu > 0 else R
        pos = torch.zeros_like(o, dtype=torch.bool)
        pos[torch.arange(n), torch.arange(n)] = True
        s = torch.softmax(o.masked_fill(pos, float("-inf")), dim=1)
        sg = torch.sigmoid(o.diagonal().unsqueeze(1) - o)
        A = (s * sg).sum(dim=1)
        Q = (s * o * o).sum(dim=1)
        return (-torch.log(A + LOSS_EPS) + self.bpreg * Q).sum()

    # -- one step (bptt = 1) --------------------------------------------------------------------
    def step(self, x, y, reset, neg, drop_embed, drop_hidden):
        """One training step. x, y (B,) int64 tensors (-1 idle), reset (B,) bool, neg (S,) int64 or
        None, drop_embed (B, E) or None, drop_hidden list of L (B, H_l) or None.

        Returns ``(loss, n_events)``; the loss is NaN/inf-checked by the caller.
        """
        W_y, b_y, L = self.W_y, self.b_y, self.L
        B = x.shape[0]
        xv = x >= 0
        all_in = bool(xv.all())
        xpos = None if all_in else torch.nonzero(xv).squeeze(1)
        xin = x if all_in else x.index_select(0, xpos)
        # constrained embedding: the input rows of W_y as an autograd leaf (the sparse gradient)
        emb = W_y.index_select(0, xin).requires_grad_(True)
        X = emb if all_in else torch.zeros(B, W_y.shape[1], dtype=W_y.dtype).index_copy(0, xpos, emb)
        if drop_embed is not None:
            X = X * drop_embed
        keep = (~reset).to(W_y.dtype).unsqueeze(1)
        inp = X
        new_h = []
        for l in range(L):
            W_x, W_h, b = self.dense[3 * l : 3 * l + 3]
            H = W_h.shape[0]
            h = self.h[l] * keep
            a = torch.addmm(b, inp, W_x)
            rz = torch.sigmoid(a[:, : 2 * H] + h @ W_h[:, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            c = torch.tanh(a[:, 2 * H :] + (r * h) @ W_h[:, 2 * H :])
            hn = (1.0 - z) * h + z * c  # as the reference: (1 - z)⊙h + z⊙c
            if drop_hidden is not None and drop_hidden[l] is not None:
                hn = hn * drop_hidden[l]
            new_h.append(hn)
            inp = hn
        yv = y >= 0
        act = torch.nonzero(yv).squeeze(1)
        n = int(act.shape[0])
        S = 0 if neg is None else int(neg.shape[0])
        O_leaf = bias_leaf = None
        loss = None
        if n > 0 and n + S >= 2:
            ya = y.index_select(0, act)
            cols = torch.cat([ya, neg]) if S else ya
            O_leaf = W_y.index_select(0, cols).requires_grad_(True)
            bias_leaf = b_y.index_select(0, cols).requires_grad_(True)
            Ya = inp if n == B else inp.index_select(0, act)
            R = torch.addmm(bias_leaf, Ya, O_leaf.t())
            if self.logq > 0:
                ls = self.log_support.index_select(0, cols)
                adj = torch.cat([ls[:n], self.alpha * ls[n:]]) if S else ls
                R = R - self.logq * adj
            if self.loss == "bpr-max":
                loss = self._bpr_max(R, n) * self.inv_batch
            else:
                sp = torch.softmax(R, dim=1).diagonal()  # positive of row i is column i
                loss = -torch.log(sp + LOSS_EPS).sum() * self.inv_batch
        leaves = [emb] + ([O_leaf, bias_leaf] if O_leaf is not None else [])
        if loss is not None:
            grads = torch.autograd.grad(loss, self.dense + leaves)
        else:  # nothing to predict: zero gradients, the update (momentum) still happens
            grads = [torch.zeros_like(t) for t in self.dense + leaves]
        with torch.no_grad():
            for l in range(L):
                self.h[l].copy_(new_h[l].detach())
            for i, (p, g) in enumerate(zip(self.dense, grads[: 3 * L])):
                self._adagrad_(p, g, self.s1[i], self.s2[i] if self.s2 is not None else None)
            g_emb = grads[3 * L]  # already through the embedding dropout mask (autograd)
            iy, ib = 3 * L, 3 * L + 1
            v_y = self.s2[iy] if self.s2 is not None else None
            v_b = self.s2[ib] if self.s2 is not None else None
            if O_leaf is not None:
                idx = torch.cat([cols, xin])
                vals = torch.cat([grads[3 * L + 1], g_emb])
            else:
                idx, vals = xin, g_emb
            rows, inv = torch.unique(idx, sorted=True, return_inverse=True)
            G = torch.zeros(rows.shape[0], W_y.shape[1], dtype=W_y.dtype).index_add_(0, inv, vals)
            self._adagrad_rows_(rows, G, W_y, self.s1[iy], v_y)
            if O_leaf is not None:
                # b_y rows: the scored columns only (not the inputs), duplicates summed
                brows, binv = torch.unique(cols, sorted=True, return_inverse=True)
                Gb = torch.zeros(brows.shape[0], dtype=b_y.dtype).index_add_(0, binv, grads[3 * L + 2])
                self._adagrad_rows_(brows, Gb, b_y, self.s1[ib], v_b)
        return (float(loss.detach()) if loss is not None else 0.0), n


def train_chunk(params, state1, state2, hidden, x, y, reset, neg, drop_embed, drop_hidden,
                log_support, config, twin: Optional[TorchGRU4RecTwin] = None):
    """PyTorch twin of ``reference.train_chunk("gru", "constrained", ...)`` with bptt = 1.

    Arguments as the reference (x, y, reset (K, 1, B); neg (K, 1, S) or None; drop_embed
    (K, 1, B, E) or None; drop_hidden list of L (K, 1, B, H_l) or None); the NumPy arrays are
    updated in place. Pass a prebuilt ``twin`` to skip the (small) set-up cost when timing.

    Returns ``(losses (K,), counts (K,), windows_done, non_finite, updates)`` like the reference.
    """
    K, T, _ = x.shape
    if T != 1:
        raise ValueError(f"the torch twin implements bptt = 1 only; got windows of T = {T}")
    tw = twin or TorchGRU4RecTwin(params, state1, state2, hidden, log_support, config)
    xt = torch.from_numpy(np.ascontiguousarray(x[:, 0])).long()
    yt = torch.from_numpy(np.ascontiguousarray(y[:, 0])).long()
    rt = torch.from_numpy(np.ascontiguousarray(reset[:, 0])).bool()
    nt = torch.from_numpy(np.ascontiguousarray(neg[:, 0])).long() if neg is not None else None
    de = _t(drop_embed)
    dh = [_t(d) for d in drop_hidden] if drop_hidden is not None else None
    losses, counts = np.zeros(K), np.zeros(K, np.int64)
    for k in range(K):
        loss, n = tw.step(
            xt[k], yt[k], rt[k], nt[k] if nt is not None else None,
            de[k, 0] if de is not None else None,
            [d[k, 0] if d is not None else None for d in dh] if dh is not None else None,
        )
        losses[k], counts[k] = loss, n
        if not np.isfinite(loss):  # pragma: no cover - the update was already applied here
            return losses, counts, k, True, k + 1
    return losses, counts, K, False, K


# --------------------------------------------------------------------------------------------
# GRU4Rec as usually written in PyTorch (different semantics; context only)


class IdiomaticGRU4Rec(nn.Module):
    """``nn.Embedding`` -> ``nn.GRUCell`` -> dropout -> ``nn.Linear`` over all N items."""

    def __init__(self, n_items: int, hidden: int = 100, dropout: float = 0.4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(n_items, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_items)
        self.hidden_size = hidden

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(self.cell(self.emb(x), h))
        return self.out(h), h


def idiomatic_trainer(n_items: int, batch_size: int, hidden: int = 100, dropout: float = 0.4,
                      lr: float = 0.2, seed: int = 0):
    """Returns ``step(x, y, reset) -> loss`` over a fresh :class:`IdiomaticGRU4Rec` (x, y, reset are
    (B,) tensors; idle slots have x = y = -1 and are ignored by the loss)."""
    model = IdiomaticGRU4Rec(n_items, hidden, dropout, seed)
    model.train()
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    state = {"h": torch.zeros(batch_size, hidden)}

    def step(x: torch.Tensor, y: torch.Tensor, reset: torch.Tensor) -> float:
        h = state["h"] * (~reset).unsqueeze(1).float()
        logits, h = model(x.clamp(min=0), h)
        loss = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum") / batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["h"] = h.detach()
        return loss.item()

    return step
