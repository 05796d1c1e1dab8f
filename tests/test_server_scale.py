"""Serving past one process (issue 10): real `seqrec serve` processes sharing one real redis-server.

- two servers on two loopback ports (one of them with --workers 2) serve alternating events of many
  sessions, and every answer equals a single in-memory Recommender fed the same events; the event
  count of every session in Redis equals the events sent;
- model reload by POST /v1/admin/reload (token from the environment) and by SIGHUP, under traffic,
  with no failed request, sessions rebuilt by replay exactly as an in-process Recommender.reload;
- Redis stopping mid-traffic: 503 + JSON on session endpoints, "degraded" health, stateless
  /v1/recommend still 200, the worker alive, and service back by itself when Redis returns.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from _redis_server import HOST, RedisServer, free_port
from seqrec_fast.model import SessionRNN
from seqrec_fast.serving import Recommender
from seqrec_fast.synthetic import generate_sessions

TOKEN = "test-admin-token-5f1c"


class Server:
    def __init__(self, model_path, *extra, env=None):
        self.port = free_port()
        cmd = [sys.executable, "-m", "seqrec_fast.cli", "serve", str(model_path), "--host", HOST,
               "--port", str(self.port), "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})})

    def wait(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-3000:]}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not come up")

    def request(self, method, path, body=None, headers=None, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=15)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers=headers or {})
            resp = conn.getresponse()
            payload = resp.read()
            if "json" in resp.getheader("content-type", ""):
                return resp.status, json.loads(payload)
            return resp.status, payload.decode()
        finally:
            if own:
                conn.close()

    def event(self, sid, item, k=10, conn=None):
        return self.request("POST", f"/v1/sessions/{sid}/events", {"item_id": item, "k": k},
                            conn=conn)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()


def _train(seed, n_epochs):
    data = generate_sessions(n_sessions=400, n_items=80, seed=3)
    return SessionRNN(layers=[16], n_epochs=n_epochs, batch_size=16, n_sample=0, seed=seed,
                      progress=False, verbose=False, num_threads=1).fit(data)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    a, b = _train(0, 2), _train(7, 1)
    pa, pb = d / "a.npz", d / "b.npz"
    a.save(pa)
    b.save(pb)
    return d, SessionRNN.load(pa), SessionRNN.load(pb), pa, pb


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


def _install(src, dst):
    """Replace the served model file atomically (as `seqrec train --out` does)."""
    tmp = str(dst) + ".tmp"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dst)


def _check(out, exp):
    ids, sc = exp
    assert out["items"] == ids.tolist()
    np.testing.assert_allclose(out["scores"], sc, rtol=1e-5, atol=1e-6)


def test_two_servers_share_sessions_and_reload(models, redis_server):
    d, model_a, model_b, pa, pb = models
    served = d / "served.npz"
    _install(pa, served)
    redis_server.client().flushdb()
    opts = ("--store", redis_server.url, "--exclude-seen")
    env = {"SEQREC_ADMIN_TOKEN": TOKEN}
    s1 = Server(served, *opts, "--workers", "2", env=env)
    s2 = Server(served, *opts, env=env)
    try:
        s1.wait()
        s2.wait()
        ref = Recommender(model_a, exclude_seen=True)
        ids = model_a.item_ids_.tolist()
        rng = np.random.default_rng(0)
        sent = {}
        servers = (s1, s2)
        # phase 1: 40 sessions x 4 events, each event to the other server than the previous one
        for t in range(4):
            for s in range(40):
                sid = f"sess-{s}"
                it = ids[rng.integers(len(ids))]
                st, out = servers[(s + t) % 2].event(sid, it)
                assert st == 200, out
                _check(out, ref.recommend(sid, it, k=10))
                sent[sid] = sent.get(sid, 0) + 1
        client = redis_server.client()
        from seqrec_fast.serving.redis_store import RedisSessionStore

        store = RedisSessionStore(redis_server.url)
        for sid, n in sent.items():
            assert store.get(sid).n_events == n  # no lost events

        # phase 2: reload under traffic: wrong / missing token first
        assert s1.request("POST", "/v1/admin/reload")[0] == 401
        assert s1.request("POST", "/v1/admin/reload",
                          headers={"Authorization": "Bearer nope"})[0] == 401
        statuses, stop = [], threading.Event()

        def traffic(server):
            conn = http.client.HTTPConnection(HOST, server.port, timeout=15)
            r = np.random.default_rng(server.port)
            while not stop.is_set():
                st, _ = server.request("POST", "/v1/recommend",
                                       {"items": [ids[r.integers(len(ids))]], "k": 5}, conn=conn)
                statuses.append(st)
                st, _ = server.event(f"bg-{r.integers(5)}", ids[r.integers(len(ids))], conn=conn)
                statuses.append(st)
            conn.close()

        threads = [threading.Thread(target=traffic, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        try:
            _install(pb, served)
            st, out = s1.request("POST", "/v1/admin/reload",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
            assert st == 200, out
            assert out["fingerprint"] == ref_fp(model_b) and out["previous"] == ref_fp(model_a)
            assert out["workers_signalled"] == 1  # the sibling worker reloads in place
            os.kill(s2.proc.pid, signal.SIGHUP)
            for server in servers:  # every worker of both servers on the new model
                deadline = time.monotonic() + 20
                while True:
                    fps = {server.request("GET", "/healthz")[1]["fingerprint"] for _ in range(12)}
                    if fps == {ref_fp(model_b)}:
                        break
                    assert time.monotonic() < deadline, fps
                    time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))

        # phase 3: the sessions of model a are replayed through model b, on both servers
        ref.reload(model_b)
        for t in range(2):
            for s in range(40):
                sid = f"sess-{s}"
                it = ids[rng.integers(len(ids))]
                st, out = servers[(s + t) % 2].event(sid, it)
                assert st == 200, out
                _check(out, ref.recommend(sid, it, k=10))
                sent[sid] += 1
        for sid, n in sent.items():
            st_ = store.get(sid)
            assert st_.n_events == n and st_.fingerprint == ref_fp(model_b)
        assert client.ping()
        assert s1.proc.poll() is None and s2.proc.poll() is None
    finally:
        s1.stop()
        s2.stop()


def ref_fp(model):
    from seqrec_fast.serving import model_fingerprint

    return model_fingerprint(model)


def test_reload_needs_token_configured(models):
    _d, _a, _b, pa, _pb = models
    s = Server(pa, env={"SEQREC_ADMIN_TOKEN": ""})
    try:
        s.wait()
        st, out = s.request("POST", "/v1/admin/reload", headers={"Authorization": "Bearer x"})
        assert st == 403 and "SEQREC_ADMIN_TOKEN" in out["error"]
    finally:
        s.stop()


def test_redis_outage_gives_503_and_recovers(models, redis_server):
    _d, model_a, _b, pa, _pb = models
    redis_server.client().flushdb()
    s = Server(pa, "--store", redis_server.url)
    try:
        s.wait()
        ids = model_a.item_ids_.tolist()
        assert s.event("o-1", ids[1])[0] == 200
        assert s.request("GET", "/healthz")[1]["status"] == "ok"
        redis_server.stop()
        try:
            for path in ("/v1/sessions/o-1/events", "/v1/sessions/o-2/events"):
                st, out = s.request("POST", path, {"item_id": ids[2]})
                assert st == 503 and "unavailable" in out["error"], (st, out)
            st, out = s.request("DELETE", "/v1/sessions/o-1")
            assert st == 503 and "error" in out
            st, health = s.request("GET", "/healthz")
            assert st == 200 and health["status"] == "degraded"
            assert health["store"]["available"] is False
            st, out = s.request("POST", "/v1/recommend", {"items": [ids[1], ids[2]], "k": 5})
            assert st == 200 and len(out["items"]) == 5
            st, text = s.request("GET", "/metrics")
            assert st == 200 and "seqrec_store_available 0" in text
            assert s.proc.poll() is None
        finally:
            redis_server.start()
        # back by itself: no restart of the server
        st, out = s.event("o-1", ids[2], k=5)
        assert st == 200, out
        ref = Recommender(model_a)
        _check(out, ref.recommend("o-1", ids[2], k=5))  # the restarted Redis is empty: a new session
        assert s.request("GET", "/healthz")[1]["status"] == "ok"
        assert s.proc.poll() is None
    finally:
        s.stop()
