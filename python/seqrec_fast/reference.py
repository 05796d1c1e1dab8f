"""NumPy reference of every C++ kernel: the specification, the test oracle and the "pure Python"
side of every benchmark.

Each function here has a twin of the same name and argument order in ``seqrec_fast._core``, with
the same semantics (DESIGN.md §1). The code favours clarity over speed, but stays vectorised over
the batch so that benchmarks against it are fair: NumPy's BLAS does the products.

Shape letters: B rows (sessions) in a batch, T steps of a BPTT window, E input width, H hidden
width, L layers, G gate blocks (rnn 1, gru 3, lstm 4).

Gate layout along the G*H columns of ``W_x`` (E, G*H), ``W_h`` (H, G*H) and ``b`` (G*H,):

- rnn: ``[a]``, ``h' = tanh(x·W_x + h·W_h + b)``
- gru (GRU4Rec form, reset gate before the hidden product): ``[r | z | c]``,
  ``r = σ(x·W_xr + h·W_hr + b_r)``, ``z = σ(x·W_xz + h·W_hz + b_z)``,
  ``c = tanh(x·W_xc + (r⊙h)·W_hc + b_c)``, ``h' = (1−z)⊙h + z⊙c``
- lstm: ``[i | f | g | o]``, ``c' = f⊙c + i⊙g``, ``h' = o⊙tanh(c')``
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = [
    "CELLS",
    "GATES",
    "bf16_round",
    "gemm_bf16",
    "gru_backward",
    "gru_forward",
    "lstm_backward",
    "lstm_forward",
    "rnn_backward",
    "rnn_forward",
    "sequence_backward",
    "sequence_forward",
    "sigmoid",
]

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function, numerically stable for large ``|a|``."""
    return 0.5 * (np.tanh(0.5 * a) + 1.0)


# --------------------------------------------------------------------------------------------
# bfloat16 products (twin of gemm.h)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even; NaN stays NaN), returned as float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    r = np.where(nan, (u >> 16) | 0x40, r)
    return (r.astype(np.uint32) << 16).view(np.float32)


def gemm_bf16(A, B, trans_a: bool = False, trans_b: bool = False):
    """``op(A) (M, K) · op(B) (K, N)`` with both operands rounded to bfloat16 and the sum of exact
    products in float64, rounded to float32. A (M, K) or (K, M) with trans_a; B (K, N) or (N, K)
    with trans_b. Denormal operands count as zero (the instruction's DAZ). The C++ kernel sums in
    float32, so the two agree to ~K float32 roundings."""
    A = _bf16_daz(bf16_round(A.T if trans_a else A))
    B = _bf16_daz(bf16_round(B.T if trans_b else B))
    return (A.astype(np.float64) @ B.astype(np.float64)).astype(np.float32)


def _bf16_daz(x):
    """Denormal bfloat16 operands count as zero in vdpbf16ps (DAZ); so they do here."""
    return np.where(np.abs(x) < np.float32(2.0**-126), np.float32(0), x)


def _mm(a, b, bf16: bool = False):
    """``a @ b``, or its bfloat16 product (float32 result) when ``bf16``."""
    return gemm_bf16(a, b) if bf16 else a @ b


# --------------------------------------------------------------------------------------------
# Single steps


def rnn_forward(x, h, W_x, W_h, b, num_threads: int = 1, bf16: bool = False, bf16_x=None):
    """One Elman step. x (B, E), h (B, H), W_x (E, H), W_h (H, H), b (H,) -> h_new (B, H).
    ``bf16``: products in bfloat16 (:func:`gemm_bf16`), as precision='bf16' training does;
    ``bf16_x`` overrides it for ``x·W_x`` (False: a one-hot input, a row gather in C++)."""
    if bf16:
        bx = bf16 if bf16_x is None else bf16_x
        return np.tanh(_mm(x, W_x, bx) + b + _mm(h, W_h, True))
    return np.tanh(x @ W_x + h @ W_h + b)


def rnn_backward(dh_new, x, h, h_new, W_x, W_h, num_threads: int = 1):
    """Backward of :func:`rnn_forward`. Returns ``(dx, dh, dW_x, dW_h, db)``."""
    dA = dh_new * (1.0 - h_new * h_new)
    return dA @ W_x.T, dA @ W_h.T, x.T @ dA, h.T @ dA, dA.sum(axis=0)


def gru_forward(x, h, W_x, W_h, b, num_threads: int = 1, bf16: bool = False, bf16_x=None):
    """One GRU4Rec GRU step.

    x (B, E), h (B, H), W_x (E, 3H), W_h (H, 3H), b (3H,).
    Returns ``(h_new (B, H), gates (B, 3H))`` with gates the activated ``[r, z, c]``.
    ``bf16``: products in bfloat16 (:func:`gemm_bf16`), as precision='bf16' training does;
    ``bf16_x`` overrides it for ``x·W_x``.
    """
    H = h.shape[1]
    a = _mm(x, W_x, bf16 if bf16_x is None else bf16_x) + b
    rz = sigmoid(a[:, : 2 * H] + _mm(h, W_h[:, : 2 * H], bf16))
    r, z = rz[:, :H], rz[:, H:]
    c = np.tanh(a[:, 2 * H :] + _mm(r * h, W_h[:, 2 * H :], bf16))
    h_new = (1.0 - z) * h + z * c
    return h_new, np.concatenate([rz, c], axis=1)


def _gru_step_backward(dh, gates, h, W_h, bf16: bool = False):
    """Gradient of the pre-activations (B, 3H) and of the entering state, plus r⊙h."""
    H = h.shape[1]
    r, z, c = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    da_z = dh * (c - h) * z * (1.0 - z)
    da_c = dh * z * (1.0 - c * c)
    drh = _mm(da_c, W_h[:, 2 * H :].T, bf16)
    da_r = drh * h * r * (1.0 - r)
    dA = np.concatenate([da_r, da_z, da_c], axis=1)
    dh_prev = dh * (1.0 - z) + drh * r + _mm(dA[:, : 2 * H], W_h[:, : 2 * H].T, bf16)
    return dA, dh_prev, r * h


def gru_backward(dh_new, x, h, gates, W_x, W_h, num_threads: int = 1):
    """Backward of :func:`gru_forward`. Returns ``(dx, dh, dW_x, dW_h, db)``."""
    H = h.shape[1]
    dA, dh, rh = _gru_step_backward(dh_new, gates, h, W_h)
    dW_h = np.concatenate([h.T @ dA[:, : 2 * H], rh.T @ dA[:, 2 * H :]], axis=1)
    return dA @ W_x.T, dh, x.T @ dA, dW_h, dA.sum(axis=0)


def lstm_forward(x, h, c, W_x, W_h, b, num_threads: int = 1, bf16: bool = False, bf16_x=None):
    """One LSTM step.

    x (B, E), h and c (B, H), W_x (E, 4H), W_h (H, 4H), b (4H,).
    Returns ``(h_new, c_new, gates)`` with gates (B, 4H) the activated ``[i, f, g, o]``.
    """
    H = h.shape[1]
    bx = bf16 if bf16_x is None else bf16_x
    a = (_mm(x, W_x, bx) + b + _mm(h, W_h, True)) if bf16 else x @ W_x + h @ W_h + b
    i, f = sigmoid(a[:, :H]), sigmoid(a[:, H : 2 * H])
    g, o = np.tanh(a[:, 2 * H : 3 * H]), sigmoid(a[:, 3 * H :])
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return h_new, c_new, np.concatenate([i, f, g, o], axis=1)


def _lstm_step_backward(dh, dc, gates, c, c_new, W_h, bf16: bool = False):
    H = c.shape[1]
    i, f, g, o = (gates[:, k * H : (k + 1) * H] for k in range(4))
    tc = np.tanh(c_new)
    dct = dc + dh * o * (1.0 - tc * tc)
    dA = np.concatenate(
        [
            dct * g * i * (1.0 - i),
            dct * c * f * (1.0 - f),
            dct * i * (1.0 - g * g),
            dh * tc * o * (1.0 - o),
        ],
        axis=1,
    )
    return dA, _mm(dA, W_h.T, bf16), dct * f


def lstm_backward(dh_new, dc_new, x, h, c, c_new, gates, W_x, W_h, num_threads: int = 1):
    """Backward of :func:`lstm_forward`. Returns ``(dx, dh, dc, dW_x, dW_h, db)``."""
    dA, dh, dc = _lstm_step_backward(dh_new, dc_new, gates, c, c_new, W_h)
    return dA @ W_x.T, dh, dc, x.T @ dA, h.T @ dA, dA.sum(axis=0)


# --------------------------------------------------------------------------------------------
# Windows of T steps through L stacked layers (truncated BPTT)


def _keep(reset: Optional[np.ndarray], t: int, B: int, dtype) -> np.ndarray:
    """(B, 1) multiplier: 0 where row b's carried state is reset before step t, else 1."""
    if reset is None:
        return np.ones((B, 1), dtype=dtype)
    return (reset[t] == 0).astype(dtype)[:, None]


def sequence_forward(
    cell: str,
    X: np.ndarray,
    h0: Sequence[np.ndarray],
    c0: Optional[Sequence[np.ndarray]],
    reset: Optional[np.ndarray],
    weights: Sequence[tuple],
    drop: Optional[Sequence[Optional[np.ndarray]]] = None,
    num_threads: int = 1,
    bf16: bool = False,
    bf16_input: bool | None = None,
):
    """Forward over a window of T steps through L stacked layers.

    ``bf16``: every product in bfloat16 (:func:`gemm_bf16`); ``bf16_input`` overrides it for layer
    0's input product (False for a one-hot input, which C++ gathers instead of multiplying).

    Parameters
    ----------
    cell : {'rnn', 'gru', 'lstm'}
    X : ndarray (T, B, E)
        Input of layer 0 at each step.
    h0 : list of L ndarrays (B, H_l)
        State before step 0.
    c0 : list of L ndarrays (B, H_l) or None
        LSTM memory cell before step 0; None for the other cells.
    reset : ndarray (T, B) of bool/uint8, or None
        Nonzero at (t, b) zeroes row b's carried state before step t (a new session begins).
    weights : list of L tuples (W_x (I_l, G*H_l), W_h (H_l, G*H_l), b (G*H_l,))
        I_0 = E, I_l = H_{l-1}.
    drop : list of L ndarrays (T, B, H_l) (or None entries), or None
        Dropout multipliers (0 or 1/(1-p)) on each layer's output. The dropped-out output is what
        the next layer sees and what is carried to the next step.

    Returns
    -------
    Y : ndarray (T, B, H_L)
        Output of the top layer at each step.
    h_last : list of L ndarrays (B, H_l)
    c_last : list of L ndarrays (B, H_l), or None
    cache : list of L dicts
        ``h_in``, ``h_out`` (T, B, H_l); ``gates`` (T, B, G*H_l) (for rnn: tanh output before
        dropout); ``c_in``, ``c_out`` for lstm.
    """
    T, B, _ = X.shape
    inp = X
    caches, h_last, c_last = [], [], []
    for l, (W_x, W_h, b) in enumerate(weights):
        H = W_h.shape[0]
        d = {"h_in": np.empty((T, B, H), X.dtype), "h_out": np.empty((T, B, H), X.dtype)}
        d["gates"] = np.empty((T, B, GATES[cell] * H), X.dtype)
        mask = drop[l] if drop is not None else None
        if cell == "lstm":
            d["c_in"] = np.empty((T, B, H), X.dtype)
            d["c_out"] = np.empty((T, B, H), X.dtype)
        h = h0[l]
        c = c0[l] if cell == "lstm" else None
        bx = bf16 if (l > 0 or bf16_input is None) else bf16_input
        for t in range(T):
            keep = _keep(reset, t, B, X.dtype)
            h = h * keep
            d["h_in"][t] = h
            if cell == "rnn":
                h = rnn_forward(inp[t], h, W_x, W_h, b, bf16=bf16, bf16_x=bx)
                d["gates"][t] = h
            elif cell == "gru":
                h, d["gates"][t] = gru_forward(inp[t], h, W_x, W_h, b, bf16=bf16, bf16_x=bx)
            else:
                c = c * keep
                d["c_in"][t] = c
                h, c, d["gates"][t] = lstm_forward(inp[t], h, c, W_x, W_h, b, bf16=bf16,
                                                   bf16_x=bx)
                d["c_out"][t] = c
            if mask is not None:
                h = h * mask[t]
            d["h_out"][t] = h
        caches.append(d)
        h_last.append(h.copy())
        if cell == "lstm":
            c_last.append(c.copy())
        inp = d["h_out"]
    return inp, h_last, (c_last if cell == "lstm" else None), caches


def sequence_backward(
    cell: str,
    dY: np.ndarray,
    dh_last: Optional[Sequence[np.ndarray]],
    dc_last: Optional[Sequence[np.ndarray]],
    X: np.ndarray,
    reset: Optional[np.ndarray],
    weights: Sequence[tuple],
    cache: Sequence[dict],
    drop: Optional[Sequence[Optional[np.ndarray]]] = None,
    num_threads: int = 1,
    bf16: bool = False,
    bf16_input: bool | None = None,
):
    """Truncated BPTT over the window of :func:`sequence_forward` (``bf16``, ``bf16_input`` as
    there).

    Gradients flow back through every step of the window and never across a reset.

    Parameters
    ----------
    dY : ndarray (T, B, H_L)
        Gradient of the loss with respect to each step's top-layer output.
    dh_last, dc_last : list of L ndarrays (B, H_l), or None (zeros)
        Gradient with respect to the final state (zero in truncated BPTT; there for completeness).
    X, reset, weights, drop : as given to :func:`sequence_forward`.
    cache : the cache returned by :func:`sequence_forward`.

    Returns
    -------
    dX : ndarray (T, B, E)
    dh0 : list of L ndarrays (B, H_l)
    dc0 : list of L ndarrays (B, H_l), or None
    grads : list of L tuples (dW_x, dW_h, db)
    """
    T, B, _ = X.shape
    L = len(weights)
    dOut = dY
    dh0, dc0, grads = [None] * L, [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
        W_x, W_h, _ = weights[l]
        d = cache[l]
        H = W_h.shape[0]
        inp = X if l == 0 else cache[l - 1]["h_out"]
        carry = np.zeros((B, H), X.dtype) if dh_last is None else dh_last[l].copy()
        carry_c = None
        if cell == "lstm":
            carry_c = np.zeros((B, H), X.dtype) if dc_last is None else dc_last[l].copy()
        dW_x, dW_h, db = np.zeros_like(W_x), np.zeros_like(W_h), np.zeros(W_x.shape[1], X.dtype)
        dIn = np.empty(inp.shape, X.dtype)
        mask = drop[l] if drop is not None else None
        for t in range(T - 1, -1, -1):
            dh = dOut[t] + carry
            if mask is not None:
                dh = dh * mask[t]
            h_in = d["h_in"][t]
            if cell == "rnn":
                dA = dh * (1.0 - d["gates"][t] ** 2)
                dh_prev = _mm(dA, W_h.T, bf16)
                dW_h += _mm(h_in.T, dA, bf16)
            elif cell == "gru":
                dA, dh_prev, rh = _gru_step_backward(dh, d["gates"][t], h_in, W_h, bf16)
                dW_h[:, : 2 * H] += _mm(h_in.T, dA[:, : 2 * H], bf16)
                dW_h[:, 2 * H :] += _mm(rh.T, dA[:, 2 * H :], bf16)
            else:
                dA, dh_prev, dc_prev = _lstm_step_backward(
                    dh, carry_c, d["gates"][t], d["c_in"][t], d["c_out"][t], W_h, bf16
                )
                dW_h += _mm(h_in.T, dA, bf16)
            keep = _keep(reset, t, B, X.dtype)
            carry = dh_prev * keep
            if cell == "lstm":
                carry_c = dc_prev * keep
            bx = bf16 if (l > 0 or bf16_input is None) else bf16_input
            dW_x += _mm(inp[t].T, dA, bx)
            db += dA.sum(axis=0)
            dIn[t] = _mm(dA, W_x.T, bx)
        dh0[l], dc0[l], grads[l] = carry, carry_c, (dW_x, dW_h, db)
        dOut = dIn
    return dOut, dh0, (dc0 if cell == "lstm" else None), grads


# --------------------------------------------------------------------------------------------
# Losses on a score matrix (twins of losses.h). Each returns (loss per row (n,), dloss/dR (n, C)),
# before the division by the batch size. R (n, C) scores; pos (n,) column of each row's positive.

LOSS_EPS = 1e-24


def _softmax_neg(o, pos):
    n, C = o.shape
    neg = np.ones_like(o, dtype=bool)
    neg[np.arange(n), pos] = False
    m = np.where(neg, o, -np.inf).max(axis=1, keepdims=True)
    e = np.where(neg, np.exp(np.where(neg, o - m, 0.0)), 0.0)
    return e / e.sum(axis=1, keepdims=True), neg


def xe_loss(R, pos):
    """Cross-entropy ``-log(softmax(R)_pos + ε)`` per row, and its exact gradient."""
    n = R.shape[0]
    rows = np.arange(n)
    e = np.exp(R - R.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    sp = s[rows, pos]
    k = sp / (sp + LOSS_EPS)
    g = s * k[:, None]
    g[rows, pos] -= k
    return -np.log(sp + LOSS_EPS), g


def bpr_max_loss(R, pos, elu_param=0.0, bpreg=1.0):
    """BPR-max: ``-log(Σ_j s_j σ(o_p − o_j) + ε) + bpreg·Σ_j s_j o_j²`` with s the softmax of o over
    the negatives and o = elu(R, elu_param) when elu_param > 0."""
    n = R.shape[0]
    rows = np.arange(n)
    if elu_param > 0:
        o = np.where(R > 0, R, elu_param * np.expm1(np.minimum(R, 0)))
    else:
        o = R
    s, neg = _softmax_neg(o, pos)
    op = o[rows, pos][:, None]
    sg = np.where(neg, sigmoid(op - o), 0.0)
    A = (s * sg).sum(axis=1)
    Q = (s * o * o).sum(axis=1)
    kA = -1.0 / (A + LOSS_EPS)
    dA = s * (sg - A[:, None] - sg * (1.0 - sg))
    dQ = s * (o * o - Q[:, None]) + 2.0 * s * o
    g = np.where(neg, kA[:, None] * dA + bpreg * dQ, 0.0)
    g[rows, pos] = kA * (s * sg * (1.0 - sg)).sum(axis=1)
    if elu_param > 0:
        g = np.where(R > 0, g, g * (o + elu_param))
    return -np.log(A + LOSS_EPS) + bpreg * Q, g


def top1_max_loss(R, pos):
    """TOP1-max: ``Σ_j s_j (σ(r_j − r_p) + σ(r_j²))`` with s the softmax over the negatives."""
    n = R.shape[0]
    rows = np.arange(n)
    s, neg = _softmax_neg(R, pos)
    rp = R[rows, pos][:, None]
    a = sigmoid(R - rp)
    b = sigmoid(R * R)
    v = a + b
    V = np.where(neg, s * v, 0.0).sum(axis=1)
    g = np.where(neg, s * (v - V[:, None]) + s * (a * (1 - a) + b * (1 - b) * 2.0 * R), 0.0)
    g[rows, pos] = -np.where(neg, s * a * (1 - a), 0.0).sum(axis=1)
    return V, g


LOSSES = {"cross-entropy": xe_loss, "bpr-max": bpr_max_loss, "top1-max": top1_max_loss}


def loss_and_grad(config, R, pos):
    name = config.get("loss", "cross-entropy")
    if name == "bpr-max":
        return bpr_max_loss(R, pos, config.get("elu_param", 0.0), config.get("bpreg", 1.0))
    return LOSSES[name](R, pos)


# --------------------------------------------------------------------------------------------
# Optimizers (twins of optim.h). s1: Adagrad accumulator / Adam m; s2: momentum / Adam v (or None).


def _opt_consts(config):
    kind = config.get("optimizer", "adagrad")
    eps = config.get("eps", 1e-8 if kind == "adam" else 1e-6)
    return kind, config.get("learning_rate", 0.05), config.get("momentum", 0.0), eps


def opt_update(config, step, p, g, s1, s2):
    """Updates p, s1, s2 in place from gradient g (same shape); `step` is the 1-based update count."""
    kind, lr, mu, eps = _opt_consts(config)
    dt = p.dtype.type
    if kind == "adagrad":
        s1 += g * g
        st = g / np.sqrt(s1 + dt(eps))
        if s2 is not None and mu > 0:
            s2 *= dt(mu)
            s2 -= dt(lr) * st
            p += s2
        else:
            p -= dt(lr) * st
    else:
        b1, b2 = config.get("beta1", 0.9), config.get("beta2", 0.999)
        bc1, bc2 = dt(1.0 - b1**step), dt(1.0 - b2**step)
        s1 *= dt(b1)
        s1 += dt(1.0 - b1) * g
        s2 *= dt(b2)
        s2 += dt(1.0 - b2) * g * g
        p -= dt(lr) * (s1 / bc1) / (np.sqrt(s2 / bc2) + dt(eps))


def opt_update_rows(config, step, rows, G, p, s1, s2, num_threads: int = 1):
    """Lazy update of the distinct `rows` of a table from their summed gradients G (len(rows), W)."""
    sub2 = s2[rows] if s2 is not None else None
    sub_p, sub1 = p[rows], s1[rows]
    opt_update(config, step, sub_p, G.reshape(sub_p.shape), sub1, sub2)
    p[rows], s1[rows] = sub_p, sub1
    if s2 is not None:
        s2[rows] = sub2


class _RowGrads:
    """Sums gradient rows of one table by row index (the reference's RowAccum)."""

    def __init__(self):
        self.idx, self.vals = [], []

    def add(self, rows, vals):
        keep = rows >= 0
        self.idx.append(rows[keep])
        self.vals.append(vals[keep])

    def summed(self, width, dtype):
        if not self.idx:
            return np.zeros(0, np.int64), np.zeros((0, width), dtype)
        idx = np.concatenate(self.idx)
        uniq, inv = np.unique(idx, return_inverse=True)
        G = np.zeros((len(uniq), width), dtype)
        np.add.at(G, inv, np.concatenate(self.vals).reshape(len(idx), width))
        return uniq, G


# --------------------------------------------------------------------------------------------
# Training on a chunk of windows (twin of train.h)


def train_chunk(
    cell, embedding, params, state1, state2, hidden, cell_state, x, y, reset, neg, drop_embed,
    drop_hidden, log_support, config, num_threads: int = 1, features=None,
):
    """Trains on K windows of T steps of B session-parallel slots, updating everything in place.

    See ``seqrec_fast._core.train_chunk`` for the arguments. For each window: the input embedding
    (``W_y[x]`` constrained, ``E_in[x]`` separate, one-hot rows of ``W_x`` of layer 0), the
    recurrent forward with dropout, per step the scores of the active rows against their in-batch
    targets plus the step's sampled negatives (or all items with ``full_softmax``), minus
    ``logq·log Q``, the loss divided by ``batch_size``, truncated BPTT through the window, and one
    optimizer update: dense for the recurrent weights, lazy over the touched rows of item tables.

    With ``features`` F (N, F_dim), ``params`` ends with P (F_dim, H_L) and every item vector is
    the effective row ``W_y[j] + F[j]·P`` (scores; also the input under 'constrained'); the
    gradients of the effective rows go to W_y's rows and, through ``dP = F[rows]ᵀ·G``, to P.

    Returns ``(losses (K,), counts (K,), windows_done, non_finite, updates)``.
    """
    feat = features is not None
    L = (len(params) - 2 - (embedding == "separate") - feat) // 3
    K, T, B = x.shape
    W = [tuple(params[3 * l : 3 * l + 3]) for l in range(L)]
    W_y, b_y = params[3 * L], params[3 * L + 1]
    E_in = params[3 * L + 2] if embedding == "separate" else None
    N, HL = W_y.shape
    dt = W_y.dtype.type
    iP = len(params) - 1
    P = params[iP] if feat else None
    full = bool(config.get("full_softmax", False))
    logq = config.get("logq", 0.0)
    alpha = config.get("sample_alpha", 0.5)
    inv_batch = 1.0 / config.get("batch_size", 32)
    step0 = int(config.get("step", 1))
    bf16 = config.get("precision", "default") == "bf16"  # every product in bfloat16 (gemm_bf16)
    S = 0 if neg is None else neg.shape[2]
    losses, counts = np.zeros(K), np.zeros(K, np.int64)
    updates = 0
    for k in range(K):
        xk, yk, rk = x[k], y[k], reset[k]
        valid = xk >= 0
        W_eff = W_y + features @ P if feat else W_y  # the window's effective item table
        if embedding == "onehot":
            X0 = np.zeros((T, B, N), W_y.dtype)
            tt, bb = np.nonzero(valid)
            X0[tt, bb, xk[valid]] = 1
        else:
            table = W_eff if embedding == "constrained" else E_in
            X0 = np.zeros((T, B, table.shape[1]), W_y.dtype)
            X0[valid] = table[xk[valid]]
            if drop_embed is not None:
                X0 *= drop_embed[k]
        dh = None if drop_hidden is None else [d[k] if d is not None else None for d in drop_hidden]
        c0 = list(cell_state) if cell == "lstm" else None
        b_in = None if embedding != "onehot" else False  # one-hot rows are gathered, not multiplied
        Y, h_last, c_last, cache = sequence_forward(cell, X0, list(hidden), c0, rk, W, dh, bf16=bf16,
                                                    bf16_input=b_in)
        dY = np.zeros_like(Y)
        gy, gb = _RowGrads(), _RowGrads()
        gWy_full = np.zeros_like(W_y) if full else None
        gby_full = np.zeros_like(b_y) if full else None
        wloss, wcount = 0.0, 0
        for t in range(T):
            act = np.nonzero(yk[t] >= 0)[0]
            n = len(act)
            if n == 0 or (not full and n + S < 2):
                continue
            Ya = Y[t, act]
            if full:
                O, bias, pos = W_eff, b_y, yk[t, act]
            else:
                cols = np.concatenate([yk[t, act], neg[k, t]]) if S else yk[t, act]
                O, bias, pos = W_eff[cols], b_y[cols], np.arange(n)
            R = _mm(Ya, O.T, bf16) + bias
            if logq > 0 and not full:
                ls = log_support[cols]
                R = R - dt(logq) * np.concatenate([ls[:n], dt(alpha) * ls[n:]])
            lrows, g = loss_and_grad(config, R, pos)
            dR = (g * dt(inv_batch)).astype(W_y.dtype)
            wloss += float(np.sum(lrows.astype(np.float64))) * inv_batch
            wcount += n
            dY[t, act] = _mm(dR, O, bf16)
            if full:
                gWy_full += _mm(dR.T, Ya, bf16)
                gby_full += dR.sum(axis=0)
            else:
                gy.add(cols, _mm(dR.T, Ya, bf16))
                gb.add(cols, dR.sum(axis=0)[:, None])
        losses[k], counts[k] = wloss, wcount
        if not np.isfinite(wloss):
            return losses, counts, k, True, updates
        dX0, _, _, grads = sequence_backward(cell, dY, None, None, X0, rk, W, cache, dh, bf16=bf16,
                                             bf16_input=b_in)
        # input-embedding gradients
        if embedding != "onehot":
            gin = dX0[valid]
            if drop_embed is not None:
                gin = gin * drop_embed[k][valid]
            if embedding == "constrained":
                if full:
                    np.add.at(gWy_full, xk[valid], gin)
                else:
                    gy.add(xk[valid], gin)
        step = step0 + updates
        for l in range(L):
            for j in range(3):
                if embedding == "onehot" and l == 0 and j == 0:
                    rows = np.unique(xk[valid])
                    opt_update_rows(config, step, rows, grads[0][0][rows], params[0], state1[0],
                                    state2[0])
                    continue
                i = 3 * l + j
                opt_update(config, step, params[i], grads[l][j], state1[i], state2[i])
        iy, ib = 3 * L, 3 * L + 1
        if feat:
            if full:
                dP = features.T @ gWy_full
            else:
                rows, G = gy.summed(HL, W_y.dtype)
                dP = features[rows].T @ G
            opt_update(config, step, P, dP, state1[iP], state2[iP])
        if full:
            opt_update(config, step, W_y, gWy_full, state1[iy], state2[iy])
            opt_update(config, step, b_y, gby_full, state1[ib], state2[ib])
        else:
            rows, G = gy.summed(HL, W_y.dtype)
            opt_update_rows(config, step, rows, G, W_y, state1[iy], state2[iy])
            rows, G = gb.summed(1, W_y.dtype)
            opt_update_rows(config, step, rows, G[:, 0], b_y, state1[ib], state2[ib])
        if embedding == "separate":
            e = _RowGrads()
            e.add(xk[valid], gin)
            rows, G = e.summed(E_in.shape[1], E_in.dtype)
            ie = 3 * L + 2
            opt_update_rows(config, step, rows, G, E_in, state1[ie], state2[ie])
        updates += 1
        for l in range(L):
            hidden[l][...] = h_last[l]
            if cell == "lstm":
                cell_state[l][...] = c_last[l]
    return losses, counts, K, False, updates


# --------------------------------------------------------------------------------------------
# Evaluation kernel (twin of topk.h)


def score_rank_counts(H, W_y, b_y, target, num_threads: int = 1, exclude=None):
    """Per query, the number of items whose score ``H·W_y[j] + b_y[j]`` is > and >= the target's.

    H (n, D); W_y (N, D); b_y (N,); target (n,) int. exclude: None or int (n, m) padded with -1:
    per query, items removed from the ranking (not counted; duplicates once; the target itself is
    always ranked). Returns (gt, ge), int64 (n,); a NaN target score gives gt = ge = N − #removed.
    """
    S = H @ W_y.T + b_y
    n, N = S.shape
    rows = np.arange(len(target))
    t = S[rows, target][:, None]
    above, at_least = S > t, S >= t
    removed = np.zeros(n, np.int64)
    if exclude is not None:
        ex = np.asarray(exclude)
        mask = np.zeros((n, N), bool)
        r, c = np.nonzero(ex >= 0)
        mask[r, ex[r, c]] = True
        mask[rows, target] = False
        above &= ~mask
        at_least &= ~mask
        removed = mask.sum(axis=1)
    gt, ge = above.sum(axis=1).astype(np.int64), at_least.sum(axis=1).astype(np.int64)
    nan = np.isnan(t[:, 0])  # a NaN target score ranks last (as metrics.rank_counts)
    gt[nan] = ge[nan] = N - removed[nan]
    return gt, ge


# --------------------------------------------------------------------------------------------
# Serving: top-k over the item table (twins of topk.h)


def quantize_table(W, kind: str):
    """A reduced-precision copy of an item table W (N, D) float32.

    kind 'bfloat16': uint16 (N, D) holding bfloat16 bit patterns (round to nearest even), scales None.
    kind 'int8': int8 (N, D) with per-row float32 scales (N,), W[j] ≈ scales[j] · q[j], |q| ≤ 127.
    """
    W = np.ascontiguousarray(W, dtype=np.float32)
    if kind == "bfloat16":
        bits = W.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype(np.uint16), None
    if kind == "int8":
        amax = np.abs(W).max(axis=1)
        scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(W / scales[:, None]), -127, 127).astype(np.int8)
        return q, scales
    raise ValueError(f"kind must be 'bfloat16' or 'int8'; got {kind!r}")


PACK = 16


def pack_table(W):
    """The serving layout of an item table: (ceil(N/16), D, 16), item j at [j // 16, :, j % 16]."""
    W = np.asarray(W)
    N, D = W.shape
    nb = -(-N // PACK)
    out = np.zeros((nb * PACK, D), W.dtype)
    out[:N] = W
    return np.ascontiguousarray(out.reshape(nb, PACK, D).transpose(0, 2, 1))


def unpack_table(P, N):
    """Inverse of :func:`pack_table` for a table of N items."""
    nb, D, _ = P.shape
    return np.ascontiguousarray(P.transpose(0, 2, 1).reshape(nb * PACK, D)[:N])


def dequantize_table(Wq, scales=None):
    """float32 values of a table made by :func:`quantize_table` (or a float32 table itself)."""
    if Wq.dtype == np.uint16:
        return (Wq.astype(np.uint32) << 16).view(np.float32)
    if Wq.dtype == np.int8:
        return Wq.astype(np.float32) * scales[:, None]
    return Wq


def topk(H, W_y, b_y, k, exclude=None, scales=None, num_threads: int = 1):
    """Top-k items per query by score ``H·W_y[j] + b_y[j]``.

    Parameters
    ----------
    H : float32 (n, D)
    W_y : (N, D) float32, or a reduced copy from :func:`quantize_table` (uint16 bfloat16 / int8)
    b_y : float32 (N,)
    k : int >= 1
    exclude : int32 (n, m) or None
        Items never to return for each query; -1 entries are padding.
    scales : float32 (N,) for an int8 table, else None

    Returns
    -------
    idx : int32 (n, min(k, N)), best first; ties go to the lower item index; -1 when fewer items
        than k are eligible
    scores : float32 (n, min(k, N)); -inf where idx is -1
    """
    if W_y.ndim == 3:
        W_y = unpack_table(W_y, len(b_y))
    W = dequantize_table(W_y, scales)
    S = (H.astype(np.float32) @ W.T + b_y).astype(np.float32)
    n, N = S.shape
    if exclude is not None:
        for i in range(n):
            ex = exclude[i][exclude[i] >= 0]
            S[i, ex] = -np.inf
    kk = min(int(k), N)
    idx = np.argsort(-S, axis=1, kind="stable")[:, :kk].astype(np.int32)
    sc = np.take_along_axis(S, idx, axis=1)
    idx[~np.isfinite(sc) & (sc < 0)] = -1
    return idx, sc.astype(np.float32)


def step_topk(cell, embedding, weights, E_in, W_y, b_y, h, c, items, k, exclude=None,
              table=None, scales=None, num_threads: int = 1):
    """One serving event for n sessions: advance their states by ``items`` and return the top k.

    cell, embedding, weights: as for training (weights: list of (W_x, W_h, b) per layer; in 'onehot'
    mode W_x of layer 0 has one row per item). E_in: the separate input table or None. h (and c for
    lstm): lists of L float32 (n, H_l), updated in place. items: int32 (n,). ``table``/``scales``:
    optional reduced-precision copy of W_y used for scoring (the input embedding always reads the
    float32 W_y / E_in). Returns (idx, scores) as :func:`topk`.
    """
    items = np.asarray(items)
    n = len(items)
    W = list(weights)
    if embedding == "onehot":
        X = W[0][0][items]
        W[0] = (np.eye(X.shape[1], dtype=X.dtype), W[0][1], W[0][2])
    else:
        X = (W_y if embedding == "constrained" else E_in)[items]
    Y, h_last, c_last, _ = sequence_forward(cell, X.reshape(1, n, -1), list(h),
                                            list(c) if c is not None else None, None, W)
    for l in range(len(h)):
        h[l][...] = h_last[l]
        if c is not None:
            c[l][...] = c_last[l]
    return topk(Y[0], W_y if table is None else table, b_y, k, exclude,
                scales if table is not None else None)


def rank_candidates(H, W_y, b_y, candidates, num_threads: int = 1):
    """Scores of each query's candidate items only, in ranking order.

    Parameters
    ----------
    H : float32 or float64 (n, D)
    W_y : (N, D), same dtype
    b_y : (N,), same dtype
    candidates : int32 (n, C), item indices in [0, N) (no duplicates within a row)

    Returns
    -------
    idx : int32 (n, C), each row's candidates ordered by score, higher first; NaN scores last;
        ties go to the lower item index
    scores : (n, C) of H's dtype, ``H[q]·W_y[j] + b_y[j]`` for ``j = idx[q, i]``
    """
    cand = np.asarray(candidates)
    n, C = cand.shape
    S = np.einsum("qd,qcd->qc", H, W_y[cand]) + b_y[cand]
    idx = np.empty((n, C), np.int32)
    sc = np.empty((n, C), S.dtype)
    for q in range(n):
        # lexsort: last key is primary; NaN sorts last (np.nan is not < anything)
        key = np.where(np.isnan(S[q]), np.inf, -S[q])
        order = np.lexsort((cand[q], np.isnan(S[q]), key))
        idx[q] = cand[q][order]
        sc[q] = S[q][order]
    return idx, sc


def step_rank(cell, embedding, weights, E_in, W_y, b_y, h, c, items, candidates,
              num_threads: int = 1):
    """One event and a re-ranking: advance the states by ``items`` (as :func:`step_topk`, h and c
    updated in place), then :func:`rank_candidates` of the new outputs against ``candidates``
    (int32 (n, C)). Returns (idx, scores)."""
    items = np.asarray(items)
    n = len(items)
    W = list(weights)
    if embedding == "onehot":
        X = W[0][0][items]
        W[0] = (np.eye(X.shape[1], dtype=X.dtype), W[0][1], W[0][2])
    else:
        X = (W_y if embedding == "constrained" else E_in)[items]
    Y, h_last, c_last, _ = sequence_forward(cell, X.reshape(1, n, -1), list(h),
                                            list(c) if c is not None else None, None, W)
    for l in range(len(h)):
        h[l][...] = h_last[l]
        if c is not None:
            c[l][...] = c_last[l]
    return rank_candidates(Y[0], W_y, b_y, candidates)


# --------------------------------------------------------------------------------------------
# Twins of the small bound kernels _core.loss_grad and _core.opt_update_rows (same arguments).


def loss_grad(R, pos, config, num_threads: int = 1):
    """Loss per row (n,) and dloss/dR (n, C) of scores R (n, C) with positives pos (n,); config:
    loss, elu_param, bpreg. Before division by the batch size. Twin of ``_core.loss_grad``."""
    return loss_and_grad(config, R, pos)
