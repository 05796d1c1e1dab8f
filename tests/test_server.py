"""The HTTP server (server.py): real `seqrec serve` processes on 127.0.0.1, spoken to over HTTP.

Checks every endpoint and every 4xx path, that answers equal an in-process Recommender, the
Prometheus text format of /metrics, and a bounded concurrent burst with zero 5xx."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from seqrec_fast.model import SessionRNN
from seqrec_fast.serving import Recommender
from seqrec_fast.synthetic import generate_sessions

HOST = "127.0.0.1"
MAX_BODY = 4096


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A `seqrec serve` subprocess on a free loopback port."""

    def __init__(self, model_path, *extra):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "seqrec_fast.cli", "serve", str(model_path), "--host", HOST,
               "--port", str(self.port), "--max-body", str(MAX_BODY), "--max-k", "50",
               "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def wait(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not come up")

    def request(self, method, path, body=None, raw=None, headers=None, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            payload = resp.read()
            ctype = resp.getheader("content-type", "")
            if "json" in ctype:
                return resp.status, json.loads(payload)
            return resp.status, payload.decode()
        finally:
            if own:
                conn.close()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    data = generate_sessions(n_sessions=500, n_items=100, seed=3)
    model = SessionRNN(layers=[16], n_epochs=2, batch_size=16, n_sample=0, progress=False,
                       verbose=False, num_threads=1).fit(data)
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def servers(model_path):
    default = Server(model_path)
    strict = Server(model_path, "--unknown-item", "raise", "--exclude-seen", "--precision", "int8",
                    "--max-sessions", "3")
    try:
        yield default.wait(), strict.wait()
    finally:
        default.stop()
        strict.stop()


@pytest.fixture
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def model(model_path):
    return SessionRNN.load(model_path)


def test_events_and_recommend_equal_in_process(server, model):
    rec = Recommender(model)
    ids = model.item_ids_.tolist()
    session = [ids[3], ids[17], ids[17], ids[42]]
    for i, it in enumerate(session):
        item = str(it) if i % 2 else it  # "17" resolves to 17 as with the CLI
        st, out = server.request("POST", "/v1/sessions/u-1/events", {"item_id": item, "k": 7})
        assert st == 200, out
        exp_ids, exp_sc = rec.recommend("u-1", it, k=7)
        assert out["session_id"] == "u-1"
        assert out["items"] == exp_ids.tolist()
        np.testing.assert_allclose(out["scores"], exp_sc, rtol=1e-6)
    st, out = server.request("POST", "/v1/recommend", {"items": session, "k": 5})
    assert st == 200
    exp_ids, exp_sc = rec.predict_next(session, k=5)
    assert out["items"] == exp_ids.tolist() and set(out) == {"items", "scores", "unknown"}
    assert out["unknown"] == []
    np.testing.assert_allclose(out["scores"], exp_sc, rtol=1e-6)
    st, out = server.request("POST", "/v1/recommend", {"items": session, "exclude_seen": True})
    assert st == 200 and len(out["items"]) == 20 and not set(out["items"]) & set(session)
    # default k is 20; unknown items are skipped (default policy)
    st, out = server.request("POST", "/v1/sessions/u-2/events", {"item_id": "no-such-item"})
    assert st == 200 and len(out["items"]) == 20
    assert out["unknown"] == ["no-such-item"]  # named, not dropped without a word
    st, out2 = server.request("POST", "/v1/recommend", {"items": [ids[3], "zz", 10**9], "k": 5})
    assert st == 200 and out2["unknown"] == ["zz", 10**9]
    assert out2["items"] == rec.predict_next([ids[3]], k=5)[0].tolist()
    exp_ids, _ = rec.recommend("u-2", "no-such-item", k=20)
    assert out["items"] == exp_ids.tolist()


def test_delete_and_healthz(server, model):
    it = model.item_ids_[5].item()
    assert server.request("POST", "/v1/sessions/del-me/events", {"item_id": it})[0] == 200
    st, health = server.request("GET", "/healthz")
    assert st == 200 and health["status"] == "ok" and health["n_items"] == model.n_items
    assert health["sessions"] >= 1
    assert server.request("DELETE", "/v1/sessions/del-me") == (200, {"session_id": "del-me",
                                                                       "deleted": True})
    assert server.request("DELETE", "/v1/sessions/del-me")[1]["deleted"] is False
    # after the delete the session starts from the zero state
    st, out = server.request("POST", "/v1/sessions/del-me/events", {"item_id": it, "k": 5})
    _st2, ref = server.request("POST", "/v1/recommend", {"items": [it], "k": 5})
    assert out["items"] == ref["items"]


BAD_REQUESTS = [
    # (method, path, raw body, status)
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1,', 400),
    ("POST", "/v1/sessions/s/events", b"", 400),
    ("POST", "/v1/sessions/s/events", b"\xff\xfe{}", 400),
    ("POST", "/v1/sessions/s/events", b"[1, 2]", 400),
    ("POST", "/v1/sessions/s/events", b'"x"', 400),
    ("POST", "/v1/sessions/s/events", b"{}", 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1.5}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": true}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": null}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": [1]}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": "5"}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": 2.0}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": true}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": NaN}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "kk": 5}', 400),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": 0}', 422),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": -3}', 422),
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": 51}', 422),  # > --max-k 50
    ("POST", "/v1/sessions/s/events", b'{"item_id": 1, "k": 99999999999999999999999}', 422),
    ("POST", "/v1/sessions/s/events", b"[" * 2000 + b"]" * 2000, 400),
    ("POST", "/v1/sessions/s/events", ('{"item_id": "%s"}' % ("x" * 300)).encode(), 400),
    ("POST", "/v1/sessions/" + "s" * 300 + "/events", b'{"item_id": 1}', 400),
    ("POST", "/v1/recommend", b'{"items": 5}', 400),
    ("POST", "/v1/recommend", b'{"items": []}', 422),
    ("POST", "/v1/recommend", b'{"items": [1, {}]}', 400),
    ("POST", "/v1/recommend", b'{"items": [1], "exclude_seen": "yes"}', 400),
    ("POST", "/v1/recommend", b'{"items": [1], "k": 0}', 422),
    ("POST", "/v1/recommend", b'{"items": [1], "x": ' + b" " * MAX_BODY + b"1}", 413),
    ("GET", "/v1/recommend", None, 405),
    ("PUT", "/v1/sessions/s", None, 405),
    ("GET", "/v1/sessions/s/events", None, 405),
    ("POST", "/metrics", None, 405),
    ("GET", "/v2/nothing", None, 404),
    ("GET", "/", None, 404),
]


@pytest.mark.parametrize("method,path,raw,status", BAD_REQUESTS,
                         ids=[f"{m}-{st}-{i}" for i, (m, _, _, st) in enumerate(BAD_REQUESTS)])
def test_4xx_paths(server, method, path, raw, status):
    st, out = server.request(method, path, raw=raw)
    assert st == status, out
    assert isinstance(out, dict) and isinstance(out.get("error"), str) and out["error"], out


def test_too_long_prefix_is_422(server):
    body = json.dumps({"items": [1] * 1001}).encode()
    assert len(body) <= MAX_BODY
    st, out = server.request("POST", "/v1/recommend", raw=body)
    assert st == 422 and "at most" in out["error"]


def test_chunked_body_over_limit_is_413(server):
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        chunks = (b'{"items": [1], "pad": "' + b"x" * 1024 for _ in range(8))
        conn.request("POST", "/v1/recommend", body=chunks, encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert resp.status == 413
        assert "error" in json.loads(resp.read())
    finally:
        conn.close()


def test_strict_server_policies(servers, model):
    _, strict = servers
    rec = Recommender(model, unknown_item="raise", exclude_seen=True, precision="int8",
                      max_sessions=3)
    ids = model.item_ids_.tolist()
    st, out = strict.request("POST", "/v1/sessions/a/events", {"item_id": "nope", "k": 5})
    assert st == 422 and "'nope'" in out["error"] and "item map" in out["error"]
    st, out = strict.request("POST", "/v1/recommend", {"items": [ids[0], 10**12], "k": 5})
    assert st == 422 and str(10**12) in out["error"]
    seq = [ids[1], ids[2], ids[1]]
    for it in seq:
        st, out = strict.request("POST", "/v1/sessions/a/events", {"item_id": it, "k": 10})
        exp_ids, exp_sc = rec.recommend("a", it, k=10)
        assert st == 200 and out["items"] == exp_ids.tolist()
        np.testing.assert_allclose(out["scores"], exp_sc, rtol=1e-6)
        assert not set(out["items"]) & set(seq)
    for s in "bcde":  # the store keeps 3 sessions
        assert strict.request("POST", f"/v1/sessions/{s}/events", {"item_id": ids[0]})[0] == 200
    st, health = strict.request("GET", "/healthz")
    assert health["sessions"] == 3 and health["precision"] == "int8"
    _, text = strict.request("GET", "/metrics")
    assert re.search(r"^seqrec_session_evictions_total 2$", text, re.MULTILINE)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
                     r"(-?[0-9.e+-]+|\+Inf|NaN)$")


def test_metrics_format(server, model):
    for _ in range(3):
        server.request("POST", "/v1/sessions/m/events", {"item_id": model.item_ids_[0].item()})
    server.request("POST", "/v1/sessions/m/events", raw=b"{")
    st, text = server.request("GET", "/metrics")
    assert st == 200
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.getheader("content-type").startswith("text/plain")
    resp.read()
    conn.close()
    typed = {}
    for line in text.strip().splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            typed[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP ")
            continue
        assert _SAMPLE.match(line), line
    assert typed["seqrec_http_requests_total"] == "counter"
    assert typed["seqrec_http_request_duration_seconds"] == "histogram"
    assert typed["seqrec_live_sessions"] == "gauge"
    ev = '{endpoint="/v1/sessions/{session_id}/events",method="POST",'
    n200 = int(re.search(re.escape("seqrec_http_requests_total" + ev + 'status="200"}') + r" (\d+)",
                         text).group(1))
    n400 = int(re.search(re.escape("seqrec_http_requests_total" + ev + 'status="400"}') + r" (\d+)",
                         text).group(1))
    assert n200 >= 3 and n400 >= 1
    lab = '{endpoint="/v1/sessions/{session_id}/events",le="'
    buckets = [int(v) for v in re.findall(re.escape("seqrec_http_request_duration_seconds_bucket"
                                                    + lab) + r'[^"]+"\} (\d+)', text)]
    count = int(re.search(r'seqrec_http_request_duration_seconds_count\{endpoint="/v1/sessions/'
                          r'\{session_id\}/events"\} (\d+)', text).group(1))
    assert buckets == sorted(buckets) and buckets[-1] == count >= n200 + n400
    _, health = server.request("GET", "/healthz")
    live = int(re.search(r"^seqrec_live_sessions (\d+)$", text, re.MULTILINE).group(1))
    assert live == health["sessions"]


def test_concurrent_burst_no_5xx(server, model):
    ids = model.item_ids_.tolist()
    statuses: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work(t):
        rng = np.random.default_rng(t)
        conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
        mine = []
        try:
            for n in range(50):
                r = n % 10
                if r < 6:
                    sid = "burst-shared" if r == 0 else f"burst-{t}-{rng.integers(4)}"
                    st, out = server.request("POST", f"/v1/sessions/{sid}/events",
                                             {"item_id": ids[rng.integers(len(ids))], "k": 10},
                                             conn=conn)
                    if st == 200:
                        assert len(out["items"]) == 10
                elif r < 8:
                    st, _ = server.request("POST", "/v1/recommend",
                                           {"items": [ids[rng.integers(len(ids))] for _ in range(3)]},
                                           conn=conn)
                elif r == 8:
                    st, _ = server.request("POST", "/v1/sessions/x/events", raw=b'{"item_id":',
                                           conn=conn)
                else:
                    st, _ = server.request("DELETE", f"/v1/sessions/burst-{t}-0", conn=conn)
                mine.append(st)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))
        finally:
            conn.close()
            with lock:
                statuses.extend(mine)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(statuses) == 400
    assert not [s for s in statuses if s >= 500]
    assert set(statuses) <= {200, 400}
    assert time.monotonic() - t0 < 30
    assert server.request("GET", "/healthz")[0] == 200
    assert server.proc.poll() is None


def test_cli_without_extra_message(monkeypatch, tmp_path, model_path):
    from seqrec_fast import cli

    monkeypatch.setitem(sys.modules, "seqrec_fast.server", None)  # import fails as without the extra
    rc = cli.main(["serve", str(model_path), "--port", str(_free_port())])
    assert rc == 2
    assert cli.main(["serve", str(tmp_path / "missing.npz")]) == 2
