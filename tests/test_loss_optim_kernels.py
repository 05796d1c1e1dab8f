"""The bound loss and lazy optimizer kernels (_core.loss_grad, _core.opt_update_rows) against their
NumPy twins: float64 tight, float32 loose; plus bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec_fast import _core
from seqrec_fast import reference as ref

LOSS_CONFIGS = [
    {"loss": "cross-entropy"},
    {"loss": "bpr-max", "bpreg": 1.0, "elu_param": 0.0},
    {"loss": "bpr-max", "bpreg": 0.5, "elu_param": 1.0},
    {"loss": "top1-max"},
]
OPT_CONFIGS = [
    {"optimizer": "adagrad", "learning_rate": 0.05, "momentum": 0.3},
    {"optimizer": "adagrad", "learning_rate": 0.05, "momentum": 0.0},
    {"optimizer": "adam", "learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
]


def _scores(dtype, n=7, C=33, seed=0):
    rng = np.random.default_rng(seed)
    R = (rng.normal(size=(n, C)) * 2).astype(dtype)
    pos = rng.integers(0, C, size=n).astype(np.int32)
    return R, pos


@pytest.mark.parametrize("cfg", LOSS_CONFIGS, ids=lambda c: f"{c['loss']}-{c.get('elu_param', 0)}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nt", [1, 2])
def test_loss_grad_matches_reference(cfg, dtype, nt):
    R, pos = _scores(dtype)
    l_c, g_c = _core.loss_grad(R, pos, cfg, num_threads=nt)
    l_r, g_r = ref.loss_grad(R.astype(np.float64), pos, cfg)
    assert l_c.dtype == dtype and g_c.dtype == dtype
    assert l_c.shape == (R.shape[0],) and g_c.shape == R.shape
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l_c, l_r, **tol)
    np.testing.assert_allclose(g_c, g_r, **tol)
    # reference in the same dtype agrees too
    l_r2, g_r2 = ref.loss_and_grad(cfg, R, pos)
    np.testing.assert_allclose(g_c, g_r2, **tol)


def test_loss_grad_bad_inputs():
    R, pos = _scores(np.float64)
    with pytest.raises(IndexError):
        _core.loss_grad(R, np.full(R.shape[0], R.shape[1], np.int32), {"loss": "cross-entropy"})
    with pytest.raises(TypeError):
        _core.loss_grad(R, pos.astype(np.int64), {"loss": "cross-entropy"})
    with pytest.raises(ValueError):
        _core.loss_grad(R, pos[:-1], {"loss": "cross-entropy"})
    with pytest.raises(ValueError):
        _core.loss_grad(R, pos, {"loss": "hinge"})
    with pytest.raises(ValueError):
        _core.loss_grad(np.asfortranarray(R), pos, {"loss": "cross-entropy"})
    with pytest.raises(ValueError):
        _core.loss_grad(R, pos, {"loss": "cross-entropy"}, num_threads=0)


def _table(dtype, N=50, W=6, r=17, seed=1, with_s2=True):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(N, W)).astype(dtype)
    s1 = np.abs(rng.normal(size=(N, W))).astype(dtype) * 0.1
    s2 = (np.abs(rng.normal(size=(N, W))) * 0.1).astype(dtype) if with_s2 else None
    rows = rng.choice(N, size=r, replace=False).astype(np.int32)
    G = rng.normal(size=(r, W)).astype(dtype)
    return rows, G, p, s1, s2


@pytest.mark.parametrize("cfg", OPT_CONFIGS, ids=lambda c: f"{c['optimizer']}-{c.get('momentum', '')}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("W", [6, 1])
@pytest.mark.parametrize("nt", [1, 2])
def test_opt_update_rows_matches_reference(cfg, dtype, W, nt):
    rows, G, p, s1, s2 = _table(dtype, W=W)
    c = [x.copy() for x in (p, s1, s2)]
    r = [x.copy() for x in (p, s1, s2)]
    for step in (1, 2, 3):
        _core.opt_update_rows(cfg, step, rows, G, *c, num_threads=nt)
        ref.opt_update_rows(cfg, step, rows, G, *r)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(c, r):
        np.testing.assert_allclose(a, b, **tol)
    # untouched rows keep parameters and state
    other = np.setdiff1d(np.arange(p.shape[0]), rows)
    np.testing.assert_array_equal(c[0][other], p[other])
    np.testing.assert_array_equal(c[1][other], s1[other])


@pytest.mark.parametrize("cfg", OPT_CONFIGS + [{"optimizer": "adagrad", "learning_rate": 0.1}],
                         ids=lambda c: f"{c['optimizer']}-{c.get('momentum', '')}")
def test_opt_update_rows_identical_in_every_isa_variant(cfg):
    # Each variant vectorises the update loop at its own width (SSE2, AVX2, AVX-512, with scalar
    # tails at different places); only correctly rounded +, -, *, / and sqrt in the same order, no
    # contraction into fma (-ffp-contract=off), so every variant gives the same bits.
    if len(_core.AVAILABLE_ISAS) < 2:
        pytest.skip(f"only one ISA variant usable here: {_core.AVAILABLE_ISAS}")
    with_s2 = cfg["optimizer"] == "adam" or cfg.get("momentum", 0) > 0
    outs = {}
    for isa in _core.AVAILABLE_ISAS:
        mod = _core.variant(isa)
        for W in (1, 5, 16, 17, 33, 100):
            rows, G, p, s1, s2 = _table(np.float32, W=W, seed=W, with_s2=with_s2)
            c = [x.copy() if x is not None else None for x in (p, s1, s2)]
            for step in (1, 2, 3):
                mod.opt_update_rows(cfg, step, rows, G, *c, num_threads=2)
            outs.setdefault(W, []).append((isa, c))
    for W, runs in outs.items():
        (isa0, c0), *rest = runs
        for isa, c in rest:
            for a, b in zip(c, c0):
                if a is not None:
                    np.testing.assert_array_equal(a, b, err_msg=f"W={W}: {isa} vs {isa0}")


def test_opt_update_rows_adagrad_without_s2():
    cfg = {"optimizer": "adagrad", "learning_rate": 0.1}
    rows, G, p, s1, _ = _table(np.float64, with_s2=False)
    c = [p.copy(), s1.copy()]
    r = [p.copy(), s1.copy()]
    _core.opt_update_rows(cfg, 1, rows, G, *c, None)
    ref.opt_update_rows(cfg, 1, rows, G, *r, None)
    np.testing.assert_allclose(c[0], r[0], rtol=1e-12)
    np.testing.assert_allclose(c[1], r[1], rtol=1e-12)


def test_opt_update_rows_bad_inputs():
    cfg = OPT_CONFIGS[0]
    rows, G, p, s1, s2 = _table(np.float64)
    bad = rows.copy()
    bad[0] = p.shape[0]
    with pytest.raises(IndexError):
        _core.opt_update_rows(cfg, 1, bad, G, p, s1, s2)
    bad[0] = -1
    with pytest.raises(IndexError):
        _core.opt_update_rows(cfg, 1, bad, G, p, s1, s2)
    dup = rows.copy()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="distinct"):
        _core.opt_update_rows(cfg, 1, dup, G, p, s1, s2)
    with pytest.raises(ValueError):
        _core.opt_update_rows(cfg, 1, rows, G[:-1], p, s1, s2)
    with pytest.raises(TypeError):
        _core.opt_update_rows(cfg, 1, rows, G.astype(np.float32), p, s1, s2)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _core.opt_update_rows(cfg, 1, rows, G, ro, s1, s2)
    with pytest.raises(ValueError):
        _core.opt_update_rows({"optimizer": "adam"}, 1, rows, G, p, s1, None)
    with pytest.raises(ValueError):
        _core.opt_update_rows(cfg, 0, rows, G, p, s1, s2)
    # nothing was modified by the failed calls
    p0 = _table(np.float64)[2]
    np.testing.assert_array_equal(p, p0)
