"""``seqrec serve``: the HTTP server."""

from __future__ import annotations

import argparse

from .common import CLIError, _check_in_path, _positive_float, _positive_int


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a saved model over HTTP (needs the 'serve' extra)",
        description="Load MODEL and serve session recommendations over HTTP (Starlette + uvicorn): "
        "POST /v1/sessions/{id}/events, POST /v1/recommend, DELETE /v1/sessions/{id}, "
        "GET /v1/sessions/{id}/vector, POST /v1/rank, GET /healthz, "
        "GET /metrics. Needs: pip install 'seqrec-fast[serve]'.",
    )
    p.add_argument("model", help="model file (.npz) written by 'seqrec train'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes, each loading the model (default: 1). With the in-memory store "
        "sessions live in the worker that served them; with --store redis://... every worker "
        "shares them",
    )
    p.add_argument(
        "--store",
        default="memory",
        metavar="URL",
        help="session store: 'memory' (default; LRU + TTL in each worker) or redis://host:port/db "
        "(shared by every worker and replica; needs the 'redis' extra)",
    )
    p.add_argument(
        "--index",
        choices=["exact", "hnsw"],
        default="exact",
        help="top-k search: the exact fused kernel (default) or an approximate HNSW index for "
        "catalogues of millions (needs the 'index' extra; built once, saved beside the model)",
    )
    p.add_argument(
        "--index-path",
        default=None,
        help="file of the HNSW index (default: MODEL.hnsw); loaded when it belongs to MODEL, "
        "else built and saved there",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="kernel threads per request (default: 1, right for single events)",
    )
    p.add_argument(
        "--max-sessions",
        type=_positive_int,
        default=100_000,
        help="in-memory store bound per worker, LRU eviction (default: 100000; a Redis store is "
        "bounded by Redis maxmemory instead)",
    )
    p.add_argument(
        "--ttl", type=_positive_float, default=1800.0, help="session idle expiry in seconds (default: 1800)"
    )
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "int8"],
        default="float32",
        help="item table used for scoring (default: float32, exact)",
    )
    p.add_argument(
        "--exclude-seen", action="store_true", help="never recommend items already in the session"
    )
    p.add_argument(
        "--unknown-item",
        choices=["skip", "raise"],
        default="skip",
        help="an item not in the model: skip the step (default) or answer 422",
    )
    p.add_argument("--max-k", type=_positive_int, default=1000, help="largest k accepted (default: 1000)")
    p.add_argument(
        "--max-body", type=_positive_int, default=65536, help="request body limit in bytes (default: 65536)"
    )
    p.add_argument(
        "--max-candidates", type=_positive_int, default=10_000,
        help="most candidates one POST /v1/rank accepts; more get 413 (default: 10000)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    _check_in_path(args.model, "model file")
    if args.store != "memory" and not args.store.startswith(("redis://", "rediss://", "unix://")):
        raise CLIError(f"--store must be 'memory' or a redis://host:port/db URL; got {args.store!r}")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535]; got {args.port}")
    try:
        from ..server import serve
    except ImportError as e:
        raise CLIError(
            f"'seqrec serve' needs the serve extra: pip install 'seqrec-fast[serve]' ({e})"
        ) from None
    serve(
        args.model,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        num_threads=args.threads,
        max_sessions=args.max_sessions,
        ttl_seconds=args.ttl,
        precision=args.precision,
        exclude_seen=args.exclude_seen,
        unknown_item=args.unknown_item,
        max_k=args.max_k,
        max_body_bytes=args.max_body,
        max_candidates=args.max_candidates,
        store=args.store,
        index=args.index,
        index_path=args.index_path,
    )
    return 0
