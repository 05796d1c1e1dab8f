"""Leave-one-out on user histories: the split, history exclusion in the rank-count kernel and in
evaluate(), max_history, the fast path against the generic path, and the two-command CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from seqrec_fast import _core
from seqrec_fast import reference as R
from seqrec_fast.cli import main
from seqrec_fast.data import SessionData, load
from seqrec_fast.evaluate import evaluate
from seqrec_fast.model import SessionRNN
from seqrec_fast.preprocess import leave_one_out, prepare

# -- the kernel: score_rank_counts(..., exclude=) -------------------------------------------------


def _problem(rng, dtype, n=37, N=1001, D=13, m=40):
    H = rng.standard_normal((n, D)).astype(dtype)
    W = rng.standard_normal((N, D)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    W[6], b[6] = W[5], b[5]  # items 5 and 6 always tie
    t = rng.integers(0, N, n).astype(np.int32)
    ex = rng.integers(-1, N, (n, m)).astype(np.int32)
    t[0] = 5
    ex[0, :4] = [6, 6, 5, -1]  # a duplicate, the target itself and padding
    return H, W, b, t, ex


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_score_rank_counts_exclude_matches_reference(rng, dtype, threads) -> None:
    H, W, b, t, ex = _problem(rng, dtype)
    gt, ge = _core.score_rank_counts(H, W, b, t, threads, exclude=ex)
    rgt, rge = R.score_rank_counts(H.astype(np.float64), W.astype(np.float64),
                                   b.astype(np.float64), t, exclude=ex)
    np.testing.assert_array_equal(gt, rgt)
    np.testing.assert_array_equal(ge, rge)
    # removing items never raises a count, and a row's counts drop by exactly the excluded items
    # that were counted (a brute-force check on the scores)
    gt0, ge0 = _core.score_rank_counts(H, W, b, t, threads)
    S = (H.astype(np.float64) @ W.T.astype(np.float64)) + b
    for q in [0, 1, 2]:
        items = {int(e) for e in ex[q] if e >= 0 and e != t[q]}
        s_t = S[q, t[q]]
        assert gt0[q] - gt[q] == sum(S[q, e] > s_t for e in items)
        assert ge0[q] - ge[q] == sum(S[q, e] >= s_t for e in items)
    # row 0: item 6 ties with the target 5 and is removed; the target itself is always ranked
    assert ge0[0] - ge[0] == 1 + sum(S[0, e] >= S[0, 5] for e in set(ex[0, 4:].tolist()) - {5, 6, -1})


def test_score_rank_counts_exclude_packed_table_and_nan(rng) -> None:
    H, W, b, t, ex = _problem(rng, np.float32)
    packed = _core.pack_table(W)
    np.testing.assert_array_equal(
        np.stack(_core.score_rank_counts(H, packed, b, t, 2, exclude=ex)),
        np.stack(_core.score_rank_counts(H, W, b, t, 1, exclude=ex)))
    H[3] = np.nan
    gt, ge = _core.score_rank_counts(H, W, b, t, 1, exclude=ex)
    n_removed = len({int(e) for e in ex[3] if e >= 0 and e != t[3]})
    assert gt[3] == ge[3] == W.shape[0] - n_removed
    rgt, _ = R.score_rank_counts(H.astype(np.float64), W.astype(np.float64), b.astype(np.float64),
                                 t, exclude=ex)
    assert rgt[3] == gt[3]


def test_score_rank_counts_exclude_errors(rng) -> None:
    H, W, b, t, ex = _problem(rng, np.float32)
    with pytest.raises(ValueError, match="exclude"):
        _core.score_rank_counts(H, W, b, t, 1, exclude=ex[:-1])
    with pytest.raises(TypeError, match="exclude"):
        _core.score_rank_counts(H, W, b, t, 1, exclude=ex.astype(np.int64))
    bad = ex.copy()
    bad[2, 1] = W.shape[0]
    with pytest.raises(IndexError, match="exclude"):
        _core.score_rank_counts(H, W, b, t, 1, exclude=bad)
    bad[2, 1] = -2
    with pytest.raises(IndexError, match="exclude"):
        _core.score_rank_counts(H, W, b, t, 1, exclude=bad)


# -- the split --------------------------------------------------------------------------------------


def _users(histories: list[list[int]]) -> SessionData:
    return SessionData.from_sessions(histories)


def _seqs(frame) -> list[list[int]]:
    return [g["ItemId"].tolist() for _, g in frame.groupby("SessionId", sort=False)]


def test_leave_one_out_targets_by_hand() -> None:
    data = _users([[1, 2, 3, 4], [5, 6], [7], [8, 9, 8]])
    sp = leave_one_out(data)
    assert _seqs(sp["test"]) == [[1, 2, 3, 4], [5, 6], [8, 9, 8]]  # test target = last item
    assert _seqs(sp["train_full"]) == [[1, 2, 3], [5], [7], [8, 9]]
    assert _seqs(sp["train_valid"]) == [[1, 2, 3], [8, 9]]  # valid target = second-to-last
    assert _seqs(sp["train_tr"]) == [[1, 2], [5], [7], [8]]
    clipped = leave_one_out(_users([[1, 2, 3, 4, 5, 6], [7, 8]]), max_history=2)
    assert _seqs(clipped["train_full"]) == [[3, 4, 5], [7]]  # the last max_history + 1 events
    assert _seqs(clipped["train_tr"]) == [[2, 3, 4], [7]]
    assert _seqs(clipped["test"]) == [[1, 2, 3, 4, 5, 6], [7, 8]]  # evaluation files stay whole
    with pytest.raises(ValueError, match="max_history"):
        leave_one_out(data, max_history=0)
    with pytest.raises(ValueError, match="loo"):
        prepare(data.to_frame().assign(Time=0.0), "rsc15-2015", max_history=5)


# -- evaluate(): exclusion and max_history ------------------------------------------------------------

N_ITEMS = 9


class FixedScorer:
    """Scores that ignore the session: item j scores FIXED[j] (ranks are known by hand)."""

    FIXED = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1], np.float32)

    def __init__(self) -> None:
        self.n_items = N_ITEMS
        self.fed: list[list[int]] = []

    def start(self, n_slots: int) -> None:
        self.hist = [[] for _ in range(n_slots)]

    def reset(self, slots) -> None:
        for s in slots:
            self.hist[s] = []
            self.fed.append(self.hist[s])

    def score(self, slots, items) -> np.ndarray:
        for s, i in zip(slots.tolist(), items.tolist()):
            self.hist[s].append(i)
        return np.tile(self.FIXED, (len(slots), 1))


def _test_data(histories):
    return SessionData.from_sessions(histories, item_map=np.arange(N_ITEMS))


def test_exclusion_changes_ranks_as_expected() -> None:
    # target 4 has rank 5 (items 0..3 score higher); the history removes 0 and 2 -> rank 3.
    # target 1 was seen before: a miss under exclusion (ICLRec zeroes its score), rank 2 otherwise.
    test = _test_data([[0, 2, 4], [1, 5, 1], [8, 3]])
    plain = evaluate(FixedScorer(), test, targets="last", cutoffs=[1, 2, 3, 4])
    np.testing.assert_array_equal(np.sort(plain.ranks), [2, 4, 5])
    ex = evaluate(FixedScorer(), test, targets="last", cutoffs=[1, 2, 3, 4], exclude_history=True)
    np.testing.assert_array_equal(np.sort(ex.ranks), [3, 4, np.inf])
    assert ex.n_target_in_history == 1 and ex.n_events == 3
    assert ex.metrics["hitrate@3"] == pytest.approx(1 / 3)
    assert ex.metrics["ndcg@4"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(5)) / 3)
    assert ex.to_dict()["exclude_history"] is True


def test_max_history_feeds_only_the_last_items() -> None:
    sc = FixedScorer()
    test = _test_data([[0, 1, 2, 3, 4, 5], [6, 7]])
    res = evaluate(sc, test, targets="last", max_history=3, exclude_history=True, cutoffs=[5])
    assert sorted(sc.fed) == [[2, 3, 4], [6]]
    # exclusion still uses the whole history: 0..4 removed, target 5 becomes rank 1
    np.testing.assert_array_equal(np.sort(res.ranks), [1, 7])
    with pytest.raises(ValueError, match="targets='last'"):
        evaluate(FixedScorer(), test, max_history=3)
    with pytest.raises(ValueError, match="max_history"):
        evaluate(FixedScorer(), test, targets="last", max_history=0)


class _Generic:
    """Hides SessionRNN's fast paths (score_counts, advance): evaluate() uses score()."""

    def __init__(self, model) -> None:
        self.m = model
        self.n_items = model.n_items

    def start(self, n):
        self.m.start(n)

    def reset(self, s):
        self.m.reset(s)

    def score(self, s, i):
        return self.m.score(s, i)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_path_matches_generic_path(dtype) -> None:
    rng = np.random.default_rng(3)
    hist = [rng.integers(0, 30, rng.integers(2, 25)).tolist() for _ in range(120)]
    for h in hist[:40]:
        h.append(h[0])  # some targets seen before
    data = SessionData.from_sessions(hist, item_map=np.arange(30))
    sp = leave_one_out(data)
    train = SessionData.from_events(sp["train_tr"]["SessionId"], sp["train_tr"]["ItemId"],
                                    item_map=np.arange(30))
    valid = SessionData.from_events(sp["train_valid"]["SessionId"], sp["train_valid"]["ItemId"],
                                    item_map=np.arange(30))
    model = SessionRNN(layers=[8], n_epochs=1, batch_size=8, n_sample=0, full_softmax=True,
                       optimizer="adam", learning_rate=0.01, bptt=4, seed=1, dtype=dtype,
                       progress=False, verbose=False).fit(train)
    for kw in ({"exclude_history": True}, {"exclude_history": True, "max_history": 5}, {}):
        fast = evaluate(model, valid, targets="last", cutoffs=[5, 10], batch_size=16, **kw)
        slow = evaluate(_Generic(model), valid, targets="last", cutoffs=[5, 10], batch_size=7, **kw)
        np.testing.assert_array_equal(np.sort(fast.ranks), np.sort(slow.ranks))
        assert fast.n_target_in_history == slow.n_target_in_history
    assert fast.n_events == valid.n_sessions


# -- the two commands -----------------------------------------------------------------------------


def test_cli_prepare_then_evaluate_loo(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for u in range(150):
        x = int(rng.integers(20))
        seq = []
        for _ in range(int(rng.integers(3, 12))):
            seq.append(x)
            x = (x + 7) % 20  # a cycle of 20: no item repeats within a history
        lines.append(" ".join(map(str, [u, *seq])))
    src = tmp_path / "users.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "prep"
    assert main(["data", "prepare", str(src), "--protocol", "loo", "--out-dir", str(out),
                 "--max-history", "6"]) == 0
    train = load(out / "users_train_tr.tsv")
    assert train.session_lengths.max() <= 7
    model = tmp_path / "m.npz"
    assert main(["train", str(out / "users_train_tr.tsv"), "--out", str(model), "--quiet",
                 "--param", "layers=16", "--param", "n_epochs=3", "--param", "full_softmax=true",
                 "--param", "optimizer=adam", "--param", "learning_rate=0.02",
                 "--param", "batch_size=16"]) == 0
    res = tmp_path / "r.json"
    capsys.readouterr()
    assert main(["evaluate", str(model), str(out / "users_test.tsv"), "--protocol", "loo",
                 "--exclude-history", "--max-history", "6", "--cutoffs", "10", "20",
                 "--json", str(res)]) == 0
    printed = capsys.readouterr().out
    assert "exclude_history=True" in printed
    r = json.loads(res.read_text())
    assert r["n_events"] == 150 and r["targets"] == "last" and r["exclude_history"] is True
    assert r["unknown_targets"] == "miss"  # loo: an unknown last item is a miss, never dropped
    for k in ("hitrate@10", "hitrate@20", "ndcg@10", "ndcg@20"):
        assert 0.0 <= r[k] <= 1.0
    assert r["hitrate@20"] > 0.5  # the deterministic successor structure is learnable
    assert main(["evaluate", str(model), str(out / "users_test.tsv"), "--max-history", "3"]) == 2


def _cycle_histories(n_users: int = 150, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        x = int(rng.integers(20))
        seq = []
        for _ in range(int(rng.integers(3, 12))):
            seq.append(x)
            x = (x + 7) % 20
        out.append(seq)
    return out


def test_fit_validates_with_the_leave_one_out_protocol() -> None:
    """fit(valid_options=...) computes each epoch's validation figures with that protocol: the last
    epoch's equal evaluate() of the trained model with the same keywords; early stopping uses them."""
    data = SessionData.from_sessions(_cycle_histories(), item_map=np.arange(20))
    sp = leave_one_out(data)
    train = SessionData.from_events(sp["train_tr"]["SessionId"], sp["train_tr"]["ItemId"],
                                    item_map=np.arange(20))
    valid = SessionData.from_events(sp["train_valid"]["SessionId"], sp["train_valid"]["ItemId"],
                                    item_map=np.arange(20), keep_unknown=True)
    opts = {"targets": "last", "exclude_history": True, "max_history": 4, "unknown_targets": "miss"}
    m = SessionRNN(layers=[12], n_epochs=3, batch_size=16, full_softmax=True, optimizer="adam",
                   learning_rate=0.02, seed=1, progress=False, verbose=False)
    m.fit(train, valid, valid_options=opts)
    res = evaluate(m, valid, cutoffs=(20,), **opts)
    last = m.history_[-1]
    assert last["valid_recall@20"] == res["recall@20"]
    assert last["valid_mrr@20"] == res["mrr@20"] and last["valid_ndcg@20"] == res["ndcg@20"]
    assert res.n_events == valid.n_sessions  # one target per user: the protocol was applied
    default = evaluate(m, valid, cutoffs=(20,))
    assert default.n_events != res.n_events


@pytest.mark.parametrize("opts, err, match", [
    ({"cutoffs": (5,)}, ValueError, "unknown key"),
    ({"targets": "first"}, ValueError, "targets"),
    ({"unknown_targets": "skip"}, ValueError, "unknown_targets"),
    ({"exclude_history": 1}, TypeError, "exclude_history"),
    ({"max_history": 0, "targets": "last"}, ValueError, "max_history"),
    ({"max_history": 5}, ValueError, "targets='last'"),
    ({"min_prefix": 2, "targets": "last"}, ValueError, "min_prefix"),
    ([("targets", "last")], TypeError, "dict"),
])
def test_fit_valid_options_errors(opts, err, match) -> None:
    d = SessionData.from_sessions([[0, 1, 2], [1, 2, 0]], item_map=np.arange(3))
    m = SessionRNN(layers=[4], n_epochs=1, batch_size=2, n_sample=0, full_softmax=True,
                   progress=False, verbose=False)
    with pytest.raises(err, match=match):
        m.fit(d, d, valid_options=opts)


def test_cli_train_with_loo_validation_and_early_stopping(tmp_path: Path, capsys) -> None:
    src = tmp_path / "users.txt"
    src.write_text("".join(" ".join(map(str, [u, *h])) + "\n"
                           for u, h in enumerate(_cycle_histories(seed=4))))
    out = tmp_path / "prep"
    assert main(["data", "prepare", str(src), "--protocol", "loo", "--out-dir", str(out)]) == 0
    model = tmp_path / "m.npz"
    argv = ["train", str(out / "users_train_tr.tsv"), "--out", str(model), "--quiet",
            "--param", "layers=12", "--param", "n_epochs=4", "--param", "full_softmax=true",
            "--param", "optimizer=adam", "--param", "learning_rate=0.02", "--param", "batch_size=16"]
    assert main(argv + ["--protocol", "loo"]) == 2  # a validation protocol without --valid
    assert "need --valid" in capsys.readouterr().err
    assert main(argv + ["--valid", str(out / "users_train_valid.tsv"), "--protocol", "loo",
                        "--exclude-history", "--max-history", "6", "--early-stopping", "2"]) == 0
    m = SessionRNN.load(model)
    assert m.n_items == 20
    assert main(argv + ["--valid", str(out / "users_train_valid.tsv"), "--max-history", "6"]) == 2
    assert "--max-history needs --protocol loo" in capsys.readouterr().err
