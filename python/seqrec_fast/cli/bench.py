"""``seqrec bench``: the benchmark report."""

from __future__ import annotations

import argparse


def _register_bench(sub: argparse._SubParsersAction) -> None:
    from ..bench import add_arguments
    from ..bench import run as _run_bench

    p = sub.add_parser(
        "bench",
        help="benchmark the C++ core against the NumPy reference and PyTorch (report + plots)",
        description="Run the comparison matrix (kernels, training, serving; C++ vs the NumPy "
        "reference vs PyTorch, at 1 and 2 threads pinned on every side) from the repository's bench/ "
        "scripts, validating every case before timing, and write records.jsonl, report.md and PNG "
        "plots (matplotlib: pip install 'seqrec-fast[bench]') into --out.",
    )
    add_arguments(p)
    p.set_defaults(func=_run_bench)
