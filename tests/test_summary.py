"""The architecture summary answers the seed's "RF ?" comments."""

import pytest

from cifarnet.config.presets import list_presets, preset_model
from cifarnet.config.schema import ModelConfig, build_config
from cifarnet.model.summary import format_table, summarize


def test_seed_receptive_field_and_totals() -> None:
    s = summarize(ModelConfig())
    assert s.total_params == 153_104
    assert s.receptive_field == 83
    assert s.total_macs == 10_489_344
    assert not s.warnings


def test_without_dilation_receptive_field_is_75() -> None:
    assert summarize(build_config({"model.dilation": 1}).model).receptive_field == 75


def test_residual_sum_takes_the_larger_branch() -> None:
    rows = {r.name: r for r in summarize(ModelConfig()).layers}
    assert rows["convblock3a.1"].rf == 27
    assert rows["convblock3b.0"].rf == 43
    assert rows["add3"].rf == 43
    assert rows["convpool3.0"].rf == 51 and rows["convpool3.0"].jump == 8


@pytest.mark.parametrize("name", list_presets())
def test_row_params_add_up_for_every_preset(name: str) -> None:
    s = summarize(preset_model(name))
    assert sum(r.params for r in s.layers) == s.total_params


def test_budget_warning_and_table() -> None:
    s = summarize(build_config({"model.depthwise": False}).model)
    assert s.total_params == 498_864
    assert any("200,000" in w for w in s.warnings)
    text = format_table(s)
    assert "498,864" in text and "WARNING" in text
    lines = text.splitlines()
    assert len({len(line) for line in lines[2:8]}) == 1, "rows are aligned"
