"""Text a user reads: search-report's importances only when they can mean something, and the
summary's RF column agreeing with its receptive-field line."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from cifarnet.config.schema import ModelConfig, build_config
from cifarnet.model.summary import format_table, summarize
from cifarnet.search.report import importance_caveat, importances, markdown

DIST = {"train.lr": FloatDistribution(0.001, 1.0, log=True),
        "data.augment_strength": FloatDistribution(0.0, 2.0)}


def _study(points: list[tuple[float, float, float]]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="search.t", direction="maximize")
    for lr, aug, value in points:
        study.add_trial(create_trial(params={"train.lr": lr, "data.augment_strength": aug},
                                     distributions=DIST, value=value))
    return study


def test_two_identical_trials_give_no_importances() -> None:
    """Optuna answers 0.5 / 0.5 here; the report says why it shows none."""
    study = _study([(0.1, 1.0, 0.7), (0.1, 1.0, 0.7)])
    assert importances(study) == {}
    text = markdown(study, "sqlite:///x.db")
    assert "Not computed: only 2 complete trial(s); importances need at least 10" in text
    assert "0.500" not in text


def test_many_trials_with_one_objective_value_give_no_importances() -> None:
    study = _study([(0.01 * (i + 1), 0.1 * i, 0.5) for i in range(12)])
    assert "zero variance" in importance_caveat(study)
    assert importances(study) == {}


def test_enough_varied_trials_give_importances_that_favour_the_parameter_that_matters() -> None:
    study = _study([(0.01 * (i + 1), (7 * i % 12) / 6, 0.5 + 0.03 * i) for i in range(12)])
    assert importance_caveat(study) is None
    imp = importances(study)
    assert set(imp) == {"train.lr", "data.augment_strength"}
    assert imp["train.lr"] > imp["data.augment_strength"]
    assert "- train.lr: " in markdown(study, "sqlite:///x.db")


def test_summary_rf_column_agrees_with_the_receptive_field_line() -> None:
    """The GAP row used to read RF 107 (padding counted past the 32 px image) next to
    `receptive field 83 px`."""
    text = format_table(summarize(ModelConfig()))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["convblock4b.1"][-2] == "83"
    assert rows["gap"][-2:] == ["all", "-"] and rows["convblockf.0"][-2:] == ["all", "-"]
    assert "107" not in text
    assert "receptive field      83 px" in text
    no_dil = format_table(summarize(build_config({"model.dilation": 1}).model))
    assert "receptive field      75 px" in no_dil and "all" in no_dil
