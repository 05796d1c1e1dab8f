"""The PyTorch twin (bench/torch_gru4rec.py) against ``reference.train_chunk`` in float64: losses,
parameters, optimizer state and carried state after a few steps. Skipped when torch is missing.

    pytest bench/test_torch_agreement.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_gru4rec as tg  # noqa: E402

from seqrec_fast import reference as ref  # noqa: E402

N, B, S = 11, 4, 5  # odd, distinct sizes so a transposed shape fails loudly


def make_case(rng, layers=(3,), K=4, tail=True, drop_embed=False, S=S):
    HL = layers[-1]
    params, inp = [], HL
    for h in layers:
        params += [rng.uniform(-0.5, 0.5, (inp, 3 * h)), rng.uniform(-0.5, 0.5, (h, 3 * h)),
                   rng.uniform(-0.1, 0.1, 3 * h)]
        inp = h
    params += [rng.uniform(-0.5, 0.5, (N, HL)), rng.uniform(-0.1, 0.1, N)]
    s1 = [np.abs(rng.normal(size=p.shape)) * 0.1 for p in params]
    s2 = [rng.normal(size=p.shape) * 0.01 for p in params]
    hidden = [rng.normal(size=(B, h)) * 0.5 for h in layers]
    x = rng.integers(0, N, size=(K, 1, B)).astype(np.int32)
    y = rng.integers(0, N, size=(K, 1, B)).astype(np.int32)
    if tail:  # the last slot runs out of sessions
        x[-2:, :, -1] = -1
        y[-2:, :, -1] = -1
    reset = (rng.random((K, 1, B)) < 0.3).astype(np.uint8)
    neg = rng.integers(0, N, size=(K, 1, S)).astype(np.int32) if S else None
    de = ((rng.random((K, 1, B, HL)) >= 0.25) / 0.75) if drop_embed else None
    dh = [((rng.random((K, 1, B, h)) >= 0.4) / 0.6) for h in layers]
    log_support = np.log(rng.integers(1, 50, N).astype(np.float64))
    return [params, s1, s2, hidden], (x, y, reset, neg, de, dh, log_support)


def clone(xs):
    return [[a.copy() for a in group] for group in xs]


CONFIG = dict(loss="cross-entropy", optimizer="adagrad", batch_size=B, learning_rate=0.2,
              momentum=0.2, logq=1.0, sample_alpha=0.5, full_softmax=False, step=1)


def run_both(state, inputs, config=CONFIG):
    x, y, reset, neg, de, dh, ls = inputs
    a, b = clone(state), clone(state)
    r = ref.train_chunk("gru", "constrained", a[0], a[1], a[2], a[3], None, x, y, reset, neg, de, dh,
                        ls, config)
    t = tg.train_chunk(b[0], b[1], b[2], b[3], x, y, reset, neg, de, dh, ls, config)
    return (r, a), (t, b)


def assert_agree(out, tol=1e-8):
    (r, a), (t, b) = out
    assert r[1].sum() > 0
    np.testing.assert_array_equal(r[1], t[1])
    assert r[2:] == t[2:]
    np.testing.assert_allclose(t[0], r[0], rtol=tol, atol=tol)
    for group, ga, gb in zip(("param", "state1", "state2", "hidden"), a, b):
        for i, (e, got) in enumerate(zip(ga, gb)):
            np.testing.assert_allclose(got, e, rtol=tol, atol=tol, err_msg=f"{group}[{i}]")


@pytest.mark.parametrize("layers", [(3,), (3, 4)])
@pytest.mark.parametrize("drop_embed", [False, True])
def test_torch_twin_matches_reference(layers, drop_embed):
    rng = np.random.default_rng(7 + len(layers) + 10 * drop_embed)
    state, inputs = make_case(rng, layers=layers, drop_embed=drop_embed)
    assert_agree(run_both(state, inputs))


def test_torch_twin_in_batch_only_and_no_logq():
    rng = np.random.default_rng(3)
    state, inputs = make_case(rng, S=0)
    assert_agree(run_both(state, inputs, dict(CONFIG, logq=0.0)))


def test_torch_twin_without_momentum():
    rng = np.random.default_rng(4)
    state, inputs = make_case(rng)
    state[2] = [np.zeros_like(p) for p in state[0]]
    assert_agree(run_both(state, inputs, dict(CONFIG, momentum=0.0)))


def test_torch_twin_matches_reference_on_rsc15_setting():
    """The benchmark's own check: real schedule, sampler and masks, H = 100, S = 2048."""
    import bench_train as bt

    case = bt.build_case(n_steps=6, dtype=np.float64, quick=True)
    res = bt.check_torch_twin(case, n_steps=6, tol=1e-8)
    assert res["max_param_diff"] < 1e-8


@pytest.mark.parametrize("elu_param", [0.0, 1.0])
def test_torch_twin_bpr_max_matches_reference(elu_param):
    """BPR-max (the Diginetica setting's loss), with and without the ELU on the scores."""
    rng = np.random.default_rng(11 + int(elu_param))
    state, inputs = make_case(rng, layers=(3, 4), drop_embed=True)
    cfg = dict(CONFIG, loss="bpr-max", logq=0.0, bpreg=0.9, elu_param=elu_param, momentum=0.15)
    assert_agree(run_both(state, inputs, cfg))
