"""HTTP ``GET /v1/sessions/{id}/vector`` and ``POST /v1/rank`` on a real ``seqrec serve`` process:
answers equal an in-process Recommender, unknown candidates are listed, 404 / 413 / 4xx paths."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from seqrec_fast.model import SessionRNN
from seqrec_fast.serving import Recommender
from seqrec_fast.synthetic import generate_sessions
from test_server import Server


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    data = generate_sessions(n_sessions=300, n_items=80, seed=6)
    model = SessionRNN(layers=[16], n_epochs=1, batch_size=16, n_sample=0, progress=False,
                       verbose=False, num_threads=1).fit(data)
    path = tmp_path_factory.mktemp("serve_rank") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path, "--max-candidates", "50")
    try:
        yield s.wait()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def model(model_path):
    return SessionRNN.load(model_path)


def test_vector_and_rank_equal_in_process(server, model):
    rec = Recommender(model)
    ids = model.item_ids_.tolist()
    session = [ids[3], ids[17], ids[40]]
    for it in session:
        assert server.request("POST", "/v1/sessions/v-1/events", {"item_id": it, "k": 3})[0] == 200
        rec.recommend("v-1", it, k=3)
    st, out = server.request("GET", "/v1/sessions/v-1/vector")
    assert st == 200 and out["session_id"] == "v-1"
    np.testing.assert_array_equal(np.float32(out["vector"]), rec.session_vector("v-1"))
    cands = [ids[5], ids[60], "nope", ids[5], str(ids[2]), 10**9]
    # ranking a live session without an event: the state is read, not advanced
    st, out = server.request("POST", "/v1/rank", {"session_id": "v-1", "candidates": cands})
    assert st == 200, out
    r = rec.rank("v-1", cands)
    assert set(out) == {"session_id", "items", "scores", "unknown"}
    assert out["items"] == r.items.tolist() and out["unknown"] == ["nope", 10**9]
    np.testing.assert_allclose(out["scores"], r.scores, rtol=1e-6)
    st, again = server.request("GET", "/v1/sessions/v-1/vector")
    np.testing.assert_array_equal(np.float32(again["vector"]), rec.session_vector("v-1"))
    # with an event: the session advances exactly as with /events
    st, out = server.request("POST", "/v1/rank", {"session_id": "v-1", "candidates": cands,
                                                  "item_id": ids[8]})
    r = rec.rank("v-1", cands, item_id=ids[8])
    assert st == 200 and out["items"] == r.items.tolist()
    st, vec = server.request("GET", "/v1/sessions/v-1/vector")
    np.testing.assert_array_equal(np.float32(vec["vector"]), rec.session_vector("v-1"))
    # stateless on a prefix
    st, out = server.request("POST", "/v1/rank", {"items": session, "candidates": cands})
    r = rec.rank_prefix(session, cands)
    assert st == 200 and set(out) == {"items", "scores", "unknown"}
    assert out["items"] == r.items.tolist()
    np.testing.assert_allclose(out["scores"], r.scores, rtol=1e-6)
    # zero candidates: an empty answer
    st, out = server.request("POST", "/v1/rank", {"items": session, "candidates": []})
    assert st == 200 and out == {"items": [], "scores": [], "unknown": []}


def test_rank_and_vector_errors(server, model):
    ids = model.item_ids_.tolist()
    st, out = server.request("GET", "/v1/sessions/never-seen/vector")
    assert st == 404 and "not live" in out["error"]
    st, out = server.request("POST", "/v1/rank", {"items": [ids[1]], "candidates": ids[:51]})
    assert st == 413 and "at most 50" in out["error"]
    assert server.request("POST", "/v1/rank", {"items": [ids[1]], "candidates": ids[:50]})[0] == 200
    bad = [
        ({"candidates": [1]}, 400, "exactly one of"),
        ({"candidates": [1], "items": [1], "session_id": "a"}, 400, "exactly one of"),
        ({"items": [ids[1]]}, 400, "'candidates' must be a JSON array"),
        ({"items": [ids[1]], "candidates": "1,2"}, 400, "'candidates' must be a JSON array"),
        ({"items": [ids[1]], "candidates": [1, [2]]}, 400, "candidates[1] must be"),
        ({"items": [], "candidates": [1]}, 422, "'items' is empty"),
        ({"items": [ids[1]], "candidates": [1], "item_id": 3}, 400, "'item_id' goes with"),
        ({"session_id": 5, "candidates": [1]}, 400, "session_id must be a string"),
        ({"session_id": "a", "candidates": [1], "k": 3}, 400, "unexpected field"),
        ({"session_id": "a", "candidates": [1], "item_id": True}, 400, "item_id must be"),
    ]
    for body, status, msg in bad:
        st, out = server.request("POST", "/v1/rank", body)
        assert st == status and msg in out["error"], (body, st, out)
    st, _ = server.request("POST", "/v1/rank", raw=b"{not json")
    assert st == 400
    st, _ = server.request("GET", "/v1/rank")
    assert st == 405
    # a ghost session without an event is not created by ranking
    st, out = server.request("POST", "/v1/rank", {"session_id": "ghost", "candidates": ids[:3]})
    assert st == 200 and len(out["items"]) == 3
    assert server.request("GET", "/v1/sessions/ghost/vector")[0] == 404
    st, text = server.request("GET", "/metrics")
    assert 'endpoint="/v1/rank"' in text and 'endpoint="/v1/sessions/{session_id}/vector"' in text
