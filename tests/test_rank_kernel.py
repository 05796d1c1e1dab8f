"""Re-ranking kernels (rank.h): rank_candidates and the fused step_rank against the NumPy reference in
float32 and float64, exact tie order, bit-identity with the serving top-k, and the error paths."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from seqrec_fast import _core
from seqrec_fast import reference as ref


def distinct_candidates(rng, n, N, C):
    return np.stack([rng.permutation(N)[:C] for _ in range(n)]).astype(np.int32)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), N=st.integers(1, 150), D=st.integers(1, 37), seed=st.integers(0, 2**31 - 1),
       levels=st.sampled_from([0, 1, 3]), nt=st.sampled_from([1, 2]),
       dtype=st.sampled_from([np.float32, np.float64]), frac=st.floats(0, 1))
def test_rank_candidates_exact_order_with_ties(n, N, D, seed, levels, nt, dtype, frac):
    """Integer-valued inputs: every score is exact in both dtypes, so ties are real ties and the order
    (ties to the lower item index) must equal the reference exactly."""
    rng = np.random.default_rng(seed)
    H = rng.integers(-2, 3, size=(n, D)).astype(dtype)
    W = rng.integers(-levels, levels + 1, size=(N, D)).astype(dtype)
    b = rng.integers(-1, 2, size=N).astype(dtype)
    C = round(frac * N)
    cand = distinct_candidates(rng, n, N, C)
    idx, sc = _core.rank_candidates(H, W, b, cand, nt)
    ri, rs = ref.rank_candidates(H, W, b, cand)
    assert idx.shape == sc.shape == (n, C) and sc.dtype == dtype and idx.dtype == np.int32
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_array_equal(sc, rs)
    for q in range(n):
        assert sorted(idx[q].tolist()) == sorted(cand[q].tolist())  # a permutation of the candidates


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [1, 15, 16, 17, 63, 64, 65, 100, 1000])
def test_rank_candidates_matches_reference(rng, dtype, C):
    n, N, D = 3, 1500, 100
    H = rng.normal(size=(n, D)).astype(dtype)
    W = rng.normal(size=(N, D)).astype(dtype)
    b = rng.normal(size=N).astype(dtype)
    cand = distinct_candidates(rng, n, N, C)
    idx, sc = _core.rank_candidates(H, W, b, cand)
    ri, rs = ref.rank_candidates(H, W, b, cand)
    # compare the scores of each item (order may swap near-ties in float32)
    for q in range(n):
        got = dict(zip(idx[q].tolist(), sc[q].tolist()))
        want = dict(zip(ri[q].tolist(), rs[q].tolist()))
        assert got.keys() == want.keys()
        assert_close("scores", [got[j] for j in cand[q]], [want[j] for j in cand[q]], dtype)
        assert np.all(np.diff(sc[q]) <= 0)  # ordered, higher first
    if dtype == np.float64:
        np.testing.assert_array_equal(idx, ri)


def test_float32_scores_bit_identical_to_topk(rng):
    """Re-ranking the top-k (row-major table) of the same state reproduces its scores and order
    exactly; against the packed table they agree to float32 rounding."""
    n, N, D = 4, 700, 100
    H = rng.normal(size=(n, D)).astype(np.float32)
    W = rng.normal(size=(N, D)).astype(np.float32)
    b = rng.normal(size=N).astype(np.float32)
    W[5] = W[9]  # an exact tie: order by index
    b[5] = b[9]
    top_i, top_s = _core.topk(H, W, b, 50)
    shuffled = np.ascontiguousarray(top_i[:, rng.permutation(50)])
    idx, sc = _core.rank_candidates(H, W, b, shuffled)
    np.testing.assert_array_equal(idx, top_i)
    np.testing.assert_array_equal(sc, top_s)
    full_i, full_s = _core.topk(H, W, b, N)
    idx, sc = _core.rank_candidates(H, W, b, np.tile(np.arange(N, dtype=np.int32), (n, 1)))
    np.testing.assert_array_equal(idx, full_i)
    np.testing.assert_array_equal(sc, full_s)
    assert list(idx[0]).index(5) < list(idx[0]).index(9)
    _pi, ps = _core.topk(H, _core.pack_table(W), b, N)
    assert_close("scores", sc, ps, np.float32)


def test_nan_scores_rank_last(rng):
    N, D = 40, 6
    H = rng.normal(size=(1, D)).astype(np.float32)
    W = rng.normal(size=(N, D)).astype(np.float32)
    b = np.zeros(N, np.float32)
    b[[3, 7]] = np.nan
    cand = np.array([[7, 1, 3, 2, 0]], np.int32)
    idx, sc = _core.rank_candidates(H, W, b, cand)
    ri, _rs = ref.rank_candidates(H, W, b, cand)
    np.testing.assert_array_equal(idx, ri)
    assert idx[0, -2:].tolist() == [3, 7] and np.all(np.isnan(sc[0, -2:]))
    assert np.all(np.isfinite(sc[0, :3]))


def make_model(rng, cell, embedding, layers, dtype, N=23, E=6):
    G = ref.GATES[cell]
    I0 = {"constrained": layers[-1], "separate": E, "onehot": N}[embedding]
    weights, inp = [], I0
    for h in layers:
        weights.append((rng.normal(size=(inp, G * h)).astype(dtype) * 0.4,
                        rng.normal(size=(h, G * h)).astype(dtype) * 0.4,
                        rng.normal(size=G * h).astype(dtype) * 0.1))
        inp = h
    W_y = rng.normal(size=(N, layers[-1])).astype(dtype)
    b_y = rng.normal(size=N).astype(dtype) * 0.1
    E_in = rng.normal(size=(N, E)).astype(dtype) if embedding == "separate" else None
    return weights, E_in, W_y, b_y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("embedding", ["constrained", "separate", "onehot"])
def test_step_rank_matches_reference(rng, dtype, cell, embedding):
    layers = (5, 7)
    weights, E_in, W_y, b_y = make_model(rng, cell, embedding, layers, dtype)
    n, N = 3, len(b_y)
    h = [rng.normal(size=(n, hh)).astype(dtype) for hh in layers]
    c = [rng.normal(size=(n, hh)).astype(dtype) for hh in layers] if cell == "lstm" else None
    items = rng.integers(0, N, n).astype(np.int32)
    cand = distinct_candidates(rng, n, N, 11)
    h1, h2 = [x.copy() for x in h], [x.copy() for x in h]
    c1 = [x.copy() for x in c] if c else None
    c2 = [x.copy() for x in c] if c else None
    a = _core.step_rank(cell, embedding, weights, E_in, W_y, b_y, h1, c1, items, cand)
    r = ref.step_rank(cell, embedding, weights, E_in, W_y, b_y, h2, c2, items, cand)
    for x, y in zip(h1, h2):
        assert_close("h", x, y, dtype)
    for x, y in zip(c1 or (), c2 or ()):
        assert_close("c", x, y, dtype)
    np.testing.assert_array_equal(a[0], r[0])
    assert_close("scores", a[1], r[1], dtype)
    assert a[1].dtype == dtype


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_rank_equals_step_topk(rng, cell):
    """The fused step is the serving step: same new states, and the candidates' scores are the top-k
    scores of those states (row-major table), bit for bit."""
    layers = (8,)
    weights, _E_in, W_y, b_y = make_model(rng, cell, "constrained", layers, np.float32, N=90)
    h = [rng.normal(size=(2, 8)).astype(np.float32)]
    c = [rng.normal(size=(2, 8)).astype(np.float32)] if cell == "lstm" else None
    items = np.array([4, 17], np.int32)
    h1, h2 = [x.copy() for x in h], [x.copy() for x in h]
    c1 = [x.copy() for x in c] if c else None
    c2 = [x.copy() for x in c] if c else None
    ti, ts = _core.step_topk(cell, "constrained", weights, None, W_y, b_y, h1, c1, items, 12)
    ri, rs = _core.step_rank(cell, "constrained", weights, None, W_y, b_y, h2, c2, items,
                             np.ascontiguousarray(ti[:, ::-1]))
    np.testing.assert_array_equal(h1[0], h2[0])
    np.testing.assert_array_equal(ri, ti)
    np.testing.assert_array_equal(rs, ts)


def test_rank_errors(rng):
    H = np.zeros((2, 4), np.float32)
    W = np.zeros((5, 4), np.float32)
    b = np.zeros(5, np.float32)
    ok = np.array([[0, 1], [2, 3]], np.int32)
    with pytest.raises(IndexError, match="candidates holds 5"):
        _core.rank_candidates(H, W, b, np.array([[0, 5], [1, 2]], np.int32))
    with pytest.raises(IndexError, match="candidates holds -1"):
        _core.rank_candidates(H, W, b, np.array([[0, 1], [-1, 2]], np.int32))
    with pytest.raises(TypeError, match="'candidates' has dtype int64"):
        _core.rank_candidates(H, W, b, ok.astype(np.int64))
    with pytest.raises(ValueError, match=r"'candidates' has shape \(1, 2\)"):
        _core.rank_candidates(H, W, b, ok[:1].copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.rank_candidates(H, W, b, np.asfortranarray(np.array([[0, 1, 2], [2, 3, 4]], np.int32)))
    with pytest.raises(TypeError, match="'W_y' has dtype float64"):
        _core.rank_candidates(H, W.astype(np.float64), b, ok)
    with pytest.raises(ValueError, match=r"'W_y' has shape \(5, 3\)"):
        _core.rank_candidates(H, W[:, :3].copy(), b, ok)
    with pytest.raises(ValueError, match=r"'b_y' has shape \(4,\)"):
        _core.rank_candidates(H, W, b[:4].copy(), ok)
    with pytest.raises(ValueError, match="num_threads"):
        _core.rank_candidates(H, W, b, ok, 0)
    idx, sc = _core.rank_candidates(H, W, b, np.zeros((2, 0), np.int32))
    assert idx.shape == sc.shape == (2, 0)


def test_step_rank_errors(rng):
    weights, _E_in, W_y, b_y = make_model(rng, "gru", "constrained", (4,), np.float32, N=9)
    h = [np.zeros((1, 4), np.float32)]
    cand = np.array([[1, 2]], np.int32)
    with pytest.raises(IndexError, match="items holds 9"):
        _core.step_rank("gru", "constrained", weights, None, W_y, b_y, h, None,
                        np.array([9], np.int32), cand)
    with pytest.raises(IndexError, match="candidates holds 9"):
        _core.step_rank("gru", "constrained", weights, None, W_y, b_y, h, None,
                        np.array([1], np.int32), np.array([[9]], np.int32))
    with pytest.raises(ValueError, match="cell must be one of"):
        _core.step_rank("tcn", "constrained", weights, None, W_y, b_y, h, None,
                        np.array([1], np.int32), cand)
    with pytest.raises(TypeError, match=r"'h\[0\]' has dtype float64"):
        _core.step_rank("gru", "constrained", weights, None, W_y, b_y, [h[0].astype(np.float64)],
                        None, np.array([1], np.int32), cand)
    with pytest.raises(ValueError, match="must be writable"):
        ro = h[0].copy()
        ro.setflags(write=False)
        _core.step_rank("gru", "constrained", weights, None, W_y, b_y, [ro], None,
                        np.array([1], np.int32), cand)
    assert np.all(h[0] == 0)  # nothing was advanced by a failed call
