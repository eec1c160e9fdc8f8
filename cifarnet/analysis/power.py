"""Power before launch: what the planned seeds can detect, and how many seeds the rope needs.

Given the spread of the paired differences over seeds (sd, metric units: the standard
deviation of d_s = metric(a, s) - metric(b, s)), for a hypothesis answered by the verdict rule
of `cifarnet.analysis.stats` (a two-sided 95% t interval on the mean paired difference and a
region of practical equivalence, rope, r >= 0):

- **Minimum detectable effect** (MDE) at n seeds: the smallest true difference that gives a
  "supported" verdict of `a > b` (or, mirrored, `a < b`) with probability `power` (0.8). The
  verdict needs the interval's lower end above 0, the paired t-test at two-sided 5%, whose
  power statsmodels computes exactly from the noncentral t distribution (`TTestPower`, Cohen
  1988, ch. 2), and the mean above r; for the second condition we use the normal approximation
  delta >= r + z_power * sd / sqrt(n). The MDE is the larger of the two. For `a == b` the MDE
  is the smallest |difference| that gives "refuted" (the whole interval outside the rope) with
  that power: the same t-test shifted by the rope, r + d_z * sd.
- **Seeds the rope needs**: the fewest seeds that give a decisive verdict with probability
  `power` when the true difference is 0: for `a > b` or `a < b` a "refuted" verdict (the
  interval's relevant end inside the rope: n with (t_{0.975, n-1} + z_power) * sd / sqrt(n) <= r),
  for `a == b` a "supported" one (the whole interval inside (-r, r), Schuirmann's two one-sided
  tests, 1987: n with 2 * Phi(sqrt(n) * r / sd - t_{0.975, n-1}) - 1 >= power). Both use the
  normal approximation for the mean with the t quantile for the interval, the usual sample-size
  formulas for superiority and equivalence trials (Chow, Shao & Wang 2008, "Sample Size
  Calculations in Clinical Research", 2nd ed., sections 3.2 and 10.1). With r = 0 no number of
  seeds suffices (None).

The spread comes from earlier grids at the same budget (`pooled_paired_sd`: the pooled variance
of the paired differences of every pair of cells of every finished grid, degrees of freedom as
weights) or, with none, from `DEFAULT_SD` below, and the result says which.

This module imports neither torch nor MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats as st

from cifarnet.analysis.stats import CONFIDENCE
from cifarnet.spec.metrics import Expect

POWER = 0.8
MAX_SEEDS = 1000
# The spread assumed when the store has no earlier grid at the budget: the default recipe at
# 30 epochs on the full data gave test accuracy 0.8304 +/- 0.0027 (sd over seeds 0-3,
# BENCHMARKS.md, "default recipe seeds 2-3"); two variants whose seed-to-seed noise is
# independent (Jordan 2024, "Calibrated chaos": architectural variants decorrelate) give
# paired differences with sd sqrt(2) x 0.0027 = 0.0038, rounded up to 0.004 (0.4 points).
DEFAULT_SD = 0.004
DEFAULT_SOURCE = "the documented default (docs/statistics.md: Power before launch)"


@dataclass(frozen=True)
class Spread:
    """The sd of paired differences over seeds (metric units) and where it came from.

    pairs: the cell pairs it pools (0 for the default); df: its degrees of freedom."""

    sd: float
    source: str
    pairs: int = 0
    df: int = 0


@dataclass(frozen=True)
class PowerPlan:
    """What n planned seeds can decide for one hypothesis (metric units)."""

    n: int
    mde: float | None  # None: n < 2 gives no interval, or no spread
    rope_seeds: int | None  # None: rope 0, or more than MAX_SEEDS
    power: float
    spread: Spread


def _t(n: int, confidence: float = CONFIDENCE) -> float:
    return float(st.t.ppf(0.5 + confidence / 2, n - 1))


def minimum_detectable_effect(sd: float, n: int, rope: float = 0.0, power: float = POWER,
                              confidence: float = CONFIDENCE,
                              expect: Expect = Expect.GREATER) -> float | None:
    """The MDE (metric units, > 0) of a hypothesis at `n` paired seeds (module rules); None
    when n < 2 or sd is not positive and finite. Raises ValueError for power outside (0, 1)."""
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if n < 2 or not (sd > 0 and math.isfinite(sd)):
        return None
    from statsmodels.stats.power import TTestPower

    d_z = TTestPower().solve_power(effect_size=None, nobs=n, alpha=1 - confidence,
                                   power=power, alternative="two-sided")
    if Expect(expect) is Expect.EQUAL:
        return rope + float(d_z) * sd
    return max(float(d_z) * sd, rope + float(st.norm.ppf(power)) * sd / math.sqrt(n))


def decisive_power(expect: Expect, sd: float, rope: float, n: int,
                   confidence: float = CONFIDENCE) -> float:
    """The probability (normal approximation, module rules) of a decisive verdict at `n`
    seeds when the true difference is 0: "refuted" for a directional hypothesis, "supported"
    for `a == b`."""
    if n < 2 or rope <= 0:
        return 0.0
    se = sd / math.sqrt(n)
    margin = rope / se - _t(n, confidence)
    if expect is Expect.EQUAL:
        return max(0.0, 2 * float(st.norm.cdf(margin)) - 1)
    return float(st.norm.cdf(margin))


def seeds_for_rope(expect: Expect, sd: float, rope: float, power: float = POWER,
                   confidence: float = CONFIDENCE) -> int | None:
    """The fewest seeds (>= 2) whose decisive-verdict probability at a true difference of 0
    reaches `power`; None for rope 0, no spread, or more than MAX_SEEDS."""
    if rope <= 0 or not (sd > 0 and math.isfinite(sd)):
        return None
    for n in range(2, MAX_SEEDS + 1):
        if decisive_power(expect, sd, rope, n, confidence) >= power:
            return n
    return None


def plan(expect: Expect, rope: float, n: int, spread: Spread, power: float = POWER) -> PowerPlan:
    """The power figures of one hypothesis at `n` planned seeds."""
    return PowerPlan(n, minimum_detectable_effect(spread.sd, n, rope, power, expect=expect),
                     seeds_for_rope(expect, spread.sd, rope, power), power, spread)


def pooled_paired_sd(rows: Iterable[tuple[str, str, int, float]]) -> tuple[float, int, int] | None:
    """The pooled sd of paired differences from finished runs given as (grid, cell, seed,
    value) rows: for every grid and every pair of its cells sharing >= 2 seeds, the sample
    variance (ddof=1) of the per-seed differences; pooled with their degrees of freedom as
    weights. Returns (sd, pairs, df), or None when no pair qualifies or every difference
    equals its pair's mean (no spread to estimate from). Non-finite values are left out."""
    by_grid: dict[str, dict[str, dict[int, float]]] = {}
    for grid, cell, seed, value in rows:
        if value is not None and math.isfinite(value):
            by_grid.setdefault(grid, {}).setdefault(cell, {})[int(seed)] = float(value)
    ss, df, pairs = 0.0, 0, 0
    for cells in by_grid.values():
        for a, b in combinations(sorted(cells), 2):
            shared = sorted(set(cells[a]) & set(cells[b]))
            if len(shared) < 2:
                continue
            d = np.array([cells[a][s] - cells[b][s] for s in shared])
            ss += float(np.sum((d - d.mean()) ** 2))
            df += len(d) - 1
            pairs += 1
    if df == 0 or ss <= 0:
        return None
    return math.sqrt(ss / df), pairs, df


def spread_of(rows: list[tuple[str, str, int, float]]) -> Spread:
    """The `Spread` of earlier runs given as (grid, cell, seed, value) rows
    (`pooled_paired_sd`), or the documented default when they give none."""
    pooled = pooled_paired_sd(rows)
    if pooled is None:
        return Spread(DEFAULT_SD, DEFAULT_SOURCE)
    sd, pairs, df = pooled
    grids = len({grid for grid, *_ in rows})
    return Spread(sd, f"{pairs} cell pair(s) of {grids} earlier grid(s) at this budget, "
                      f"{df} degrees of freedom", pairs, df)


def plan_line(hid: str, expect: Expect, metric: str, rope: float, p: PowerPlan) -> str:
    """One line of `run --dry-run` for hypothesis `hid`."""
    head = f"{hid} ({expect}, {metric}, rope {rope:g}): "
    if p.mde is None:
        can = f"{p.n} seed(s) give no interval (at least 2 needed)"
    else:
        verdict = "refuted" if expect is Expect.EQUAL else "supported"
        can = (f"{p.n} seeds detect a difference of {p.mde:.4f} or more "
               f"({p.power:.0%} power of '{verdict}')")
    if p.rope_seeds is not None:
        verdict = ("a == b 'supported' at a true difference of 0" if expect is Expect.EQUAL
                   else "a null effect 'refuted'")
        rope_part = f"; the rope needs {p.rope_seeds} seeds for {verdict}"
    elif rope > 0:
        rope_part = f"; the rope needs more than {MAX_SEEDS} seeds"
    else:
        rope_part = "; rope 0: no number of seeds can refute or show equality"
    src = p.spread.source
    return f"{head}{can}{rope_part}; spread {p.spread.sd:.4f} per paired seed, from {src}"
