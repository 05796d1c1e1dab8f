"""``seqrec embed``: session / user vectors of a saved model, written to a file."""

from __future__ import annotations

import argparse

from .common import CLIError, _check_in_path, _check_out_path, _format_choices, _load, _positive_int


def _register_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="one vector per session (the last layer's final state) of a saved model",
        description="Run MODEL over every session (or user history) of SESSIONS and write one vector "
        "per session: the last recurrent layer's state after its last item, i.e. the state that "
        "scores its next item. Items unknown to the model are skipped; a session without a known "
        "item gets no row. The output format follows the suffix of --out: .parquet (columns "
        "session_id, vector; needs pyarrow), .npy (the (n, H) matrix, ids in <name>.ids.npy) or .npz "
        "(arrays ids, vectors). Written atomically.",
    )
    p.add_argument("model", help="model file (.npz) written by 'seqrec train'")
    p.add_argument("sessions", help="session data file (any supported format, optionally .gz)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="vectors file to write: .parquet, .npy or .npz")
    p.add_argument("--format", choices=_format_choices(), default="auto",
                   help="format of SESSIONS (default: auto-detect)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="kernel threads (default: the model's setting)")
    p.set_defaults(func=_cmd_embed)


def _cmd_embed(args: argparse.Namespace) -> int:
    from ..vectors import VECTOR_FORMATS, save_vectors

    _check_in_path(args.model, "model file")
    _check_in_path(args.sessions, "session data")
    if not args.out.lower().endswith(VECTOR_FORMATS):
        raise CLIError(f"--out {args.out}: expected a file ending in {', '.join(VECTOR_FORMATS)}")
    _check_out_path(args.out, "vectors file")

    from ..model import SessionRNN

    model = SessionRNN.load(args.model)
    if args.threads is not None:
        model.set_params(num_threads=args.threads)
    data = _load(args.sessions, args.format, item_map=model.item_ids_)
    vectors = model.transform(data)
    written = save_vectors(args.out, vectors)
    n, H = vectors.vectors.shape
    print(f"{n:,} session vectors of width {H} from {data.n_sessions:,} sessions "
          f"({data.n_unknown:,} events with unknown items skipped)")
    for path in written:
        print(f"wrote {path}")
    return 0
