"""The C++ kernels, built once per instruction-set level; this module re-exports the fastest
variant the running CPU supports.

Eigen fixes its SIMD width at compile time, so the build compiles the same bindings as
``_core_generic`` (baseline x86-64 / any CPU), ``_core_avx2`` (AVX2 + FMA) and ``_core_avx512``.
Set ``SEQREC_FAST_ISA=generic|avx2|avx512`` to force one (an unsupported or missing choice raises
ImportError rather than crashing later with an illegal instruction).
"""

from __future__ import annotations

import os
from importlib import import_module

# Threads (issue 14). Every kernel's parallel loop runs on the library's own work-claiming pool
# (cpp/include/seqrec/parallel.h): the calling thread never waits for a thread that has not started,
# and idle threads spin SEQREC_SPIN_US (default 20) microseconds, then sleep. When another process
# holds a core (a helper stalls a loop, or shares the caller's CPU), the caller runs the loops alone
# for SEQREC_SOLO_MS (default 100) and then tries its helpers again. SEQREC_PARALLEL=openmp
# selects OpenMP regions instead; then libgomp must wait passively, or 2 threads beside one busy
# process train ~20x slower than 1 (measured: docs/results.md). libgomp reads its wait policy once,
# when it is loaded with the kernel module below, so it is set here, before the import, unless the
# user set OMP_WAIT_POLICY or GOMP_SPINCOUNT themselves.
if os.environ.get("SEQREC_PARALLEL", "").strip().lower() == "openmp" and not (
    os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT")
):
    os.environ["OMP_WAIT_POLICY"] = "passive"

from . import _core_generic  # noqa: E402

# Each variant and the CPU features it was compiled for (see CMakeLists.txt).
_REQUIRES = {
    "avx512": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"),
    "avx2": ("avx2", "fma", "f16c"),
    "generic": (),
}


def _available() -> list[str]:
    found = []
    for isa, features in _REQUIRES.items():
        if not all(_core_generic.cpu_supports(f) for f in features):
            continue
        try:
            import_module(f"seqrec_fast._core_{isa}")
        except ImportError:
            continue
        found.append(isa)
    return found


AVAILABLE_ISAS: tuple[str, ...] = tuple(_available())

_forced = os.environ.get("SEQREC_FAST_ISA", "").strip().lower()
if _forced:
    if _forced not in _REQUIRES:
        raise ImportError(
            f"SEQREC_FAST_ISA={_forced!r} is not a known variant; expected one of {sorted(_REQUIRES)}"
        )
    if _forced not in AVAILABLE_ISAS:
        raise ImportError(
            f"SEQREC_FAST_ISA={_forced!r} is not usable here (built and supported: {AVAILABLE_ISAS})"
        )
    _isa = _forced
else:
    _isa = AVAILABLE_ISAS[0]

_impl = import_module(f"seqrec_fast._core_{_isa}")
globals().update({k: getattr(_impl, k) for k in dir(_impl) if not k.startswith("__")})
__doc__ = _impl.__doc__
__version__ = _impl.__version__


def variant(isa: str):
    """The kernel module built for one instruction-set level (for tests and benchmarks)."""
    if isa not in AVAILABLE_ISAS:
        raise ValueError(f"variant {isa!r} is not available here; available: {AVAILABLE_ISAS}")
    return import_module(f"seqrec_fast._core_{isa}")
