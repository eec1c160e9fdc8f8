"""Power before launch (`analysis.power`, `tracking.spread`, `run --dry-run`): hand-checked
figures, simulation of the verdict rule at the promised power, and the spread read from the
store's earlier grids at the same budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import runs_df, write_spec

from cifarnet.analysis.power import (
    DEFAULT_SD,
    beyond_rope_power,
    decisive_power,
    minimum_detectable_effect,
    pooled_paired_sd,
    seeds_for_rope,
    spread_of,
)
from cifarnet.analysis.stats import OUTCOMES, Outcome, t_verdicts
from cifarnet.spec.metrics import Expect
from cifarnet.cli.main import main


def test_hand_checked_figures() -> None:
    # "a > b by more than the rope" needs the lower end above r: at n = 3 the noncentral t
    # with 2 df exceeds t_.975 = 4.3027 with probability 0.8 at noncentrality 5.6534 (d_z
    # 3.2640, as G*Power), so at sd 0.004 the MDE is r + 0.013056
    assert minimum_detectable_effect(0.004, 3) == pytest.approx(0.013056, abs=2e-6)
    assert minimum_detectable_effect(0.004, 3, rope=0.005) == pytest.approx(0.018056, abs=2e-6)
    assert minimum_detectable_effect(0.004, 30, rope=0.005) == pytest.approx(0.007117, abs=2e-6)
    assert beyond_rope_power(0.013056174, 0.004, 0.0, 3) == pytest.approx(0.8, abs=1e-6)
    # "no difference worth having" at a true 0 for a > b: exactly P(T'(n-1, -r sqrt(n)/sd) <
    # -t_.975): 78.6% at 7 seeds (the normal approximation said 80%), 85.6% at 8
    assert decisive_power(Expect.GREATER, 0.004, 0.005, 7) == pytest.approx(0.7862, abs=1e-4)
    assert decisive_power(Expect.GREATER, 0.004, 0.005, 8) == pytest.approx(0.8564, abs=1e-4)
    assert seeds_for_rope(Expect.GREATER, 0.004, 0.005) == 8
    assert seeds_for_rope(Expect.LESS, 0.004, 0.005) == 8
    # a == b inside (-r, r), TOST at 2.5% per side: 71.9% at 8 seeds, 81.2% at 9
    assert decisive_power(Expect.EQUAL, 0.004, 0.005, 8) == pytest.approx(0.7189, abs=1e-4)
    assert seeds_for_rope(Expect.EQUAL, 0.004, 0.005) == 9
    assert seeds_for_rope(Expect.GREATER, 0.004, 0.0) is None  # rope 0: never decisive
    # a == b, "by more than the rope" in either direction: r + 0.013056 (the far tail ~0)
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
    # three cells over the same 3 seeds: 3 pairs, but (3 - 1)(3 - 1) = 4 degrees of freedom,
    # not 3 x 2 = 6 (the pairs share their runs); the same variance as the pairs pooled
    three = [("g", c, s, v) for c, vals in (("a", (0.5, 0.6, 0.9)), ("b", (0.4, 0.3, 0.6)),
                                            ("c", (0.1, 0.4, 0.2))) for s, v in enumerate(vals)]
    sd3, pairs3, df3 = pooled_paired_sd(three)
    assert (pairs3, df3) == (3, 4)
    diffs = [np.subtract(x, y) for x, y in (((0.5, 0.6, 0.9), (0.4, 0.3, 0.6)),
                                             ((0.5, 0.6, 0.9), (0.1, 0.4, 0.2)),
                                             ((0.4, 0.3, 0.6), (0.1, 0.4, 0.2)))]
    assert sd3 ** 2 == pytest.approx(np.mean([d.var(ddof=1) for d in diffs]))
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
    """The verdict core (`stats.t_verdicts`) on `sims` simulated sets of n paired differences
    ~ N(delta, sd): the fractions "... by more than the rope" and "no difference worth
    having"."""
    d = np.random.default_rng(0).normal(delta, sd, size=(sims, n))
    verdicts = np.array(OUTCOMES)[t_verdicts(expect, d, rope)[0]]
    beyond = np.isin(verdicts, [Outcome.GREATER_BEYOND_ROPE, Outcome.LESS_BEYOND_ROPE])
    return float(beyond.mean()), float((verdicts == Outcome.NEGLIGIBLE).mean())


@pytest.mark.parametrize(("n", "rope"), [(3, 0.0), (5, 0.002), (30, 0.005)])
def test_a_true_difference_at_the_mde_is_beyond_the_rope_with_the_promised_power(n, rope):
    mde = minimum_detectable_effect(0.004, n, rope)
    beyond, _ = _simulate(Expect.GREATER, mde, 0.004, n, rope)
    assert beyond == pytest.approx(0.80, abs=0.012)  # exact: 4 MC s.e.
    below, _ = _simulate(Expect.GREATER, 0.8 * mde, 0.004, n, rope)
    assert below < 0.75


@pytest.mark.parametrize("n", [3, 8])
def test_an_equal_claim_is_shown_beyond_the_rope_with_the_promised_power_at_its_mde(n):
    mde = minimum_detectable_effect(0.004, n, 0.005, expect=Expect.EQUAL)
    beyond, _ = _simulate(Expect.EQUAL, mde, 0.004, n, 0.005)
    assert beyond == pytest.approx(0.80, abs=0.012)


@pytest.mark.parametrize("expect", [Expect.GREATER, Expect.EQUAL])
def test_the_rope_seeds_show_no_difference_with_the_promised_power(expect) -> None:
    n = seeds_for_rope(expect, 0.004, 0.005)
    _, negligible = _simulate(expect, 0.0, 0.004, n, 0.005)
    assert negligible == pytest.approx(decisive_power(expect, 0.004, 0.005, n), abs=0.012)
    assert negligible >= 0.80 - 0.012
    assert _simulate(expect, 0.0, 0.004, n - 1, 0.005)[1] < 0.80


def _power_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("H (a > b")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.slow
def test_dry_run_prints_power_from_the_default_then_from_an_earlier_grid(
        tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, epochs=1, seeds=[0, 1, 2], store=False)
    r = CliRunner().invoke(main, ["run", str(spec), "--dry-run"])
    assert r.exit_code == 0, r.output
    line = _power_line(r.output)
    assert f"spread {DEFAULT_SD:.4f}" in line and "documented default" in line
    mde = minimum_detectable_effect(DEFAULT_SD, 3, 0.002)
    assert (f"3 seeds detect a difference of {mde:.4f} or more (80% power of '... by more "
            "than the rope')") in line
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


def test_equivalence_power_holds_where_the_rope_is_wide_against_the_spread() -> None:
    """The integral over the sample variance ran to df (r/sd)^2 / t^2: with r 50 sd quad
    missed chi2's mass and gave power 0 at 50 seeds while 10 gave 1, and "more than 1000
    seeds" where 2 do."""
    from cifarnet.analysis.power import decisive_power, seeds_for_rope
    from cifarnet.spec.metrics import Expect

    assert decisive_power(Expect.EQUAL, 1.0, 50.0, 50) == pytest.approx(1.0)
    assert decisive_power(Expect.EQUAL, 1.0, 1000.0, 5) == pytest.approx(1.0)
    assert seeds_for_rope(Expect.EQUAL, 1.0, 1e6) == 2
    powers = [decisive_power(Expect.EQUAL, 1.0, 3.0, n) for n in range(2, 80)]
    assert all(b >= a - 1e-9 for a, b in zip(powers, powers[1:]))


def test_a_pairing_whose_sum_has_no_spread_has_no_interval() -> None:
    """var(a + b) = 0 made the F interval a point, (0.5, 0.5): certainty from 4 seeds."""
    from cifarnet.analysis.stats import pairing_gain

    g = pairing_gain([.8, .81, .82, .83], [.7, .69, .68, .67])
    assert math.isnan(g.efficiency) and all(map(math.isnan, g.efficiency_ci))
    assert math.isnan(g.seeds_saved)


def test_power_without_spread_or_below_the_tests_level_is_undefined_not_a_crash() -> None:
    """sd 0 raised ZeroDivisionError; a power of 1% raised brentq's sign error."""
    from cifarnet.analysis.power import (beyond_rope_power, decisive_power,
                                         minimum_detectable_effect)
    from cifarnet.spec.metrics import Expect

    assert math.isnan(beyond_rope_power(0.01, 0.0, 0.0, 5))
    assert math.isnan(decisive_power(Expect.GREATER, 0.0, 0.01, 5))
    assert math.isnan(beyond_rope_power(0.01, 0.01, 0.0, 1))
    with pytest.raises(ValueError, match="power must be in"):
        minimum_detectable_effect(0.004, 5, power=0.01)
