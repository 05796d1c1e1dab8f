"""The C++ chunk trainer against the NumPy reference trainer (losses, parameters, optimizer state and
carried state after several windows), and the loss gradients against finite differences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_close

from seqrec_fast import _core
from seqrec_fast import reference as ref

N, B, S = 11, 4, 5  # items, slots, sampled negatives: odd and distinct


def make_model(rng, cell, embedding, layers, E=5, optimizer="adagrad", momentum=0.3,
               dtype=np.float64):
    G = ref.GATES[cell]
    HL = layers[-1]
    I0 = {"constrained": HL, "separate": E, "onehot": N}[embedding]
    params, inp = [], I0
    for h in layers:
        params += [
            rng.uniform(-0.5, 0.5, (inp, G * h)).astype(dtype),
            rng.uniform(-0.5, 0.5, (h, G * h)).astype(dtype),
            rng.uniform(-0.1, 0.1, G * h).astype(dtype),
        ]
        inp = h
    params += [rng.uniform(-0.5, 0.5, (N, HL)).astype(dtype), rng.uniform(-0.1, 0.1, N).astype(dtype)]
    if embedding == "separate":
        params.append(rng.uniform(-0.5, 0.5, (N, E)).astype(dtype))
    s1 = [np.abs(rng.normal(size=p.shape)).astype(dtype) * 0.1 for p in params]
    need2 = optimizer == "adam" or momentum > 0
    s2 = [rng.normal(size=p.shape).astype(dtype) * 0.01 if need2 else None for p in params]
    if optimizer == "adam":
        s2 = [np.abs(s) for s in s2]
    hidden = [rng.normal(size=(B, h)).astype(dtype) * 0.5 for h in layers]
    cstate = [rng.normal(size=(B, h)).astype(dtype) * 0.5 for h in layers] if cell == "lstm" else None
    return params, s1, s2, hidden, cstate, I0


def make_chunk(rng, K, T, layers, I0, embedding, dropout=False, tail=True, dtype=np.float64,
               neg=True):
    x = rng.integers(0, N, size=(K, T, B)).astype(np.int32)
    y = rng.integers(0, N, size=(K, T, B)).astype(np.int32)
    if tail:  # the last slot runs out of sessions in the last window
        x[-1, T // 2 :, -1] = -1
        y[-1, T // 2 :, -1] = -1
    reset = (rng.random((K, T, B)) < 0.3).astype(np.uint8)
    negs = rng.integers(0, N, size=(K, T, S)).astype(np.int32) if neg else None
    de = dh = None
    if dropout:
        if embedding != "onehot":
            de = ((rng.random((K, T, B, I0)) >= 0.25) / 0.75).astype(dtype)
        dh = [((rng.random((K, T, B, h)) >= 0.4) / 0.6).astype(dtype) for h in layers]
    return x, y, reset, negs, de, dh


def clone(xs):
    return [None if a is None else a.copy() for a in xs] if xs is not None else None


def run_both(cell, embedding, layers, config, rng, dtype=np.float64, K=3, T=1, dropout=False,
             neg=True, nt=1):
    params, s1, s2, hidden, cstate, I0 = make_model(
        rng, cell, embedding, layers, optimizer=config.get("optimizer", "adagrad"),
        momentum=config.get("momentum", 0.0), dtype=dtype)
    x, y, reset, negs, de, dh = make_chunk(rng, K, T, layers, I0, embedding, dropout, dtype=dtype,
                                           neg=neg)
    log_support = np.log(rng.integers(1, 50, N)).astype(dtype)
    out = {}
    for name, mod in (("ref", ref), ("cpp", _core)):
        st = [clone(params), clone(s1), clone(s2), clone(hidden), clone(cstate)]
        res = mod.train_chunk(cell, embedding, st[0], st[1], st[2], st[3], st[4], x, y, reset, negs,
                              de, dh, log_support, config, **({"num_threads": nt} if name == "cpp" else {}))
        out[name] = (res, st)
    return out


def compare(out, dtype):
    (rr, rs), (cr, cs) = out["ref"], out["cpp"]
    assert rr[2] == cr[2] and rr[3] == cr[3] and rr[4] == cr[4]
    np.testing.assert_array_equal(rr[1], cr[1])
    assert_close("loss", cr[0], rr[0], dtype)
    for group, a_list, e_list in zip(("param", "state1", "state2", "hidden", "cell_state"), cs, rs):
        if e_list is None:
            assert a_list is None
            continue
        for i, (a, e) in enumerate(zip(a_list, e_list)):
            if e is None:
                continue
            assert_close(f"{group}[{i}]", a, e, dtype)


BASE = dict(batch_size=4, learning_rate=0.1, momentum=0.3, bpreg=0.5, sample_alpha=0.5)

CASES = list(itertools.product(
    ("rnn", "gru", "lstm"),
    ("cross-entropy", "bpr-max", "top1-max"),
    ("constrained", "separate", "onehot"),
    ("adagrad", "adam"),
    (1, 3),
))


@pytest.mark.parametrize("cell,loss,embedding,optimizer,bptt", CASES)
def test_train_chunk_matches_reference(cell, loss, embedding, optimizer, bptt):
    rng = np.random.default_rng(hash((cell, loss, embedding, optimizer, bptt)) % 2**32)
    config = dict(BASE, loss=loss, optimizer=optimizer, elu_param=0.5 if loss == "bpr-max" else 0.0,
                  logq=0.7, step=3)
    layers = (3,) if bptt == 1 else (3, 4)
    out = run_both(cell, embedding, layers, config, rng, K=3, T=bptt, dropout=True)
    assert out["ref"][0][1].sum() > 0
    compare(out, np.float64)


@pytest.mark.parametrize("cell,embedding,optimizer,nt", [
    ("gru", "separate", "adagrad", 2), ("gru", "onehot", "adam", 3), ("lstm", "constrained", "adam", 2),
    ("rnn", "separate", "adagrad", 1)])
def test_fused_layer_update_over_many_row_blocks_matches_reference(cell, embedding, optimizer, nt):
    # Wide layers: backward applies the optimizer update of W_x, W_h and b block by block of
    # gradient rows (sequence.h WeightUpdate; ~512 KiB per block, W_x's rows then W_h's, the GRU's
    # candidate columns from r*h), so here every matrix spans many blocks (float64: 72 rows of
    # 3*300 columns), a thread's rows start mid-block, and the second layer's W_x / W_h boundary
    # (row 300 of 440) falls inside a thread's rows.
    rng = np.random.default_rng(7)
    config = dict(BASE, loss="cross-entropy", optimizer=optimizer, logq=0.5, step=2)
    out = run_both(cell, embedding, (300, 140), config, rng, K=2, T=2, dropout=True, nt=nt)
    compare(out, np.float64)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1-max"])
def test_train_chunk_float32_matches_reference(cell, loss):
    rng = np.random.default_rng(7)
    config = dict(BASE, loss=loss, optimizer="adagrad", logq=1.0)
    out = run_both(cell, "constrained", (3,), config, rng, dtype=np.float32, K=4, T=1, dropout=True)
    (rr, rs), (cr, cs) = out["ref"], out["cpp"]
    np.testing.assert_allclose(cr[0], rr[0], rtol=1e-4, atol=1e-5)
    for a, e in zip(cs[0], rs[0]):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("embedding", ["constrained", "separate"])
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_full_softmax_matches_reference(embedding, loss):
    rng = np.random.default_rng(3)
    config = dict(BASE, loss=loss, full_softmax=True, optimizer="adagrad")
    out = run_both("gru", embedding, (3,), config, rng, K=3, T=2, neg=False)
    compare(out, np.float64)


def test_in_batch_negatives_only_matches_reference():
    rng = np.random.default_rng(4)
    out = run_both("gru", "constrained", (3,), dict(BASE, loss="bpr-max"), rng, K=3, neg=False)
    compare(out, np.float64)


def test_sampled_loss_with_all_items_equals_full_softmax():
    """Oracle: cross-entropy over B in-batch columns plus all N items as 'negatives' equals the
    full softmax over N items plus the B in-batch duplicates; with one active row, the sampled
    matrix [y, 0..N-1] has the target twice, so compare against the closed form instead."""
    rng = np.random.default_rng(5)
    R = rng.normal(size=(1, N))
    y = 4
    cols = np.concatenate([[y], np.arange(N)])
    loss_s, _ = ref.xe_loss(R[:, cols], np.array([0]))
    e = np.exp(R[0] - R[0].max())
    p = e[y] / (e.sum() + e[y])
    np.testing.assert_allclose(loss_s, -np.log(p))


def test_thread_count_agreement_and_repeatability():
    rng = np.random.default_rng(6)
    config = dict(BASE, loss="cross-entropy", logq=1.0)
    params, s1, s2, hidden, cstate, I0 = make_model(rng, "gru", "constrained", (7,), momentum=0.3,
                                                    dtype=np.float32)
    big_B = 33
    hidden = [np.zeros((big_B, 7), np.float32)]
    x = rng.integers(0, N, size=(5, 1, big_B)).astype(np.int32)
    y = rng.integers(0, N, size=(5, 1, big_B)).astype(np.int32)
    reset = np.zeros((5, 1, big_B), np.uint8)
    negs = rng.integers(0, N, size=(5, 1, S)).astype(np.int32)
    ls = np.log(np.arange(1, N + 1)).astype(np.float32)

    def run(nt):
        st = [clone(params), clone(s1), clone(s2), clone(hidden)]
        res = _core.train_chunk("gru", "constrained", st[0], st[1], st[2], st[3], None, x, y, reset,
                                negs, None, None, ls, config, num_threads=nt)
        return res, st

    a, b = run(2), run(2)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    for u, v in zip(a[1][0], b[1][0]):
        np.testing.assert_array_equal(u, v)
    c = run(1)
    np.testing.assert_allclose(a[0][0], c[0][0], rtol=1e-5)
    for u, v in zip(a[1][0], c[1][0]):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_non_finite_loss_stops_before_update():
    rng = np.random.default_rng(8)
    params, s1, s2, hidden, cstate, I0 = make_model(rng, "gru", "constrained", (3,))
    x, y, reset, negs, _, _ = make_chunk(rng, 3, 1, (3,), I0, "constrained")
    params[-1][:] = np.nan  # b_y: every score is NaN
    before = clone(params)
    res = _core.train_chunk("gru", "constrained", params, s1, s2, hidden, None, x, y, reset, negs,
                            None, None, None, dict(BASE), num_threads=1)
    assert res[3] is True and res[2] == 0 and res[4] == 0
    for a, e in zip(params[:-1], before[:-1]):
        np.testing.assert_array_equal(a, e)


# --------------------------------------------------------------------------------------------
# Loss gradients by finite differences (reference)


def numeric(f, R, eps=1e-6):
    g = np.zeros_like(R)
    for idx in np.ndindex(R.shape):
        old = R[idx]
        R[idx] = old + eps
        fp = f(R).sum()
        R[idx] = old - eps
        fm = f(R).sum()
        R[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize(
    "name,fn",
    [
        ("xe", lambda R, p: ref.xe_loss(R, p)),
        ("bpr", lambda R, p: ref.bpr_max_loss(R, p, 0.0, 0.7)),
        ("bpr-elu", lambda R, p: ref.bpr_max_loss(R, p, 0.5, 1.0)),
        ("top1", lambda R, p: ref.top1_max_loss(R, p)),
    ],
)
def test_loss_gradients_match_finite_differences(rng, name, fn):
    R = rng.normal(size=(5, 9)) * 1.5
    pos = np.array([0, 3, 8, 1, 1])
    _, g = fn(R, pos)
    np.testing.assert_allclose(g, numeric(lambda r: fn(r, pos)[0], R), rtol=1e-6, atol=1e-8)


def test_train_chunk_rejects_bad_input(rng):
    params, s1, s2, hidden, cstate, I0 = make_model(rng, "gru", "constrained", (3,))
    x, y, reset, negs, _, _ = make_chunk(rng, 2, 1, (3,), I0, "constrained")
    args = dict(cell="gru", embedding="constrained", params=params, state1=s1, state2=s2,
                hidden=hidden, cell_state=None, x=x, y=y, reset=reset, neg=negs, drop_embed=None,
                drop_hidden=None, log_support=None, config=dict(BASE))
    bad = x.copy()
    bad[1, 0, 2] = N
    with pytest.raises(IndexError, match=r"x holds 11 .* expected values in \[-1, 11\)"):
        _core.train_chunk(**dict(args, x=bad))
    badn = negs.copy()
    badn[0, 0, 0] = -1
    with pytest.raises(IndexError, match="neg holds -1"):
        _core.train_chunk(**dict(args, neg=badn))
    with pytest.raises(TypeError, match="'x' has dtype int64"):
        _core.train_chunk(**dict(args, x=x.astype(np.int64)))
    with pytest.raises(ValueError, match="config\\['loss'\\]"):
        _core.train_chunk(**dict(args, config=dict(BASE, loss="hinge")))
    with pytest.raises(ValueError, match="log_support"):
        _core.train_chunk(**dict(args, config=dict(BASE, logq=1.0)))
    with pytest.raises(ValueError, match="hidden"):
        _core.train_chunk(**dict(args, hidden=[np.zeros((B + 1, 3))]))
    ro = [p.copy() for p in params]
    ro[0].setflags(write=False)
    with pytest.raises(ValueError, match="must be writable"):
        _core.train_chunk(**dict(args, params=ro))
