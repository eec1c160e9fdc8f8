"""Strict configs: round trips, every error kind naming its key, hash stability."""

import math
import time

import pytest

from cifarnet.config.schema import (
    RunConfig,
    build_config,
    config_keys,
    is_result_key,
    load_config,
    parse_assignment,
)
from cifarnet.config.yamlio import DuplicateKeyError, YamlLimitError, safe_load
from cifarnet.errors import ConfigError, UserError, one_line, shown


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
    # A changed default silently changes every run's identity (and resume): pin it. The
    # precision is pinned too: `auto` enters the hash as what it resolves to on this machine.
    assert RunConfig().replace({"train.precision": "fp32"}).hash() == PINNED_DEFAULT_HASH


def test_yaml_file_then_set(tmp_path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  dilation: 1\ntrain:\n  lr: 0.1\n")
    cfg = load_config(str(f), ["train.lr=0.3"])
    assert cfg.model.dilation == 1 and cfg.train.lr == 0.3


PINNED_DEFAULT_HASH = "240c3aaebd25d765ed8d3cbdb6086cc596e7e10e5dd4a133721115a356935ef3"


# --- the command line means what it says (issue 17, section 2) ---------------------------

@pytest.mark.parametrize(("text", "key", "value"), [
    ("data.path=exp #2", "data.path", "exp #2"),          # `#` is not a comment here
    ("data.path=a: b", "data.path", "a: b"),              # not a YAML mapping
    ("data.path=[x]", "data.path", "[x]"),                # not a YAML list
    ("data.path=a=b", "data.path", "a=b"),                # only the first `=` splits
    ("data.path=yes", "data.path", "yes"),                # not YAML 1.1's True
    ("data.path=123", "data.path", "123"),                # not an int
    ("data.cache_dir=c #1", "data.cache_dir", "c #1"),
    ("train.out_dir=runs #3", "train.out_dir", "runs #3"),
    ("train.out_dir=null", "train.out_dir", "null"),      # a folder called null
    ("train.device=cuda:1", "train.device", "cuda:1"),
    ("train.optimizer=adam", "train.optimizer", "adam"),
    ("data.path=", "data.path", None),                    # optional paths: empty unsets
    ("data.path=null", "data.path", None),
])
def test_string_values_are_the_raw_text(text, key, value) -> None:
    assert parse_assignment(text) == (key, value)
    assert load_config(None, [text]).flatten()[key] == value


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("data.path= exp", "data.path", "leading or trailing spaces"),
    ("data.path=exp ", "data.path", "leading or trailing spaces"),
    ("data.path='exp #2'", "data.path", "quoted"),
    ('train.out_dir="runs"', "train.out_dir", "quoted"),
    ("train.out_dir=", "train.out_dir", "empty value"),
    ("train.device=", "train.device", "empty value"),
    ("train.device=gpu", "train.device", "expected auto, cpu"),
    ("train.device=cuda:x", "train.device", "expected auto, cpu"),
    ("train.optimizer=Adam", "train.optimizer", "one of"),
    ("train.out_dir=a\nb", "train.out_dir", "line breaks"),
    ("train.lr=0.05 #fast", "train.lr", "expected a number"),  # typed: no silent comment
    ("train.epochs=2 # two", "train.epochs", "expected an integer"),
    ("model.dilation=[1, 2]", "model.dilation", "expected an integer"),
    ("model.residual_add={a: 1}", "model.residual_add", "true or false"),
    ("train.lr='0.05'", "train.lr", "expected a number"),
    ("train.lrr=0.05", "train.lrr", "unknown key"),
])
def test_bad_set_values_name_the_key(text, key, fragment) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [text])
    assert str(err.value).startswith(key) and fragment in str(err.value), str(err.value)


def test_typed_values_keep_strict_yaml_scalars() -> None:
    assert parse_assignment(" train.lr = 0.05 ") == ("train.lr", 0.05)  # spaces around typed
    assert parse_assignment("data.train_subset=") == ("data.train_subset", None)
    assert parse_assignment("model.residual_add=off") == ("model.residual_add", False)


@pytest.mark.parametrize("key", ["train.seed", "data.split_seed"])
def test_seeds_fit_in_int64(key) -> None:
    assert build_config({key: 2**63 - 1}).flatten()[key] == 2**63 - 1
    with pytest.raises(ConfigError, match=f"^{key}: must be <= 9223372036854775807"):
        build_config({key: 2**63})


def test_duplicate_keys_in_a_config_file_name_key_and_lines(tmp_path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\n")
    with pytest.raises(UserError) as err:
        load_config(str(f), [])
    msg = str(err.value)
    assert msg.startswith("train.epochs: key written twice (lines 2 and 4)"), msg
    assert str(f) in msg
    f.write_text("train: {lr: 0.1}\nmodel: {dilation: 1}\ntrain: {epochs: 2}\n")
    with pytest.raises(UserError, match=r"^train: key written twice \(lines 1 and 3\)"):
        load_config(str(f), [])


def test_duplicate_keys_at_any_depth_and_spelling() -> None:
    with pytest.raises(DuplicateKeyError, match=r"^a\[1\]\.b\.c: key written twice"):
        safe_load("a:\n  - {x: 1}\n  - b: {c: 1, c: 2}\n")
    with pytest.raises(DuplicateKeyError, match="key written twice"):
        safe_load("1: a\n0x1: b\n")  # the same int, written two ways
    # a merge key is YAML's way to override, not a duplicate
    assert safe_load("a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\n")["b"] == {"k": 3, "j": 2}


def test_alias_bomb_is_refused_fast_with_a_short_message() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    start = time.perf_counter()
    with pytest.raises(YamlLimitError) as err:
        safe_load("\n".join(lines))  # 10**10 values once expanded
    assert time.perf_counter() - start < 1.0
    assert str(err.value).startswith("a4: aliases expand this value to more than 100,000")
    assert len(str(err.value)) < 200
    with pytest.raises(YamlLimitError, match="refers to itself"):
        safe_load("a: &a [1, *a]\n")
    with pytest.raises(YamlLimitError, match="nested too deeply"):
        safe_load("[" * 50_000)
    # aliases within the limit keep working
    assert safe_load("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}


def test_values_in_messages_are_bounded() -> None:
    huge = "x" * 1_000_000
    assert len(shown(huge)) == 80 and shown(huge).endswith("…")
    assert len(shown(list(range(100_000)))) == 80
    assert shown("short") == "'short'"
    with pytest.raises(ConfigError) as err:
        build_config({"train.lr": huge})
    assert len(str(err.value)) < 200
    with pytest.raises(ConfigError) as err:
        build_config({"train." + huge: 1})
    assert len(str(err.value)) < 200
    assert one_line("a\nb") == "a\\nb" and len(one_line("y" * 10_000)) == 400


def test_result_keys_are_the_hashed_ones() -> None:
    left_out = {k for k in config_keys() if not is_result_key(k)}
    assert {"train.out_dir", "data.num_workers", "train.device", "train.compile",
            "train.channels_last", "data.cache_dir"} <= left_out
    for key in left_out:  # the definition: changing such a key leaves the identity alone
        cfg = RunConfig()
        value = {"train.out_dir": "elsewhere", "data.num_workers": 7, "train.device": "cpu",
                 "train.compile": True, "train.channels_last": False,
                 "data.cache_dir": "/c", "data.path": "/d"}[key]
        assert cfg.replace({key: value}).hash() == cfg.hash(), key


@pytest.mark.parametrize(("text", "key"), [
    ("train.epochs=1:30", "train.epochs"),        # YAML 1.1 base 60: was 90
    ("data.train_subset=0100", "data.train_subset"),  # YAML 1.1 octal: was 64
    ("train.lr=1:30.5", "train.lr"),              # was 5430.5
])
def test_yaml_1_1_number_forms_are_refused_not_reinterpreted(text, key, tmp_path) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        load_config(None, [text])
    name, value = text.split("=")
    section, field = name.split(".")
    f = tmp_path / "run.yaml"
    f.write_text(f"{section}:\n  {field}: {value}\n")
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        load_config(str(f), [])


def test_yaml_1_2_numbers_still_read() -> None:
    assert safe_load("[0, -3, +4, 1_000, 0x1F, 0.5, .5, 1., 5e-5, 2.5E+3]") == [
        0, -3, 4, 1000, 31, 0.5, 0.5, 1.0, 5e-5, 2500.0]


def test_importing_cifarnet_leaves_pyyaml_alone() -> None:
    """Our loader reads YAML 1.2 numbers; it did so by rewriting PyYAML's own SafeLoader
    table, so after `import cifarnet...` every `yaml.safe_load` in the process (MLflow's, a
    user's, a benchmark's) read `8` as '8' and `0.5` as '0.5'."""
    import subprocess
    import sys

    code = ("import yaml; t = 'a: 8\\nb: 0.5\\nc: 010\\nd: 1:30'; before = yaml.safe_load(t); "
            "import cifarnet.cli.main, cifarnet.config.yamlio as y; "
            "print(before == yaml.safe_load(t), yaml.safe_load(t), y.safe_load(t))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ("True {'a': 8, 'b': 0.5, 'c': 8, 'd': 90} "
                   "{'a': 8, 'b': 0.5, 'c': '010', 'd': '1:30'}")
