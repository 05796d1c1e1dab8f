"""Bad input to the C++ kernels raises TypeError / ValueError naming the argument; it never
crashes, converts silently or reads out of bounds."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec_fast import _core

B, E, H = 5, 7, 3


@pytest.fixture
def gru_args(rng):
    return dict(
        x=rng.normal(size=(B, E)),
        h=rng.normal(size=(B, H)),
        W_x=rng.normal(size=(E, 3 * H)),
        W_h=rng.normal(size=(H, 3 * H)),
        b=np.zeros(3 * H),
    )


@pytest.fixture
def window(rng):
    T = 4
    return dict(
        cell="gru",
        X=rng.normal(size=(T, B, E)),
        h0=[rng.normal(size=(B, H))],
        c0=None,
        reset=np.zeros((T, B), np.uint8),
        weights=[(rng.normal(size=(E, 3 * H)), rng.normal(size=(H, 3 * H)), np.zeros(3 * H))],
    )


def test_wrong_dtype_is_type_error(gru_args):
    gru_args["W_h"] = gru_args["W_h"].astype(np.float32)
    with pytest.raises(TypeError, match="'W_h' has dtype float32; expected float64"):
        _core.gru_forward(**gru_args)


def test_integer_input_is_type_error(gru_args):
    gru_args["x"] = np.ones((B, E), np.int64)
    with pytest.raises(TypeError, match="'x' has dtype int64; expected float32 or float64"):
        _core.gru_forward(**gru_args)


def test_non_array_is_type_error(gru_args):
    gru_args["h"] = gru_args["h"].tolist()
    with pytest.raises(TypeError, match="'h' must be a numpy.ndarray"):
        _core.gru_forward(**gru_args)


def test_non_contiguous_is_value_error(gru_args):
    gru_args["W_x"] = np.asfortranarray(gru_args["W_x"])
    with pytest.raises(ValueError, match="'W_x' must be C-contiguous"):
        _core.gru_forward(**gru_args)


def test_transposed_weight_is_value_error_with_shapes(gru_args):
    gru_args["W_x"] = np.ascontiguousarray(gru_args["W_x"].T)
    with pytest.raises(ValueError, match=r"'W_x' has shape \(9, 7\); expected \(E, G\*H\) = \(7, 9\)"):
        _core.gru_forward(**gru_args)


def test_batch_mismatch_is_value_error(gru_args):
    gru_args["h"] = gru_args["h"][:3].copy()
    with pytest.raises(ValueError, match=r"'h' has shape \(3, 3\)"):
        _core.gru_forward(**gru_args)


def test_wrong_bias_for_cell_is_value_error(gru_args):
    gru_args["b"] = np.zeros(4 * H)
    with pytest.raises(ValueError, match=r"'b' has shape \(12,\)"):
        _core.gru_forward(**gru_args)


def test_bad_num_threads(gru_args):
    with pytest.raises(ValueError, match="num_threads must be >= 1, got 0"):
        _core.gru_forward(**gru_args, num_threads=0)


def test_backward_checks_gates_shape(gru_args):
    h_new, gates = _core.gru_forward(**gru_args)
    with pytest.raises(ValueError, match="'gates'"):
        _core.gru_backward(h_new, gru_args["x"], gru_args["h"], gates[:, :H].copy(),
                           gru_args["W_x"], gru_args["W_h"])


def test_lstm_needs_c(rng):
    x, h = rng.normal(size=(B, E)), rng.normal(size=(B, H))
    W_x, W_h, b = rng.normal(size=(E, 4 * H)), rng.normal(size=(H, 4 * H)), np.zeros(4 * H)
    with pytest.raises(TypeError, match="'c' must be a numpy.ndarray"):
        _core.lstm_forward(x, h, None, W_x, W_h, b)


def test_bad_cell_name(window):
    window["cell"] = "transformer"
    with pytest.raises(ValueError, match="cell must be one of 'rnn', 'gru', 'lstm'; got 'transformer'"):
        _core.sequence_forward(**window)


def test_zero_steps(window):
    window["X"] = window["X"][:0].copy()
    window["reset"] = None
    with pytest.raises(ValueError, match="T = 0"):
        _core.sequence_forward(**window)


def test_reset_shape_and_dtype(window):
    bad = dict(window, reset=np.zeros((3, B), np.uint8))
    with pytest.raises(ValueError, match=r"'reset' has shape \(3, 5\); expected \(T, B\) = \(4, 5\)"):
        _core.sequence_forward(**bad)
    bad = dict(window, reset=np.zeros((4, B), np.float64))
    with pytest.raises(TypeError, match="'reset' has dtype float64; expected bool or uint8"):
        _core.sequence_forward(**bad)
    # bool masks are accepted as they are
    ok = dict(window, reset=np.zeros((4, B), bool))
    _core.sequence_forward(**ok)


def test_h0_list_length(window):
    window["h0"] = window["h0"] * 2
    with pytest.raises(TypeError, match="'h0' must be a list of 1 arrays"):
        _core.sequence_forward(**window)


def test_weights_structure(window):
    with pytest.raises(TypeError, match=r"weights\[0\] must be a \(W_x, W_h, b\) tuple"):
        _core.sequence_forward(**dict(window, weights=[window["weights"][0][:2]]))
    with pytest.raises(ValueError, match="'weights' is empty"):
        _core.sequence_forward(**dict(window, weights=[]))
    W_x, W_h, b = window["weights"][0]
    with pytest.raises(ValueError, match=r"'weights\[0\].W_x' has shape \(6, 9\)"):
        _core.sequence_forward(**dict(window, weights=[(W_x[:6].copy(), W_h, b)]))


def test_c0_rejected_for_gru(window):
    with pytest.raises(ValueError, match="c0 must be None"):
        _core.sequence_forward(**dict(window, c0=window["h0"]))


def test_backward_cache_is_validated(window, rng):
    Y, _, _, cache = _core.sequence_forward(**window)
    args = dict(cell="gru", dY=np.zeros_like(Y), dh_last=None, dc_last=None, X=window["X"],
                reset=window["reset"], weights=window["weights"], cache=cache)
    broken = [dict(cache[0])]
    del broken[0]["gates"]
    with pytest.raises(ValueError, match=r"cache\[0\]\['gates'\] is missing"):
        _core.sequence_backward(**dict(args, cache=broken))
    short = [{k: v[:2].copy() for k, v in cache[0].items()}]
    with pytest.raises(ValueError, match=r"cache\[0\]\['h_in'\]' has shape \(2, 5, 3\)"):
        _core.sequence_backward(**dict(args, cache=short))
    with pytest.raises(ValueError, match=r"'dY' has shape"):
        _core.sequence_backward(**dict(args, dY=np.zeros((4, B, H + 1))))


def test_no_silent_copy_of_float32_view(rng):
    """A strided float32 view is refused rather than copied behind the caller's back."""
    x = rng.normal(size=(B, 2 * E)).astype(np.float32)[:, ::2]
    h = np.zeros((B, H), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.rnn_forward(x, h, np.zeros((E, H), np.float32), np.zeros((H, H), np.float32),
                          np.zeros(H, np.float32))


def test_variant_loader():
    assert _core.ISA in _core.AVAILABLE_ISAS
    assert "generic" in _core.AVAILABLE_ISAS
    with pytest.raises(ValueError, match="not available"):
        _core.variant("sse9")
