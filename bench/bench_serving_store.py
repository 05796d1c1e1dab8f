"""Serving past one process (issue 10): the session store's cost, HTTP on Redis with 1 and 2 workers,
and the exact fused kernel against a bare NumPy product.

1. In-process, one event (``Recommender.recommend``, N items, H = 100, GRU, 1 kernel thread): the
   in-memory store against a Redis store on a real ``redis-server`` on 127.0.0.1 (started here with
   persistence off). Both Recommenders are first fed the same events and must return the same top k.
   Repeats alternate between the two in blocks.
2. HTTP: ``seqrec serve --store redis://... --workers W`` for W = 1 and 2, 32 keep-alive connections
   for a fixed time, every request an event of one of 512 sessions shared by all connections (so
   events of one session race between workers). Reports req/s, p50, p99, the 5xx count and lost
   events: each session's event count in Redis must equal the events the client had answered 200.
3. The exact fused kernel (``_core.topk`` on the packed serving table, one query; and ``step_topk``,
   the whole event) against bare NumPy ``W_y @ h`` (the product alone, BLAS pinned to the same
   threads), at 1 and 2 threads, alternating.

Only 127.0.0.1 is ever contacted; every level is bounded in time.

    python bench/bench_serving_store.py                      # N=40k, HTTP 30 s per worker count
    python bench/bench_serving_store.py --quick              # N=3k, HTTP 4 s
    python bench/bench_serving_store.py --skip-http          # parts 1 and 3 only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving_http import HOST, build_model, free_port, percentiles
from common import blas_threads, write_records

K = 20


@contextlib.contextmanager
def redis_server():
    """A throw-away redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    import redis

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host=HOST, port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------------
# 1. in-process: memory store vs Redis store
# ---------------------------------------------------------------------------------------------------
def bench_stores(model, url: str, n_events: int, rounds: int = 4) -> list[dict]:
    from seqrec_fast.serving import Recommender

    # "redis + local_cache": the same server, with this process's last written states cached
    # (RedisSessionStore(local_cache=...)): one round trip per event when events stay in one process
    recs = {"memory": Recommender(model, num_threads=1),
            "redis": Recommender(model, num_threads=1, store=url),
            "redis + local_cache": Recommender(model, num_threads=1,
                                               store=f"{url}?local_cache=10000")}
    rng = np.random.default_rng(0)
    items = rng.integers(1, model.n_items + 1, size=n_events * rounds + 300).tolist()
    # validation: the same events give the same answers on both stores
    for j in range(300):
        a = recs["memory"].recommend(f"v{j % 30}", items[j], k=K)
        b = recs["redis"].recommend(f"v{j % 30}", items[j], k=K)
        c = recs["redis + local_cache"].recommend(f"w{j % 30}", items[j], k=K)
        if not (np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0])):
            raise AssertionError(f"memory and Redis stores disagree at event {j}")
    lat = {name: [] for name in recs}
    per = n_events
    for r in range(rounds):
        for name, rec in (recs.items() if r % 2 == 0 else reversed(list(recs.items()))):
            sp = "c" if name == "redis + local_cache" else "s"  # its own sessions in the same Redis
            for j in range(per):
                it = items[300 + r * per + j]
                t0 = time.perf_counter()
                rec.recommend(f"{sp}{j % 100}", it, k=K)
                lat[name].append(time.perf_counter() - t0)
    # the store alone: one get + one compare-and-set of a session's state
    st = recs["redis"].store.get("s1")
    store_lat = []
    for _ in range(n_events):
        t0 = time.perf_counter()
        cur = recs["redis"].store.get("s1")
        recs["redis"].store.compare_and_set("s1", cur.version, st)
        store_lat.append(time.perf_counter() - t0)
    # what one session costs: its state bytes and Redis' own count for the key (MEMORY USAGE)
    red = recs["redis"].store
    st = red.get("s1")
    from seqrec_fast.serving.store import encode_state

    size = {"state_bytes": len(encode_state(st)), "events_remembered": len(st.recent),
            "redis_memory_usage_bytes": int(red.client.memory_usage(red.key("s1"), samples=0))}
    out = [{"part": "in-process", "store": name, **percentiles(v), **size} for name, v in lat.items()]
    out.append({"part": "in-process", "store": "redis get+cas only", **percentiles(store_lat)})
    out[1]["redis_minus_memory_p50_us"] = out[1]["p50_us"] - out[0]["p50_us"]
    out[2]["redis_minus_memory_p50_us"] = out[2]["p50_us"] - out[0]["p50_us"]
    return out


# ---------------------------------------------------------------------------------------------------
# 2. HTTP on Redis, 1 and 2 workers
# ---------------------------------------------------------------------------------------------------
async def _conn(port, cid, n_items, n_sessions, deadline, lat, statuses, sent):
    rng = np.random.default_rng(cid)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < deadline:
            sid = f"h{int(rng.integers(n_sessions))}"
            body = json.dumps({"item_id": int(rng.integers(1, n_items + 1)), "k": K}).encode()
            req = (f"POST /v1/sessions/{sid}/events HTTP/1.1\r\nHost: {HOST}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
            t0 = time.perf_counter()
            writer.write(req)
            status = int((await reader.readline()).split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                sent[sid] = sent.get(sid, 0) + 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _drive(port, conns, n_items, n_sessions, seconds):
    lat, statuses, sent = [], {}, {}
    t0 = time.perf_counter()
    await asyncio.gather(*[_conn(port, i, n_items, n_sessions, t0 + seconds, lat, statuses, sent)
                           for i in range(conns)])
    return lat, statuses, sent, time.perf_counter() - t0


def bench_http(model_path: str, url: str, workers: int, conns: int, seconds: float, n_items: int,
               n_sessions: int = 512) -> dict:
    import redis
    from seqrec_fast.serving.redis_store import RedisSessionStore

    redis.Redis.from_url(url).flushdb()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "seqrec_fast.cli", "serve", model_path, "--host",
                             HOST, "--port", str(port), "--threads", "1", "--store", url,
                             "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import urllib.request

        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(1.0 if workers > 1 else 0.2)  # let every worker finish starting
        asyncio.run(_drive(port, conns, n_items, n_sessions, min(2.0, seconds / 5)))  # warm-up
        redis.Redis.from_url(url).flushdb()
        lat, statuses, sent, wall = asyncio.run(_drive(port, conns, n_items, n_sessions, seconds))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stderr.close()
    store = RedisSessionStore(url)
    lost = extra = 0
    for sid, n in sent.items():
        st = store.get(sid)
        got = st.n_events if st is not None else 0
        lost += max(0, n - got)
        extra += max(0, got - n)
    return {"part": "http", "store": "redis", "workers": workers, "connections": conns,
            **percentiles(lat), "throughput_rps": len(lat) / wall, "seconds": wall,
            "statuses": {str(s): n for s, n in sorted(statuses.items())},
            "errors_5xx": sum(n for s, n in statuses.items() if s >= 500),
            "events_sent": sum(sent.values()), "lost_events": lost, "extra_events": extra,
            "sessions": len(sent)}


# ---------------------------------------------------------------------------------------------------
# 3. exact fused kernel vs bare NumPy product
# ---------------------------------------------------------------------------------------------------
def bench_kernel_vs_numpy(model, threads=(1, 2), repeats: int = 300, rounds: int = 3) -> list[dict]:
    from seqrec_fast import _core
    from seqrec_fast.serving import Recommender

    rec = Recommender(model)
    W, b, table = rec._W_y, rec._b_y, rec._table
    rng = np.random.default_rng(1)
    hs = np.tanh(rng.standard_normal((repeats, W.shape[1]))).astype(np.float32)
    # validation: the kernel's top k equals the exact top k of the NumPy product
    for h in hs[:5]:
        idx, _ = _core.topk(h[None], table, b, K, None, None, 1)
        s = W.astype(np.float64) @ h.astype(np.float64) + b
        ref = np.argsort(-s, kind="stable")[:K]
        if len(set(idx[0].tolist()) & set(ref.tolist())) < K - 1:
            raise AssertionError("fused top-k disagrees with the NumPy reference")
    eng = rec._engine
    item = np.array([3], np.int32)
    sides = {
        "fused topk (one query)": lambda h, nt: _core.topk(h[None], table, b, K, None, None, nt),
        "fused step_topk (one event)": lambda h, nt: _core.step_topk(
            eng.cell, eng.embedding, eng.weights, eng.E_in, W, b, [h[None].copy()], None, item, K,
            None, table, None, nt),
        "numpy W_y @ h (product only)": lambda h, nt: W @ h,
        "numpy W_y @ h + b, argpartition top-k": lambda h, nt: np.argpartition(-(W @ h + b), K)[:K],
    }
    lat = {(s, nt): [] for s in sides for nt in threads}
    per = repeats // rounds
    for r in range(rounds):
        for nt in threads:
            with blas_threads(nt):
                for name, fn in sides.items():
                    time.sleep(0.05)
                    fn(hs[0], nt)
                    for h in hs[r * per: (r + 1) * per]:
                        t0 = time.perf_counter()
                        fn(h, nt)
                        lat[(name, nt)].append(time.perf_counter() - t0)
    out = [{"part": "kernel", "side": name, "threads": nt, **percentiles(v)}
           for (name, nt), v in lat.items()]
    for nt in threads:
        npx = next(r for r in out if r["threads"] == nt and r["side"].startswith("numpy W_y @ h (p"))
        for r in out:
            if r["threads"] == nt:
                r["vs_numpy_product"] = npx["p50_us"] / r["p50_us"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=40_000)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--events", type=int, default=1500, help="timed events per store and round")
    ap.add_argument("--seconds", type=float, default=30.0, help="HTTP load time per worker count")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--quick", action="store_true", help="N=3000, 300 events, 4 s of HTTP")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.events, args.seconds = 3000, 300, 4.0
    model = build_model(args.items, args.hidden)
    base = {"bench": "serving_store", "n_items": args.items, "hidden": args.hidden, "k": K,
            "loadavg_start": os.getloadavg()[0]}
    records = []
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        records += [{**base, **r} for r in bench_stores(model, url, args.events)]
        records += [{**base, **r} for r in bench_kernel_vs_numpy(model)]
        if not args.skip_http:
            path = os.path.join(tmp, "model.npz")
            model.save(path)
            for w in args.workers:
                records.append({**base, **bench_http(path, url, w, args.connections, args.seconds,
                                                     args.items)})
    print(f"\nN={args.items} H={args.hidden} k={K}, {os.cpu_count()} cores, load average at start "
          f"{base['loadavg_start']:.1f}\n")
    sz = records[0]
    print(f"one session: {sz['state_bytes']} state bytes with {sz['events_remembered']} remembered "
          f"events; Redis MEMORY USAGE {sz['redis_memory_usage_bytes']} bytes\n")
    print("| in-process, one event | p50 µs | p90 µs | p99 µs |\n|---|---:|---:|---:|")
    for r in records:
        if r["part"] == "in-process":
            print(f"| {r['store']} | {r['p50_us']:.0f} | {r['p90_us']:.0f} | {r['p99_us']:.0f} |")
    print("\n| kernel, one query | threads | p50 µs | p99 µs | NumPy product p50 / this p50 |\n"
          "|---|---:|---:|---:|---:|")
    for r in records:
        if r["part"] == "kernel":
            print(f"| {r['side']} | {r['threads']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                  f"{r['vs_numpy_product']:.2f} |")
    http = [r for r in records if r["part"] == "http"]
    if http:
        print("\n| HTTP on Redis | workers | conns | s | req/s | p50 µs | p99 µs | 5xx | events | lost |"
              "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in http:
            print(f"| events | {r['workers']} | {r['connections']} | {r['seconds']:.0f} | "
                  f"{r['throughput_rps']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                  f"{r['errors_5xx']} | {r['events_sent']} | {r['lost_events']} |")
    if not args.no_record:
        print(f"\nappended {len(records)} records to {write_records('serving_store', records)}")
    return 1 if any(r.get("errors_5xx") or r.get("lost_events") for r in http) else 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------------------------------
# pytest-benchmark group (pytest bench/ --benchmark-only [--quick]): one event, memory vs Redis store
# ---------------------------------------------------------------------------------------------------
def _pytest_cases():
    import pytest

    @pytest.fixture(scope="module")
    def store_setup():
        if shutil.which("redis-server") is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is required in CI")
            pytest.skip("redis-server not installed")
        model = build_model(3000, 100)
        with redis_server() as url:
            yield model, url

    @pytest.mark.quick
    @pytest.mark.parametrize("store", ["memory", "redis"])
    def test_one_event_session_store(benchmark, store_setup, store):
        from seqrec_fast.serving import Recommender

        model, url = store_setup
        rec = Recommender(model, store=None if store == "memory" else url)
        ref = Recommender(model)
        items = np.random.default_rng(0).integers(1, model.n_items + 1, 64).tolist()
        for j, it in enumerate(items[:16]):  # validated against the in-memory reference first
            a, b = rec.recommend(f"v{j % 4}", it, k=K), ref.recommend(f"v{j % 4}", it, k=K)
            assert np.array_equal(a[0], b[0])
        benchmark.group = "session store: one event, N=3000"
        state = {"j": 0}

        def one():
            state["j"] += 1
            rec.recommend(f"s{state['j'] % 50}", items[state["j"] % 64], k=K)

        benchmark(one)

    return store_setup, test_one_event_session_store


if "pytest" in sys.modules:
    store_setup, test_one_event_session_store = _pytest_cases()
