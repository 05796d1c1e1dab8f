"""Item features in the chunk trainer (features.h): the C++ trainer with F and P against the NumPy
reference trainer, and the reference's gradient of P against finite differences of the loss."""

from __future__ import annotations

import numpy as np
import pytest
from seqrec_fast import _core
from seqrec_fast import reference as ref
from test_train_kernel import BASE, N, clone, compare, make_chunk, make_model

FD = 6  # feature width: distinct from N=11, B=4, S=5 and the hidden sizes


def with_features(rng, params, s1, s2, layers, dtype):
    HL = layers[-1]
    F = rng.normal(size=(N, FD)).astype(dtype)
    F[2] = 0  # an item with an all-zero feature row
    P = rng.uniform(-0.4, 0.4, (FD, HL)).astype(dtype)
    s1 = s1 + [np.abs(rng.normal(size=P.shape)).astype(dtype) * 0.1]
    s2 = s2 + [None if s2[0] is None else np.abs(rng.normal(size=P.shape)).astype(dtype) * 0.01]
    return F, params + [P], s1, s2


def run_both(cell, embedding, layers, config, rng, dtype=np.float64, K=3, T=1, dropout=True,
             neg=True, nt=1):
    params, s1, s2, hidden, cstate, I0 = make_model(
        rng, cell, embedding, layers, optimizer=config.get("optimizer", "adagrad"),
        momentum=config.get("momentum", 0.0), dtype=dtype)
    F, params, s1, s2 = with_features(rng, params, s1, s2, layers, dtype)
    x, y, reset, negs, de, dh = make_chunk(rng, K, T, layers, I0, embedding, dropout, dtype=dtype,
                                           neg=neg)
    log_support = np.log(rng.integers(1, 50, N)).astype(dtype)
    out = {}
    for name, mod in (("ref", ref), ("cpp", _core)):
        st = [clone(params), clone(s1), clone(s2), clone(hidden), clone(cstate)]
        res = mod.train_chunk(cell, embedding, st[0], st[1], st[2], st[3], st[4], x, y, reset, negs,
                              de, dh, log_support, config, num_threads=nt, features=F)
        out[name] = (res, st)
    return out, params


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("embedding", ["constrained", "separate", "onehot"])
@pytest.mark.parametrize("optimizer,bptt", [("adagrad", 1), ("adam", 3)])
def test_train_chunk_with_features_matches_reference(cell, embedding, optimizer, bptt):
    rng = np.random.default_rng(hash((cell, embedding, optimizer, bptt, "f")) % 2**32)
    config = dict(BASE, loss="cross-entropy" if bptt == 1 else "bpr-max", optimizer=optimizer,
                  elu_param=0.5, logq=0.7, step=2)
    layers = (3,) if bptt == 1 else (4, 3)
    out, before = run_both(cell, embedding, layers, config, rng, K=3, T=bptt)
    compare(out, np.float64)
    # P moved, and so did the effective rows of items never touched (only through P)
    assert not np.allclose(out["cpp"][1][0][-1], before[-1])


@pytest.mark.parametrize("embedding", ["constrained", "separate"])
def test_full_softmax_with_features_matches_reference(embedding):
    rng = np.random.default_rng(31)
    config = dict(BASE, loss="cross-entropy", full_softmax=True, optimizer="adagrad")
    out, _ = run_both("gru", embedding, (3,), config, rng, K=3, T=2, neg=False)
    compare(out, np.float64)


def test_features_float32_and_threads_match_reference():
    rng = np.random.default_rng(32)
    config = dict(BASE, loss="cross-entropy", optimizer="adagrad", logq=1.0)
    out, _ = run_both("gru", "constrained", (5,), config, rng, dtype=np.float32, K=4, nt=2)
    (rr, rs), (cr, cs) = out["ref"], out["cpp"]
    np.testing.assert_allclose(cr[0], rr[0], rtol=1e-4, atol=1e-5)
    for a, e in zip(cs[0], rs[0]):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("embedding,full", [("constrained", False), ("separate", False),
                                            ("constrained", True)])
def test_reference_gradient_of_P_matches_finite_differences(embedding, full):
    """One window: the loss is computed before the update, and with Adagrad from a zero
    accumulator the update leaves s1 = g², the sign of g opposite to the step: that recovers the
    gradient the reference applied to P, which must equal d loss / d P by central differences."""
    rng = np.random.default_rng(33)
    layers = (3,)
    params, s1, s2, hidden, _cstate, I0 = make_model(rng, "gru", embedding, layers, momentum=0.0)
    F, params, s1, s2 = with_features(rng, params, s1, s2, layers, np.float64)
    s2 = [None] * len(params)
    x, y, reset, negs, de, dh = make_chunk(rng, 1, 2, layers, I0, embedding, dropout=True,
                                           neg=not full)
    ls = np.log(rng.integers(1, 50, N)).astype(np.float64)
    config = dict(BASE, loss="bpr-max", elu_param=0.5, momentum=0.0, optimizer="adagrad",
                  logq=0.0 if full else 0.6, full_softmax=full)

    def run(P):
        ps = clone(params)
        ps[-1] = P.copy()
        st1 = [np.zeros_like(a) for a in ps]
        res = ref.train_chunk("gru", embedding, ps, st1, s2, clone(hidden), None, x, y, reset, negs,
                              de, dh, ls, config, features=F)
        return res[0][0], ps[-1], st1[-1]

    P0 = params[-1]
    _, P1, acc = run(P0)
    g = -np.sign(P1 - P0) * np.sqrt(acc)
    num = np.zeros_like(P0)
    eps = 1e-6
    for idx in np.ndindex(P0.shape):
        Pp, Pm = P0.copy(), P0.copy()
        Pp[idx] += eps
        Pm[idx] -= eps
        num[idx] = (run(Pp)[0] - run(Pm)[0]) / (2 * eps)
    assert np.abs(num).max() > 1e-3
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


def test_train_chunk_features_rejects_bad_input(rng):
    params, s1, s2, hidden, _cstate, I0 = make_model(rng, "gru", "constrained", (3,))
    F, params_f, s1f, s2f = with_features(rng, params, s1, s2, (3,), np.float64)
    x, y, reset, negs, _, _ = make_chunk(rng, 2, 1, (3,), I0, "constrained")
    args = {"cell": "gru", "embedding": "constrained", "params": params_f, "state1": s1f,
            "state2": s2f, "hidden": hidden, "cell_state": None, "x": x, "y": y, "reset": reset,
            "neg": negs, "drop_embed": None, "drop_hidden": None, "log_support": None,
            "config": dict(BASE)}
    with pytest.raises(ValueError, match=r"features.*\(N, F_dim\)"):
        _core.train_chunk(**args, features=F[:-1])
    with pytest.raises(ValueError, match=r"P.*\(F_dim, H_L\)"):
        _core.train_chunk(**args, features=F[:, :-1].copy())
    with pytest.raises(TypeError, match="'features' has dtype float32"):
        _core.train_chunk(**args, features=F.astype(np.float32))
    with pytest.raises(ValueError, match="params must be"):  # P missing from params
        _core.train_chunk(**dict(args, params=params, state1=s1, state2=s2), features=F)
