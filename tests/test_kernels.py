"""Recurrent kernels: the reference against finite differences, the C++ kernels against the
reference (float64 tight, float32 loose), determinism across runs and thread counts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from seqrec_fast import _core
from seqrec_fast import reference as ref

CELLS = ("rnn", "gru", "lstm")
G = ref.GATES
# odd, distinct sizes so that a transposed shape fails loudly
B, E, H = 5, 7, 3
HS2 = (3, 4)  # two stacked layers of different widths


def make_weights(rng, cell, E, hs, dtype=np.float64, scale=0.6):
    w, inp = [], E
    for h in hs:
        g = G[cell] * h
        w.append(
            (
                (rng.normal(size=(inp, g)) * scale).astype(dtype),
                (rng.normal(size=(h, g)) * scale).astype(dtype),
                (rng.normal(size=g) * 0.2).astype(dtype),
            )
        )
        inp = h
    return w


def make_window(rng, cell, T, hs, dtype=np.float64, resets=True):
    X = rng.normal(size=(T, B, E)).astype(dtype)
    h0 = [rng.normal(size=(B, h)).astype(dtype) for h in hs]
    c0 = [rng.normal(size=(B, h)).astype(dtype) for h in hs] if cell == "lstm" else None
    reset = None
    if resets:
        reset = np.zeros((T, B), np.uint8)
        reset[0, 1] = 1  # the initial state of row 1 is dropped
        if T > 2:
            reset[T // 2, [0, 3]] = 1  # sessions end mid-window in rows 0 and 3
            reset[T - 1, 4] = 1
    return X, h0, c0, reset, make_weights(rng, cell, E, hs, dtype)


# --------------------------------------------------------------------------------------------
# Finite-difference checks of the reference (float64, central differences)


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,hs", [(1, (H,)), (4, (H,)), (4, HS2)])
def test_reference_sequence_backward_matches_finite_differences(rng, cell, T, hs):
    X, h0, c0, reset, W = make_window(rng, cell, T, hs)
    # a random linear functional of every output: the step outputs and the final states
    RY = rng.normal(size=(T, B, hs[-1]))
    Rh = [rng.normal(size=(B, h)) for h in hs]
    Rc = [rng.normal(size=(B, h)) for h in hs] if cell == "lstm" else None

    def loss():
        Y, hl, cl, _ = ref.sequence_forward(cell, X, h0, c0, reset, W)
        val = np.sum(Y * RY) + sum(np.sum(a * r) for a, r in zip(hl, Rh))
        if cell == "lstm":
            val += sum(np.sum(a * r) for a, r in zip(cl, Rc))
        return val

    _, _, _, cache = ref.sequence_forward(cell, X, h0, c0, reset, W)
    dX, dh0, dc0, grads = ref.sequence_backward(cell, RY, Rh, Rc, X, reset, W, cache)
    np.testing.assert_allclose(dX, numeric_grad(loss, X), rtol=1e-6, atol=1e-8, err_msg="dX")
    for l in range(len(hs)):
        np.testing.assert_allclose(dh0[l], numeric_grad(loss, h0[l]), rtol=1e-6, atol=1e-8)
        if cell == "lstm":
            np.testing.assert_allclose(dc0[l], numeric_grad(loss, c0[l]), rtol=1e-6, atol=1e-8)
        for name, p, g in zip(("dW_x", "dW_h", "db"), W[l], grads[l]):
            np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=1e-6, atol=1e-8,
                                       err_msg=f"layer {l} {name}")
    if reset is not None:
        # gradients never cross a session boundary: a reset at step 0 cuts the initial state
        for l in range(len(hs)):
            assert np.all(dh0[l][reset[0] == 1] == 0)


def _cell_call(mod, cell, x, h, c, W_x, W_h, b):
    if cell == "lstm":
        return mod.lstm_forward(x, h, c, W_x, W_h, b)
    if cell == "gru":
        return mod.gru_forward(x, h, W_x, W_h, b)
    return (mod.rnn_forward(x, h, W_x, W_h, b),)


def _cell_backward(mod, cell, out, dh, dc, x, h, c, W_x, W_h):
    if cell == "lstm":
        h_new, c_new, gates = out
        return mod.lstm_backward(dh, dc, x, h, c, c_new, gates, W_x, W_h)
    if cell == "gru":
        return mod.gru_backward(dh, x, h, out[1], W_x, W_h)
    return mod.rnn_backward(dh, x, h, out[0], W_x, W_h)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_cell_backward_matches_finite_differences(rng, cell):
    (W_x, W_h, b), = make_weights(rng, cell, E, (H,))
    x, h = rng.normal(size=(B, E)), rng.normal(size=(B, H))
    c = rng.normal(size=(B, H)) if cell == "lstm" else None
    Rh, Rc = rng.normal(size=(B, H)), rng.normal(size=(B, H))

    def loss():
        out = _cell_call(ref, cell, x, h, c, W_x, W_h, b)
        val = np.sum(out[0] * Rh)
        return val + (np.sum(out[1] * Rc) if cell == "lstm" else 0.0)

    out = _cell_call(ref, cell, x, h, c, W_x, W_h, b)
    grads = _cell_backward(ref, cell, out, Rh, Rc, x, h, c, W_x, W_h)
    wrt = [x, h] + ([c] if cell == "lstm" else []) + [W_x, W_h, b]
    for g, p in zip(grads, wrt):
        np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# C++ against the reference

CELL_OUT = {"rnn": ("h_new",), "gru": ("h_new", "gates"), "lstm": ("h_new", "c_new", "gates")}
CELL_GRAD = {
    "rnn": ("dx", "dh", "dW_x", "dW_h", "db"),
    "gru": ("dx", "dh", "dW_x", "dW_h", "db"),
    "lstm": ("dx", "dh", "dc", "dW_x", "dW_h", "db"),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_kernels_match_reference(rng, cell, dtype):
    (W_x, W_h, b), = make_weights(rng, cell, E, (H,), dtype)
    x, h = rng.normal(size=(B, E)).astype(dtype), rng.normal(size=(B, H)).astype(dtype)
    c = rng.normal(size=(B, H)).astype(dtype) if cell == "lstm" else None
    dh, dc = rng.normal(size=(B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype)
    r_out = _cell_call(ref, cell, x, h, c, W_x, W_h, b)
    c_out = _cell_call(_core, cell, x, h, c, W_x, W_h, b)
    for name, a, e in zip(CELL_OUT[cell], c_out, r_out):
        assert a.dtype == dtype
        assert_close(name, a, e, dtype)
    r_g = _cell_backward(ref, cell, r_out, dh, dc, x, h, c, W_x, W_h)
    c_g = _cell_backward(_core, cell, c_out, dh, dc, x, h, c, W_x, W_h)
    for name, a, e in zip(CELL_GRAD[cell], c_g, r_g):
        assert a.dtype == dtype
        assert_close(name, a, e, dtype)


def _compare_sequence(cell, window, dtype, rng, num_threads=1):
    X, h0, c0, reset, W = window
    T = X.shape[0]
    hs = [w[1].shape[0] for w in W]
    r = ref.sequence_forward(cell, X, h0, c0, reset, W)
    c = _core.sequence_forward(cell, X, h0, c0, reset, W, num_threads=num_threads)
    assert_close("Y", c[0], r[0], dtype)
    for l in range(len(W)):
        assert_close("h_last", c[1][l], r[1][l], dtype)
        if cell == "lstm":
            assert_close("c_last", c[2][l], r[2][l], dtype)
        assert set(c[3][l]) == set(r[3][l])
        for key in r[3][l]:
            assert_close(key, c[3][l][key], r[3][l][key], dtype)
    dY = rng.normal(size=(T, B, hs[-1])).astype(dtype)
    dhl = [rng.normal(size=(B, h)).astype(dtype) for h in hs]
    dcl = [rng.normal(size=(B, h)).astype(dtype) for h in hs] if cell == "lstm" else None
    rb = ref.sequence_backward(cell, dY, dhl, dcl, X, reset, W, r[3])
    cb = _core.sequence_backward(cell, dY, dhl, dcl, X, reset, W, c[3], num_threads=num_threads)
    assert_close("dX", cb[0], rb[0], dtype)
    for l in range(len(W)):
        assert_close("dh0", cb[1][l], rb[1][l], dtype)
        if cell == "lstm":
            assert_close("dc0", cb[2][l], rb[2][l], dtype)
        for name, a, e in zip(("dW_x", "dW_h", "db"), cb[3][l], rb[3][l]):
            assert a.dtype == dtype
            assert_close(name, a, e, dtype)
    return c, cb


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,hs", [(1, (H,)), (4, (H,)), (4, HS2), (9, (H,))])
def test_sequence_kernels_match_reference(rng, cell, T, hs, dtype):
    _compare_sequence(cell, make_window(rng, cell, T, hs, dtype), dtype, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_without_resets_and_zero_last_gradients(rng, cell):
    X, h0, c0, _, W = make_window(rng, cell, 3, (H,), resets=False)
    r = ref.sequence_forward(cell, X, h0, c0, None, W)
    c = _core.sequence_forward(cell, X, h0, c0, None, W)
    assert_close("Y", c[0], r[0])
    dY = rng.normal(size=r[0].shape)
    rb = ref.sequence_backward(cell, dY, None, None, X, None, W, r[3])
    cb = _core.sequence_backward(cell, dY, None, None, X, None, W, c[3])
    assert_close("dX", cb[0], rb[0])
    for a, e in zip(cb[3][0], rb[3][0]):
        assert_close("dW", a, e)


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_t1_equals_cell_step(rng, cell):
    """T = 1 without reset is exactly one cell step."""
    (W_x, W_h, b), = make_weights(rng, cell, E, (H,))
    x, h = rng.normal(size=(B, E)), rng.normal(size=(B, H))
    c = rng.normal(size=(B, H)) if cell == "lstm" else None
    step = _cell_call(_core, cell, x, h, c, W_x, W_h, b)
    Y, hl, cl, _ = _core.sequence_forward(
        cell, x[None].copy(), [h], [c] if c is not None else None, None, [(W_x, W_h, b)]
    )
    np.testing.assert_array_equal(Y[0], step[0])
    if cell == "lstm":
        np.testing.assert_array_equal(cl[0], step[1])


@pytest.mark.parametrize("cell", CELLS)
def test_reset_isolates_sessions(rng, cell):
    """After a reset, outputs do not depend on anything before it."""
    T = 6
    X, h0, c0, _, W = make_window(rng, cell, T, HS2, resets=False)
    reset = np.zeros((T, B), np.uint8)
    reset[3, 2] = 1
    Y1 = _core.sequence_forward(cell, X, h0, c0, reset, W)[0]
    X2 = X.copy()
    X2[:3, 2] += 1.0
    h02 = [h + 1.0 for h in h0]
    Y2 = _core.sequence_forward(cell, X2, h02, c0, reset, W)[0]
    np.testing.assert_array_equal(Y1[3:, 2], Y2[3:, 2])
    assert not np.allclose(Y1[:3, 2], Y2[:3, 2])


# --------------------------------------------------------------------------------------------
# Determinism and threads


@pytest.mark.parametrize("cell", CELLS)
def test_deterministic_and_thread_count_agreement(rng, cell):
    Bbig = 37
    T = 3
    W = make_weights(rng, cell, E, HS2, np.float32)
    X = rng.normal(size=(T, Bbig, E)).astype(np.float32)
    h0 = [rng.normal(size=(Bbig, h)).astype(np.float32) for h in HS2]
    c0 = [rng.normal(size=(Bbig, h)).astype(np.float32) for h in HS2] if cell == "lstm" else None
    reset = (rng.random((T, Bbig)) < 0.2).astype(np.uint8)
    dY = rng.normal(size=(T, Bbig, HS2[-1])).astype(np.float32)

    def run(nt):
        f = _core.sequence_forward(cell, X, h0, c0, reset, W, num_threads=nt)
        b = _core.sequence_backward(cell, dY, None, None, X, reset, W, f[3], num_threads=nt)
        return [f[0], b[0]] + [g for layer in b[3] for g in layer]

    for nt in (1, 2):
        a, b = run(nt), run(nt)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)  # bit-identical at a fixed thread count
    for name, x, y in zip(["Y", "dX"] + ["dW_x", "dW_h", "db"] * 2, run(1), run(2)):
        assert_close(name, x, y, np.float32)


@pytest.mark.parametrize("isa", _core.AVAILABLE_ISAS)
@pytest.mark.parametrize("cell", CELLS)
def test_every_isa_variant_matches_reference(rng, cell, isa):
    """Each instruction-set build (generic, avx2, avx512) computes the same kernels."""
    mod = _core.variant(isa)
    for dtype in (np.float64, np.float32):
        X, h0, c0, reset, W = make_window(rng, cell, 4, HS2, dtype)
        r = ref.sequence_forward(cell, X, h0, c0, reset, W)
        c = mod.sequence_forward(cell, X, h0, c0, reset, W, num_threads=2)
        assert_close("Y", c[0], r[0], dtype)
        dY = rng.normal(size=r[0].shape).astype(dtype)
        rb = ref.sequence_backward(cell, dY, None, None, X, reset, W, r[3])
        cb = mod.sequence_backward(cell, dY, None, None, X, reset, W, c[3], num_threads=2)
        assert_close("dX", cb[0], rb[0], dtype)
        for l in range(len(W)):
            for name, a, e in zip(("dW_x", "dW_h", "db"), cb[3][l], rb[3][l]):
                assert_close(name, a, e, dtype)


def _shifted_copy(a, shift):
    """A copy of `a` whose data starts `shift` elements into a fresh buffer (another alignment)."""
    buf = np.empty(a.size + shift, a.dtype)
    out = buf[shift:].reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous
    return out


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_memory_alignment(rng, cell, dtype):
    """Reproducibility across processes: where NumPy places an array must not change results."""
    X, h0, c0, reset, W = make_window(rng, cell, 3, HS2, dtype)
    dY = rng.normal(size=(3, B, HS2[-1])).astype(dtype)

    def run(shift):
        s = lambda a: _shifted_copy(a, shift)  # noqa: E731
        Ws = [tuple(s(p) for p in w) for w in W]
        cs = [s(c) for c in c0] if c0 is not None else None
        f = _core.sequence_forward(cell, s(X), [s(h) for h in h0], cs, reset, Ws, num_threads=2)
        b = _core.sequence_backward(cell, s(dY), None, None, s(X), reset, Ws, f[3], num_threads=2)
        return [f[0], b[0]] + [g for layer in b[3] for g in layer]

    base = run(0)
    for shift in (1, 3, 5):
        for x, y in zip(base, run(shift)):
            np.testing.assert_array_equal(x, y)


def make_drop(rng, T, hs, p=0.4, dtype=np.float64):
    return [((rng.random((T, B, h)) >= p) / (1 - p)).astype(dtype) for h in hs]


@pytest.mark.parametrize("cell", CELLS)
def test_reference_backward_with_dropout_matches_finite_differences(rng, cell):
    T, hs = 4, HS2
    X, h0, c0, reset, W = make_window(rng, cell, T, hs)
    drop = make_drop(rng, T, hs)
    RY = rng.normal(size=(T, B, hs[-1]))

    def loss():
        return np.sum(ref.sequence_forward(cell, X, h0, c0, reset, W, drop)[0] * RY)

    _, _, _, cache = ref.sequence_forward(cell, X, h0, c0, reset, W, drop)
    dX, dh0, _, grads = ref.sequence_backward(cell, RY, None, None, X, reset, W, cache, drop)
    np.testing.assert_allclose(dX, numeric_grad(loss, X), rtol=1e-6, atol=1e-8)
    for l in range(len(hs)):
        np.testing.assert_allclose(dh0[l], numeric_grad(loss, h0[l]), rtol=1e-6, atol=1e-8)
        for p, g in zip(W[l], grads[l]):
            np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", CELLS)
def test_sequence_with_dropout_matches_reference(rng, cell, dtype):
    T, hs = 4, HS2
    X, h0, c0, reset, W = make_window(rng, cell, T, hs, dtype)
    drop = make_drop(rng, T, hs, dtype=dtype)
    drop[0] = None  # a layer without dropout next to one with it
    r = ref.sequence_forward(cell, X, h0, c0, reset, W, drop)
    c = _core.sequence_forward(cell, X, h0, c0, reset, W, drop, num_threads=2)
    assert_close("Y", c[0], r[0], dtype)
    dY = rng.normal(size=r[0].shape).astype(dtype)
    rb = ref.sequence_backward(cell, dY, None, None, X, reset, W, r[3], drop)
    cb = _core.sequence_backward(cell, dY, None, None, X, reset, W, c[3], drop, num_threads=2)
    assert_close("dX", cb[0], rb[0], dtype)
    for l in range(len(hs)):
        assert_close("dh0", cb[1][l], rb[1][l], dtype)
        for name, a, e in zip(("dW_x", "dW_h", "db"), cb[3][l], rb[3][l]):
            assert_close(name, a, e, dtype)
