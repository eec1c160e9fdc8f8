"""Power before launch (`analysis.power`, `tracking.spread`, `run --dry-run`): hand-checked
figures, simulation of the verdict rule at the promised power, and the spread read from the
store's earlier grids at the same budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import runs_df, write_spec
from scipy import stats as st

from cifarnet.analysis.power import (
    DEFAULT_SD,
    minimum_detectable_effect,
    pooled_paired_sd,
    seeds_for_rope,
    spread_of,
)
from cifarnet.analysis.stats import refuted_mask, supported_mask
from cifarnet.spec.metrics import Expect
from cifarnet.cli.main import main


def test_hand_checked_figures() -> None:
    # paired t at n = 3, two-sided 5%, 80% power: d_z = 3.2640 (noncentral t; G*Power gives
    # the same), so at sd 0.004 the MDE is 0.013056; a rope of 0.005 needs only
    # 0.005 + 0.8416 * 0.004 / sqrt(3) = 0.00694 < 0.013056, so it does not bind
    assert minimum_detectable_effect(0.004, 3) == pytest.approx(0.013056, abs=2e-6)
    assert minimum_detectable_effect(0.004, 3, rope=0.005) == pytest.approx(0.013056, abs=2e-6)
    # at n = 30 the rope binds: 0.005 + 0.8416 * 0.004 / sqrt(30) = 0.005615
    assert minimum_detectable_effect(0.004, 30, rope=0.005) == pytest.approx(0.005615, abs=2e-6)
    # a > b refuted at a true 0: (t_{.975,n-1} + 0.8416) * 0.004 / sqrt(n) <= 0.005:
    # n = 6: (2.571 + 0.842) * 0.004 / 2.449 = 0.00557 (no); n = 7: 3.289 * 0.004 / 2.646
    # = 0.00497 (yes)
    assert seeds_for_rope(Expect.GREATER, 0.004, 0.005) == 7
    assert seeds_for_rope(Expect.LESS, 0.004, 0.005) == 7
    # a == b supported: sqrt(n) * 1.25 - t_{.975,n-1} >= z_{.9} = 1.2816: n = 8: 3.536 - 2.365
    # = 1.171 (no); n = 9: 3.75 - 2.306 = 1.444 (yes)
    assert seeds_for_rope(Expect.EQUAL, 0.004, 0.005) == 9
    assert seeds_for_rope(Expect.GREATER, 0.004, 0.0) is None  # rope 0: never decisive
    # a == b refuted: the t-test shifted by the rope, 0.005 + 3.2640 * 0.004 = 0.018056
    assert minimum_detectable_effect(0.004, 3, rope=0.005, expect=Expect.EQUAL) == \
        pytest.approx(0.018056, abs=2e-6)
    assert minimum_detectable_effect(0.004, 1) is None  # one seed: no interval
    assert minimum_detectable_effect(0.0, 5) is None


def test_pooled_sd_of_paired_differences() -> None:
    rows = [("g1", "a", 0, 0.5), ("g1", "a", 1, 0.6), ("g1", "b", 0, 0.4), ("g1", "b", 1, 0.3),
            # g2: differences 0.1, 0.2, 0.6 -> var 0.07, 2 df; a cell with one seed: no pair
            ("g2", "a", 0, 0.9), ("g2", "a", 1, 0.9), ("g2", "a", 2, 0.9),
            ("g2", "b", 0, 0.8), ("g2", "b", 1, 0.7), ("g2", "b", 2, 0.3), ("g2", "c", 0, 0.1),
            ("g2", "b", 3, float("nan"))]
    sd, pairs, df = pooled_paired_sd(rows)
    # g1: differences 0.1, 0.3 -> var 0.02 (1 df); pooled (0.02 * 1 + 0.07 * 2) / 3
    assert (pairs, df) == (2, 3)
    assert sd == pytest.approx(math.sqrt((0.02 + 0.14) / 3))
    assert pooled_paired_sd([("g", "a", 0, 0.5), ("g", "b", 0, 0.4)]) is None
    spread = spread_of(rows)
    assert spread.sd == pytest.approx(sd)
    assert spread.source == "2 cell pair(s) of 2 earlier grid(s) at this budget, 3 degrees of freedom"
    # equal differences (+0.1, +0.1): no spread to pool; the default, said so
    same = [("g", "a", 0, 0.5), ("g", "a", 1, 0.6), ("g", "b", 0, 0.4), ("g", "b", 1, 0.5)]
    assert spread_of(same).sd == DEFAULT_SD and "documented default" in spread_of(same).source


def _simulate(expect: Expect, delta: float, sd: float, n: int, rope: float,
              sims: int = 20_000) -> tuple[float, float]:
    """The verdict rule (95% t interval, rope) on `sims` simulated sets of n paired
    differences ~ N(delta, sd): the fractions supported and refuted."""
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(sims, n))
    mean, s = d.mean(axis=1), d.std(axis=1, ddof=1)
    half = st.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return (float(supported_mask(expect, mean, lo, hi, rope).mean()),
            float(refuted_mask(expect, mean, lo, hi, rope).mean()))


@pytest.mark.parametrize(("n", "rope"), [(3, 0.0), (5, 0.002), (30, 0.005)])
def test_a_true_difference_at_the_mde_is_supported_with_the_promised_power(n, rope) -> None:
    mde = minimum_detectable_effect(0.004, n, rope)
    supported, _ = _simulate(Expect.GREATER, mde, 0.004, n, rope)
    assert supported == pytest.approx(0.80, abs=0.025)
    below, _ = _simulate(Expect.GREATER, 0.8 * mde, 0.004, n, rope)
    assert below < 0.75


@pytest.mark.parametrize("n", [3, 8])
def test_an_equal_claim_is_refuted_with_the_promised_power_at_its_mde(n) -> None:
    mde = minimum_detectable_effect(0.004, n, 0.005, expect=Expect.EQUAL)
    _, refuted = _simulate(Expect.EQUAL, mde, 0.004, n, 0.005)
    assert refuted == pytest.approx(0.80, abs=0.025)


@pytest.mark.parametrize("expect", [Expect.GREATER, Expect.EQUAL])
def test_the_rope_seeds_decide_a_null_effect_with_the_promised_power(expect) -> None:
    n = seeds_for_rope(expect, 0.004, 0.005)
    supported, refuted = _simulate(expect, 0.0, 0.004, n, 0.005)
    decisive = supported if expect is Expect.EQUAL else refuted
    fewer = _simulate(expect, 0.0, 0.004, n - 1, 0.005)
    assert decisive >= 0.78
    assert (fewer[0] if expect is Expect.EQUAL else fewer[1]) < 0.80


def _power_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("H (a > b")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.slow
def test_dry_run_prints_power_from_the_default_then_from_an_earlier_grid(
        tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, epochs=1, seeds=[0, 1, 2])
    r = CliRunner().invoke(main, ["run", str(spec), "--dry-run"])
    assert r.exit_code == 0, r.output
    line = _power_line(r.output)
    assert f"spread {DEFAULT_SD:.4f}" in line and "documented default" in line
    mde = minimum_detectable_effect(DEFAULT_SD, 3, 0.002)
    assert f"3 seeds detect a difference of {mde:.4f} or more (80% power of 'supported')" in line
    assert not (tmp_path / "mlruns").exists()  # nothing written

    assert CliRunner().invoke(main, ["run", str(spec)]).exit_code == 0
    df = runs_df(tmp_path)
    kids = df[df["tags.cifarnet.role"] == "child"]
    acc = {(c, int(s)): v for c, s, v in zip(kids["tags.cifarnet.cell"],
                                             kids["tags.cifarnet.seed"],
                                             kids["metrics.test_acc"])}
    cells = sorted({c for c, _ in acc})
    d = [acc[(cells[0], s)] - acc[(cells[1], s)] for s in (0, 1, 2)]
    sd = float(np.std(d, ddof=1))
    r = CliRunner().invoke(main, ["run", str(spec), "--dry-run"])
    line = _power_line(r.output)
    if sd > 0:
        assert f"spread {sd:.4f}" in line and "1 cell pair(s) of 1 earlier grid(s)" in line
        assert "2 degrees of freedom" in line
    else:  # equal differences: no spread to pool; the default stands
        assert "documented default" in line
    # another budget (2 epochs) finds no earlier grid
    other = write_spec(tmp_path, tiny_tree, name="other", epochs=2, seeds=[0, 1, 2])
    assert "documented default" in _power_line(
        CliRunner().invoke(main, ["run", str(other), "--dry-run"]).output)
