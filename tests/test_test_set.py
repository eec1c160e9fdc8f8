"""The test set, per seed (`analysis.test_set`): McNemar's exact test per seed on the
test predictions every run logs, and the test set's own standard error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import runs_df, write_spec

from cifarnet.analysis.test_set import mcnemar_seed, two_sources
from cifarnet.cli.main import main


def _arms(n01: int, n10: int, both: int, neither: int):
    """Labels all 0; a right where the first n01 + both images are, b where n10 + both are."""
    n = n01 + n10 + both + neither
    labels = np.zeros(n, dtype=np.uint8)
    a = np.ones(n, dtype=np.uint8)
    b = np.ones(n, dtype=np.uint8)
    a[:n01] = 0
    b[n01:n01 + n10] = 0
    a[n01 + n10:n01 + n10 + both] = 0
    b[n01 + n10:n01 + n10 + both] = 0
    return a, b, labels


def test_mcnemar_exact_hand_checked() -> None:
    # 0 against 10 discordant images: two-sided exact binomial p = 2 * 0.5^10 = 0.001953
    t = mcnemar_seed(0, *_arms(0, 10, 50, 40))
    assert (t.n, t.n01, t.n10) == (100, 0, 10)
    assert t.p == pytest.approx(2 * 0.5 ** 10)
    # 6 against 4: p = 2 * P(X <= 4 | 10, 0.5) = 2 * 386 / 1024 = 0.7539
    assert mcnemar_seed(0, *_arms(6, 4, 50, 40)).p == pytest.approx(2 * 386 / 1024)
    assert mcnemar_seed(0, *_arms(0, 0, 50, 50)).p == 1.0  # no discordant image
    # d = -0.1, se = sqrt((10/100 - 0.01) / 100) = 0.03
    assert t.diff == pytest.approx(-0.1) and t.se == pytest.approx(0.03)
    with pytest.raises(ValueError, match="different test sets"):
        mcnemar_seed(0, np.zeros(3), np.zeros(4), np.zeros(3))


def test_the_test_set_error_is_given_without_naming_a_larger_source() -> None:
    # each seed's test-set error about 0.03; no "larger source" is named: when seed noise
    # flips single images at random, it and the spread over seeds estimate the same thing
    a = {0: _arms(0, 10, 50, 40)[::2], 1: _arms(0, 10, 50, 40)[::2],
         2: _arms(0, 12, 50, 38)[::2]}
    b = {0: (_arms(0, 10, 50, 40)[1], None), 1: (_arms(0, 10, 50, 40)[1], None),
         2: (_arms(0, 12, 50, 38)[1], None)}
    ts = two_sources(a, b)
    assert ts.differing == 3
    assert ts.test_set_se == pytest.approx(math.sqrt(np.mean([
        (0.1 - 0.01) / 100, (0.1 - 0.01) / 100, (0.12 - 0.0144) / 100])))
    assert not hasattr(ts, "dominant")
    assert two_sources(a, {}) is None


@pytest.mark.slow
def test_every_run_logs_its_predictions_and_the_report_tests_each_seed(
        tiny_tree, tmp_path, monkeypatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, epochs=1, seeds=[0, 1])
    assert CliRunner().invoke(main, ["run", str(spec)]).exit_code == 0
    kids = runs_df(tmp_path).query("`tags.cifarnet.role` == 'child'")
    for run_id, n_test in zip(kids["run_id"], kids["params.data.num_test"]):
        path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/test_predictions.npz",
                                                   dst_path=str(tmp_path / run_id))
        with np.load(path) as npz:
            assert npz["predicted"].shape == npz["label"].shape == (int(n_test),)
            assert npz["predicted"].dtype == np.uint8
    rep = CliRunner().invoke(main, ["report", "tiny", "--out", "rep", "--format", "md"])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## The test set, per seed" in md
    section = md.split("## The test set, per seed", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| H | 2 |"))
    assert "of 2" in row
    csv = CliRunner().invoke(main, ["report", "tiny", "--out", "rep", "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    import pandas as pd

    hyp = pd.read_csv(tmp_path / "rep" / "hypotheses.csv").iloc[0]
    assert hyp["mcnemar_seeds"] == 2 and str(hyp["mcnemar_p"]).startswith("0:")
