"""bfloat16 training products (precision='bf16', gemm.h) against the NumPy twins in reference.py:
the rounding bit for bit, the product to float32 accumulation error, the chunk trainer against the
reference trainer run with the same rounded products and against float32 within a bf16 tolerance,
bit-identical reruns, and the fallback where the instructions are missing."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from seqrec_fast import _core
from seqrec_fast import reference as ref
from seqrec_fast.model import SessionRNN
from seqrec_fast.synthetic import generate_sessions
from test_train_kernel import clone, make_chunk, make_model

REPO = Path(__file__).resolve().parents[1]
needs_bf16 = pytest.mark.skipif(
    not _core.bf16_available(),
    reason="bf16 products need the avx512 build on a CPU with AVX-512-BF16 (avx512_bf16)")


def _identity(n):
    return np.eye(n, dtype=np.float32)


# --- rounding and the product -----------------------------------------------------------------


def test_reference_rounding():
    """bf16_round: nearest, ties to even, carry into the exponent, overflow to inf, NaN kept."""
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, 2 - 2**-9, 3.4028235e38, -0.0,
                  np.inf, -np.inf, np.nan, -2.5], np.float32)
    want = np.array([1.0, 1.0, 1 + 4 * 2**-8, 1 + 2 * 2**-8, 2.0, np.inf, -0.0, np.inf, -np.inf,
                     np.nan, -2.5], np.float32)
    got = ref.bf16_round(x)
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[6])
    assert not np.any(got.view(np.uint32)[~np.isnan(got)] & 0xFFFF)


@needs_bf16
@pytest.mark.parametrize("K", [1, 32, 67])
def test_rounding_matches_reference(K):
    """A · I with A's rows in every packing path (scalar tail, 32-wide vector blocks): the result is
    A rounded to bfloat16, as reference.bf16_round has it; denormal inputs count as zero (the
    instruction's DAZ), in both."""
    rng = np.random.default_rng(K)
    vals = (rng.standard_normal(40 * K) * 10.0 ** rng.integers(-30, 30, 40 * K)).astype(np.float32)
    vals[:8] = [1 + 2**-8, 1 + 3 * 2**-8, 2 - 2**-9, -2.5, 1e-40, -1e-39, 1.5e-38, 0.0]
    if K == 1:
        vals[8:12] = [np.inf, -np.inf, 3.4028235e38, np.nan]
    A = vals.reshape(-1, K)
    for a, ta in ((A, False), (np.ascontiguousarray(A.T), True)):
        got = _core.gemm_bf16(a, _identity(K), ta, False)
        want = ref.gemm_bf16(a, _identity(K), ta, False)
        np.testing.assert_array_equal(got, want)
        finite = np.isfinite(A) & (np.abs(A) >= 2.0**-126)
        np.testing.assert_array_equal(got[finite], ref.bf16_round(A)[finite])
        assert np.all(got[np.abs(A) < 2.0**-126] == 0)


@needs_bf16
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,K,N", [(13, 37, 101), (1, 1, 1), (8, 2, 48), (9, 33, 49), (50, 300, 17)])
def test_gemm_bf16_matches_reference(trans_a, trans_b, M, K, N):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    got = _core.gemm_bf16(A, B, trans_a, trans_b)
    want = ref.gemm_bf16(A, B, trans_a, trans_b)
    assert got.shape == (M, N) and got.dtype == np.float32
    # float32 accumulation of exact bf16 products: at most ~K roundings of the running sums
    Ao, Bo = (A.T if trans_a else A), (B.T if trans_b else B)
    bound = (K + 1) * 2.0**-24 * (np.abs(ref.bf16_round(Ao)).astype(np.float64)
                                 @ np.abs(ref.bf16_round(Bo)).astype(np.float64))
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound + 1e-30)
    # and it is a bf16 product, not a float32 one: rounding the operands changes the result
    if K > 4:
        assert np.max(np.abs(got - Ao @ Bo)) > 10 * np.max(bound)


@needs_bf16
@pytest.mark.parametrize("M,K,N", [(13, 37, 101), (50, 300, 17), (16, 32, 48), (33, 63, 97)])
def test_gemm_bf16_layouts_give_identical_results(M, K, N):
    # A transposed operand is packed by another route (converted along its contiguous index, then
    # transposed 16x16 in registers): the packed pairs, and so every result bit, must be the same.
    rng = np.random.default_rng(K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    want = _core.gemm_bf16(A, B, False, False)
    for ta in (False, True):
        for tb in (False, True):
            a = np.ascontiguousarray(A.T) if ta else A
            b = np.ascontiguousarray(B.T) if tb else B
            np.testing.assert_array_equal(_core.gemm_bf16(a, b, ta, tb), want)


@needs_bf16
def test_gemm_bf16_rejects_bad_input():
    A = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"argument 'B' has shape \(5, 2\); expected \(K, N\)"):
        _core.gemm_bf16(A, np.ones((5, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _core.gemm_bf16(A.astype(np.float64), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.gemm_bf16(np.ones((4, 3), np.float32).T, np.ones((4, 2), np.float32))


@pytest.mark.skipif("generic" not in _core.AVAILABLE_ISAS, reason="no generic variant built")
def test_generic_variant_says_bf16_is_unavailable():
    gen = _core.variant("generic")
    assert gen.bf16_available() is False
    with pytest.raises(ValueError, match="avx512 build"):
        gen.gemm_bf16(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    # the trainer refuses too (the Python estimator falls back before calling it)
    rng = np.random.default_rng(0)
    params, s1, s2, hidden, _cstate, I0 = make_model(rng, "gru", "constrained", (3,),
                                                     dtype=np.float32)
    x, y, reset, negs, de, dh = make_chunk(rng, 1, 1, (3,), I0, "constrained", dtype=np.float32)
    with pytest.raises(ValueError, match="precision.*bf16.*AVX-512-BF16"):
        gen.train_chunk("gru", "constrained", params, s1, s2, hidden, None, x, y, reset, negs, de,
                        dh, np.zeros(11, np.float32), {"precision": "bf16"}, 1)


# --- the chunk trainer ------------------------------------------------------------------------

CONFIG = {"batch_size": 4, "learning_rate": 0.05, "momentum": 0.3, "bpreg": 0.5,
          "sample_alpha": 0.5, "logq": 0.7, "step": 2}


def _run(mod, cell, embedding, layers, config, seed, K=3, T=1, nt=1):
    rng = np.random.default_rng(seed)
    params, s1, s2, hidden, cstate, I0 = make_model(rng, cell, embedding, layers, dtype=np.float32,
                                                    momentum=config["momentum"])
    x, y, reset, negs, de, dh = make_chunk(rng, K, T, layers, I0, embedding, True, dtype=np.float32)
    log_support = np.log(rng.integers(1, 50, 11)).astype(np.float32)
    st = [clone(params), clone(s1), clone(s2), clone(hidden), clone(cstate)]
    kw = {"num_threads": nt} if mod is _core else {}
    res = mod.train_chunk(cell, embedding, st[0], st[1], st[2], st[3], st[4], x, y, reset, negs, de,
                          dh, log_support, config, **kw)
    return res, st


@needs_bf16
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("loss,embedding,bptt", [("cross-entropy", "constrained", 1),
                                                 ("bpr-max", "separate", 3),
                                                 ("top1-max", "onehot", 2)])
def test_train_chunk_bf16_matches_reference(cell, loss, embedding, bptt):
    config = dict(CONFIG, loss=loss, precision="bf16", elu_param=0.5 if loss == "bpr-max" else 0.0)
    layers = (3,) if bptt == 1 else (3, 4)
    seed = hash((cell, loss, embedding, bptt)) % 2**32
    (cr, cs), (rr, rs) = (_run(m, cell, embedding, layers, config, seed, T=bptt) for m in (_core, ref))
    assert cr[2] == rr[2] == 3 and not cr[3]
    np.testing.assert_array_equal(cr[1], rr[1])
    # same rounded operands on both sides: only float32 summation order differs
    np.testing.assert_allclose(cr[0], rr[0], rtol=2e-5, atol=1e-6)
    for group, a_list, e_list in zip(("param", "state1", "state2", "hidden"), cs, rs):
        for i, (a, e) in enumerate(zip(a_list, e_list)):
            if e is not None:
                np.testing.assert_allclose(a, e, rtol=1e-3, atol=2e-4, err_msg=f"{group}[{i}]")


@needs_bf16
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_train_chunk_bf16_close_to_float32(cell):
    """bf16 products change a step by about bf16's relative precision (2^-8), not more."""
    base = dict(CONFIG, loss="cross-entropy")
    (br, bs), (fr, fs) = (_run(_core, cell, "constrained", (6,), dict(base, precision=p), 7, K=2)
                          for p in ("bf16", "default"))
    np.testing.assert_allclose(br[0], fr[0], rtol=2e-2)
    assert not np.array_equal(br[0], fr[0])  # the bf16 path really ran
    for a, e in zip(bs[0], fs[0]):
        np.testing.assert_allclose(a, e, atol=0.05 * np.max(np.abs(e)) + 1e-3)


@needs_bf16
def test_train_chunk_bf16_rejects_float64():
    rng = np.random.default_rng(0)
    params, s1, s2, hidden, _cstate, I0 = make_model(rng, "gru", "constrained", (3,))
    x, y, reset, negs, de, dh = make_chunk(rng, 1, 1, (3,), I0, "constrained")
    with pytest.raises(TypeError, match="bf16.*float32 master weights"):
        _core.train_chunk("gru", "constrained", params, s1, s2, hidden, None, x, y, reset, negs, de,
                          dh, np.zeros(11), {"precision": "bf16"}, 1)
    with pytest.raises(ValueError, match="config\\['precision'\\] must be"):
        _core.train_chunk("gru", "constrained", params, s1, s2, hidden, None, x, y, reset, negs, de,
                          dh, np.zeros(11), {"precision": "fp8"}, 1)


# --- the estimator ----------------------------------------------------------------------------


def _fit(precision, nt, seed=3):
    data = generate_sessions(n_sessions=300, n_items=60, seed=1)
    m = SessionRNN(layers=[24], batch_size=16, n_sample=40, n_epochs=2, seed=seed, num_threads=nt,
                   precision=precision, progress=False, verbose=False)
    return m.fit(data)


@needs_bf16
def test_bf16_training_is_deterministic_and_learns():
    a, b = _fit("bf16", 2), _fit("bf16", 2)
    assert a.precision_ == "bf16"
    for p, q in zip(a.params_, b.params_):
        np.testing.assert_array_equal(p, q)
    f = _fit(None, 2)
    assert f.precision_ == "float32"
    assert any(not np.array_equal(p, q) for p, q in zip(a.params_, f.params_))
    # same data, same seed: the bf16 model's losses track float32's
    la = np.array([h["loss"] for h in a.history_])
    lf = np.array([h["loss"] for h in f.history_])
    np.testing.assert_allclose(la, lf, rtol=0.05)
    assert la[-1] < la[0]


def test_precision_validation():
    with pytest.raises(ValueError, match="precision must be one of"):
        SessionRNN(precision="fp16")._validated()
    with pytest.raises(ValueError, match="needs dtype='float32'"):
        SessionRNN(precision="bf16", dtype="float64")._validated()
    with pytest.raises(ValueError, match="differs from dtype"):
        SessionRNN(precision="float64")._validated()
    assert SessionRNN(precision="float32")._validated()["precision"] == "float32"


def test_bf16_falls_back_with_a_warning_in_the_generic_build():
    """SEQREC_FAST_ISA=generic (no bf16 kernel in that build): fit warns and trains in float32."""
    if "generic" not in _core.AVAILABLE_ISAS:
        pytest.skip("no generic variant built")
    code = (
        "import warnings, numpy as np\n"
        "from seqrec_fast.model import SessionRNN\n"
        "from seqrec_fast.synthetic import generate_sessions\n"
        "d = generate_sessions(n_sessions=60, n_items=20, seed=1)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    m = SessionRNN(layers=[8], batch_size=8, n_sample=10, n_epochs=1, precision='bf16',\n"
        "                   progress=False, verbose=False, num_threads=1).fit(d)\n"
        "msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]\n"
        "print(m.precision_); print(msgs[0] if msgs else 'NO WARNING')\n"
    )
    # the same seqrec_fast this process imported (an installed package in CI, python/ in a checkout)
    pkg_root = str(Path(_core.__file__).resolve().parents[1])
    env = dict(os.environ, SEQREC_FAST_ISA="generic",
               PYTHONPATH=os.pathsep.join([pkg_root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[0] == "float32"
    assert "precision='bf16' needs bfloat16" in out[1] and "training in float32" in out[1]
    assert ("generic" in out[1]) or ("lacks AVX-512-BF16" in out[1])


def test_fallback_message_in_process():
    """Where this process has no bf16 kernel, fit warns; where it has one, it does not."""
    data = generate_sessions(n_sessions=40, n_items=15, seed=2)
    m = SessionRNN(layers=[8], batch_size=8, n_sample=5, n_epochs=1, precision="bf16",
                   progress=False, verbose=False, num_threads=1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m.fit(data)
    warned = [x for x in w if issubclass(x.category, RuntimeWarning) and "bf16" in str(x.message)]
    assert bool(warned) == (not _core.bf16_available())
    assert m.precision_ == ("bf16" if _core.bf16_available() else "float32")
