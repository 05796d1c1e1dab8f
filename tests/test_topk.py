"""Serving kernels: top-k against a stable-argsort oracle (ties, exclusions, odd shapes), reduced
precision tables, and the fused step + top-k against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec_fast import _core
from seqrec_fast import reference as ref


def oracle(H, W, b, k, exclude=None):
    """Stable argsort over exactly the scores the kernel computes (float64 here: exact ties only)."""
    S = H.astype(np.float64) @ W.astype(np.float64).T + b
    if exclude is not None:
        for i in range(len(S)):
            S[i, exclude[i][exclude[i] >= 0]] = -np.inf
    kk = min(k, W.shape[0])
    idx = np.argsort(-S, axis=1, kind="stable")[:, :kk]
    sc = np.take_along_axis(S, idx, 1)
    idx = np.where(np.isneginf(sc), -1, idx)
    return idx, sc


def small_int_case(rng, n, N, D, levels=3):
    """Integer-valued inputs: every score is exact in float32, so ties are real ties."""
    H = rng.integers(-2, 3, size=(n, D)).astype(np.float32)
    W = rng.integers(-levels, levels + 1, size=(N, D)).astype(np.float32)
    b = rng.integers(-2, 3, size=N).astype(np.float32)
    return H, W, b


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9), N=st.integers(1, 60), D=st.integers(1, 37), k=st.integers(1, 70),
    nt=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1), with_ex=st.booleans(),
    levels=st.sampled_from([0, 1, 3]), packed=st.booleans(),
)
def test_topk_matches_stable_argsort(n, N, D, k, nt, seed, with_ex, levels, packed):
    rng = np.random.default_rng(seed)
    H, W, b = small_int_case(rng, n, N, D, levels)  # levels=0: all scores equal per query (bias aside)
    if levels == 0:
        b[:] = 1.0
    ex = None
    if with_ex:
        ex = rng.integers(-1, N, size=(n, 4)).astype(np.int32)
    table = _core.pack_table(W) if packed else W
    idx, sc = _core.topk(H, table, b, k, ex, None, nt)
    oi, os_ = oracle(H, W, b, k, ex)
    np.testing.assert_array_equal(idx, oi)
    np.testing.assert_array_equal(np.where(idx >= 0, sc, -np.inf), np.where(oi >= 0, os_, -np.inf))


def test_topk_float_scores_agree_with_reference(rng):
    n, N, D = 5, 4001, 100
    H = rng.normal(size=(n, D)).astype(np.float32)
    W = rng.normal(size=(N, D)).astype(np.float32)
    b = rng.normal(size=N).astype(np.float32)
    for nt in (1, 2):
        idx, sc = _core.topk(H, W, b, 20, None, None, nt)
        ri, rs = ref.topk(H, W, b, 20)
        assert (idx == ri).mean() > 0.95  # float32 rounding may swap near-equal neighbours
        np.testing.assert_allclose(sc, rs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_reduced_precision_tables(rng, kind):
    n, N, D = 8, 3001, 64
    H = rng.normal(size=(n, D)).astype(np.float32)
    W = rng.normal(size=(N, D)).astype(np.float32)
    b = rng.normal(size=N).astype(np.float32) * 0.1
    q, scales = ref.quantize_table(W, kind)
    idx, sc = _core.topk(H, q, b, 10, None, scales, 2)
    pi, ps = _core.topk(H, _core.pack_table(q), b, 10, None, scales, 2)
    np.testing.assert_array_equal(pi, idx)  # both layouts rank the same
    np.testing.assert_allclose(ps, sc, rtol=1e-5, atol=1e-5)
    ri, rs = ref.topk(H, q, b, 10, None, scales)  # oracle on the dequantized table
    assert (idx == ri).mean() > 0.95
    np.testing.assert_allclose(sc, rs, rtol=1e-4, atol=1e-3)
    exact, _ = _core.topk(H, W, b, 10, None, None, 2)
    overlap = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(idx, exact)])
    assert overlap > 0.8


def test_topk_errors(rng):
    H = np.zeros((2, 4), np.float32)
    W = np.zeros((5, 4), np.float32)
    b = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="k must be >= 1"):
        _core.topk(H, W, b, 0)
    with pytest.raises(IndexError, match="exclude holds 5"):
        _core.topk(H, W, b, 2, np.array([[5], [0]], np.int32))
    with pytest.raises(ValueError, match="needs scales"):
        _core.topk(H, W.astype(np.int8), b, 2)
    with pytest.raises(TypeError, match="float64"):
        _core.topk(H, W.astype(np.float64), b, 2)
    with pytest.raises(ValueError, match=r"'table' has shape \(5, 3\)"):
        _core.topk(H, W[:, :3].copy(), b, 2)


def make_serving_model(rng, cell, embedding, layers, N=23, E=6):
    G = ref.GATES[cell]
    I0 = {"constrained": layers[-1], "separate": E, "onehot": N}[embedding]
    weights, inp = [], I0
    for h in layers:
        weights.append((rng.normal(size=(inp, G * h)).astype(np.float32) * 0.4,
                        rng.normal(size=(h, G * h)).astype(np.float32) * 0.4,
                        rng.normal(size=G * h).astype(np.float32) * 0.1))
        inp = h
    W_y = rng.normal(size=(N, layers[-1])).astype(np.float32)
    b_y = rng.normal(size=N).astype(np.float32) * 0.1
    E_in = rng.normal(size=(N, E)).astype(np.float32) if embedding == "separate" else None
    return weights, E_in, W_y, b_y


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("embedding", ["constrained", "separate", "onehot"])
def test_step_topk_matches_reference(rng, cell, embedding):
    layers = (5, 7)
    weights, E_in, W_y, b_y = make_serving_model(rng, cell, embedding, layers)
    n = 3
    h = [rng.normal(size=(n, hh)).astype(np.float32) for hh in layers]
    c = [rng.normal(size=(n, hh)).astype(np.float32) for hh in layers] if cell == "lstm" else None
    items = rng.integers(0, len(b_y), n).astype(np.int32)
    ex = np.array([[items[0], -1], [-1, -1], [3, 4]], np.int32)
    h1 = [x.copy() for x in h]
    c1 = [x.copy() for x in c] if c else None
    h2 = [x.copy() for x in h]
    c2 = [x.copy() for x in c] if c else None
    a = _core.step_topk(cell, embedding, weights, E_in, W_y, b_y, h1, c1, items, 5, ex)
    r = ref.step_topk(cell, embedding, weights, E_in, W_y, b_y, h2, c2, items, 5, ex)
    for x, y in zip(h1, h2):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a[0], r[0])
    np.testing.assert_allclose(a[1], r[1], rtol=1e-5, atol=1e-5)
    assert items[0] not in a[0][0]


def test_pack_table_layout_matches_reference(rng):
    for dtype in (np.float32, np.int8, np.uint16):
        W = rng.integers(-100, 100, size=(37, 5)).astype(dtype)
        P = _core.pack_table(W)
        np.testing.assert_array_equal(P, ref.pack_table(W))
        np.testing.assert_array_equal(ref.unpack_table(P, 37), W)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_topk_with_packed_reduced_table(rng, cell):
    layers = (6,)
    weights, E_in, W_y, b_y = make_serving_model(rng, cell, "constrained", layers, N=70)
    q, scales = ref.quantize_table(W_y, "int8")
    h = [rng.normal(size=(2, 6)).astype(np.float32)]
    c = [rng.normal(size=(2, 6)).astype(np.float32)] if cell == "lstm" else None
    items = np.array([3, 9], np.int32)
    a = _core.step_topk(cell, "constrained", weights, None, W_y, b_y, [x.copy() for x in h],
                        [x.copy() for x in c] if c else None, items, 7, None,
                        _core.pack_table(q), scales)
    r = ref.step_topk(cell, "constrained", weights, None, W_y, b_y, [x.copy() for x in h],
                      [x.copy() for x in c] if c else None, items, 7, None, q, scales)
    np.testing.assert_array_equal(a[0], r[0])
    np.testing.assert_allclose(a[1], r[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("packed", [False, True])
def test_nan_scores_are_never_recommended(rng, packed):
    N, D = 200, 8
    H = rng.normal(size=(2, D)).astype(np.float32)
    W = rng.normal(size=(N, D)).astype(np.float32)
    b = np.zeros(N, np.float32)
    b[:70] = np.nan  # the whole first packed blocks are NaN
    table = _core.pack_table(W) if packed else W
    idx, sc = _core.topk(H, table, b, 10)
    assert np.all(idx >= 70) and np.all(np.isfinite(sc))
    oi, _ = oracle(H, W[70:], b[70:], 10)
    np.testing.assert_array_equal(idx, oi + 70)
