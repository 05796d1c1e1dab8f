"""The evaluation kernel score_rank_counts (packed, register-tiled for float32) and the batched
packed top-k: against exact oracles on integer-valued inputs (real ties), across query-group and
block remainders, several cache tiles, thread counts and every ISA variant."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec_fast import _core
from seqrec_fast import reference as ref

ISAS = _core.AVAILABLE_ISAS


def int_case(rng, n, N, D, levels=3):
    H = rng.integers(-2, 3, size=(n, D)).astype(np.float32)
    W = rng.integers(-levels, levels + 1, size=(N, D)).astype(np.float32)
    b = rng.integers(-2, 3, size=N).astype(np.float32)
    return H, W, b


def exact_counts(H, W, b, target):
    S = H.astype(np.float64) @ W.astype(np.float64).T + b
    t = S[np.arange(len(target)), target][:, None]
    return (S > t).sum(1), (S >= t).sum(1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,N,D", [(1, 1, 1), (7, 15, 3), (8, 16, 100), (9, 17, 100), (33, 2500, 100),
                                   (20, 4099, 37), (3, 70, 5)])
def test_rank_counts_exact_on_integer_scores(rng, isa, n, N, D):
    mod = _core.variant(isa)
    H, W, b = int_case(rng, n, N, D)
    target = rng.integers(0, N, n).astype(np.int32)
    egt, ege = exact_counts(H, W, b, target)
    packed = mod.pack_table(W)
    for nt in (1, 2):
        for table in (W, packed):
            gt, ge = mod.score_rank_counts(H, table, b, target, nt)
            np.testing.assert_array_equal(gt, egt)
            np.testing.assert_array_equal(ge, ege)


def test_rank_counts_float_scores_close_to_reference_and_self_consistent(rng):
    n, N, D = 45, 5003, 100
    H = rng.normal(size=(n, D)).astype(np.float32)
    W = rng.normal(size=(N, D)).astype(np.float32)
    W[4000:4010] = W[7]  # copies of item 7 score bit-equal to it
    b = np.zeros(N, np.float32)
    target = rng.integers(0, N, n).astype(np.int32)
    target[:3] = 7
    rgt, rge = ref.score_rank_counts(H, W, b, target)
    g1, e1 = _core.score_rank_counts(H, W, b, target, 1)
    g2, e2 = _core.score_rank_counts(H, _core.pack_table(W), b, target, 2)
    np.testing.assert_array_equal(g1, g2)  # thread count and layout do not change the counts
    np.testing.assert_array_equal(e1, e2)
    assert (e1 - g1 >= 1).all()  # the target always counts itself
    np.testing.assert_array_equal((e1 - g1)[:3], 11)
    assert np.abs(g1 - rgt).max() <= 2


def test_rank_counts_nan_target_ranks_last(rng):
    n, N, D = 4, 50, 8
    H, W, b = int_case(rng, n, N, D)
    b[3] = np.nan
    target = np.array([3, 0, 3, 1], np.int32)
    for table in (W, _core.pack_table(W)):
        gt, ge = _core.score_rank_counts(H, table, b, target, 1)
        np.testing.assert_array_equal(gt[[0, 2]], N)
        np.testing.assert_array_equal(ge[[0, 2]], N)
        egt, ege = exact_counts(H, W, b, target)  # NaN items never count as above
        np.testing.assert_array_equal(gt[[1, 3]], egt[[1, 3]])
    rgt, rge = ref.score_rank_counts(H.astype(np.float64), W.astype(np.float64), b.astype(np.float64),
                                     target)
    np.testing.assert_array_equal(rgt[[0, 2]], N)
    dgt, _ = _core.score_rank_counts(H.astype(np.float64), W.astype(np.float64), b.astype(np.float64),
                                     target, 1)
    np.testing.assert_array_equal(dgt, rgt)


def test_rank_counts_errors(rng):
    H, W, b = int_case(rng, 3, 40, 6)
    t = np.zeros(3, np.int32)
    with pytest.raises(TypeError, match="float32"):
        _core.score_rank_counts(H, ref.quantize_table(W, "bfloat16")[0], b, t, 1)
    with pytest.raises(ValueError, match=r"\(ceil\(N/16\), D, 16\)"):
        _core.score_rank_counts(H, _core.pack_table(W[:20]), b, t, 1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        _core.score_rank_counts(H, W[:, :5].copy(), b, t, 1)
    with pytest.raises(IndexError, match="target"):
        _core.score_rank_counts(H, W, b, np.array([0, 40, 1], np.int32), 1)
    gt, ge = _core.score_rank_counts(H[:0], W, b, t[:0], 2)
    assert gt.shape == ge.shape == (0,)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,N,D,k", [(17, 3001, 100, 20), (40, 2049, 37, 5), (8, 33, 4, 40)])
def test_batched_packed_topk_matches_stable_argsort(rng, isa, n, N, D, k):
    """The batch path (queries in register groups, the table in L2 tiles) against the oracle,
    with exclusions and real ties (integer scores)."""
    from test_topk import oracle

    mod = _core.variant(isa)
    H, W, b = int_case(rng, n, N, D, levels=1)
    ex = rng.integers(-1, N, size=(n, 6)).astype(np.int32)
    packed = mod.pack_table(W)
    oi, os_ = oracle(H, W, b, k, ex)
    for nt in (1, 2):
        idx, sc = mod.topk(H, packed, b, k, ex, None, nt)
        np.testing.assert_array_equal(idx, oi)
        np.testing.assert_array_equal(sc, os_.astype(np.float32))
        ridx, _ = mod.topk(H, W, b, k, ex, None, nt)  # row-major layout: same ranking
        np.testing.assert_array_equal(ridx, oi)
