"""The top level ``import seqrec_fast as sf``: the public names, lazily imported, and sf.load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import seqrec_fast as sf
from seqrec_fast.synthetic import generate_sessions


def test_import_is_lazy():
    code = ("import sys, seqrec_fast as sf; "
            "heavy = [m for m in ('pandas', 'seqrec_fast._core', 'seqrec_fast.model') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "from seqrec_fast import SessionRNN, Recommender, load, evaluate, similar_sessions; "
            "assert 'seqrec_fast._core' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_are_the_library_objects():
    from seqrec_fast import data, evaluate, model, ranking, serving, vectors

    assert sf.SessionRNN is model.SessionRNN
    assert sf.Recommender is serving.Recommender
    assert sf.similar_sessions is vectors.similar_sessions
    assert sf.load_data is data.load and sf.SessionData is data.SessionData
    assert sf.Ranking is ranking.Ranking and sf.SessionVectors is vectors.SessionVectors
    assert sf.evaluate is evaluate  # the submodule stays a module ...
    assert callable(sf.evaluate) and sf.evaluate.evaluate is not sf.evaluate  # ... and is callable
    assert set(sf.__all__) <= set(dir(sf))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sf.nope  # noqa: B018


def test_train_evaluate_save_load_through_the_top_level(tmp_path):
    from seqrec_fast.evaluate import evaluate

    train = generate_sessions(n_sessions=300, n_items=50, seed=4)
    test = generate_sessions(n_sessions=60, n_items=50, seed=5)
    model = sf.SessionRNN(layers=[12], n_epochs=1, batch_size=16, n_sample=0, progress=False,
                          verbose=False, num_threads=1).fit(train)
    a = sf.evaluate(model, test, cutoffs=(5, 20))
    b = evaluate(model, test, cutoffs=(5, 20))
    assert a.metrics == b.metrics
    model.save(tmp_path / "m.npz")
    loaded = sf.load(tmp_path / "m.npz")
    assert isinstance(loaded, sf.SessionRNN)
    np.testing.assert_array_equal(loaded.recommend([1, 2], k=5)[0], model.recommend([1, 2], k=5)[0])
    (tmp_path / "log.tsv").write_text("SessionId\tItemId\tTime\n1\t2\t3\n")
    with pytest.raises(ValueError, match="load a click log with seqrec_fast.load_data"):
        sf.load(tmp_path / "log.tsv")
    with pytest.raises(FileNotFoundError):
        sf.load(tmp_path / "none.npz")
