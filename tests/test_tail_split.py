"""Validation split of a fixed benchmark: the last sessions of the training file (tail_split and
``seqrec data split-tail``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from seqrec_fast.cli import main
from seqrec_fast.data import SessionData, load
from seqrec_fast.preprocess import tail_split


def _seqs(frame) -> list[list[int]]:
    return [g["ItemId"].tolist() for _, g in frame.groupby("SessionId", sort=False)]


def test_tail_split_by_sessions_and_events() -> None:
    data = SessionData.from_sessions([[1, 2], [3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13]])
    sp = tail_split(data, 2)
    assert _seqs(sp["train_valid"]) == [[8, 9, 10, 11], [12, 13]]
    assert _seqs(sp["train_tr"]) == [[1, 2], [3, 4, 5], [6, 7]]
    # file order kept as time for time-less files: the valid part comes after the train part
    assert sp["train_tr"]["Time"].max() < sp["train_valid"]["Time"].min()
    # 4 predictions: [12, 13] gives 1, [8..11] gives 3 -> 2 sessions; 5 needs one more session
    assert len(_seqs(tail_split(data, 4, by="events")["train_valid"])) == 2
    assert len(_seqs(tail_split(data, 5, by="events")["train_valid"])) == 3
    with pytest.raises(ValueError, match="nothing"):
        tail_split(data, 5)
    with pytest.raises(ValueError, match="by"):
        tail_split(data, 1, by="days")
    with pytest.raises(ValueError, match="size"):
        tail_split(data, 0)


def test_cli_split_tail_like_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = tmp_path / "train_sessions.txt"
    train.write_text("\n".join(" ".join(map(str, rng.integers(1, 30, rng.integers(2, 6))))
                               for _ in range(50)) + "\n")
    test = tmp_path / "test_sessions.txt"
    test.write_text("1 2 3\n4 5\n6 7 8 9\n")
    out = tmp_path / "val"
    assert main(["data", "split-tail", str(train), "--like", str(test), "--out-dir", str(out)]) == 0
    tr = load(out / "train_sessions_train_tr.tsv")
    va = load(out / "train_sessions_train_valid.tsv")
    assert va.n_sessions == 3 and tr.n_sessions == 47
    full = load(train)
    np.testing.assert_array_equal(va.item_ids[va.items], full.item_ids[full.items[-va.n_events:]])
    assert main(["data", "split-tail", str(train), "--out-dir", str(out)]) == 2
