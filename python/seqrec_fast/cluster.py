"""Ray plumbing shared by the scaled-out paths (DESIGN.md §8): tuning, batch scoring, evaluation.

What is here: importing Ray with a clear error when the ``ray`` extra is missing, joining a cluster
or starting a local Ray for the duration of a job (and shutting down only what this process
started), and the number of workers a job can run at once. What is not: any scheduling of our own;
every job hands its units (trials, partitions of sessions) to Ray as tasks or actors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["cluster_cpus", "default_workers", "ray_session", "require_ray"]


def require_ray() -> Any:
    """Import and return the ``ray`` module, or raise ImportError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "this needs Ray; install the extra with: pip install 'seqrec-fast[ray]'"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Use the running Ray, join the cluster at ``address``, or start a local Ray.

    Parameters
    ----------
    address : str, optional
        ``"auto"``, ``"host:port"`` of a running cluster's head, or ``"ray://host:10001"`` (Ray
        Client). None: the Ray this process already joined, else a new local Ray sized to the
        machine (``num_cpus``, default all cores; no dashboard).
    num_cpus : int, optional
        CPUs of a newly started local Ray.

    Yields
    ------
    module
        ``ray``. On exit, Ray is shut down only if this call started or joined it.
    """
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        # ray.init installs its own fatal-signal handler for SIGTERM (it logs and kills the driver),
        # which would bypass the CLI's clean stop (cli.Terminated): keep a Python-level handler
        # that was set before.
        import signal
        import threading

        main = threading.current_thread() is threading.main_thread()
        prev = signal.getsignal(signal.SIGTERM) if main else None
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, **kw)
        if main and callable(prev):
            signal.signal(signal.SIGTERM, prev)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> int:
    """CPUs of the Ray cluster this process joined (at least 1)."""
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def default_workers(threads: int) -> int:
    """How many workers of ``threads`` CPUs each the cluster runs at once (at least 1)."""
    return max(1, cluster_cpus() // max(1, int(threads)))


def _local_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
