"""Iso-parameter comparisons (`match: params`): every cell gets the `model.width` that puts
its parameter count within 1% of the base config's, shown beside the unmatched count."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from helpers import runs_df, write_spec

from cifarnet.spec.ablation import Match, parse_spec
from cifarnet.spec.common import SpecError
from cifarnet.cli.main import main
from cifarnet.config.schema import ModelConfig
from cifarnet.model.match import matched_width, params_at

SEED = 153_104


@pytest.mark.parametrize(("flags", "unmatched"), [
    ({"depthwise": False}, 498_864),  # the example: 3.3 times the seed's size
    ({"regular_after_depthwise": False}, 113_104),
    ({"pointwise_after_stride": False}, 147_616),  # 3.6% smaller: outside 1%, so matched
])
def test_every_architecture_gets_a_width_within_one_percent(flags, unmatched) -> None:
    cfg = ModelConfig(**flags)
    assert params_at(cfg, 1.0) == unmatched
    width, count = matched_width(cfg, SEED)
    assert abs(count - SEED) / SEED <= 0.01
    assert params_at(cfg, width) == count and width != 1.0
    # no width closer: the neighbours 0.001 apart are no nearer to the target
    assert all(abs(params_at(cfg, round(width + d, 4)) - SEED) >= abs(count - SEED)
               for d in (-0.001, 0.001))


def test_a_cell_already_within_one_percent_keeps_its_width() -> None:
    assert matched_width(ModelConfig(dilation=1), SEED) == (1.0, SEED)


def _raw(**changes) -> dict:
    raw = {"name": "iso", "match": "params", "base": {"train": {"epochs": 1}},
           "factors": {"model.depthwise": [True, False]}, "seeds": [0, 1],
           "hypotheses": [{"id": "H", "claim": "depthwise helps", "a": {"model.depthwise": True},
                           "b": {"model.depthwise": False}, "expect": "a > b"}]}
    raw.update(changes)
    return raw


def test_a_matched_spec_sets_the_width_per_cell_and_keeps_its_cells() -> None:
    spec = parse_spec(_raw())
    assert spec.match is Match.PARAMS
    jobs = spec.jobs()
    widths = {j.cell.label: j.config.model.width for j in jobs}
    assert widths == {"depthwise=true": 1.0, "depthwise=false": 0.5508}
    assert [c.label for c in spec.cells()] == ["depthwise=true", "depthwise=false"]
    plain = parse_spec({k: v for k, v in _raw().items() if k != "match"})
    assert {j.config_hash for j in jobs} != {j.config_hash for j in plain.jobs()}


@pytest.mark.parametrize(("changes", "starts"), [
    ({"match": "flops"}, "match: expected one of params, got 'flops'"),
    ({"factors": {"model.width": [1.0, 2.0]}}, "match: model.width is a factor"),
])
def test_bad_match_is_refused_naming_the_key(changes, starts) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_raw(**changes))
    assert str(err.value).startswith(starts)


@pytest.mark.slow
def test_a_matched_grid_trains_the_matched_widths_and_reports_both_counts(
        tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, tiny_tree, factors={"model.depthwise": [True, False]},
                      seeds=[0])
    raw = yaml.safe_load(path.read_text())
    raw["match"] = "params"
    path.write_text(yaml.safe_dump(raw))
    dry = CliRunner().invoke(main, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "unmatched params" in dry.output and "498,864" in dry.output
    assert CliRunner().invoke(main, ["run", str(path)]).exit_code == 0
    kids = runs_df(tmp_path).query("`tags.cifarnet.role` == 'child'")
    got = dict(zip(kids["tags.cifarnet.cell"], kids["params.model.width"]))
    assert got == {"depthwise=true": "1.0", "depthwise=false": "0.5508"}
    assert set(kids["params.arch.params"]) == {"153104", "153347"}
    rep = CliRunner().invoke(main, ["report", "tiny", "--out", "rep", "--format", "md"])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "unmatched params" in md and "498864" in md


@pytest.mark.parametrize("value", [["params"], {"a": 1}, 1, True])
def test_match_of_another_type_is_one_line(value) -> None:
    with pytest.raises(SpecError, match="match: expected one of params, got"):
        parse_spec(_raw(match=value))


def test_a_set_that_leaves_no_matching_width_names_the_set_key() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_raw()).with_base({"model.width": 0.01})
    assert str(err.value).startswith("--set model.width: match: cell depthwise=false: ")
