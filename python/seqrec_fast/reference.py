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
    """Logistic function, numerically stable for large |a|."""
    return 0.5 * (np.tanh(0.5 * a) + 1.0)


# --------------------------------------------------------------------------------------------
# Single steps


def rnn_forward(x, h, W_x, W_h, b, num_threads: int = 1):
    """One Elman step. x (B, E), h (B, H), W_x (E, H), W_h (H, H), b (H,) -> h_new (B, H)."""
    return np.tanh(x @ W_x + h @ W_h + b)


def rnn_backward(dh_new, x, h, h_new, W_x, W_h, num_threads: int = 1):
    """Backward of :func:`rnn_forward`. Returns ``(dx, dh, dW_x, dW_h, db)``."""
    dA = dh_new * (1.0 - h_new * h_new)
    return dA @ W_x.T, dA @ W_h.T, x.T @ dA, h.T @ dA, dA.sum(axis=0)


def gru_forward(x, h, W_x, W_h, b, num_threads: int = 1):
    """One GRU4Rec GRU step.

    x (B, E), h (B, H), W_x (E, 3H), W_h (H, 3H), b (3H,).
    Returns ``(h_new (B, H), gates (B, 3H))`` with gates the activated ``[r, z, c]``.
    """
    H = h.shape[1]
    a = x @ W_x + b
    rz = sigmoid(a[:, : 2 * H] + h @ W_h[:, : 2 * H])
    r, z = rz[:, :H], rz[:, H:]
    c = np.tanh(a[:, 2 * H :] + (r * h) @ W_h[:, 2 * H :])
    h_new = (1.0 - z) * h + z * c
    return h_new, np.concatenate([rz, c], axis=1)


def _gru_step_backward(dh, gates, h, W_h):
    """Gradient of the pre-activations (B, 3H) and of the entering state, plus r⊙h."""
    H = h.shape[1]
    r, z, c = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    da_z = dh * (c - h) * z * (1.0 - z)
    da_c = dh * z * (1.0 - c * c)
    drh = da_c @ W_h[:, 2 * H :].T
    da_r = drh * h * r * (1.0 - r)
    dA = np.concatenate([da_r, da_z, da_c], axis=1)
    dh_prev = dh * (1.0 - z) + drh * r + dA[:, : 2 * H] @ W_h[:, : 2 * H].T
    return dA, dh_prev, r * h


def gru_backward(dh_new, x, h, gates, W_x, W_h, num_threads: int = 1):
    """Backward of :func:`gru_forward`. Returns ``(dx, dh, dW_x, dW_h, db)``."""
    H = h.shape[1]
    dA, dh, rh = _gru_step_backward(dh_new, gates, h, W_h)
    dW_h = np.concatenate([h.T @ dA[:, : 2 * H], rh.T @ dA[:, 2 * H :]], axis=1)
    return dA @ W_x.T, dh, x.T @ dA, dW_h, dA.sum(axis=0)


def lstm_forward(x, h, c, W_x, W_h, b, num_threads: int = 1):
    """One LSTM step.

    x (B, E), h and c (B, H), W_x (E, 4H), W_h (H, 4H), b (4H,).
    Returns ``(h_new, c_new, gates)`` with gates (B, 4H) the activated ``[i, f, g, o]``.
    """
    H = h.shape[1]
    a = x @ W_x + h @ W_h + b
    i, f = sigmoid(a[:, :H]), sigmoid(a[:, H : 2 * H])
    g, o = np.tanh(a[:, 2 * H : 3 * H]), sigmoid(a[:, 3 * H :])
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return h_new, c_new, np.concatenate([i, f, g, o], axis=1)


def _lstm_step_backward(dh, dc, gates, c, c_new, W_h):
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
    return dA, dA @ W_h.T, dct * f


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
):
    """Forward over a window of T steps through L stacked layers.

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
        for t in range(T):
            keep = _keep(reset, t, B, X.dtype)
            h = h * keep
            d["h_in"][t] = h
            if cell == "rnn":
                h = rnn_forward(inp[t], h, W_x, W_h, b)
                d["gates"][t] = h
            elif cell == "gru":
                h, d["gates"][t] = gru_forward(inp[t], h, W_x, W_h, b)
            else:
                c = c * keep
                d["c_in"][t] = c
                h, c, d["gates"][t] = lstm_forward(inp[t], h, c, W_x, W_h, b)
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
):
    """Truncated BPTT over the window of :func:`sequence_forward`.

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
                dh_prev = dA @ W_h.T
                dW_h += h_in.T @ dA
            elif cell == "gru":
                dA, dh_prev, rh = _gru_step_backward(dh, d["gates"][t], h_in, W_h)
                dW_h[:, : 2 * H] += h_in.T @ dA[:, : 2 * H]
                dW_h[:, 2 * H :] += rh.T @ dA[:, 2 * H :]
            else:
                dA, dh_prev, dc_prev = _lstm_step_backward(
                    dh, carry_c, d["gates"][t], d["c_in"][t], d["c_out"][t], W_h
                )
                dW_h += h_in.T @ dA
            keep = _keep(reset, t, B, X.dtype)
            carry = dh_prev * keep
            if cell == "lstm":
                carry_c = dc_prev * keep
            dW_x += inp[t].T @ dA
            db += dA.sum(axis=0)
            dIn[t] = dA @ W_x.T
        dh0[l], dc0[l], grads[l] = carry, carry_c, (dW_x, dW_h, db)
        dOut = dIn
    return dOut, dh0, (dc0 if cell == "lstm" else None), grads
