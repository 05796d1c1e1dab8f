"""Model file persistence (io.py): bit-identical round trip, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from seqrec_fast import io as sio
from seqrec_fast.io import FORMAT_VERSION, load_model_file, save_model_file


def sample_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W_y": rng.standard_normal((7, 5)).astype(np.float32),
        "b_y": rng.standard_normal(7),  # float64
        "W_h": np.asfortranarray(rng.standard_normal((3, 9)).astype(np.float32)),
        "counts": rng.integers(-(2**31), 2**31 - 1, size=11, dtype=np.int32),
        "item_ids": np.asarray(["a", "bé", "c-12", "", "日本"], dtype=str),
        "flags": np.array([True, False, True]),
        "scalar": np.float64(np.pi),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "special": np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324]),
    }


def write(path: Path, rng: np.random.Generator, **header: object) -> dict[str, np.ndarray]:
    arrays = sample_arrays(rng)
    save_model_file(path, arrays, {"params": {"layers": [100], "cell": "gru"}, **header})
    return arrays


def test_round_trip_bit_identical(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.npz"
    arrays = write(path, rng, stats={"loss": np.float32(0.5), "epochs": np.int64(3)})
    loaded, header = load_model_file(path)
    assert set(loaded) == set(arrays)
    for name, a in arrays.items():
        b = loaded[name]
        a = np.asarray(a)
        assert b.dtype == a.dtype, name
        assert b.shape == a.shape, name
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), name
    assert loaded["item_ids"].tolist() == ["a", "bé", "c-12", "", "日本"]
    assert header["format"] == "seqrec_fast.model"
    assert header["format_version"] == FORMAT_VERSION == 1
    assert header["params"] == {"layers": [100], "cell": "gru"}
    assert header["stats"] == {"loss": 0.5, "epochs": 3}
    assert header["checksum"].startswith("sha256:")
    assert header["library_version"]
    assert header["created"]
    assert header["arrays"]["W_y"] == {"dtype": "<f4", "shape": [7, 5]}
    # a plain npz: readable by np.load without pickle
    with np.load(path, allow_pickle=False) as npz:
        assert "__header__" in npz.files
        assert npz["__header__"].dtype == np.uint8


def test_string_ids_in_header_and_reserved_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    save_model_file(
        path, {"x": np.arange(3)}, {"item_ids": ["x", "y"], "format": "mine", "checksum": "zzz"}
    )
    arrays, header = load_model_file(path)
    assert header["item_ids"] == ["x", "y"]
    assert header["format"] == "seqrec_fast.model"  # reserved keys are set by save_model_file
    assert np.array_equal(arrays["x"], np.arange(3))


def test_overwrite_existing(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.npz"
    write(path, rng)
    save_model_file(path, {"x": np.ones(2)}, {})
    arrays, _ = load_model_file(path)
    assert list(arrays) == ["x"]
    assert os.listdir(tmp_path) == ["m.npz"]


def test_object_arrays_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match="dtype object"):
        save_model_file(path, {"ids": np.array(["a", 1], dtype=object)}, {})
    assert not path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["__header__", "", "a/b", "__x"])
def test_bad_array_names_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="array name"):
        save_model_file(tmp_path / "m.npz", {name: np.zeros(1)}, {})


def test_header_not_json_serialisable(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON"):
        save_model_file(tmp_path / "m.npz", {"x": np.zeros(1)}, {"bad": object()})
    assert os.listdir(tmp_path) == []


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        save_model_file(tmp_path / "nope" / "m.npz", {"x": np.zeros(1)}, {})


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_atomic_write_failure_keeps_old_file(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "m.npz"
    old = write(path, rng)
    old_bytes = path.read_bytes()

    def boom(*args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    if where == "write":
        real = np.lib.format.write_array
        calls = {"n": 0}

        def partial(fp, array, **kw):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 3:  # fail in the middle of the archive
                fp.write(b"\0" * 17)
                raise OSError(28, "No space left on device")
            return real(fp, array, **kw)

        monkeypatch.setattr(sio.np.lib.format, "write_array", partial)
    elif where == "fsync":
        monkeypatch.setattr(sio.os, "fsync", boom)
    else:
        monkeypatch.setattr(sio.os, "replace", boom)

    new = {k: v + 1 if v.dtype.kind == "f" else v for k, v in sample_arrays(rng).items()}
    with pytest.raises(OSError, match="No space left"):
        save_model_file(path, new, {})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"], "temporary file left behind"
    assert path.read_bytes() == old_bytes
    arrays, _ = load_model_file(path)
    assert np.array_equal(arrays["W_y"], old["W_y"])


def test_keyboard_interrupt_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sio.np.lib.format, "write_array", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_model_file(tmp_path / "m.npz", {"x": np.zeros(3)}, {})
    assert os.listdir(tmp_path) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_model_file(tmp_path / "nope.npz")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        load_model_file(tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, rng: np.random.Generator, fraction: float) -> None:
    path = tmp_path / "m.npz"
    write(path, rng)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="m.npz"):
        load_model_file(path)


def test_corrupted_bytes_in_array_data(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.npz"
    arrays = {"W": rng.standard_normal((200, 50)).astype(np.float32)}
    save_model_file(path, arrays, {})
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"m\.npz.*(damaged|corrupt|checksum)"):
        load_model_file(path)


def test_checksum_detects_rewritten_array(tmp_path: Path, rng: np.random.Generator) -> None:
    """A consistent zip (CRC fine) whose array was altered: only the checksum catches it."""
    path = tmp_path / "m.npz"
    write(path, rng)
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["b_y"] = entries["b_y"].copy()
    entries["b_y"][3] += 1e-12
    np.savez(path, **entries)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_model_file(path)


def _rewrite_header(path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    try:
        header = json.loads(entries["__header__"].tobytes().decode("utf-8"))
    except ValueError:
        header = None
    new = mutate(header)
    raw = new if isinstance(new, bytes) else json.dumps(new).encode("utf-8")
    entries["__header__"] = np.frombuffer(raw, dtype=np.uint8)
    np.savez(path, **entries)


def test_future_version(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.npz"
    write(path, rng)
    _rewrite_header(path, lambda h: {**h, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match="newer seqrec_fast.*upgrade") as e:
        load_model_file(path)
    assert "m.npz" in str(e.value)


@pytest.mark.parametrize("version", [0, "1", None, True])
def test_bad_version(tmp_path: Path, rng: np.random.Generator, version: object) -> None:
    path = tmp_path / "m.npz"
    write(path, rng)
    _rewrite_header(path, lambda h: {**h, "format_version": version})
    with pytest.raises(ValueError, match="format_version"):
        load_model_file(path)


def test_wrong_format_name(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.npz"
    write(path, rng)
    _rewrite_header(path, lambda h: {**h, "format": "other.model"})
    with pytest.raises(ValueError, match="not a seqrec_fast model.*other.model"):
        load_model_file(path)


def test_bad_json_header(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.npz"
    write(path, rng)
    _rewrite_header(path, lambda h: b'{"format": "seqrec_fast.model", ')
    with pytest.raises(ValueError, match="bad model header"):
        load_model_file(path)
    _rewrite_header(path, lambda h: b"\xff\xfe")
    with pytest.raises(ValueError, match="bad model header"):
        load_model_file(path)
    _rewrite_header(path, lambda h: b"[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_model_file(path)


def test_missing_array(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.npz"
    write(path, rng)
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files if k != "W_y"}
    np.savez(path, **entries)
    with pytest.raises(ValueError, match="missing arrays W_y"):
        load_model_file(path)


def test_not_a_model_npz(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match=r"other\.npz: not a seqrec_fast model.*__header__"):
        load_model_file(path)


def test_npz_with_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, __header__=np.frombuffer(b"{}", np.uint8), x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="evil.npz"):
        load_model_file(path)


def test_plain_zip_and_text_file(tmp_path: Path) -> None:
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=r"a\.zip: not a seqrec_fast model"):
        load_model_file(z)
    t = tmp_path / "model.npz"
    t.write_text("SessionId\tItemId\tTime\n")
    with pytest.raises(ValueError, match=r"model\.npz: not a seqrec_fast model file"):
        load_model_file(t)
    e = tmp_path / "empty.npz"
    e.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npz"):
        load_model_file(e)
