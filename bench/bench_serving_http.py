"""HTTP serving latency and throughput (issue 5, benchmark 4c).

Starts `seqrec serve` on 127.0.0.1 (a subprocess, one worker, one kernel thread per request) with a
GRU model of N items and H hidden units (random weights: latency does not depend on them), then drives
it from a loopback client with 1, 8 and 32 concurrent keep-alive connections. Each connection sends
`POST /v1/sessions/{id}/events` for its own sessions, back to back. Every level is bounded by a request
count and a time limit, so the run stops by itself; only 127.0.0.1 is ever contacted.

The same model's in-process `Recommender.recommend` latency is measured first, so that
"HTTP overhead = p50 HTTP (1 connection) - p50 in-process" can be read off the table.

The client is a minimal asyncio HTTP/1.1 client (no dependency, little overhead); its own time is part
of the measured latency, as it would be for any real client. Client and server share this machine's
cores; look at `top` first and do not run this next to another heavy process.

    python bench/bench_serving_http.py                 # N=40000, H=100, 1/8/32 connections
    python bench/bench_serving_http.py --quick         # smaller and shorter, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_records

HOST = "127.0.0.1"  # never anything else


def build_model(n_items: int, hidden: int, seed: int = 0):
    """A SessionRNN with random (Glorot) weights and int item ids 1..N, without training."""
    from seqrec_fast.model import SessionRNN

    model = SessionRNN(cell="gru", layers=[hidden], n_epochs=1, seed=seed, num_threads=1,
                       progress=False, verbose=False)
    p = model._validated()
    model.layers_ = p["layers"]
    model.item_ids_ = np.arange(1, n_items + 1, dtype=np.int64)
    model._item_map = None
    model._init_params(p, n_items, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    model.params_[model.param_names_.index("b_y")][:] = rng.normal(0, 0.1, n_items)  # break ties
    return model


def percentiles(lat_s: list) -> dict:
    a = np.asarray(lat_s) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p90_us": float(np.percentile(a, 90)),
            "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean()), "n": int(a.size)}


def bench_in_process(model, n_events: int, k: int, precision: str) -> dict:
    from seqrec_fast.serving import Recommender

    rec = Recommender(model, precision=precision, num_threads=1)
    rng = np.random.default_rng(0)
    items = rng.integers(1, model.n_items + 1, size=n_events + 200).tolist()
    for j in range(200):  # warm-up
        rec.recommend(f"w{j % 50}", items[j], k=k)
    lat = []
    t_all = time.perf_counter()
    for j in range(n_events):
        sid = f"s{j % 100}"
        t0 = time.perf_counter()
        rec.recommend(sid, items[200 + j], k=k)
        lat.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_all
    return {**percentiles(lat), "throughput_rps": n_events / wall, "kernel": rec.stats()["kernel"]}


# ---------------------------------------------------------------------------------------------------
# server and client
# ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model_path: str, port: int, precision: str, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seqrec_fast.cli", "serve", model_path, "--host", HOST,
           "--port", str(port), "--threads", str(threads), "--precision", precision]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 60 s")


async def _connection(port, conn_id, n_items, k, budget, deadline, lat, statuses, seed):
    rng = np.random.default_rng(seed)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        j = 0
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            sid = f"c{conn_id}-{j % 16}"
            j += 1
            body = json.dumps({"item_id": int(rng.integers(1, n_items + 1)), "k": k}).encode()
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
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _load(port, concurrency, n_items, k, max_requests, max_seconds, warmup):
    # warm-up (not recorded)
    wl, ws = [], {}
    await asyncio.gather(*[
        _connection(port, 1000 + i, n_items, k, [warmup // concurrency + 1],
                    time.perf_counter() + max_seconds, wl, ws, 99 + i) for i in range(concurrency)])
    lat, statuses = [], {}
    budget = [max_requests]
    t0 = time.perf_counter()
    await asyncio.gather(*[
        _connection(port, i, n_items, k, budget, t0 + max_seconds, lat, statuses, i)
        for i in range(concurrency)])
    wall = time.perf_counter() - t0
    return lat, statuses, wall


def bench_http(port, concurrency, n_items, k, max_requests, max_seconds, warmup) -> dict:
    lat, statuses, wall = asyncio.run(
        _load(port, concurrency, n_items, k, max_requests, max_seconds, warmup))
    return {**percentiles(lat), "throughput_rps": len(lat) / wall, "seconds": wall,
            "statuses": {str(s): n for s, n in sorted(statuses.items())},
            "errors_5xx": sum(n for s, n in statuses.items() if s >= 500)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=40_000)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=4000, help="request budget per level")
    ap.add_argument("--seconds", type=float, default=8.0, help="time limit per level")
    ap.add_argument("--precision", nargs="+", default=["float32"],
                    choices=["float32", "bfloat16", "int8"])
    ap.add_argument("--quick", action="store_true", help="N=3000, 500 requests, 3 s per level")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.requests, args.seconds = 3000, 500, 3.0

    model = build_model(args.items, args.hidden)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.npz")
        model.save(path)
        for precision in args.precision:
            inproc = bench_in_process(model, min(args.requests, 3000), args.k, precision)
            base = {"bench": "serving_http", "n_items": args.items, "hidden": args.hidden,
                    "k": args.k, "precision": precision, "kernel_threads": 1, "workers": 1,
                    "kernel": inproc["kernel"]}
            records.append({**base, "mode": "in-process", "concurrency": 1, **inproc})
            port = free_port()
            proc = start_server(path, port, precision, threads=1)
            try:
                for c in args.concurrency:
                    res = bench_http(port, c, args.items, args.k, args.requests, args.seconds,
                                     warmup=min(200, args.requests))
                    records.append({**base, "mode": "http", "concurrency": c, **res})
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print(f"\nN={args.items} H={args.hidden} k={args.k}; 1 uvicorn worker, 1 kernel thread per "
          f"request, loopback client on the same machine ({os.cpu_count()} cores)\n")
    hdr = (f"| {'precision':<9} | {'mode':<10} | {'conns':>5} | {'p50 µs':>8} | {'p90 µs':>8} | "
           f"{'p99 µs':>8} | {'req/s':>8} | {'5xx':>3} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in records:
        print(f"| {r['precision']:<9} | {r['mode']:<10} | {r['concurrency']:>5} | "
              f"{r['p50_us']:>8.0f} | {r['p90_us']:>8.0f} | {r['p99_us']:>8.0f} | "
              f"{r['throughput_rps']:>8.0f} | {r.get('errors_5xx', 0):>3} |")
    for precision in args.precision:
        rs = [r for r in records if r["precision"] == precision]
        ip = next(r for r in rs if r["mode"] == "in-process")
        h1 = next((r for r in rs if r["mode"] == "http" and r["concurrency"] == 1), None)
        if h1 is not None:
            over = h1["p50_us"] - ip["p50_us"]
            for r in rs:
                r["http_overhead_p50_us"] = over
            print(f"\n{precision}: HTTP overhead = p50 HTTP (1 conn) - p50 in-process = "
                  f"{h1['p50_us']:.0f} - {ip['p50_us']:.0f} = {over:.0f} µs")
    if not args.no_record:
        out = write_records("serving_http", records)
        print(f"\nappended {len(records)} records to {out}")
    bad = sum(r.get("errors_5xx", 0) for r in records)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
