"""Strict configs: round trips, every error kind naming its key, hash stability."""

import math

import pytest

from cifarnet.config import (RunConfig, build_config, config_keys, load_config,
                             parse_assignment)
from cifarnet.errors import ConfigError


def test_defaults_round_trip_through_nested_and_flat() -> None:
    cfg = RunConfig()
    assert build_config(cfg.to_dict()) == cfg
    assert build_config(cfg.flatten()) == cfg
    assert set(cfg.flatten()) == set(config_keys())


def test_dotted_and_nested_overrides_agree() -> None:
    a = build_config({"model.dilation": 1, "train": {"lr": 0.05}})
    b = build_config({"model": {"dilation": 1}, "train.lr": 0.05})
    assert a == b
    assert a.model.dilation == 1 and a.train.lr == 0.05


def test_set_values_are_yaml_scalars() -> None:
    assert parse_assignment("model.residual_add=false") == ("model.residual_add", False)
    assert parse_assignment("train.lr=0.05") == ("train.lr", 0.05)
    assert parse_assignment("model.dilation=1") == ("model.dilation", 1)
    assert parse_assignment("data.train_subset=null") == ("data.train_subset", None)
    cfg = load_config(None, ["train.lr=1"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_exponents_without_a_dot_are_floats(tmp_path) -> None:
    """YAML 1.1 reads `5e-5` as a string; people write weight decays that way."""
    assert parse_assignment("train.weight_decay=5e-5") == ("train.weight_decay", 5e-5)
    assert parse_assignment("train.lr=-1E2") == ("train.lr", -100.0)
    assert parse_assignment("model.dilation=1e") == ("model.dilation", "1e")
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  weight_decay: 1e-4\n")
    assert load_config(str(f), []).train.weight_decay == 1e-4


@pytest.mark.parametrize(("overrides", "key", "fragment"), [
    ({"model.dilatation": 1}, "model.dilatation", "unknown key"),
    ({"modle.dilation": 1}, "modle.dilation", "unknown key"),
    ({"train": {"lrate": 0.1}}, "train.lrate", "unknown key"),
    ({"model.residual_add": "yes"}, "model.residual_add", "true or false"),
    ({"model.residual_add": 1}, "model.residual_add", "true or false"),
    ({"model.dilation": "2"}, "model.dilation", "integer"),
    ({"model.dilation": True}, "model.dilation", "integer"),
    ({"model.dilation": 2.0}, "model.dilation", "integer"),
    ({"model.dilation": 0}, "model.dilation", ">= 1"),
    ({"train.epochs": 0}, "train.epochs", ">= 1"),
    ({"train.lr": 0}, "train.lr", "> 0"),
    ({"train.lr": -0.1}, "train.lr", "> 0"),
    ({"train.lr": math.inf}, "train.lr", "finite"),
    ({"train.lr": math.nan}, "train.lr", "finite"),
    ({"train.lr": "fast"}, "train.lr", "number"),
    ({"train.optimizer": "lion"}, "train.optimizer", "one of"),
    ({"data.augment_strength": -1.0}, "data.augment_strength", ">= 0"),
])
def test_each_error_names_its_key(overrides: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(overrides)
    assert key in str(err.value) and fragment in str(err.value)


def test_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean model.dilation"):
        build_config({"model.dilatation": 1})


def test_configs_are_frozen() -> None:
    cfg = RunConfig()
    with pytest.raises(Exception):
        cfg.model.dilation = 3  # type: ignore[misc]


def test_hash_is_stable_and_order_independent() -> None:
    a = build_config({"train": {"lr": 0.05, "epochs": 3}, "model": {"dilation": 1}})
    b = build_config({"model": {"dilation": 1}, "train": {"epochs": 3, "lr": 0.05}})
    assert a.hash() == b.hash()
    assert len(a.hash()) == 64
    assert a.hash() != RunConfig().hash()
    assert build_config({"train.lr": 0.05}).hash() != build_config({"train.lr": 0.06}).hash()


def test_hash_ignores_execution_details_only() -> None:
    base = RunConfig()
    assert base.replace({"data.path": "/elsewhere", "train.device": "cpu",
                         "data.num_workers": 0}).hash() == base.hash()
    assert base.replace({"train.seed": 1}).hash() != base.hash()


def test_hash_of_defaults_is_pinned() -> None:
    # A changed default silently changes every run's identity (and resume): pin it.
    assert RunConfig().hash() == PINNED_DEFAULT_HASH


def test_yaml_file_then_set(tmp_path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  dilation: 1\ntrain:\n  lr: 0.1\n")
    cfg = load_config(str(f), ["train.lr=0.3"])
    assert cfg.model.dilation == 1 and cfg.train.lr == 0.3


PINNED_DEFAULT_HASH = "00d64fc788ab3d97d352b5b1016c62b9da379e2ae04be8339d52a5d0e9da76d3"
