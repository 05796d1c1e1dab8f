"""The default thread count: how many CPUs this process may really use.

One function decides it for the whole library (:func:`default_num_threads`): the model's
``num_threads=None``, the HTTP server's default concurrency and the benchmarks all ask here.

The count is the smallest of

- the CPUs in this process's affinity mask (``os.sched_getaffinity``: ``taskset``, cpusets,
  ``docker --cpuset-cpus``);
- the cgroup CPU quota, rounded down (at least 1): cgroup v2 ``cpu.max`` (``"200000 100000"`` = 2
  CPUs, ``"max 100000"`` = no limit) or cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
  (``docker --cpus``, Kubernetes CPU limits). The smallest quota along the cgroup's path up to the
  root applies, as the kernel enforces every level. Rounded down because a team of threads that
  overruns its quota is throttled as a whole for the rest of the period, and every thread waits at
  the next barrier for the throttled ones: 3 threads on a 2.5-CPU quota run slower than 2;

unless the user said otherwise: ``SEQREC_NUM_THREADS`` (this library only) or ``OMP_NUM_THREADS``
(its first value) set to a positive integer wins. An explicit ``num_threads=`` argument always wins.

A container limited to 2 CPUs on a 64-core host therefore starts 2 threads, not 64.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Union

__all__ = ["affinity_cpus", "cgroup_cpu_limit", "default_num_threads"]

PathLike = Union[str, "os.PathLike[str]"]

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"
# cgroup v1 mounts the cpu controller under one of these names (co-mounted with cpuacct or not).
_V1_CPU_DIRS = ("cpu,cpuacct", "cpuacct,cpu", "cpu")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where the mask is not available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ancestors(base: Path, rel: str) -> list[Path]:
    """``base/rel`` and each parent up to ``base`` (those that exist). In a container with its own
    cgroup namespace ``rel`` is ``/`` and the container's cgroup is mounted at ``base`` itself."""
    parts = [p for p in rel.strip().split("/") if p and p != ".."]
    out = []
    for n in range(len(parts), -1, -1):
        d = base.joinpath(*parts[:n])
        if d.is_dir():
            out.append(d)
    return out


def _v2_quota(d: Path) -> Optional[float]:
    text = _read(d / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(d: Path) -> Optional[float]:
    q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    try:
        quota, period = int(q), int(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None  # quota -1: no limit


def cgroup_cpu_limit(cgroup_root: PathLike = CGROUP_ROOT,
                     proc_self_cgroup: PathLike = PROC_SELF_CGROUP) -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (e.g. ``1.5``), or None when there is none.

    Parameters
    ----------
    cgroup_root : path, default ``/sys/fs/cgroup``
        Where the cgroup file systems are mounted (v2: the unified hierarchy itself; v1: the folder
        holding ``cpu,cpuacct/`` or ``cpu/``; a hybrid layout's ``unified/`` is looked at too).
    proc_self_cgroup : path, default ``/proc/self/cgroup``
        The process's cgroup membership file (lines ``id:controllers:path``).

    Returns
    -------
    float or None
        The smallest quota / period found along the cgroup's path (v2 and v1 both consulted), or
        None when no level sets a quota or the files cannot be read.
    """
    root = Path(cgroup_root)
    text = _read(Path(proc_self_cgroup))
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hid, controllers, rel = fields
        if hid == "0" and controllers == "":  # cgroup v2 (unified)
            for base in (root, root / "unified"):
                if (base / "cgroup.controllers").exists() or base == root:
                    limits += [q for d in _ancestors(base, rel) if (q := _v2_quota(d)) is not None]
        elif "cpu" in controllers.split(","):  # cgroup v1 cpu controller
            for name in _V1_CPU_DIRS:
                base = root / name
                if base.is_dir():
                    limits += [q for d in _ancestors(base, rel) if (q := _v1_quota(d)) is not None]
                    break
    return min(limits) if limits else None


def _env_threads(environ: Mapping[str, str]) -> Optional[int]:
    for var in ("SEQREC_NUM_THREADS", "OMP_NUM_THREADS"):
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        first = raw.split(",")[0].strip()
        try:
            n = int(first)
        except ValueError:
            n = 0
        if n >= 1:
            return n
        if var == "SEQREC_NUM_THREADS":  # ours: say so; OMP_NUM_THREADS belongs to others, skip it
            raise ValueError(f"SEQREC_NUM_THREADS={raw!r} is not a positive integer")
    return None
    return None


def default_num_threads(*, environ: Optional[Mapping[str, str]] = None,
                        affinity: Optional[int] = None,
                        cgroup_root: PathLike = CGROUP_ROOT,
                        proc_self_cgroup: PathLike = PROC_SELF_CGROUP) -> int:
    """The number of threads a kernel call should use by default (see the module docstring).

    Parameters
    ----------
    environ : mapping, optional
        Environment to read ``SEQREC_NUM_THREADS`` / ``OMP_NUM_THREADS`` from (default ``os.environ``).
    affinity : int, optional
        CPUs in the affinity mask (default: :func:`affinity_cpus`).
    cgroup_root, proc_self_cgroup : path
        Passed to :func:`cgroup_cpu_limit`.

    Returns
    -------
    int
        ``>= 1``.

    Raises
    ------
    ValueError
        ``SEQREC_NUM_THREADS`` is set to something that is not a positive integer (an unusable
        ``OMP_NUM_THREADS`` is ignored: it belongs to every OpenMP program).
    """
    env = os.environ if environ is None else environ
    forced = _env_threads(env)
    if forced is not None:
        return forced
    n = affinity_cpus() if affinity is None else max(1, int(affinity))
    quota = cgroup_cpu_limit(cgroup_root, proc_self_cgroup)
    if quota is not None:
        n = min(n, max(1, math.floor(quota + 1e-9)))
    return n
