"""The approximate HNSW index (serving/index.py): bias folded into the vectors, exact rescoring,
agreement with the exact kernel, exclude_seen, save / load keyed by the model fingerprint, the
Recommender and `seqrec serve --index hnsw`."""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import hnswlib  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip("hnswlib not installed (pip install 'seqrec-fast[index]')", allow_module_level=True)

from seqrec_fast import _core
from seqrec_fast.model import SessionRNN
from seqrec_fast.serving import Recommender, model_fingerprint
from seqrec_fast.serving.index import HnswIndex
from seqrec_fast.synthetic import generate_sessions


@pytest.fixture(scope="module")
def model():
    data = generate_sessions(n_sessions=500, n_items=150, seed=2)
    return SessionRNN(layers=[12], n_epochs=2, batch_size=16, n_sample=0, seed=0, progress=False,
                      verbose=False, num_threads=1).fit(data)


def _overlap(a, b):
    return np.mean([len(set(x.tolist()) & set(y.tolist())) / a.shape[1] for x, y in zip(a, b)])


def test_index_matches_exact_and_scores_are_exact():
    rng = np.random.default_rng(0)
    N, H, k = 2000, 16, 10
    W = rng.standard_normal((N, H)).astype(np.float32) * 0.2
    b = (rng.standard_normal(N) * 2).astype(np.float32)  # the bias decides much of the ranking
    Q = rng.standard_normal((50, H)).astype(np.float32)
    # the bias-dominated case is where the L2 reduction is exact-ish and the ip graph is not
    ix = HnswIndex.build(W, b, "fp", M=16, ef_construction=200, ef_search=200, space="l2")
    exact, _exact_sc = _core.topk(Q, W, b, k, None, None, 1)
    ip = HnswIndex.build(W, b, "fp", M=16, ef_construction=200, ef_search=200, space="ip")
    assert _overlap(ip.search(Q, k)[0], exact) >= 0.8
    got, sc = ix.search(Q, k)
    assert got.dtype == np.int32 and sc.dtype == np.float32 and got.shape == (50, k)
    assert _overlap(got, exact) >= 0.95
    np.testing.assert_allclose(sc, np.einsum("nh,nkh->nk", Q, W[got]) + b[got], rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(sc, axis=1) <= 0)
    # without the bias folded in, the index could not find these: the top items are the high-b ones
    assert _overlap(got, exact) > _overlap(np.argsort(-(Q @ W.T), axis=1)[:, :k], exact)
    # exclusions: never returned, still k results
    ex = np.full((50, 7), -1, np.int32)
    ex[:, :5] = exact[:, :5]
    got2, _sc2 = ix.search(Q, k, ex)
    for row, e in zip(got2, ex):
        assert not set(row.tolist()) & set(e[e >= 0].tolist()) and (row >= 0).all()
    # k above N: padded with -1 / -inf
    small = HnswIndex.build(W[:5].copy(), b[:5].copy(), "fp5")
    idx, s = small.search(Q[:2], 8)
    assert (idx[:, 5:] == -1).all() and np.isneginf(s[:, 5:]).all()
    assert sorted(idx[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_save_load_keyed_by_fingerprint(tmp_path):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((300, 8)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    path = str(tmp_path / "m.hnsw")
    ix = HnswIndex.for_model(W, b, "fp-a", path=path)
    assert os.path.exists(path) and HnswIndex.read_meta(path)["fingerprint"] == "fp-a"
    mtime = os.path.getmtime(path)
    again = HnswIndex.for_model(W, b, "fp-a", path=path)  # loaded, not rebuilt
    assert os.path.getmtime(path) == mtime
    assert again.meta["build_seconds"] == ix.meta["build_seconds"]
    Q = rng.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(again.search(Q, 5)[0], ix.search(Q, 5)[0])
    with pytest.raises(ValueError, match="built for model fp-a"):
        HnswIndex.load(path, W, b, "fp-b")
    with pytest.raises(ValueError, match="does not match"):
        HnswIndex.load(path, W[:200].copy(), b[:200].copy(), "fp-a")
    with pytest.raises(FileNotFoundError):
        HnswIndex.load(str(tmp_path / "none.hnsw"), W, b, "fp-a")
    with pytest.raises(ValueError, match="float32"):
        HnswIndex.build(W.astype(np.float64), b, "x")
    with pytest.raises(ValueError, match="space"):
        HnswIndex.build(W, b, "x", space="cos")
    # another model at the same path: rebuilt and overwritten
    HnswIndex.for_model(W * 2, b, "fp-b", path=path)
    assert HnswIndex.read_meta(path)["fingerprint"] == "fp-b"


def test_recommender_with_index(model, tmp_path):
    path = str(tmp_path / "model.hnsw")
    exact = Recommender(model, exclude_seen=True)
    approx = Recommender(model, exclude_seen=True, index="hnsw", index_path=path,
                         index_options={"ef_search": 200, "ef_construction": 200})
    assert approx.stats()["index"] == "hnsw" and os.path.exists(path)
    assert HnswIndex.read_meta(path)["fingerprint"] == model_fingerprint(model)
    ids = model.item_ids_
    rng = np.random.default_rng(3)
    seen, overlaps = [], []
    for _t in range(12):
        it = ids[rng.integers(len(ids))]
        seen.append(it)
        a_ids, a_sc = approx.recommend("s", it, k=10)
        e_ids, _ = exact.recommend("s", it, k=10)
        assert not set(a_ids.tolist()) & set(seen)  # exclude_seen holds with the index
        full = model.score_prefix(seen)
        pos = {x: j for j, x in enumerate(ids.tolist())}
        np.testing.assert_allclose(a_sc, full[[pos[x] for x in a_ids.tolist()]], rtol=1e-4, atol=1e-4)
        overlaps.append(len(set(a_ids.tolist()) & set(e_ids.tolist())) / 10)
    assert np.mean(overlaps) >= 0.9
    p_ids, _ = approx.predict_next(seen[:3], k=5, exclude_seen=False)
    assert len(p_ids) == 5
    assert approx.overlap_at_k([seen[:2], seen[:5]], k=10) >= 0.8
    with pytest.raises(ValueError, match="precision"):
        Recommender(model, index="hnsw", precision="int8")
    with pytest.raises(ValueError, match="index must be"):
        Recommender(model, index="ivf")


def test_serve_with_index(model, tmp_path):
    pytest.importorskip("uvicorn")
    from test_server_scale import Server

    mpath = tmp_path / "model.npz"
    model.save(mpath)
    s = Server(mpath, "--index", "hnsw")
    try:
        s.wait()
        assert s.request("GET", "/healthz")[1]["index"] == "hnsw"
        assert os.path.exists(str(mpath) + ".hnsw")  # saved beside the model
        rec = Recommender(SessionRNN.load(mpath), index="hnsw", index_path=str(mpath) + ".hnsw")
        it = model.item_ids_[4].item()
        st, out = s.event("x", it, k=7)
        assert st == 200
        e_ids, e_sc = rec.recommend("x", it, k=7)
        assert out["items"] == e_ids.tolist()
        np.testing.assert_allclose(out["scores"], e_sc, rtol=1e-6)
    finally:
        s.stop()
