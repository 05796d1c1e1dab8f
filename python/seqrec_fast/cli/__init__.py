"""The ``seqrec`` command line.

One module per command group (``data``, ``baseline``, ``demo``, ``model``, ``serve``, ``bench``,
``embed``, ``tune``, ``score``); each
defines ``_register_<name>(subparsers)`` adding one subparser with ``set_defaults(func=...)`` (``args -> int``).
Adding a command is writing such a function in its group's module and listing it in
:data:`COMMAND_REGISTRARS`.

User errors (bad path, bad format, bad file, bad value) print ``seqrec: error: ...`` on stderr and exit
with status 2, without a traceback; argparse misuse exits 2 as usual.

SIGTERM (what ``kill``, systemd, Kubernetes and Ray job stop send) is handled like Ctrl-C: it raises
:class:`Terminated`, a ``KeyboardInterrupt``, in the main thread, so every command's Ctrl-C path runs
(``tune`` saves the study and fails its open trials, atomic writers remove their temporary files) and
the process exits with status 143 instead of dying mid-write. ``serve`` is unaffected: uvicorn installs
its own SIGTERM handler (graceful shutdown) when it starts.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Callable

from .baseline import _register_baseline
from .bench import _register_bench
from .common import _TERM, EXIT_USAGE, CLIError, Terminated, terminated, write_json_atomic
from .data import _register_data
from .demo import _register_demo
from .embed import _register_embed
from .model import _register_evaluate, _register_recommend, _register_train
from .score import _register_score
from .serve import _register_serve
from .tune import _register_tune

__all__ = ["COMMAND_REGISTRARS", "CLIError", "Terminated", "build_parser", "main", "write_json_atomic"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


@contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread, default handler only:
    an embedding application's own handler is left alone)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def _raise(signum, frame):
        _TERM["received"] = True  # libraries (Ray) may re-raise it as a plain KeyboardInterrupt
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

COMMAND_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_data,
    _register_baseline,
    _register_demo,
    _register_train,
    _register_evaluate,
    _register_recommend,
    _register_serve,
    _register_bench,
    _register_embed,
    _register_tune,
    _register_score,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``seqrec`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="seqrec",
        description="Session-based recommendation with recurrent networks (GRU4Rec family): data "
        "preparation, baselines, training and evaluation.",
    )
    try:
        from .. import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"seqrec {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in COMMAND_REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error or misuse)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or misuse (2); argparse already printed the message
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    _TERM["received"] = False
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except (
        CLIError,
        FileNotFoundError,
        ValueError,
        ImportError,
        IsADirectoryError,
        PermissionError,
    ) as e:
        print(f"seqrec: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        if terminated(e):
            print("seqrec: terminated (SIGTERM)", file=sys.stderr)
            return EXIT_TERMINATED
        print("seqrec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

