"""Power before launch: what the planned seeds can detect, and how many seeds the rope needs.

Given the spread of the paired differences over seeds (sd, metric units: the standard
deviation of d_s = metric(a, s) - metric(b, s)), for a hypothesis answered by the verdict rule
of `cifarnet.analysis.stats` (a two-sided 95% t interval on the mean paired difference and a
region of practical equivalence, rope, r >= 0):

- **Minimum detectable effect** (MDE) at n seeds: the smallest true difference that gives
  the verdict "a > b by more than the rope" (or, mirrored, "a < b ...") with probability
  `power` (0.8): the interval's lower end above r, whose probability at a true difference
  delta is exactly the noncentral t's, P(T'(n - 1, (delta - r) sqrt(n) / sd) > t_{0.975, n-1})
  (Cohen 1988, ch. 2). For `a == b` the MDE is the smallest |difference| that gives "... by
  more than the rope" in either direction with that power (the sum of the two tails).
- **Seeds the rope needs**: the fewest seeds that give "no difference worth having" with
  probability `power` when the true difference is 0: for `a > b` the interval's upper end below
  r, exactly P(T'(n - 1, -r sqrt(n) / sd) < -t_{0.975, n-1}); for `a == b` the whole interval
  inside (-r, r) (Schuirmann's TOST at 2.5% per side), exactly by integrating the normal mean's
  probability over the chi-square distribution of the sample variance (Owen 1965). With r = 0
  no number of seeds suffices (None).

Both assume normal paired differences; `benchmarks/verdict_simulation.py` checks the figures
by simulation. The spread comes from earlier grids at the same budget (`pooled_paired_sd`)
or, with none, from `DEFAULT_SD` below, and the result says which.

This module imports neither torch nor MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as st
from scipy.integrate import quad
from scipy.optimize import brentq

from cifarnet.analysis.stats import CONFIDENCE, SIDE_LEVEL, Outcome, has_spread
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


def beyond_rope_power(delta: float, sd: float, rope: float, n: int,
                      confidence: float = CONFIDENCE) -> float:
    """P(the interval's lower end lies above `rope`) at a true difference `delta` (exact);
    NaN without an interval (n < 2) or a spread (sd not positive and finite)."""
    if n < 2 or not (sd > 0 and math.isfinite(sd)):
        return math.nan
    return float(st.nct.sf(_t(n, confidence), n - 1, (delta - rope) * math.sqrt(n) / sd))


def minimum_detectable_effect(sd: float, n: int, rope: float = 0.0, power: float = POWER,
                              confidence: float = CONFIDENCE,
                              expect: Expect = Expect.GREATER) -> float | None:
    """The MDE (metric units, > 0) of a hypothesis at `n` paired seeds (module rules); None
    when n < 2 or sd is not positive and finite. Raises ValueError for power outside (0, 1)."""
    if not SIDE_LEVEL < power < 1:  # below the test's own level no effect size reaches it
        raise ValueError(f"power must be in ({SIDE_LEVEL}, 1), got {power}")
    if n < 2 or not (sd > 0 and math.isfinite(sd)):
        return None

    def short(delta: float) -> float:
        p = beyond_rope_power(delta, sd, rope, n, confidence)
        if Expect(expect) is Expect.EQUAL:
            p += beyond_rope_power(-delta, sd, rope, n, confidence)
        return p - power
    return float(brentq(short, rope, rope + 1000 * sd, xtol=1e-12 * sd))


def decisive_power(expect: Expect, sd: float, rope: float, n: int,
                   confidence: float = CONFIDENCE) -> float:
    """The exact probability of "no difference worth having" at `n` seeds when the true
    difference is 0 (module rules)."""
    if n < 2 or rope <= 0:
        return 0.0
    if not (sd > 0 and math.isfinite(sd)):
        return math.nan  # no spread: no interval to judge by
    t, df, margin = _t(n, confidence), n - 1, rope * math.sqrt(n) / sd
    if expect is not Expect.EQUAL:
        return float(st.nct.cdf(-t, df, -margin))

    def inside(v: float) -> float:  # P(|mean| + half-width < r | sample variance v sd^2/df)
        return (2 * st.norm.cdf(margin - t * math.sqrt(v / df)) - 1) * st.chi2.pdf(v, df)
    # past chi2's far tail the integrand is nil: a wide range would hide the mass from quad
    upper = min(df * (margin / t) ** 2, st.chi2.isf(1e-15, df))
    mode = max(df - 2.0, 0.0)
    return float(quad(inside, 0, upper, points=[mode] if 0 < mode < upper else None,
                      limit=200)[0])


def seeds_for_rope(expect: Expect, sd: float, rope: float, power: float = POWER,
                   confidence: float = CONFIDENCE) -> int | None:
    """The fewest seeds (>= 2) whose probability of "no difference worth having" at a true
    difference of 0 reaches `power`; None for rope 0, no spread, or more than MAX_SEEDS."""
    if rope <= 0 or not (sd > 0 and math.isfinite(sd)):
        return None
    for n in range(2, MAX_SEEDS + 1):
        if decisive_power(expect, sd, rope, n, confidence) >= power:
            return n
    return None


def plan(expect: Expect, rope: float, n: int, spread: Spread, power: float = POWER) -> PowerPlan:
    """The power figures of one hypothesis at `n` planned seeds; ValueError for a rope that
    is not a finite number >= 0 or a power outside (0.025, 1)."""
    if not (math.isfinite(rope) and rope >= 0 and SIDE_LEVEL < power < 1):
        raise ValueError(f"rope {rope!r} / power {power!r}: out of range")
    return PowerPlan(n, minimum_detectable_effect(spread.sd, n, rope, power, expect=expect),
                     seeds_for_rope(expect, spread.sd, rope, power), power, spread)


def pooled_paired_sd(rows: Iterable[tuple[str, str, int, float]]) -> tuple[float, int, int] | None:
    """The pooled sd of paired differences from finished runs given as (grid, cell, seed,
    value) rows. Per grid, over the cells with >= 2 seeds and the seeds all of them share
    (k cells, n seeds), the cell x seed residual sum of squares SS (seed and cell means
    removed) has (k - 1)(n - 1) degrees of freedom, and 2 SS / df estimates var(a - b) for any
    pair (equal spread assumed): the k(k - 1)/2 pairs share their runs, so they do not add
    degrees of freedom. Pooled over grids. Returns (sd, pairs, df), or None without a grid
    that qualifies or without spread. Non-finite values are left out."""
    by_grid: dict[str, dict[str, dict[int, float]]] = {}
    for grid, cell, seed, value in rows:
        if value is not None and math.isfinite(value):
            by_grid.setdefault(grid, {}).setdefault(cell, {})[int(seed)] = float(value)
    ss, df, pairs = 0.0, 0, 0
    for cells in by_grid.values():
        usable = [c for c in sorted(cells) if len(cells[c]) >= 2]
        shared = sorted(set.intersection(*(set(cells[c]) for c in usable))) if usable else []
        k, n = len(usable), len(shared)
        if k < 2 or n < 2:
            continue
        x = np.array([[cells[c][s] for s in shared] for c in usable])
        r = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
        ss += 2 * float(np.sum(r ** 2)) if has_spread(r.ravel()) else 0.0  # float noise
        df += (k - 1) * (n - 1)
        pairs += k * (k - 1) // 2
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
        can = (f"{p.n} seeds detect a difference of {p.mde:.4f} or more "
               f"({p.power:.0%} power of '... by more than the rope')")
    if p.rope_seeds is not None:
        rope_part = (f"; the rope needs {p.rope_seeds} seeds for '{Outcome.NEGLIGIBLE}' "
                     "at a true difference of 0")
    elif rope > 0:
        rope_part = f"; the rope needs more than {MAX_SEEDS} seeds"
    else:
        rope_part = "; rope 0: no number of seeds can refute or show equality"
    src = p.spread.source
    return f"{head}{can}{rope_part}; spread {p.spread.sd:.4f} per paired seed, from {src}"
