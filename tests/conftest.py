"""Shared fixtures and the tolerance table for comparing the C++ kernels with the NumPy reference."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# (rtol, atol) per dtype, keyed by tensor name. float64 must agree to round-off; float32 loosely,
# since the float32 C++ kernels accumulate in float32 in a different order than NumPy's BLAS.
TOLERANCES = {
    np.float64: {
        "default": (1e-10, 1e-12),
    },
    np.float32: {
        "default": (1e-5, 1e-5),
        # weight gradients sum B*T products: more round-off
        "dW_x": (1e-4, 1e-5),
        "dW_h": (1e-4, 1e-5),
        "db": (1e-4, 1e-5),
    },
}


def tol(name: str, dtype) -> tuple[float, float]:
    table = TOLERANCES[np.dtype(dtype).type]
    return table.get(name, table["default"])


def assert_close(name: str, actual, expected, dtype=None):
    """Compare one named tensor with the tolerance of its name and dtype."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = dtype or actual.dtype
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    rtol, atol = tol(name, dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def data_dir() -> Path:
    """The shared datasets: $SEQREC_DATA_DIR, else ../shared/data beside the repository."""
    env = os.environ.get("SEQREC_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs, no dashboard), started once for the session and shut down after.

    Skips when ray is not installed, unless the environment variable CI is set: then it fails.
    """
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed but CI is set: install the 'ray' extra")
        pytest.skip("ray is not installed (pip install '.[ray]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
