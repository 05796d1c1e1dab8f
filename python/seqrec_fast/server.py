"""HTTP serving of a :class:`~seqrec_fast.serving.Recommender` (DESIGN.md §3.5): Starlette + uvicorn.

Needs the optional extra ``seqrec-fast[serve]`` (starlette, uvicorn); the core package never imports
this module. Start it with ``seqrec serve MODEL`` or build the ASGI app with :func:`create_app`.

Endpoints (JSON in and out; errors are ``{"error": "..."}`` with a 4xx status):

- ``POST /v1/sessions/{session_id}/events`` ``{"item_id": ..., "k": 20}`` →
  ``{"session_id": ..., "items": [...], "scores": [...], "unknown": [...]}``: advance the session,
  return its top k. ``unknown`` names the event's item when the model does not know it (the session
  is then not advanced), else it is empty.
- ``POST /v1/recommend`` ``{"items": [...], "k": 20, "exclude_seen": null}`` →
  ``{"items": [...], "scores": [...], "unknown": [...]}``: stateless, on a whole prefix (never touches
  the session store, so it keeps working while the store is down); ``unknown`` lists the prefix items
  the model does not know (they were skipped).
- ``DELETE /v1/sessions/{session_id}`` → ``{"session_id": ..., "deleted": true|false}``
- ``GET /v1/sessions/{session_id}/vector`` → ``{"session_id": ..., "vector": [...]}``: the session's
  last-layer state (404 when the session is not live).
- ``POST /v1/rank`` ``{"candidates": [...], "session_id": ..., "item_id": null}`` or
  ``{"candidates": [...], "items": [...]}`` → ``{"items": [...], "scores": [...], "unknown": [...]}``
  (plus ``session_id``): the known distinct candidates ordered by score, the unknown ones listed.
  With ``item_id`` the session advances first (as an event); without, it is only read. More than the
  Recommender's ``max_candidates`` candidates get 413.
- ``GET /healthz`` → ``{"status": "ok" | "degraded", "store": {...}, ...}`` (always 200: "degraded"
  means the session store does not answer, while stateless ``/v1/recommend`` still works)
- ``POST /v1/admin/reload`` (header ``Authorization: Bearer $SEQREC_ADMIN_TOKEN``) → re-read the
  model file and swap it in atomically; ``{"fingerprint": ..., "previous": ..., "n_items": ...}``.
  403 when ``$SEQREC_ADMIN_TOKEN`` is not set, 401 for a wrong token, 422 (old model kept) when the
  file cannot be loaded. SIGHUP to a worker process does the same reload.
- ``GET /metrics``: Prometheus text exposition (request counts by endpoint, method and status; a
  latency histogram by endpoint; live sessions; store evictions / expirations / bytes).

Status codes: 400 malformed JSON, a body that is not an object, a wrong type, a too long session id;
413 a body over ``max_body_bytes``; 422 ``k`` outside [1, min(n_items, max_k)], an empty or too long
prefix, or an unknown item under ``unknown_item='raise'``; 404 / 405 unknown path or method; 503
(JSON, ``Retry-After: 1``) on the session endpoints while the session store is unreachable; 500
(JSON, logged) for a bug, which never takes the worker down.

Threads: each kernel call runs in one process-wide thread pool (``loop.run_in_executor``) so the
event loop is never blocked; the pool has ``max_concurrency`` threads (default: available cores //
kernel threads), so a process keeps one pool of busy threads and excess requests queue.

Sessions live in the Recommender's store. With the default in-memory store they live in the process
that served them, and with ``--workers N > 1`` each worker has its own: a session's events must then
reach the same worker. With ``--store redis://host:port/db`` every worker and every replica shares
every session (DESIGN.md §8), and a worker restart or a model reload loses none.

Model reload: ``POST /v1/admin/reload`` or SIGHUP re-reads the model file (replace it atomically, e.g.
as ``seqrec train --out`` writes) in a background thread, then swaps it in with one assignment: requests
in flight finish on the old model, later ones use the new one, none fails. With several workers, the
worker that got the request reloads and signals its sibling workers (SIGHUP), each of which reloads in
place. (SIGHUP to the parent process is uvicorn's: a rolling restart of the workers.)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hmac
import json
import logging
import os
import re
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .serving import (
    Recommender,
    StoreConflictError,
    StoreUnavailableError,
    UnknownItemError,
    UnknownSessionError,
)
from .threads import default_num_threads

__all__ = ["Metrics", "app_from_env", "create_app", "serve"]

log = logging.getLogger("seqrec_fast.server")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_K = 1000
DEFAULT_MAX_PREFIX = 1000
MAX_ID_CHARS = 256
ENV_CONFIG = "SEQREC_SERVE_CONFIG"
ENV_ADMIN_TOKEN = "SEQREC_ADMIN_TOKEN"

_ROUTES = (
    (re.compile(r"^/v1/sessions/[^/]+/events$"), "/v1/sessions/{session_id}/events"),
    (re.compile(r"^/v1/sessions/[^/]+$"), "/v1/sessions/{session_id}"),
    (re.compile(r"^/v1/recommend$"), "/v1/recommend"),
    (re.compile(r"^/v1/sessions/[^/]+/vector$"), "/v1/sessions/{session_id}/vector"),
    (re.compile(r"^/v1/rank$"), "/v1/rank"),
    (re.compile(r"^/healthz$"), "/healthz"),
    (re.compile(r"^/v1/admin/reload$"), "/v1/admin/reload"),
    (re.compile(r"^/metrics$"), "/metrics"),
)


def _endpoint_label(path: str) -> str:
    for pattern, label in _ROUTES:
        if pattern.match(path):
            return label
    return "other"  # bounded label cardinality: unknown paths share one label


# ---------------------------------------------------------------------------------------------------
# metrics (Prometheus text format 0.0.4, written here: no extra dependency)
# ---------------------------------------------------------------------------------------------------
class Metrics:
    """Request counters and a latency histogram, rendered in the Prometheus text format."""

    BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
               1.0, 2.5, 5.0)

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.hist: dict[str, list] = {}  # endpoint -> [bucket counts..., +Inf count, sum]

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.hist.get(endpoint)
            if h is None:
                h = self.hist[endpoint] = [0] * (len(self.BUCKETS) + 1) + [0.0]
            h[bisect.bisect_left(self.BUCKETS, seconds)] += 1
            h[-1] += seconds

    def render(self, stats: dict) -> str:
        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        lines = [
            "# HELP seqrec_http_requests_total HTTP requests by endpoint, method and status.",
            "# TYPE seqrec_http_requests_total counter",
        ]
        with self._lock:
            requests = sorted(self.requests.items())
            hist = {k: list(v) for k, v in sorted(self.hist.items())}
        for (ep, method, status), n in requests:
            lines.append(f'seqrec_http_requests_total{{endpoint="{esc(ep)}",method="{esc(method)}",'
                         f'status="{status}"}} {n}')
        lines += [
            "# HELP seqrec_http_request_duration_seconds Time from request start to response end.",
            "# TYPE seqrec_http_request_duration_seconds histogram",
        ]
        for ep, h in hist.items():
            cum = 0
            for le, n in zip(self.BUCKETS, h):
                cum += n
                lines.append(f'seqrec_http_request_duration_seconds_bucket{{endpoint="{esc(ep)}",'
                             f'le="{le:g}"}} {cum}')
            cum += h[len(self.BUCKETS)]
            lines.append(f'seqrec_http_request_duration_seconds_bucket{{endpoint="{esc(ep)}",'
                         f'le="+Inf"}} {cum}')
            lines.append(f'seqrec_http_request_duration_seconds_sum{{endpoint="{esc(ep)}"}} {h[-1]!r}')
            lines.append(f'seqrec_http_request_duration_seconds_count{{endpoint="{esc(ep)}"}} {cum}')
        gauges = (
            ("seqrec_live_sessions", "gauge", "Sessions in the state store.", stats["sessions"]),
            ("seqrec_session_store_bytes", "gauge", "State bytes held by the session store.",
             stats["bytes"]),
            ("seqrec_session_evictions_total", "counter", "Sessions evicted by the LRU bound.",
             stats["evictions"]),
            ("seqrec_session_expirations_total", "counter", "Sessions expired by the TTL.",
             stats["expirations"]),
            ("seqrec_items", "gauge", "Items in the model's catalogue.", stats["n_items"]),
            ("seqrec_store_available", "gauge", "1 when the session store answers, else 0.",
             int(stats.get("available", True))),
            ("seqrec_model_reloads_total", "counter", "Model reloads of this process.",
             stats.get("reloads", 0)),
            ("seqrec_sessions_rebuilt_total", "counter",
             "Sessions of another model replayed through the current one.",
             stats.get("rebuilt_sessions", 0)),
        )
        for name, kind, help_, value in gauges:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"


class _Instrument:
    """Pure ASGI middleware: times and counts every HTTP request, and turns an exception that escaped a
    handler into a logged JSON 500 (the worker keeps running)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            state["status"] = 500
            if not state["started"]:
                body = b'{"error": "internal server error"}'
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe(_endpoint_label(scope.get("path", "")), scope.get("method", ""),
                                 state["status"], time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------
# request handling
# ---------------------------------------------------------------------------------------------------
class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_json(request: Request, limit: int) -> dict:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise _BadRequest(400, f"invalid Content-Length {cl!r}") from None
        if n > limit:
            raise _BadRequest(413, f"request body of {n} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _BadRequest(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _BadRequest(400, "the client disconnected before sending the whole body") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise _BadRequest(400, "empty request body; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _BadRequest(400, f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise _BadRequest(400, f"the body must be a JSON object; got {type(body).__name__}")
    return body


def _check_item(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _BadRequest(400, f"{where} must be an integer or a string; got {json.dumps(value)[:80]}")
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise _BadRequest(400, f"{where} is longer than {MAX_ID_CHARS} characters")
    return value


def _check_k(body: dict, max_k: int) -> int:
    k = body.get("k", 20)
    if isinstance(k, bool) or not isinstance(k, int):
        raise _BadRequest(400, f"k must be an integer; got {json.dumps(k)[:80]}")
    if not 1 <= k <= max_k:
        raise _BadRequest(422, f"k must be in [1, {max_k}]; got {k}")
    return k


def _check_keys(body: dict, allowed: set) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise _BadRequest(400, f"unexpected field(s) {extra}; allowed: {sorted(allowed)}")


def _payload(ids, scores) -> tuple[list, list]:
    return ids.tolist(), [float(s) for s in scores.tolist()]


def create_app(
    recommender: Recommender,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_k: int = DEFAULT_MAX_K,
    max_prefix: int = DEFAULT_MAX_PREFIX,
    max_concurrency: Optional[int] = None,
    max_candidates: int | None = None,
    model_path: Optional[str] = None,
    peers_dir: Optional[str] = None,
) -> Starlette:
    """The ASGI application serving ``recommender``.

    Parameters
    ----------
    recommender : Recommender
    max_body_bytes : int
        Larger request bodies get 413.
    max_k : int
        Largest k accepted (also capped at the catalogue size).
    max_prefix : int
        Longest item list accepted by ``/v1/recommend``.
    max_concurrency : int, optional
        Kernel calls running at once in the threadpool (default: available cores // kernel threads).
    max_candidates : int, optional
        Most candidates of one ``/v1/rank`` request (413 beyond); sets the Recommender's
        ``max_candidates`` (default: keep its value, 10,000).
    model_path : str, optional
        The model file that ``POST /v1/admin/reload`` and SIGHUP re-read (default: no reload).
    peers_dir : str, optional
        A folder where the worker processes of one server register their pids, so that a reload
        request reaching one worker is passed on to the others (set by :func:`serve`).
    """
    rec = recommender
    if max_candidates is not None:
        if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
            raise ValueError(f"max_candidates must be an int >= 1; got {max_candidates!r}")
        rec.max_candidates = max_candidates
    k_max = max(1, min(int(max_k), rec.n_items))
    if max_concurrency is None:
        cores = default_num_threads()  # affinity mask and cgroup CPU quota (threads.py)
        max_concurrency = max(1, cores // rec.num_threads)
    metrics = Metrics()
    # One pool per process for the kernel calls (DESIGN.md §3.5). A plain executor: measured on the
    # 2-core box, anyio.to_thread.run_sync cost ~80 µs more per request than run_in_executor.
    pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="seqrec-kernel")

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    reload_lock = asyncio.Lock()

    def load_and_swap() -> dict:
        from .model import SessionRNN

        previous = rec.fingerprint
        fp = rec.reload(SessionRNN.load(model_path))
        return {"fingerprint": fp, "previous": previous, "n_items": rec.n_items}

    async def reload_model(source: str) -> dict:
        """Load the model file in a helper thread (the kernel pool keeps serving), then swap."""
        if model_path is None:
            raise RuntimeError("this app was created without a model_path; nothing to reload")
        async with reload_lock:
            out = await asyncio.get_running_loop().run_in_executor(None, load_and_swap)
        log.info("model reloaded (%s): %s", source, out)
        return out

    def on_sighup():
        async def go():
            try:
                await reload_model("SIGHUP")
            except Exception:
                log.exception("reload on SIGHUP failed; still serving %s", rec.fingerprint)

        asyncio.ensure_future(go())

    def peers() -> list[int]:
        """Pids of the other live workers of this server (registered in peers_dir)."""
        if not peers_dir:
            return []
        out = []
        for name in os.listdir(peers_dir):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            pid = int(name)
            try:  # alive and still a child of our parent (not a reused pid)
                with open(f"/proc/{pid}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getppid():
                out.append(pid)
        return out

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        hup = False
        if model_path is not None and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
                loop.add_signal_handler(signal.SIGHUP, on_sighup)
                hup = True
        me = os.path.join(peers_dir, str(os.getpid())) if peers_dir else None
        if me:
            with contextlib.suppress(OSError):
                open(me, "w").close()
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            if me:
                with contextlib.suppress(OSError):
                    os.remove(me)
            pool.shutdown(wait=False)

    def session_id_of(request: Request) -> str:
        sid = request.path_params["session_id"]
        if not sid or len(sid) > MAX_ID_CHARS:
            raise _BadRequest(400, f"session_id must have 1 to {MAX_ID_CHARS} characters")
        return sid

    def handler(fn):
        async def wrapped(request: Request):
            try:
                return await fn(request)
            except _BadRequest as e:
                return _error(e.status, e.message)
            except UnknownItemError as e:
                return _error(422, str(e))
            except (StoreUnavailableError, StoreConflictError) as e:
                log.warning("%s %s: %s", request.method, request.url.path, e)
                return JSONResponse({"error": str(e)}, status_code=503, headers={"Retry-After": "1"})

        wrapped.__name__ = fn.__name__
        return wrapped

    @handler
    async def post_event(request: Request):
        sid = session_id_of(request)
        body = await _read_json(request, max_body_bytes)
        _check_keys(body, {"item_id", "k"})
        if "item_id" not in body:
            raise _BadRequest(400, "missing field 'item_id'")
        item = _check_item(body["item_id"], "item_id")
        k = _check_k(body, k_max)
        unknown = [item] if rec.index_of(item) < 0 else []
        ids, scores = await run(rec.recommend, sid, item, k)
        items, sc = _payload(ids, scores)
        return JSONResponse({"session_id": sid, "items": items, "scores": sc, "unknown": unknown})

    @handler
    async def post_recommend(request: Request):
        body = await _read_json(request, max_body_bytes)
        _check_keys(body, {"items", "k", "exclude_seen"})
        items = body.get("items")
        if not isinstance(items, list):
            raise _BadRequest(400, "'items' must be a JSON array of item ids")
        if not items:
            raise _BadRequest(422, "'items' is empty; give at least one item of the session")
        if len(items) > max_prefix:
            raise _BadRequest(422, f"'items' has {len(items)} ids; at most {max_prefix} are accepted")
        for i, it in enumerate(items):
            _check_item(it, f"items[{i}]")
        k = _check_k(body, k_max)
        ex = body.get("exclude_seen")
        if ex is not None and not isinstance(ex, bool):
            raise _BadRequest(400, "exclude_seen must be true, false or null")
        unknown = rec.unknown_items(items)
        ids, scores = await run(rec.predict_next, items, k, ex)
        out_items, sc = _payload(ids, scores)
        return JSONResponse({"items": out_items, "scores": sc, "unknown": unknown})

    @handler
    async def get_vector(request: Request):
        sid = session_id_of(request)
        try:
            vec = await run(rec.session_vector, sid)  # may read Redis: off the event loop
        except UnknownSessionError as e:
            return _error(404, str(e))
        return JSONResponse({"session_id": sid, "vector": [float(v) for v in vec.tolist()]})

    @handler
    async def post_rank(request: Request):
        body = await _read_json(request, max_body_bytes)
        _check_keys(body, {"candidates", "session_id", "item_id", "items"})
        cands = body.get("candidates")
        if not isinstance(cands, list):
            raise _BadRequest(400, "'candidates' must be a JSON array of item ids")
        if len(cands) > rec.max_candidates:
            raise _BadRequest(413, f"'candidates' has {len(cands)} ids; at most {rec.max_candidates} "
                                   "are accepted")
        for i, it in enumerate(cands):
            _check_item(it, f"candidates[{i}]")
        if ("session_id" in body) == ("items" in body):
            raise _BadRequest(400, "give exactly one of 'session_id' (a live session) and 'items' "
                                   "(a session prefix)")
        if "items" in body:
            if "item_id" in body:
                raise _BadRequest(400, "'item_id' goes with 'session_id', not with 'items'")
            items = body["items"]
            if not isinstance(items, list):
                raise _BadRequest(400, "'items' must be a JSON array of item ids")
            if not items:
                raise _BadRequest(422, "'items' is empty; give at least one item of the session")
            if len(items) > max_prefix:
                raise _BadRequest(422, f"'items' has {len(items)} ids; at most {max_prefix} are "
                                       "accepted")
            for i, it in enumerate(items):
                _check_item(it, f"items[{i}]")
            r = await run(rec.rank_prefix, items, cands)
            out = {}
        else:
            sid = body["session_id"]
            if not isinstance(sid, str) or not sid or len(sid) > MAX_ID_CHARS:
                raise _BadRequest(400, f"session_id must be a string of 1 to {MAX_ID_CHARS} "
                                       "characters")
            item = body.get("item_id")
            if item is not None:
                item = _check_item(item, "item_id")
            r = await run(rec.rank, sid, cands, item)
            out = {"session_id": sid}
        ids, sc = _payload(r.items, r.scores)
        out.update(items=ids, scores=sc, unknown=r.unknown)
        return JSONResponse(out)

    @handler
    async def delete_session(request: Request):
        sid = session_id_of(request)
        return JSONResponse({"session_id": sid, "deleted": await run(rec.reset, sid)})

    async def healthz(request: Request):
        st = await run(rec.stats)
        ok = st.get("available", True) and await run(rec.store.ping)
        return JSONResponse({"status": "ok" if ok else "degraded", "n_items": rec.n_items,
                             "sessions": st["sessions"], "precision": rec.precision,
                             "kernel": rec.kernel, "index": st["index"],
                             "fingerprint": rec.fingerprint,
                             "store": {"kind": st.get("store", type(rec.store).__name__),
                                       "available": bool(ok)}})

    async def metrics_endpoint(request: Request):
        return Response(metrics.render(await run(rec.stats)),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @handler
    async def admin_reload(request: Request):
        token = os.environ.get(ENV_ADMIN_TOKEN)
        if not token:
            raise _BadRequest(403, f"model reload is disabled: set ${ENV_ADMIN_TOKEN} in the server's "
                                   "environment and send it as 'Authorization: Bearer <token>'")
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get(
            "x-admin-token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "missing or wrong admin token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if model_path is None:
            raise _BadRequest(409, "this server has no model file to reload")
        try:
            out = await reload_model("POST /v1/admin/reload")
        except Exception as e:  # a bad file: keep serving the old model
            log.exception("reload of %s failed", model_path)
            raise _BadRequest(422, f"reload of {model_path} failed, still serving "
                                   f"{rec.fingerprint}: {type(e).__name__}: {e}") from None
        signalled = []
        for pid in peers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGHUP)
                signalled.append(pid)
        return JSONResponse({**out, "workers_signalled": len(signalled)})

    async def http_error(request: Request, exc: HTTPException):
        msg = {404: f"no such endpoint: {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return JSONResponse({"error": msg}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    routes = [
        Route("/v1/sessions/{session_id}/events", post_event, methods=["POST"]),
        Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
        Route("/v1/sessions/{session_id}/vector", get_vector, methods=["GET"]),
        Route("/v1/rank", post_rank, methods=["POST"]),
        Route("/v1/recommend", post_recommend, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v1/admin/reload", admin_reload, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Instrument, metrics=metrics)],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.recommender = rec
    app.state.metrics = metrics
    return app


# ---------------------------------------------------------------------------------------------------
# process entry points
# ---------------------------------------------------------------------------------------------------
_RECOMMENDER_KEYS = ("max_sessions", "ttl_seconds", "exclude_seen", "unknown_item", "precision",
                     "num_threads", "store", "index", "index_path")
_APP_KEYS = ("max_body_bytes", "max_k", "max_prefix", "max_concurrency", "max_candidates")


def _app_from_config(config: dict) -> Starlette:
    from .model import SessionRNN

    model = SessionRNN.load(config["model"])
    rec = Recommender(model, **{k: config[k] for k in _RECOMMENDER_KEYS if k in config})
    return create_app(rec, model_path=config["model"], peers_dir=config.get("peers_dir"),
                      **{k: config[k] for k in _APP_KEYS if config.get(k) is not None})


def app_from_env() -> Starlette:
    """App factory for uvicorn workers: reads the JSON configuration in ``$SEQREC_SERVE_CONFIG``."""
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise RuntimeError(f"${ENV_CONFIG} is not set; start the server with 'seqrec serve MODEL'")
    return _app_from_config(json.loads(raw))


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info", access_log: bool = False, **options) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted.

    ``options``: the Recommender's ``max_sessions``, ``ttl_seconds``, ``exclude_seen``,
    ``unknown_item``, ``precision``, ``num_threads``, ``store``, ``index``, ``index_path`` and
    :func:`create_app`'s ``max_body_bytes``, ``max_k``, ``max_prefix``, ``max_concurrency``, ``max_candidates``. Each
    worker process loads the model itself (and the HNSW index from ``index_path``, default
    ``MODEL.hnsw``, built once here before the workers start).
    """
    import uvicorn

    unknown = set(options) - set(_RECOMMENDER_KEYS) - set(_APP_KEYS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}")
    config = {"model": os.path.abspath(os.fspath(model)), **options}
    if config.get("index") == "hnsw" and not config.get("index_path"):
        config["index_path"] = config["model"] + ".hnsw"
    common = dict(host=host, port=port, log_level=log_level, access_log=access_log)
    if workers > 1:
        if config.get("store") in (None, "memory"):
            log.warning("--workers %d with the in-memory store: each worker keeps its own sessions; "
                        "use --store redis://host:port/db to share them", workers)
        _app_from_config(config)  # fail here, once, with a clear error, before forking workers
        with tempfile.TemporaryDirectory(prefix="seqrec-workers-") as peers_dir:
            config["peers_dir"] = peers_dir
            os.environ[ENV_CONFIG] = json.dumps(config)
            uvicorn.run("seqrec_fast.server:app_from_env", factory=True, workers=workers, **common)
    else:
        uvicorn.run(_app_from_config(config), **common)
