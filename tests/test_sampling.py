"""AliasSampler (negative sampling) and its C++ step, _core.alias_pick."""

import numpy as np
import pytest

from seqrec_fast import _core
from seqrec_fast.sampling import AliasSampler


def numpy_draw(s: AliasSampler, rng: np.random.Generator, size):
    """The alias method's last step written in NumPy: the oracle of alias_pick."""
    col = rng.integers(0, s.n, size=size, dtype=np.int32)
    keep = rng.random(size=size) < s.prob[col]
    return np.where(keep, col, s.alias[col])


@pytest.mark.parametrize("size", [(7,), (3, 1, 2048), (0, 4)])
def test_draw_equals_the_numpy_form(size):
    w = np.random.default_rng(0).random(513) ** 3  # skewed, with tiny weights
    s = AliasSampler(w)
    got = s.draw(np.random.default_rng(5), size)
    want = numpy_draw(s, np.random.default_rng(5), size)
    assert got.dtype == np.int32 and got.shape == tuple(size)
    np.testing.assert_array_equal(got, want)


def test_draw_frequencies_follow_the_weights():
    w = np.array([0.0, 1.0, 2.0, 5.0, 0.5, 11.5])
    s = AliasSampler(w)
    n = 400_000
    x = s.draw(np.random.default_rng(1), (n,))
    freq = np.bincount(x, minlength=w.size) / n
    p = w / w.sum()
    assert freq[0] == 0.0  # zero weight: never drawn
    # 5 standard errors of a binomial proportion
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_same_seed_same_draws():
    s = AliasSampler(np.arange(1, 100, dtype=float))
    a = s.draw(np.random.default_rng(9), (4, 256))
    b = s.draw(np.random.default_rng(9), (4, 256))
    np.testing.assert_array_equal(a, b)


def test_alias_pick_rejects_out_of_range_columns():
    prob = np.full(4, 0.5)
    alias = np.arange(4, dtype=np.int32)
    col = np.array([0, 3, 4, 1], dtype=np.int32)
    with pytest.raises(IndexError, match=r"col holds 4 at flat position 2; expected values in \[0, 4\)"):
        _core.alias_pick(col, np.zeros(4), prob, alias)
    with pytest.raises(IndexError, match="col holds -1"):
        _core.alias_pick(np.array([-1], dtype=np.int32), np.zeros(1), prob, alias)


def test_alias_pick_checks_dtypes_and_shapes():
    prob = np.full(4, 0.5)
    alias = np.arange(4, dtype=np.int32)
    col = np.zeros((2, 3), dtype=np.int32)
    u = np.zeros((2, 3))
    with pytest.raises(TypeError, match="col"):
        _core.alias_pick(col.astype(np.int64), u, prob, alias)
    with pytest.raises(TypeError, match="u"):
        _core.alias_pick(col, u.astype(np.float32), prob, alias)
    with pytest.raises(ValueError, match="u"):
        _core.alias_pick(col, np.zeros((3, 2)), prob, alias)
    with pytest.raises(ValueError, match="alias"):
        _core.alias_pick(col, u, prob, alias[:3])
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.alias_pick(np.zeros((3, 2), dtype=np.int32).T, u, prob, alias)
    with pytest.raises(TypeError, match="col"):
        _core.alias_pick([0, 1], u, prob, alias)


@pytest.mark.parametrize("w", [[], [[1.0, 2.0]], [1.0, -1.0], [0.0, 0.0], [1.0, np.nan]])
def test_sampler_rejects_bad_weights(w):
    with pytest.raises(ValueError, match="weights"):
        AliasSampler(w)
