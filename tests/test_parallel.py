"""The kernels' thread pool (cpp/include/seqrec/parallel.h): results depend on the thread count only --
not on the backend (pool or OpenMP), the spin setting, concurrent callers, a fork, or the pool's
back-off to the calling thread alone when its helper shares the caller's CPU."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from seqrec_fast import _core

N, B, S, H = 301, 33, 41, 24  # big enough that every parallel loop of a step splits


def _inputs(seed=0, K=4):
    rng = np.random.default_rng(seed)
    f = np.float32
    params = [rng.uniform(-0.3, 0.3, (H, 3 * H)).astype(f), rng.uniform(-0.3, 0.3, (H, 3 * H)).astype(f),
              rng.uniform(-0.1, 0.1, 3 * H).astype(f), rng.uniform(-0.3, 0.3, (N, H)).astype(f),
              rng.uniform(-0.1, 0.1, N).astype(f)]
    s1 = [np.full(p.shape, 0.1, f) for p in params]
    s2 = [np.zeros(p.shape, f) for p in params]
    x = rng.integers(0, N, size=(K, 1, B)).astype(np.int32)
    y = rng.integers(0, N, size=(K, 1, B)).astype(np.int32)
    reset = (rng.random((K, 1, B)) < 0.2).astype(np.uint8)
    neg = rng.integers(0, N, size=(K, 1, S)).astype(np.int32)
    dh = [((rng.random((K, 1, B, H)) >= 0.3) / 0.7).astype(f)]
    ls = np.log(np.arange(1, N + 1)).astype(f)
    return params, s1, s2, x, y, reset, neg, dh, ls


CONFIG = {"loss": "cross-entropy", "logq": 1.0, "sample_alpha": 0.5, "batch_size": B,
          "optimizer": "adagrad", "learning_rate": 0.1, "momentum": 0.2, "step": 1}
INPUTS = _inputs()


def train(nt: int):
    """Parameters and losses after a chunk of 4 steps at `nt` threads, from the same start."""
    params, s1, s2, x, y, reset, neg, dh, ls = INPUTS
    p = [a.copy() for a in params]
    a1 = [a.copy() for a in s1]
    a2 = [a.copy() for a in s2]
    hidden = [np.zeros((B, H), np.float32)]
    res = _core.train_chunk("gru", "constrained", p, a1, a2, hidden, None, x, y, reset, neg, None,
                            dh, ls, CONFIG, num_threads=nt)
    return [np.asarray(res[0]).copy(), *p, *hidden]


def topk(nt: int):
    rng = np.random.default_rng(1)
    Hq = rng.normal(size=(3, H)).astype(np.float32)
    W = rng.normal(size=(5000, H)).astype(np.float32)
    b = rng.normal(size=5000).astype(np.float32)
    idx, sc = _core.topk(Hq, W, b, 20, None, None, nt)
    return [np.asarray(idx).copy(), np.asarray(sc).copy()]


def assert_identical(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.fixture
def restore_policy():
    backend, spin, solo = _core.parallel_backend(), _core.pool_spin_us(), _core.pool_solo_ms()
    yield
    _core.set_parallel_backend(backend)
    _core.set_pool_spin_us(spin)
    _core.set_pool_solo_ms(solo)


@pytest.mark.parametrize("nt", [2, 3])
def test_pool_and_openmp_give_identical_results(restore_policy, nt):
    if not _core.openmp_enabled():
        pytest.skip("built without OpenMP: only the pool backend exists")
    _core.set_parallel_backend("pool")
    a, ta = train(nt), topk(nt)
    _core.set_parallel_backend("openmp")
    assert _core.parallel_backend() == "openmp"
    b, tb = train(nt), topk(nt)
    assert_identical(a, b)
    assert_identical(ta, tb)


def test_spin_setting_changes_nothing_but_timing(restore_policy):
    _core.set_pool_spin_us(0)
    assert _core.pool_spin_us() == 0
    a = train(2)
    _core.set_pool_spin_us(200)
    assert_identical(a, train(2))
    assert _core.pool_workers() >= 1  # a 2-thread call started a worker


def test_repeatable_and_thread_count_agreement():
    a = train(2)
    assert_identical(a, train(2))
    c = train(1)
    for u, v in zip(a, c):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_concurrent_callers_get_the_sequential_results():
    # A second caller while the pool is busy runs the same chunks inline: same numbers.
    want = {nt: (train(nt), topk(nt)) for nt in (2, 3)}
    got, errors = [], []

    def work(nt):
        try:
            for _ in range(3):
                got.append((nt, train(nt), topk(nt)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(nt,)) for nt in (2, 3, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 12
    for nt, tr, tk in got:
        assert_identical(tr, want[nt][0])
        assert_identical(tk, want[nt][1])


def _child(q):
    q.put([a.tolist() for a in train(2)])


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="no fork on this platform")
def test_forked_child_runs_the_kernels_with_threads():
    want = train(2)  # the parent's pool has workers now; the child inherits none of them
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    out = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0
    for u, v in zip(want, out):
        np.testing.assert_array_equal(u, np.asarray(v, u.dtype))


def test_bad_policy_values_raise(restore_policy):
    with pytest.raises(ValueError, match="parallel backend"):
        _core.set_parallel_backend("tbb")
    with pytest.raises(ValueError, match="spin_us"):
        _core.set_pool_spin_us(-1)
    with pytest.raises(ValueError, match="solo_ms"):
        _core.set_pool_solo_ms(-5)
    with pytest.raises(ValueError, match="solo_ms"):
        _core.set_pool_solo_ms(10**15)  # would overflow the nanosecond clock arithmetic


def test_solo_setting_changes_nothing_but_timing(restore_policy):
    _core.set_pool_solo_ms(0)
    assert _core.pool_solo_ms() == 0
    a = train(2)
    _core.set_pool_solo_ms(250)
    assert _core.pool_solo_ms() == 250
    assert_identical(a, train(2))
    counts = _core.pool_backoffs()
    assert set(counts) == {"stalled", "shared_cpu"} and all(v >= 0 for v in counts.values())


# A child process confined to one CPU: its pool's helper can only run on the caller's CPU, so the
# pool must back off to the caller alone ("shared_cpu"), and every result must stay bit-identical.
_ONE_CPU_CHILD = """
import os, sys
import numpy as np
os.sched_setaffinity(0, {{{cpu}}})
sys.path.insert(0, {tests!r})
from seqrec_fast import _core
import test_parallel as tp
want = [np.load({ref!r})[k] for k in sorted(np.load({ref!r}).files, key=int)]
for i in range(400):
    tp.assert_identical(tp.train(2), want)
    if _core.pool_backoffs()["shared_cpu"] >= 2:
        break
tp.assert_identical(tp.train(2), want)  # during the back-off
print(_core.pool_backoffs()["shared_cpu"], i)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_pool_backs_off_when_its_helper_shares_the_callers_cpu(tmp_path):
    want = train(2)
    ref = tmp_path / "want.npz"
    np.savez(ref, **{str(i): a for i, a in enumerate(want)})
    cpu = sorted(os.sched_getaffinity(0))[0]
    code = _ONE_CPU_CHILD.format(cpu=cpu, tests=str(Path(__file__).parent), ref=str(ref))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SEQREC_SOLO_MS": "20"})
    assert out.returncode == 0, out.stderr[-3000:]
    backoffs, rounds = map(int, out.stdout.split())
    assert backoffs >= 2, f"no back-off in {rounds + 1} rounds of 2-thread training on one CPU"
