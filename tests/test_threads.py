"""The default thread count (seqrec_fast.threads): affinity mask, cgroup v1 / v2 CPU quota, env.

The cgroup files are written into a temporary folder laid out like /sys/fs/cgroup and passed by path.
"""

from __future__ import annotations

import os

import pytest
from seqrec_fast import threads
from seqrec_fast.model import SessionRNN
from seqrec_fast.threads import cgroup_cpu_limit, default_num_threads


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v2(tmp_path, cpu_max_by_dir: dict, rel: str = "/"):
    """A cgroup v2 tree: {relative dir: cpu.max text}; /proc/self/cgroup says `0::rel`."""
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    for d, text in cpu_max_by_dir.items():
        _write(root / d.strip("/") / "cpu.max" if d.strip("/") else root / "cpu.max", text)
    proc = tmp_path / "proc_self_cgroup"
    _write(proc, f"0::{rel}\n")
    return root, proc


def _v1(tmp_path, quota_by_dir: dict, rel: str = "/", mount: str = "cpu,cpuacct"):
    """A cgroup v1 tree: {relative dir: (cfs_quota_us, cfs_period_us)} under root/<mount>."""
    root = tmp_path / "cgroup"
    for d, (q, p) in quota_by_dir.items():
        base = root / mount / d.strip("/") if d.strip("/") else root / mount
        _write(base / "cpu.cfs_quota_us", f"{q}\n")
        _write(base / "cpu.cfs_period_us", f"{p}\n")
    (root / mount).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    _write(proc, f"12:memory:{rel}\n4:cpu,cpuacct:{rel}\n0::/\n")
    return root, proc


def _count(root, proc, affinity=64, environ=None):
    return default_num_threads(environ=environ or {}, affinity=affinity, cgroup_root=root,
                               proc_self_cgroup=proc)


def test_v2_quota_of_two_cpus_on_64_cores_gives_two_threads(tmp_path):
    root, proc = _v2(tmp_path, {"/": "200000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.0)
    assert _count(root, proc, affinity=64) == 2


def test_v2_no_limit_keeps_the_affinity_count(tmp_path):
    root, proc = _v2(tmp_path, {"/": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert _count(root, proc, affinity=64) == 64
    assert _count(root, proc, affinity=3) == 3


def test_v2_fractional_quota_rounds_down_but_never_below_one(tmp_path):
    root, proc = _v2(tmp_path, {"/": "250000 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.5)
    assert _count(root, proc) == 2
    root, proc = _v2(tmp_path / "b", {"/": "50000 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)
    assert _count(root, proc) == 1


def test_v2_nested_cgroup_takes_the_smallest_quota_on_its_path(tmp_path):
    # the process sits in /kubepods/pod1/ctr; the pod is limited to 3 CPUs, the container to none
    root, proc = _v2(tmp_path, {"/kubepods": "max 100000", "/kubepods/pod1": "300000 100000",
                                "/kubepods/pod1/ctr": "max 100000"}, rel="/kubepods/pod1/ctr")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)
    assert _count(root, proc, affinity=64) == 3
    # a tighter container limit wins over the pod's
    (root / "kubepods/pod1/ctr/cpu.max").write_text("150000 100000\n")
    assert _count(root, proc, affinity=64) == 1


def test_affinity_smaller_than_quota_wins(tmp_path):
    root, proc = _v2(tmp_path, {"/": "800000 100000"})
    assert _count(root, proc, affinity=2) == 2


def test_v1_cfs_quota(tmp_path):
    root, proc = _v1(tmp_path, {"/": (200000, 100000)})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.0)
    assert _count(root, proc, affinity=64) == 2


def test_v1_unlimited_quota_is_minus_one(tmp_path):
    root, proc = _v1(tmp_path, {"/": (-1, 100000)})
    assert cgroup_cpu_limit(root, proc) is None
    assert _count(root, proc, affinity=64) == 64


def test_v1_separate_cpu_mount_and_nested_path(tmp_path):
    root, proc = _v1(tmp_path, {"/": (-1, 100000), "/docker/abc": (150000, 50000)},
                     rel="/docker/abc", mount="cpu")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)
    assert _count(root, proc, affinity=64) == 3


def test_v1_path_not_visible_in_container_falls_back_to_the_mount_root(tmp_path):
    # without a cgroup namespace /proc/self/cgroup names the host path, but the container sees its
    # own cgroup mounted at the root of the cpu hierarchy
    root, proc = _v1(tmp_path, {"/": (100000, 100000)}, rel="/docker/abc")
    assert _count(root, proc, affinity=64) == 1


def test_missing_or_garbled_files_mean_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "no_proc_file") is None
    assert _count(tmp_path / "nothing", tmp_path / "no_proc_file", affinity=5) == 5
    root, proc = _v2(tmp_path, {"/": "garbage\n"})
    assert cgroup_cpu_limit(root, proc) is None
    root, proc = _v1(tmp_path / "v1", {"/": ("x", 100000)})
    assert cgroup_cpu_limit(root, proc) is None


def test_environment_overrides(tmp_path):
    root, proc = _v2(tmp_path, {"/": "200000 100000"})
    assert _count(root, proc, environ={"SEQREC_NUM_THREADS": "5"}) == 5
    assert _count(root, proc, environ={"OMP_NUM_THREADS": "3,1"}) == 3
    # SEQREC_NUM_THREADS is ours and is checked; OMP_NUM_THREADS garbage is someone else's: ignored
    assert _count(root, proc, environ={"OMP_NUM_THREADS": "lots"}) == 2
    with pytest.raises(ValueError, match="SEQREC_NUM_THREADS"):
        _count(root, proc, environ={"SEQREC_NUM_THREADS": "0"})
    with pytest.raises(ValueError, match="SEQREC_NUM_THREADS"):
        _count(root, proc, environ={"SEQREC_NUM_THREADS": "two"})


def test_this_machine_respects_its_affinity_mask():
    n = default_num_threads(environ={})
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_model_default_comes_from_the_policy(monkeypatch):
    monkeypatch.setenv("SEQREC_NUM_THREADS", "1")
    assert threads.default_num_threads() == 1
    m = SessionRNN(num_threads=None)
    assert m.num_threads is None  # scikit-learn contract: __init__ stores the argument as given
    monkeypatch.setenv("SEQREC_NUM_THREADS", "3")
    from seqrec_fast import model as model_mod
    assert model_mod._default_threads() == 3
