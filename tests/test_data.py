"""Loaders and SessionData: every format (plain and gzipped), ordering, item maps, errors, shared data."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from seqrec_fast.data import FORMATS, SessionData, detect_format, load

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SEQREC_DATA_DIR", REPO.parent / "shared" / "data"))


def write(path: Path, text: str, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def sessions_of(d: SessionData) -> list[list]:
    """Sessions as lists of external ids."""
    return [d.item_ids[d.session(s)].tolist() for s in range(d.n_sessions)]


# The same small log in event form: session 20 starts before session 10, rows out of time order.
EVENTS = [  # (session, item, time)
    (10, 100, 50.0),
    (10, 101, 40.0),
    (10, 100, 60.0),
    (20, 102, 10.0),
    (20, 103, 30.0),
    (20, 102, 20.0),
    (30, 104, 55.0),
]
EXPECTED = [[102, 102, 103], [101, 100, 100], [104]]  # by first time, then time inside


def tsv_text(cols=("SessionId", "ItemId", "Time"), sep="\t", extra=False) -> str:
    head = sep.join(cols + (("CatId",) if extra else ()))
    rows = [sep.join([str(s), str(i), str(t)] + (["7"] if extra else [])) for s, i, t in EVENTS]
    return head + "\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("gz", [False, True])
def test_gru4rec_tsv(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "log.tsv", tsv_text(extra=True), gz)
    assert detect_format(p) == "tsv"
    d = load(p)
    assert sessions_of(d) == EXPECTED
    assert d.session_ids.tolist() == [20, 10, 30]
    assert d.items.dtype == np.int32 and d.offsets.dtype == np.int64 and d.times.dtype == np.float64
    assert d.items.flags.c_contiguous
    assert d.offsets.tolist() == [0, 3, 6, 7]
    # times sorted within each session
    for s in range(d.n_sessions):
        t = d.times[d.offsets[s] : d.offsets[s + 1]]
        assert np.all(np.diff(t) >= 0)
    firsts = d.times[d.offsets[:-1]]
    assert np.all(np.diff(firsts) >= 0)


def test_custom_column_names(tmp_path: Path) -> None:
    p = write(tmp_path / "log.tsv", tsv_text(cols=("sess", "prod", "when")))
    d = load(p, session_key="sess", item_key="prod", time_key="when")
    assert sessions_of(d) == EXPECTED
    with pytest.raises(
        ValueError, match=r"missing column 'nope'.*log\.tsv|log\.tsv.*missing column 'nope'"
    ):
        load(p, session_key="nope", item_key="prod")


@pytest.mark.parametrize("gz", [False, True])
def test_csv(tmp_path: Path, gz: bool) -> None:
    p = write(
        tmp_path / "log.csv", tsv_text(cols=("session_id", "item_id", "timestamp"), sep=","), gz
    )
    assert detect_format(p) == "csv"
    assert sessions_of(load(p)) == EXPECTED


def test_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    df = pd.DataFrame(EVENTS, columns=["SessionId", "ItemId", "Time"])
    p = tmp_path / "log.parquet"
    df.to_parquet(p)
    assert detect_format(p) == "parquet"
    assert sessions_of(load(p)) == EXPECTED


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "log.parquet"
    p.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"seqrec-fast\[parquet\]"):
        load(p, "parquet")


@pytest.mark.parametrize("gz", [False, True])
def test_one_session_per_line(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "s.txt", "5 3 3 9\n1\n\n7 5\n", gz)
    assert detect_format(p) == "sessions"
    d = load(p)
    assert d.times is None
    assert sessions_of(d) == [[5, 3, 3, 9], [1], [7, 5]]  # file order, blank line skipped


@pytest.mark.parametrize("gz", [False, True])
def test_user_sequences(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "u.txt", "1 10 11 12\n2 11 13\n3 10 10\n", gz)
    assert detect_format(p) == "user_seq"
    d = load(p)
    assert d.session_ids.tolist() == [1, 2, 3]
    assert sessions_of(d) == [[10, 11, 12], [11, 13], [10, 10]]


@pytest.mark.parametrize("gz", [False, True])
def test_user_item_lines(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "ui.txt", "1 10\n1 11\n2 11\n2 13\n2 10\n3 12\n", gz)
    assert detect_format(p) == "user_item"
    d = load(p)
    assert d.session_ids.tolist() == [1, 2, 3]
    assert sessions_of(d) == [[10, 11], [11, 13, 10], [12]]


@pytest.mark.parametrize("gz", [False, True])
def test_recbole_inter(tmp_path: Path, gz: bool) -> None:
    text = "session_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"{s}\t{i}\t{t}\n" for s, i, t in EVENTS
    )
    p = write(tmp_path / "x.inter", text, gz)
    assert detect_format(p) == "recbole"
    assert sessions_of(load(p)) == EXPECTED
    # also detected from the typed header alone
    p2 = write(tmp_path / "x.txt", text)
    assert detect_format(p2) == "recbole"


def test_session_items_rows(tmp_path: Path) -> None:
    p = write(tmp_path / "t.tsv", "SessionId\tTime\tItems\n7\t200\t4 5 4\n3\t100\t9 8\n", True)
    assert detect_format(p) == "session_items"
    d = load(p)
    assert sessions_of(d) == [[9, 8], [4, 5, 4]]  # ordered by session time, item order kept


def test_yoochoose_raw_clicks(tmp_path: Path) -> None:
    text = (
        "2,2014-04-07T10:54:09.868Z,214530776,0\n"
        "1,2014-04-07T10:51:09.277Z,214536502,0\n"
        "1,2014-04-07T10:57:09.876Z,214536500,0\n"
    )
    p = write(tmp_path / "clicks.dat", text)
    assert detect_format(p) == "yoochoose"
    d = load(p)
    assert sessions_of(d) == [[214536502, 214536500], [214530776]]
    assert d.times[0] == pytest.approx(pd.Timestamp("2014-04-07T10:51:09.277Z").timestamp())


def test_jsonl_otto(tmp_path: Path) -> None:
    text = (
        '{"session": 1, "events": [{"aid": 5, "ts": 2000, "type": "clicks"}, '
        '{"aid": 6, "ts": 3000, "type": "carts"}]}\n'
        '{"session": 2, "events": [{"aid": 7, "ts": 1000, "type": "clicks"}]}\n'
    )
    p = write(tmp_path / "o.jsonl", text)
    d = load(p)
    assert sessions_of(d) == [[7], [5, 6]]
    assert d.times.tolist() == [1.0, 2.0, 3.0]


def test_string_item_ids_and_explicit_override(tmp_path: Path) -> None:
    p = write(tmp_path / "s.txt", "a b c\nb c\n")
    d = load(p, "sessions")
    assert d.item_ids.dtype == object
    assert sessions_of(d) == [["a", "b", "c"], ["b", "c"]]
    assert d.index_of("c") == d.item_to_index(["c"])[0]
    with pytest.raises(KeyError):
        d.index_of("zz")
    # the same two-token file read as user/item pairs via an explicit override
    p2 = write(tmp_path / "pairs.txt", "u1 a\nu2 b\n")
    assert sessions_of(load(p2, "user_item")) == [["a"], ["b"]]


def test_item_map_from_training(tmp_path: Path) -> None:
    train = SessionData.from_sessions([[1, 2, 3], [3, 4]])
    p = write(tmp_path / "test.txt", "2 9 3\n9 9\n4 1\n")
    dropped = load(p, "sessions", item_map=train)
    assert dropped.n_unknown == 3
    assert dropped.n_items == train.n_items and dropped.item_ids is train.item_ids
    assert sessions_of(dropped) == [[2, 3], [4, 1]]  # the all-unknown session vanished
    kept = load(p, "sessions", item_map=train, keep_unknown=True)
    assert kept.n_unknown == 3 and kept.has_unknown
    assert (kept.items == -1).sum() == 3
    assert kept.session_lengths.tolist() == [3, 2, 2]
    # ints and their decimal strings match
    as_str = SessionData.from_sessions([["2", "3"]]).with_item_map(train)
    assert as_str.n_unknown == 0 and sessions_of(as_str) == [[2, 3]]


def test_subset_and_roundtrip(tmp_path: Path) -> None:
    p = write(tmp_path / "log.tsv", tsv_text())
    d = load(p)
    sub = d.subset([2, 0])
    assert sessions_of(sub) == [EXPECTED[2], EXPECTED[0]]
    out = tmp_path / "out.tsv.gz"
    d.to_tsv(out)
    again = load(out)
    assert sessions_of(again) == EXPECTED
    np.testing.assert_allclose(again.times, d.times)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="offsets"):
        SessionData([0, 1], [0, 3], [5, 6])
    with pytest.raises(ValueError, match="items must lie"):
        SessionData([0, 7], [0, 2], [5, 6])
    with pytest.raises(ValueError, match="times"):
        SessionData([0, 1], [0, 2], [5, 6], times=[1.0])


# ---- errors --------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere"):
        load(tmp_path / "nothere.tsv")


@pytest.mark.parametrize("gz", [False, True])
def test_empty_file(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / "empty.tsv", "", gz)
    with pytest.raises(ValueError, match="empty"):
        load(p)
    with pytest.raises(ValueError, match="empty"):
        load(p, "sessions")
    with pytest.raises(ValueError, match="empty"):
        load(p, "tsv")


def test_header_only(tmp_path: Path) -> None:
    p = write(tmp_path / "h.tsv", "SessionId\tItemId\tTime\n")
    with pytest.raises(ValueError, match=r"h\.tsv.*no events"):
        load(p)


def test_missing_column(tmp_path: Path) -> None:
    p = write(tmp_path / "m.tsv", "SessionId\tTime\n1\t2\n")
    with pytest.raises(ValueError, match=r"m\.tsv.*missing item id column"):
        load(p, "tsv")


def test_non_numeric_time(tmp_path: Path) -> None:
    p = write(tmp_path / "t.tsv", "SessionId\tItemId\tTime\n1\t2\t3.5\n1\t3\tyesterday\n")
    with pytest.raises(ValueError, match=r"t\.tsv: line 3, column 'Time'.*'yesterday'.*numeric"):
        load(p)


def test_ragged_delimited_line(tmp_path: Path) -> None:
    p = write(tmp_path / "r.tsv", "SessionId\tItemId\tTime\n1\t2\t3\n1\t2\t3\t4\t5\n")
    with pytest.raises(ValueError, match=r"r\.tsv.*line 3"):
        load(p)
    p2 = write(tmp_path / "r2.tsv", "SessionId\tItemId\tTime\n1\t2\t3\n4\n")
    with pytest.raises(ValueError, match=r"r2\.tsv: line 3.*missing value"):
        load(p2)


def test_ragged_user_item_line(tmp_path: Path) -> None:
    p = write(tmp_path / "ui.txt", "1 10\n1 11\n2 11 12\n")
    with pytest.raises(ValueError, match=r"ui\.txt: line 3.*'user item'"):
        load(p, "user_item")
    p2 = write(tmp_path / "us.txt", "1 10 11\n2\n")
    with pytest.raises(ValueError, match=r"us\.txt: line 2"):
        load(p2, "user_seq")


def test_unknown_format(tmp_path: Path) -> None:
    p = write(tmp_path / "s.txt", "1 2\n")
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        load(p, "xml")
    assert "tsv" in FORMATS


def test_headerless_csv_is_rejected_with_hint(tmp_path: Path) -> None:
    p = write(tmp_path / "c.csv", "1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match=r"c\.csv: line 1.*header"):
        load(p)


# ---- shared datasets (skipped when absent) ------------------------------------------------------
SHARED = [  # (relative path, format, sessions, events, items) from shared/data/README.md
    ("rsc15_100k_sessionrec/rsc15_100k_train_full.tsv.gz", "tsv", 17794, 70278, 2933),
    ("rsc15_100k_sessionrec/rsc15_100k_test.tsv.gz", "tsv", 3416, 13568, None),
    ("rsc15_64_shehzad_jannach/rsc15_64_train_full.tsv.gz", "tsv", 24761, 99943, 13133),
    ("yoochoose1_64_srgnn/train_sessions.txt.gz", "sessions", 116167, 486026, 17376),
    ("yoochoose1_64_srgnn/test_sessions.txt.gz", "sessions", 15324, None, None),
    ("tmall_gcegnn/train_sessions.txt.gz", "sessions", 65286, 416554, None),
    ("retailrocket_cgenet/train_sessions.txt.gz", "sessions", 126168, 685984, None),
    ("retailrocket_cgenet/test_sessions.tsv.gz", "session_items", 4735, None, None),
    ("s3rec_seq/Beauty.txt.gz", "user_seq", 22363, 198502, 12101),
    ("s3rec_seq/LastFM.txt.gz", "user_seq", 1090, 52551, 3646),
    ("sasrec_video/Video.txt.gz", "user_item", 31013, 287107, 23715),
    ("bert4rec_beauty/beauty.txt.gz", "user_item", 40226, 353962, 54542),
    ("ml_latest_small/ratings.csv.gz", "csv", 610, 100836, 9724),
    ("raw_samples_srgtm/sample_retailrocket.tsv", "tsv", 2950, 10080, None),
    ("raw_samples_srgtm/sample_yoochoose.csv", "yoochoose", 461, 1913, None),
    ("otto_sample/train.jsonl", "jsonl", 20, 862, None),
]


@pytest.mark.parametrize(
    "rel,fmt,n_sess,n_ev,n_items", SHARED, ids=[s[0].split("/")[-1] for s in SHARED]
)
def test_shared_dataset_loads(
    rel: str, fmt: str, n_sess: int, n_ev: int | None, n_items: int | None
) -> None:
    path = DATA_DIR / rel
    if not path.exists():
        pytest.skip(f"shared dataset {path} not found (set SEQREC_DATA_DIR)")
    assert detect_format(path) == fmt
    d = load(path)
    assert d.n_sessions == n_sess
    if n_ev is not None:
        assert d.n_events == n_ev
    if n_items is not None:
        assert d.n_items == n_items
    assert d.items.min() >= 0 and d.items.max() < d.n_items


def test_shared_srgnn_test_with_train_map() -> None:
    tr, te = (
        DATA_DIR / "yoochoose1_64_srgnn" / f
        for f in ("train_sessions.txt.gz", "test_sessions.txt.gz")
    )
    if not tr.exists() or not te.exists():
        pytest.skip(f"shared dataset {tr.parent} not found (set SEQREC_DATA_DIR)")
    train = load(tr)
    test = load(te, item_map=train, keep_unknown=True)
    # README: 55,898 predictions = sum(len - 1) over the test sessions
    assert int(np.sum(test.session_lengths - 1)) == 55898
    assert test.n_unknown > 0 and test.n_unknown == int((test.items < 0).sum())
