"""Batch scoring (seqrec_fast.score): streamed input, exact agreement with the model's own
recommend(), Parquet round trips, Ray engine identical to local, error paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from seqrec_fast.cli import main
from seqrec_fast.data import load
from seqrec_fast.model import SessionRNN
from seqrec_fast.score import iter_session_blocks, score
from seqrec_fast.synthetic import generate_frame

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    frame = generate_frame(n_sessions=900, n_items=150, seed=7, n_days=3)
    cut = frame["SessionId"].iloc[int(len(frame) * 0.8)]
    train_f = frame[frame["SessionId"] < cut]
    test_f = frame[frame["SessionId"] >= cut].copy()
    train_f.to_csv(d / "train.tsv", sep="\t", index=False)
    test_f.to_csv(d / "test.tsv", sep="\t", index=False)
    # small row groups: sessions straddle row-group boundaries
    pq.write_table(pa.Table.from_pandas(test_f, preserve_index=False), d / "test.parquet",
                   row_group_size=37)
    train = load(d / "train.tsv")
    model = SessionRNN(layers=[24], n_epochs=2, batch_size=16, n_sample=32, num_threads=1,
                       progress=False, verbose=False, seed=1).fit(train)
    model.save(d / "model.npz")
    return d, model, test_f


def _expected(model, test_f, k, exclude_seen):
    known = set(np.asarray(model.item_ids_).tolist())
    rows = []
    for sid, g in test_f.groupby("SessionId", sort=False):
        items = [i for i in g.sort_values("Time", kind="stable")["ItemId"] if i in known]
        if not items:
            continue
        ids, sc = model.recommend(items, k=k, exclude_seen=exclude_seen)
        for r, (i, s) in enumerate(zip(ids, sc), 1):
            rows.append((sid, r, i, s))
    return pd.DataFrame(rows, columns=["session_id", "rank", "item_id", "score"])


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_score_matches_recommend(files, tmp_path, exclude_seen):
    d, model, test_f = files
    out = tmp_path / "recs.parquet"
    st = score(model, d / "test.tsv", out, k=7, exclude_seen=exclude_seen, block_sessions=19,
               chunk_rows=50)
    got = pd.read_parquet(out)
    exp = _expected(model, test_f, 7, exclude_seen)
    assert list(got.columns) == ["session_id", "rank", "item_id", "score"]
    assert str(got["rank"].dtype) == "int32" and str(got["score"].dtype) == "float32"
    assert st.n_rows == len(got) == len(exp)
    assert st.n_sessions == test_f["SessionId"].nunique()
    np.testing.assert_array_equal(got["session_id"], exp["session_id"])
    np.testing.assert_array_equal(got["rank"], exp["rank"])
    np.testing.assert_allclose(got["score"], exp["score"], rtol=1e-5, atol=1e-5)
    # the same items, up to near-ties that float round-off may order either way
    same = got["item_id"].to_numpy() == exp["item_id"].to_numpy()
    assert same.mean() > 0.99
    if exclude_seen:
        seen = test_f.groupby("SessionId")["ItemId"].apply(set)
        assert not any(i in seen[s] for s, i in zip(got["session_id"], got["item_id"]))


def test_parquet_streamed_equals_tsv_and_blocks(files, tmp_path):
    d, model, _ = files
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    score(model, d / "test.tsv", a, k=5)
    score(model, d / "test.parquet", b, k=5, chunk_rows=23)  # chunks smaller than row groups
    score(model, d / "test.parquet", c, k=5, block_sessions=3, chunk_rows=5)
    ta, tb, tc = pd.read_parquet(a), pd.read_parquet(b), pd.read_parquet(c)
    pd.testing.assert_frame_equal(ta, tb)
    pd.testing.assert_frame_equal(ta, tc)


def test_blocks_assemble_sessions_across_chunks(files):
    d, model, test_f = files
    blocks = list(iter_session_blocks(d / "test.parquet", model.item_ids_, block_sessions=10,
                                      chunk_rows=4))
    sids = np.concatenate([b.session_ids for b in blocks])
    assert len(sids) == len(set(sids.tolist()))
    assert all(len(b.session_ids) <= 10 for b in blocks)
    total = sum(b.items.size for b in blocks)
    known = test_f["ItemId"].isin(set(np.asarray(model.item_ids_).tolist())).sum()
    assert total == known


def test_score_line_format_and_string_ids(files, tmp_path):
    _d, model, test_f = files
    lines = [" ".join(map(str, g.sort_values("Time")["ItemId"]))
             for _, g in test_f.groupby("SessionId", sort=False)]
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.parquet"
    st = score(model, tmp_path / "s.txt", out, k=3, chunk_rows=10)
    got = pd.read_parquet(out)
    assert st.n_sessions == len(lines)
    # session ids are line numbers from 0
    assert got["session_id"].min() >= 0 and got["session_id"].max() < len(lines)
    exp = _expected(model, test_f, 3, False)
    np.testing.assert_allclose(got["score"], exp["score"], rtol=1e-5, atol=1e-5)


def test_score_errors(files, tmp_path):
    d, model, test_f = files
    with pytest.raises(ValueError, match="k must be"):
        score(model, d / "test.tsv", tmp_path / "x.parquet", k=0)
    with pytest.raises(ValueError, match="engine"):
        score(model, d / "test.tsv", tmp_path / "x.parquet", engine="spark")
    with pytest.raises(FileNotFoundError):
        score(model, d / "missing.tsv", tmp_path / "x.parquet")
    with pytest.raises(FileNotFoundError, match="folder"):
        score(model, d / "test.tsv", tmp_path / "nope" / "x.parquet")
    with pytest.raises(TypeError, match="SessionRNN"):
        score(object(), d / "test.tsv", tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not fitted"):
        score(SessionRNN(), d / "test.tsv", tmp_path / "x.parquet")
    # a session whose events are split: refused, and no output file is left behind
    sids = test_f["SessionId"].unique()
    a, b = test_f[test_f["SessionId"] == sids[0]], test_f[test_f["SessionId"] == sids[1]]
    g = pd.concat([a.iloc[:1], b, a.iloc[1:], test_f[~test_f["SessionId"].isin(sids[:2])]])
    g.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="not contiguous"):
        score(model, tmp_path / "split.tsv", tmp_path / "x.parquet")
    assert not list(tmp_path.glob("x.parquet*"))


def test_cli_score(files, tmp_path, capsys):
    d, model, _ = files
    out = tmp_path / "cli.parquet"
    assert main(["score", str(d / "model.npz"), str(d / "test.parquet"), "--out", str(out),
                 "-k", "4", "--exclude-seen"]) == 0
    ref = tmp_path / "ref.parquet"
    score(model, d / "test.parquet", ref, k=4, exclude_seen=True)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(ref))
    assert "wrote" in capsys.readouterr().out
    assert main(["score", str(d / "model.npz"), str(d / "nope.tsv"), "--out", str(out)]) == 2


def test_score_ray_identical_to_local(files, tmp_path, ray_local):
    d, model, _ = files
    loc, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    score(model, d / "test.parquet", loc, k=6, exclude_seen=True, block_sessions=13, chunk_rows=40)
    st = score(model, d / "test.parquet", ray_out, k=6, exclude_seen=True, block_sessions=13,
               chunk_rows=40, engine="ray", workers=2)
    assert st.workers == 2 and st.n_blocks > 4
    a, b = pd.read_parquet(loc), pd.read_parquet(ray_out)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
