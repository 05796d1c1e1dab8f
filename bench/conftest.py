"""pytest configuration for the benchmark suite.

    pytest bench/ --benchmark-only            # every case (kernels, training steps and epoch, evaluation,
                                              # serving)
    pytest bench/ --benchmark-only --quick    # smoke test for CI: small cases, few rounds (< 1 min)

The benchmark scripts are named ``bench_*.py`` (they are also runnable as scripts); this file adds that
pattern to ``python_files`` so that ``pytest bench/`` collects them. Every case checks its result against
the NumPy reference before it is timed; the PyTorch cases skip when torch is not installed.

``--quick`` (or the environment variable ``SEQREC_BENCH_QUICK=1``) keeps only the cases marked small
(kernels at B = 32, evaluation and serving at N = 3000, one thread on the C++ side of training and
evaluation plus the reference; the training epoch on the C++ side, one thread) and
caps pytest-benchmark at a few rounds of at most 0.1 s per case. ``-m quick`` selects the same cases
without changing the timing settings.
"""

from __future__ import annotations

import os

import pytest

# Parameter ids that are too slow for the quick mode (matched against the test's node id).
_SLOW_IDS = ("-512]", "512-", "40000", "cpp2", "torch2", "idiomatic1", "test_recommend_batch",
             "test_train_epoch[ref", "test_train_epoch[torch")


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="benchmarks: small cases and few rounds only (CI smoke test, < 1 minute)")


def pytest_configure(config):
    config.addinivalue_line("python_files", "bench_*.py")
    config.addinivalue_line("markers", "quick: a small benchmark case, kept by --quick")
    if _quick(config):
        # pytest-benchmark options (present when the plugin is installed)
        opt = config.option
        if hasattr(opt, "benchmark_max_time"):
            opt.benchmark_max_time = 0.1
            opt.benchmark_min_rounds = 3
            opt.benchmark_warmup = False


def _quick(config) -> bool:
    return bool(config.getoption("--quick")) or os.environ.get("SEQREC_BENCH_QUICK") == "1"


def _is_slow(item) -> bool:
    return any(s in item.nodeid for s in _SLOW_IDS)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not _is_slow(item):
            item.add_marker(pytest.mark.quick)
    if not _quick(config):
        return
    keep, drop = [], []
    for item in items:
        (drop if _is_slow(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
