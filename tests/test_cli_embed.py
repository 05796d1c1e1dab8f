"""``seqrec embed``: vectors of a saved model written to .parquet / .npy / .npz, equal to
SessionRNN.transform, and its error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from seqrec_fast.cli import main
from seqrec_fast.data import load
from seqrec_fast.model import SessionRNN
from seqrec_fast.synthetic import generate_sessions
from seqrec_fast.vectors import load_vectors


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    train = generate_sessions(n_sessions=300, n_items=60, seed=2)
    model = SessionRNN(layers=[12], n_epochs=1, batch_size=16, n_sample=0, progress=False,
                       verbose=False, num_threads=1).fit(train)
    model.save(d / "m.npz")
    test = generate_sessions(n_sessions=40, n_items=80, seed=5)  # items 60..79 are unknown
    test.to_tsv(d / "s.tsv")
    return d


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet"])
def test_embed_writes_the_transform(files, capsys, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    out = files / f"v{suffix}"
    code = main(["embed", str(files / "m.npz"), str(files / "s.tsv"), "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "session vectors of width 12" in stdout and f"wrote {out}" in stdout
    model = SessionRNN.load(files / "m.npz")
    want = model.transform(load(files / "s.tsv", item_map=model.item_ids_))
    got = load_vectors(out)
    assert got.ids.tolist() == want.ids.tolist()
    np.testing.assert_array_equal(got.vectors, want.vectors)
    if suffix == ".npy":
        assert (files / "v.ids.npy").exists()


def test_embed_errors(files, capsys, tmp_path: Path):
    m, s = str(files / "m.npz"), str(files / "s.tsv")
    assert main(["embed", m, s, "--out", str(tmp_path / "v.csv")]) == 2
    assert "expected a file ending in .parquet, .npy, .npz" in capsys.readouterr().err
    assert main(["embed", m, str(tmp_path / "none.tsv"), "--out", str(tmp_path / "v.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["embed", m, s, "--out", str(tmp_path / "no" / "v.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["embed", s, s, "--out", str(tmp_path / "v.npy")]) == 2
    capsys.readouterr()
    assert not list(tmp_path.iterdir())
