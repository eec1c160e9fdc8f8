"""Epochs to a target as a hypothesis metric (`epochs_to:test_acc>=0.80`), with runs that
never reach it censored and reported as such (`analysis.time_to`)."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import write_spec

from cifarnet.spec.ablation import parse_spec
from cifarnet.spec.common import SpecError
from cifarnet.analysis.stats import Outcome
from cifarnet.analysis.time_to import epochs_to
from cifarnet.spec.metrics import TimeToTarget, parse_time_to
from cifarnet.analysis.verdicts import analyze
from cifarnet.cli.main import main

METRIC = "epochs_to:test_acc>=0.8"


def test_parse_and_count() -> None:
    assert parse_time_to(METRIC) == TimeToTarget("test_acc", 0.8)
    assert parse_time_to("epochs_to:val_acc>=.5") == TimeToTarget("val_acc", 0.5)
    assert parse_time_to("test_acc") is None
    for bad in ("epochs_to:test_acc>0.8", "epochs_to:train_acc>=0.8", "epochs_to:test_acc>=1.5",
                "epochs_to:test_acc>=0"):
        with pytest.raises(ValueError):
            parse_time_to(bad)
    assert epochs_to([0.5, 0.79, 0.8, 0.9], 0.8) == 3
    assert epochs_to([0.5, 0.79], 0.8) is None  # censored
    assert epochs_to([], 0.8) is None


def _spec(expect: str = "a < b"):
    return parse_spec({
        "name": "t", "factors": {"model.residual_add": [True, False]}, "seeds": [0, 1, 2, 3, 4],
        "hypotheses": [{"id": "H", "claim": "the add reaches 80% sooner", "metric": METRIC,
                        "a": {"model.residual_add": True}, "b": {"model.residual_add": False},
                        "expect": expect}]})


def _runs(curves: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"cell": cell, "seed": seed, "status": "FINISHED",
                          "history": {"test_acc": acc}, "metrics.test_acc": acc[-1]}
                         for (cell, seed), acc in curves.items()])


A, B = "residual_add=true", "residual_add=false"


def test_censored_seeds_leave_the_pairs_and_are_named() -> None:
    up = [0.5, 0.6, 0.7, 0.8, 0.85]
    curves = {
        # seed 0: a at epoch 3, b at 4 (-1); seed 1: a at 2, b at 4 (-2); seed 2: a 3, b 4 (-1)
        (A, 0): [0.5, 0.7, 0.8, 0.8, 0.8], (B, 0): up,
        (A, 1): [0.5, 0.8, 0.8, 0.8, 0.8], (B, 1): [0.5, 0.6, 0.7, 0.8, 0.8],
        (A, 2): [0.5, 0.7, 0.81, 0.8, 0.8], (B, 2): [0.5, 0.6, 0.7, 0.8, 0.8],
        # seed 3: only a reaches it; seed 4: neither
        (A, 3): [0.5, 0.6, 0.8, 0.8, 0.8], (B, 3): [0.5, 0.6, 0.7, 0.75, 0.79],
        (A, 4): [0.5, 0.6, 0.7, 0.75, 0.79], (B, 4): [0.5, 0.6, 0.7, 0.75, 0.79],
    }
    v = analyze(_spec(), _runs(curves)).verdicts[0]
    c = v.comparison
    assert c.n == 3 and c.mean == pytest.approx(-4 / 3)  # differences -1, -2, -1
    assert "censored (never reached test_acc >= 0.8 within their epochs): a in seed(s) 4; " \
           "b in seed(s) 3, 4; those seeds are left out of the pairs" in c.note
    assert "only a reached it in seed(s) 3 (a sooner)" in c.note


def test_no_run_reaching_the_target_is_no_verdict() -> None:
    never = [0.5, 0.6]
    curves = {(cell, s): never for cell in (A, B) for s in range(5)}
    v = analyze(_spec(), _runs(curves)).verdicts[0]
    assert v.comparison.verdict is Outcome.NO_VERDICT
    assert v.why_no_verdict == "no run reached test_acc >= 0.8"


def test_spec_checks_the_metric() -> None:
    with pytest.raises(SpecError, match=r"hypotheses\[0\]\.metric: .*threshold"):
        parse_spec({**_raw(), "hypotheses": [{**_raw()["hypotheses"][0],
                                              "metric": "epochs_to:test_acc>=2"}]})
    with pytest.raises(SpecError, match="needs a validation split"):
        parse_spec({**_raw(), "hypotheses": [{**_raw()["hypotheses"][0],
                                              "metric": "epochs_to:val_acc>=0.5"}]})


def _raw() -> dict:
    return {"name": "t", "factors": {"model.residual_add": [True, False]}, "seeds": [0],
            "hypotheses": [{"id": "H", "claim": "c", "metric": METRIC,
                            "a": {"model.residual_add": True},
                            "b": {"model.residual_add": False}, "expect": "a < b"}]}


@pytest.mark.slow
def test_a_grid_answers_an_epochs_to_hypothesis(tiny_tree, tmp_path, monkeypatch) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, tiny_tree, epochs=2, seeds=[0, 1])
    raw = yaml.safe_load(path.read_text())
    raw["hypotheses"][0].update(metric="epochs_to:test_acc>=0.2", expect="a < b", rope=0)
    path.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(main, ["run", str(path), "--dry-run"])
    assert "no power figure" in r.output
    r = CliRunner().invoke(main, ["run", str(path)])
    assert r.exit_code == 0, r.output
    rep = CliRunner().invoke(main, ["report", "tiny", "--out", "rep", "--format", "csv"])
    assert rep.exit_code == 0, rep.output
    hyp = pd.read_csv(tmp_path / "rep" / "hypotheses.csv")
    assert hyp["metric"].item() == "epochs_to:test_acc>=0.2"
    assert hyp["n"].item() + str(hyp["note"].item()).count("censored") >= 1


@pytest.mark.parametrize("bad", ["epochs_to:test_acc>=0.8\n", "epochs_to:test_acc>=\u0660.\u0668"])
def test_a_trailing_newline_or_non_ascii_digits_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        parse_time_to(bad)
