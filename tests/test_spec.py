"""Ablation specs: each validation error names its key, exits 2 and writes nothing."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cifarnet.cli import main
from cifarnet.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "experiments" / "ablations").glob("*.yaml"))

GOOD = {
    "name": "t",
    "base": {"train": {"epochs": 1}},
    "factors": {"model.dilation": [2, 1], "model.residual_add": [True, False]},
    "seeds": [0, 1, 2],
    "hypotheses": [{"id": "H", "claim": "c", "metric": "test_acc",
                    "a": {"model.residual_add": True, "model.dilation": 2},
                    "b": {"model.residual_add": False, "model.dilation": 2},
                    "expect": "a > b", "rope": 0.002}],
}


def with_change(path: str, value) -> dict:
    import copy

    spec = copy.deepcopy(GOOD)
    node, keys = spec, path.split("/")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return spec


DELETE = object()


def test_expansion_counts() -> None:
    spec = parse_spec(GOOD)
    assert len(spec.cells()) == 4 and len(spec.jobs()) == 12
    labels = [c.label for c in spec.cells()]
    assert labels[0] == "dilation=2,residual_add=true"
    assert len({j.config_hash for j in spec.jobs()}) == 12
    assert {j.config.train.epochs for j in spec.jobs()} == {1}


@pytest.mark.parametrize(("path", "value", "key"), [
    ("colour", "red", "colour"),
    ("name", "bad name!", "name"),
    ("base/train", {"epoch": 3}, "base.train.epoch"),
    ("base/train", {"epochs": "3"}, "base.train.epochs"),
    ("factors/model.dilatation", [1, 2], "factors.model.dilatation"),
    ("factors/model.dilation", [], "factors.model.dilation"),
    ("factors/model.dilation", [2, 2], "factors.model.dilation"),
    ("factors/model.dilation", [2, 0], "factors.model.dilation"),
    ("factors/model.residual_add", ["yes", "no"], "factors.model.residual_add"),
    ("seeds", [0, 0], "seeds"),
    ("seeds", [], "seeds"),
    ("seeds", [0, "one"], "seeds[1]"),
    ("hypotheses/0/expect", "a >> b", "hypotheses[0].expect"),
    ("hypotheses/0/a", {"model.dilation": 3, "model.residual_add": True}, "hypotheses[0].a"),
    ("hypotheses/0/a", {"model.dilation": 2}, "hypotheses[0].a"),
    ("hypotheses/0/a", {"model.dilation": 2, "model.residual_add": True, "model.depthwise": True},
     "hypotheses[0].a"),
    ("hypotheses/0/b", {"model.dilatation": 2}, "hypotheses[0].b.model.dilatation"),
    ("hypotheses/0/rope", -1, "hypotheses[0].rope"),
    ("hypotheses/0/metric", "accuracy", "hypotheses[0].metric"),
    ("hypotheses/0/extra", 1, "hypotheses[0].extra"),
])
def test_each_error_names_its_key(path: str, value, key: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change(path, value))
    assert str(err.value).startswith(key), str(err.value)


def test_missing_factors_and_bad_top_level() -> None:
    with pytest.raises(SpecError, match="^factors"):
        parse_spec(with_change("factors", DELETE))
    with pytest.raises(SpecError, match="^factors.train.seed"):
        parse_spec(with_change("factors/train.seed", [0, 1]))


def _write(tmp_path: Path, spec: dict) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.parametrize(("path", "value", "key"), [
    ("factors/model.dilatation", [1, 2], "factors.model.dilatation"),
    ("hypotheses/0/a", {"model.dilation": 2}, "hypotheses[0].a"),
    ("seeds", [1, 1], "seeds"),
])
def test_cli_exits_2_and_writes_nothing(tmp_path, monkeypatch, path, value, key) -> None:
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, with_change(path, value))
    r = CliRunner().invoke(main, ["run", str(spec)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {key}")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()


def test_cli_bad_set_and_missing_data_write_nothing(tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, GOOD)
    r = CliRunner().invoke(main, ["run", str(spec), "--set", "train.epochz=1"])
    assert r.exit_code == 2 and "train.epochz" in r.stderr
    r = CliRunner().invoke(main, ["run", str(spec), "--set", "model.dilation=1"])
    assert r.exit_code == 2 and "model.dilation" in r.stderr
    r = CliRunner().invoke(main, ["run", str(spec), "--set", f"data.path={tmp_path / 'none'}"])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = CliRunner().invoke(main, ["run", "nope.yaml"])
    assert r.exit_code == 2 and "nope.yaml" in r.stderr
    r = CliRunner().invoke(main, ["run", str(spec), "--set", f"data.path={tiny_tree}",
                                  "--storage", "postgresql://nobody@127.0.0.1:1/none"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --storage")
    assert not (tmp_path / "mlruns").exists()


def test_dry_run_prints_cells_and_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["run", str(_write(tmp_path, GOOD)), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dilation=1,residual_add=false" in r.output and "153,104" in r.output
    assert " 75" in r.output and " 83" in r.output
    assert "4 cell(s) x 3 seed(s) = 12 run(s), 12 epoch(s)" in r.output
    assert not (tmp_path / "mlruns").exists()


def test_spec_path_is_looked_up_under_experiments(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    assert load_spec("ablations/dilation_add.yaml").name == "dilation_add"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_are_valid(path: Path) -> None:
    spec = load_spec(path)
    assert len(spec.seeds) >= 3 and spec.hypotheses
    assert spec.base_config().train.epochs == 30


def test_every_point_of_the_seed_analysis_has_a_spec() -> None:
    assert {p.stem for p in SHIPPED} >= {"dilation_add", "pointwise_after_stride",
                                         "regular_after_depthwise", "extra_adds"}
