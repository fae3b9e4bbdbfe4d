"""Model configs: validated on construction (choices, ranges, finiteness), ``--set``/TOML parsing
with errors that name the option, run options kept out of saved configs, and values resolved at
fit time written back into config.json."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from dynrec.cli.main import app
from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.jobs.train import load_config_file
from dynrec.models.base import Recommender
from dynrec.models.config import RUN_OPTION_KEYS, ModelConfig, RunOptions, split_overrides
from dynrec.models.knn import KNNConfig
from dynrec.models.mf.als import ALSConfig
from dynrec.models.neural import NeuralConfig
from dynrec.models.popularity import PopConfig
from dynrec.models.registry import MODELS, create_model, get_model_class
from dynrec.models.seq.gru4rec import GRU4Rec, GRU4RecConfig
from dynrec.models.seq.sasrec import SASRec, SASRecConfig, auto_batch_size, auto_dropout
from dynrec.preprocessing.split import leave_one_out
from tests.conftest import clustered_data

OPTS = RunOptions(num_threads=1, device="cpu")
CONFIG_CLASSES = sorted({get_model_class(n).config_class for n in MODELS}, key=lambda c: c.__name__)


def literal_fields(cls: type[ModelConfig]) -> list[tuple[str, tuple[Any, ...]]]:
    """(name, choices) of every option whose annotation is (optionally) a `Literal`."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        args = [tp] + list(typing.get_args(tp))
        for a in args:
            if typing.get_origin(a) is typing.Literal:
                out.append((name, typing.get_args(a)))
    return out


# ---- construction: choices, ranges, finiteness ---------------------------------------------------


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_defaults_valid_and_round_trip(cls: type[ModelConfig]) -> None:
    cfg = cls()
    assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert not RUN_OPTION_KEYS & set(cfg.to_dict())  # run options are never config


def test_every_fixed_choice_is_a_checked_literal() -> None:
    """Every str option with a fixed set of values is a Literal, and each one refuses a bad value."""
    seen = {(n, c) for cls in CONFIG_CLASSES for n, c in literal_fields(cls)}
    names = {n for n, _ in seen}
    assert {
        "optimizer",
        "schedule",
        "loss",
        "negative_sampling",
        "amp",
        "positional",
        "long_term",
        "pooling",
    } <= names
    for cls in CONFIG_CLASSES:
        for name, choices in literal_fields(cls):
            for ok in choices:
                assert getattr(dataclasses.replace(cls(), **{name: ok}), name) == ok
            with pytest.raises(DynrecError) as err:
                cls(**{name: "bogus"})
            msg = str(err.value)
            assert msg.startswith(f"{cls.__name__}: option {name}='bogus' is not allowed")
            assert all(repr(c) in msg for c in choices) and "\n" not in msg


def test_choice_message_is_exact() -> None:
    with pytest.raises(DynrecError) as err:
        SASRecConfig(optimizer="adagrad")  # type: ignore[arg-type]
    assert str(err.value) == (
        "SASRecConfig: option optimizer='adagrad' is not allowed; expected one of 'adam', 'adamw', 'sgd'"
    )


@pytest.mark.parametrize(
    ("cls", "option", "value", "allowed"),
    [
        (KNNConfig, "k", 0, "an integer >= 1"),
        (KNNConfig, "k", -5, "an integer >= 1"),
        (KNNConfig, "shrink", -1.0, "a finite number >= 0"),
        (PopConfig, "half_life", math.nan, "a finite number >= 0"),
        (PopConfig, "half_life", math.inf, "a finite number >= 0"),
        (PopConfig, "half_life", -3.0, "a finite number >= 0"),
        (NeuralConfig, "learning_rate", 0.0, "a finite number > 0"),
        (NeuralConfig, "epochs", 0, "an integer >= 1"),
        (NeuralConfig, "embedding_dim", 0, "an integer >= 1"),
        (NeuralConfig, "ema_decay", 1.0, "a finite number >= 0 and < 1"),
        (NeuralConfig, "seed", -1, "an integer >= 0"),
        (GRU4RecConfig, "dropout", 1.0, "a finite number >= 0 and < 1"),
        (SASRecConfig, "dropout", -0.1, "a finite number >= 0 and < 1 or none"),
        (ALSConfig, "reg", math.nan, "a finite number >= 0"),
        (ALSConfig, "epochs", True, "an integer >= 1"),  # a bool is not an integer
        (KNNConfig, "k", 2.5, "an integer >= 1"),
    ],
)
def test_range_errors_name_class_option_value_and_allowed(
    cls: type[ModelConfig], option: str, value: Any, allowed: str
) -> None:
    with pytest.raises(DynrecError) as err:
        cls(**{option: value})
    assert str(err.value) == f"{cls.__name__}: option {option}={value!r} is not allowed; expected {allowed}"


def test_cross_option_checks() -> None:
    with pytest.raises(DynrecError, match="num_heads=3 is not allowed; must divide embedding_dim=64"):
        SASRecConfig(num_heads=3)
    with pytest.raises(DynrecError, match="with rope, embedding_dim / num_heads must be even"):
        SASRecConfig(embedding_dim=6, num_heads=2)


def test_replace_validates_and_ints_become_floats() -> None:
    with pytest.raises(DynrecError, match="KNNConfig: option k=0"):
        dataclasses.replace(KNNConfig(), k=0)
    cfg = PopConfig(half_life=5)  # TOML/JSON integers for float options
    assert isinstance(cfg.half_life, float) and cfg.half_life == 5.0


# ---- --set strings and TOML ------------------------------------------------------------------------


def test_overrides_parse_to_the_option_type() -> None:
    cfg = create_model("itemknn", {"k": "7", "shrink": "2.5"}).config
    assert isinstance(cfg, KNNConfig) and (cfg.k, cfg.shrink) == (7, 2.5)
    mlp = create_model("mlp", {"hidden": "32,16", "use_user": "yes"}).config
    assert mlp.to_dict()["hidden"] == (32, 16) and mlp.to_dict()["use_user"] is True
    assert SASRecConfig(dropout=0.1).with_overrides({"dropout": "auto"}).dropout is None


@pytest.mark.parametrize(
    ("model", "key", "raw", "message"),
    [
        ("itemknn", "k", "-5", "KNNConfig: option k=-5 is not allowed; expected an integer >= 1"),
        ("itemknn", "k", "0", "KNNConfig: option k=0 is not allowed; expected an integer >= 1"),
        ("itemknn", "k", "abc", "KNNConfig: option k='abc' does not parse; expected an integer >= 1"),
        (
            "pop",
            "half_life",
            "nan",
            "PopConfig: option half_life=nan is not allowed; expected a finite number >= 0",
        ),
        (
            "pop",
            "half_life",
            "-3",
            "PopConfig: option half_life=-3.0 is not allowed; expected a finite number >= 0",
        ),
        (
            "sasrec",
            "bucket",
            "maybe",
            "SASRecConfig: option bucket='maybe' does not parse; expected a boolean",
        ),
        (
            "sasrec",
            "amp",
            "fp8",
            "SASRecConfig: option amp='fp8' is not allowed; expected one of 'none', 'bf16', 'auto'",
        ),
        ("pop", "nope", "1", "PopConfig has no option(s) ['nope']; options: ['half_life', 'seed']"),
        (
            "pop",
            "num_threads",
            "-1",
            "RunOptions: option num_threads=-1 is not allowed; expected an integer >= 0",
        ),
        (
            "pop",
            "device",
            "gpu",
            "RunOptions: option device='gpu' is not allowed; expected auto, cpu, cuda or cuda:N",
        ),
    ],
)
def test_override_errors_name_the_option(model: str, key: str, raw: str, message: str) -> None:
    with pytest.raises(DynrecError) as err:
        create_model(model, {key: raw})
    assert str(err.value) == message


def test_split_overrides_separates_run_options() -> None:
    cfg, opts = split_overrides({"k": "5", "device": "cpu", "num_threads": "3", "progress": "true"})
    assert cfg == {"k": "5"}
    assert opts == RunOptions(device="cpu", num_threads=3, progress=True)
    _, typed = split_overrides({"checkpoint_dir": "/tmp/x", "num_threads": 2}, RunOptions(device="cuda:1"))
    assert typed == RunOptions(device="cuda:1", num_threads=2, checkpoint_dir="/tmp/x")
    model = create_model("sasrec", {"device": "cpu"}, {"embedding_dim": 16, "progress": True})
    assert model.options == RunOptions(device="cpu", progress=True)
    assert model.config.to_dict()["embedding_dim"] == 16


def test_toml_config_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('model = "itemknn"\n[config]\nk = 5\nshrink = 2\nnum_threads = 1\n')
    assert load_config_file(good) == ("itemknn", {"k": 5, "shrink": 2, "num_threads": 1})
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "itemknn"\n[config]\nk = 5\nshrink = = 2\n')
    with pytest.raises(DynrecError) as err:
        load_config_file(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: invalid TOML") and "line 4" in msg
    nested = tmp_path / "nested.toml"
    nested.write_text("[config]\n[config.inner]\nk = 1\n")
    with pytest.raises(DynrecError, match="unexpected table"):
        load_config_file(nested)


def _events_csv(path: Path) -> Path:
    data = clustered_data(n_users=20, n_items=12, per_user=6)
    rows = ["user_id,item_id,timestamp"]
    for u in range(data.n_users - 1):
        for i, t in zip(
            data.items[data.indptr[u] : data.indptr[u + 1]],
            data.timestamps[data.indptr[u] : data.indptr[u + 1]],
            strict=True,
        ):
            rows.append(f"u{u + 1},i{i},{t}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "k=-5"], "KNNConfig: option k=-5 is not allowed; expected an integer >= 1"),
        (["--set", "k=0"], "KNNConfig: option k=0 is not allowed"),
        (["--set", "k=x"], "KNNConfig: option k='x' does not parse"),
        (["--set", "device=tpu"], "RunOptions: option device='tpu' is not allowed"),
        (["--set", "=3"], "--set expects key=value"),
    ],
)
def test_cli_set_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    events = _events_csv(tmp_path / "ev.csv")
    r = CliRunner().invoke(
        app, ["train", "itemknn", "--dataset", str(events), "--out", str(tmp_path / "m"), *args]
    )
    assert r.exit_code == 1, r.output
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    events = _events_csv(tmp_path / "ev.csv")
    bad = tmp_path / "bad.toml"
    bad.write_text("k = 5\nshrink = = 2\nseed = 1\n")
    r = CliRunner().invoke(
        app,
        ["train", "itemknn", "--dataset", str(events), "--out", str(tmp_path / "m"), "--config", str(bad)],
    )
    assert r.exit_code == 1 and f"{bad}: invalid TOML" in r.stderr and "line 2" in r.stderr


def test_cli_run_options_work_and_are_not_saved(tmp_path: Path) -> None:
    events = _events_csv(tmp_path / "ev.csv")
    out = tmp_path / "m"
    r = CliRunner().invoke(
        app,
        ["train", "als", "--dataset", str(events), "--out", str(out), "--json"]
        + [
            "--set",
            "num_threads=1",
            "--set",
            "device=cpu",
            "--set",
            "progress=false",
            "--set",
            "embedding_dim=4",
        ],
    )
    assert r.exit_code == 0, r.stderr
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["embedding_dim"] == 4 and not RUN_OPTION_KEYS & set(saved)


# ---- run options: never saved; old and GPU-trained models load here ----------------------------------


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return clustered_data(n_users=30, n_items=16, per_user=8)


def _small_gru(data: InteractionData) -> GRU4Rec:
    cfg = GRU4RecConfig(embedding_dim=8, hidden_dim=8, batch_size=16, epochs=1, max_len=6)
    return GRU4Rec(cfg).fit(data, options=OPTS.replace(progress=True))


def test_run_options_are_never_saved(data: InteractionData, tmp_path: Path) -> None:
    model = _small_gru(data)
    assert model.options.progress is True
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert not RUN_OPTION_KEYS & set(saved["config"]) and not RUN_OPTION_KEYS & set(saved["meta"])
    loaded = Recommender.load(tmp_path / "m")
    assert loaded.options == RunOptions()
    assert Recommender.load(tmp_path / "m", options=OPTS).options == OPTS


def test_model_saved_with_cuda_and_old_run_keys_loads_on_cpu(data: InteractionData, tmp_path: Path) -> None:
    """A config.json written by an older version, trained with ``--set device=cuda``: the run-option
    keys are ignored and the model loads and scores on this host."""
    model = _small_gru(data)
    model.save(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    spec = json.loads(cfg_file.read_text())
    spec["config"].update({"device": "cuda", "num_threads": 64, "progress": True, "checkpoint_dir": "/gone"})
    cfg_file.write_text(json.dumps(spec))
    loaded = Recommender.load(tmp_path / "m", options=RunOptions(device="cpu"))
    assert isinstance(loaded, GRU4Rec) and loaded.device == torch.device("cpu")
    q = QueryBatch.from_histories([[1, 2, 3], [4], []])
    assert torch.equal(loaded.score(q), model.score(q))
    if not torch.cuda.is_available():  # auto picks what this host has
        assert Recommender.load(tmp_path / "m").score(q).shape == (3, data.n_items)


def test_cuda_on_a_host_without_cuda_is_a_clear_error(data: InteractionData) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    cfg = GRU4RecConfig(embedding_dim=8, hidden_dim=8, epochs=1)
    with pytest.raises(DynrecError, match="device 'cuda' was asked for but CUDA is not available"):
        GRU4Rec(cfg).fit(data, options=RunOptions(device="cuda"))


# ---- values resolved at fit time live in the config -------------------------------------------------


def test_resolved_values_written_into_config(data: InteractionData, tmp_path: Path) -> None:
    split = leave_one_out(data)
    cfg = SASRecConfig(embedding_dim=8, num_heads=2, ffn_dim=8, max_len=6, epochs=1)
    assert (cfg.dropout, cfg.attn_dropout, cfg.batch_size) == (None, None, 0)
    model = SASRec(cfg).fit(split.train, options=OPTS)
    rows = int(
        sum(1 for u in range(split.train.n_users) if split.train.indptr[u + 1] - split.train.indptr[u] >= 2)
    )
    want = (auto_dropout(rows), auto_dropout(rows), auto_batch_size(rows))
    assert want == (0.3, 0.3, 32)
    assert (model.config.dropout, model.config.attn_dropout, model.config.batch_size) == want
    assert model.dropouts() == (0.3, 0.3)
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (
        saved["config"]["dropout"],
        saved["config"]["attn_dropout"],
        saved["config"]["batch_size"],
    ) == want
    assert "dropout" not in saved["meta"] and "batch_size" not in saved["meta"]
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, SASRec) and loaded.config == model.config


def test_old_config_with_resolved_values_in_meta_loads(data: InteractionData, tmp_path: Path) -> None:
    """Configs saved before resolved values were written back kept None and the value in meta."""
    split = leave_one_out(data)
    model = SASRec(SASRecConfig(embedding_dim=8, ffn_dim=8, max_len=6, epochs=1, dropout=0.25)).fit(
        split.train, options=OPTS
    )
    model.save(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    spec = json.loads(cfg_file.read_text())
    spec["config"].update({"dropout": None, "attn_dropout": None, "batch_size": 0, "progress": False})
    spec["meta"].update({"dropout": 0.25, "attn_dropout": 0.25, "batch_size": 32})
    cfg_file.write_text(json.dumps(spec))
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, SASRec) and loaded.dropouts() == (0.25, 0.25)
    q = QueryBatch.from_histories([[1, 2, 3], [5, 6]])
    assert torch.equal(loaded.score(q), model.score(q))
