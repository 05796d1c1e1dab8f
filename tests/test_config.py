"""Config files (configs/*.toml), --param parsing and parameter-name validation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from seqrec_fast import config as cfg
from seqrec_fast.config import MODEL_PARAMS, load_config, parse_param, parse_value, validate_params

REPO = Path(__file__).resolve().parents[1]
# Benchmark configs of issue 15 (named after their data; each states its validation figure).
BENCHMARK_CONFIGS = {
    "yoochoose1_64_srgnn", "tmall_gcegnn", "retailrocket_cgenet", "s3rec_beauty", "s3rec_sports",
    "s3rec_toys", "s3rec_yelp",
}  # fmt: skip
ALL_CONFIGS = sorted((REPO / "configs").glob("*.toml"))
CONFIGS = [p for p in ALL_CONFIGS if p.stem not in BENCHMARK_CONFIGS]

# The SessionRNN hyperparameter names (training issue), written out here on purpose: a change to
# MODEL_PARAMS must be a deliberate change to this list too.
ALLOWED = {
    "cell", "layers", "embedding", "embedding_dim", "loss", "elu_param", "bpreg", "logq",
    "n_sample", "sample_alpha", "full_softmax", "batch_size", "dropout_embed", "dropout_hidden",
    "bptt", "optimizer", "learning_rate", "momentum", "n_epochs", "seed", "num_threads",
    "precision",
}  # fmt: skip

# Official values (hidasib/GRU4Rec_PyTorch_Official, paramfiles/*_best.py).
OFFICIAL = {
    "rsc15": ("cross-entropy", [100], 32, 0.0, 0.4, 0.2, 0.2, 0.5, 0.0, 1.0, 0.0),
    "yoochoose": ("cross-entropy", [480], 48, 0.0, 0.2, 0.07, 0.0, 0.2, 0.0, 1.0, 0.0),
    "rees46": ("cross-entropy", [512], 240, 0.45, 0.0, 0.065, 0.0, 0.5, 0.0, 1.0, 0.0),
    "coveo": ("bpr-max", [512], 144, 0.35, 0.0, 0.05, 0.4, 0.2, 1.85, 0.0, 1.0),
    "retailrocket": ("bpr-max", [224], 80, 0.5, 0.05, 0.05, 0.4, 0.4, 1.95, 0.0, 0.5),
    "diginetica": ("bpr-max", [512], 128, 0.5, 0.3, 0.05, 0.15, 0.3, 0.9, 0.0, 1.0),
}
OFFICIAL_KEYS = (
    "loss", "layers", "batch_size", "dropout_embed", "dropout_hidden", "learning_rate", "momentum",
    "sample_alpha", "bpreg", "logq", "elu_param",
)  # fmt: skip


def test_model_params_constant() -> None:
    assert MODEL_PARAMS == ALLOWED


def test_six_configs_shipped() -> None:
    assert {p.stem for p in CONFIGS} == set(OFFICIAL)
    assert (REPO / "configs" / "README.md").exists()


@pytest.mark.parametrize(
    "path", [p for p in ALL_CONFIGS if p.stem in BENCHMARK_CONFIGS], ids=lambda p: p.stem
)
def test_benchmark_configs_load_and_state_their_validation(path: Path) -> None:
    params = load_config(path)
    validate_params(params, ALLOWED)
    assert "Validation" in path.read_text()  # the validation figure and how it was found


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_allowed_names(path: Path) -> None:
    params = load_config(path)
    validate_params(params, ALLOWED)
    assert params["cell"] == "gru"
    assert params["embedding"] in ("constrained", "separate", "onehot")
    assert params["loss"] in ("cross-entropy", "bpr-max", "top1-max")
    assert params["optimizer"] in ("adagrad", "adam")
    assert params["n_sample"] == 2048
    assert params["n_epochs"] == 10
    assert params["full_softmax"] is False
    assert isinstance(params["layers"], list) and all(isinstance(x, int) for x in params["layers"])
    text = path.read_text()
    assert "GRU4Rec_PyTorch_Official" in text and "paramfiles/" in text  # names its source


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_config_values_match_official(name: str) -> None:
    params = load_config(REPO / "configs" / f"{name}.toml")
    assert tuple(params[k] for k in OFFICIAL_KEYS) == OFFICIAL[name]
    assert params["embedding"] == "constrained"


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="directory"):
        load_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("layers = [100\ncell = 'gru'\n")
    with pytest.raises(ValueError, match=r"bad\.toml: invalid TOML.*line"):
        load_config(bad)
    tab = tmp_path / "tab.toml"
    tab.write_text("[model]\ncell = 'gru'\n")
    with pytest.raises(ValueError, match=r"tab\.toml: tables are not supported \(\[model\]\)"):
        load_config(tab)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"cell = '\xe9'\n")
    with pytest.raises(ValueError, match="UTF-8"):
        load_config(latin)


def test_no_toml_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    p = tmp_path / "c.toml"
    p.write_text("cell = 'gru'\n")
    with pytest.raises(ImportError, match="tomli"):
        cfg.load_config(p)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("layers=100", ("layers", 100)),
        ("layers=100,100", ("layers", [100, 100])),
        ("layers=[100, 100]", ("layers", [100, 100])),
        ("layers=[]", ("layers", [])),
        ("learning_rate=0.05", ("learning_rate", 0.05)),
        ("learning_rate=1e-3", ("learning_rate", 1e-3)),
        ("full_softmax=true", ("full_softmax", True)),
        ("full_softmax=False", ("full_softmax", False)),
        ("loss=bpr-max", ("loss", "bpr-max")),
        ("loss='cross-entropy'", ("loss", "cross-entropy")),
        (' cell = "gru" ', ("cell", "gru")),
        ("seed=none", ("seed", None)),
        ("x=a=b", ("x", "a=b")),
        ("x=-3", ("x", -3)),
    ],
)
def test_parse_param(text: str, expected: tuple[str, object]) -> None:
    got = parse_param(text)
    assert got == expected
    assert type(got[1]) is type(expected[1])


@pytest.mark.parametrize(
    "text", ["layers", "=3", "1x=3", "a b=3", "layers=100,,100", "layers=[1,]"]
)
def test_parse_param_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_param(text)


def test_parse_value_str_fallback() -> None:
    assert parse_value("adagrad") == "adagrad"
    assert parse_value("") == ""


def test_validate_params() -> None:
    validate_params({"cell": "gru", "layers": [100]}, ALLOWED)
    validate_params({}, ALLOWED)
    with pytest.raises(ValueError) as e:
        validate_params({"lerning_rate": 0.1, "cell": "gru"}, ALLOWED)
    msg = str(e.value)
    assert "unknown parameter 'lerning_rate' (did you mean 'learning_rate'?)" in msg
    assert "allowed: batch_size, bpreg, bptt, cell, " in msg
    with pytest.raises(ValueError, match=r"cfg\.toml: unknown parameters 'zzz', 'hiden_size'"):
        validate_params({"zzz": 1, "hiden_size": 2}, ALLOWED, source="cfg.toml")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "tuned").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_tuned_configs_load_and_name_their_search(path: Path) -> None:
    """configs/tuned/: configurations found by `seqrec tune`; each names its search and figures."""
    params = load_config(path)
    validate_params(params, ALLOWED)
    text = path.read_text()
    assert "seqrec tune" in text and "validation" in text.lower() and "Recall@20" in text
