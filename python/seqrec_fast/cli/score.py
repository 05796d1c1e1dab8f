"""``seqrec score``: top-K for every session or user history in a file (see :mod:`seqrec_fast.score`)."""

from __future__ import annotations

import argparse

from .common import _check_in_path, _check_out_path, _format_choices, _positive_int


def _register_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="batch top-K for every session in a file, to Parquet (local or on Ray)",
        description="Load MODEL and write the top-K next items after every session (or user history) "
        "in SESSIONS to a Parquet file with the columns session_id, rank, item_id, score (sessions in "
        "input order). The input is streamed (Parquet row groups, text in blocks of lines), so memory "
        "stays bounded; a session's events must be contiguous. Items unknown to the model are "
        "skipped. --engine ray spreads blocks of sessions over Ray actors (one model copy each); the "
        "output is identical to --engine local.",
    )
    p.add_argument("model", help="model file (.npz) written by 'seqrec train'")
    p.add_argument("sessions", help="sessions file (any supported format, Parquet streamed)")
    p.add_argument("--out", required=True, metavar="RECS.parquet", help="Parquet file to write")
    p.add_argument("-k", type=_positive_int, default=20, help="recommendations per session (default 20)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="do not recommend items already in the session")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where to score (default: local)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join with --engine ray (default: a local Ray)")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="W",
                   help="Ray actors (default: the cluster's CPUs / --threads)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads per scorer (default: 1 per Ray actor; locally the model's)")
    p.add_argument("--format", choices=_format_choices(), default="auto",
                   help="format of SESSIONS (default: auto)")
    p.add_argument("--block-sessions", type=_positive_int, default=4096, metavar="S",
                   help="sessions per unit of work (default: 4096)")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from ..model import SessionRNN
    from ..score import score

    _check_in_path(args.model, "model file")
    _check_in_path(args.sessions, "sessions file")
    _check_out_path(args.out, "output file")
    model = SessionRNN.load(args.model)
    st = score(model, args.sessions, args.out, args.k, exclude_seen=args.exclude_seen,
               engine=args.engine, address=args.address, workers=args.workers,
               threads=args.threads, format=args.format, block_sessions=args.block_sessions)
    print(f"scored {st.n_scored:,} of {st.n_sessions:,} sessions ({st.n_unknown_events:,} events with "
          f"unknown items skipped) in {st.seconds:.2f}s, {st.sessions_per_s:,.0f} sessions/s "
          f"({st.engine}, {st.workers} worker(s))")
    print(f"wrote {st.n_rows:,} rows to {args.out}")
    return 0
