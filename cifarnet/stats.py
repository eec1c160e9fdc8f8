"""Paired statistics over seeds: does variant a beat variant b, and how sure are we?

For a hypothesis on a metric, the seeds both sides share give paired differences
d_s = metric(a, s) - metric(b, s). We report n, the mean difference, a 95% t-interval (and a
bootstrap interval when n >= 5), the paired t-test's p-value, Wilcoxon's signed-rank p-value
when n >= 6, and Cohen's d_z = mean / sd. With the region of practical equivalence (rope) r:

- `a > b` is supported when the interval's lower bound is above 0 and the mean above r;
  refuted when the upper bound is below r (no effect worth having, or the reverse);
  otherwise inconclusive.
- `a < b` is the mirror image.
- `a == b` is supported when the whole interval lies inside (-r, r); refuted when it lies
  wholly outside; otherwise inconclusive.

An inconclusive verdict comes with the number of seeds that would decide it if the observed
mean and spread held. When the sides do not share their seeds, Welch's unpaired test is used
instead, and the result says so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as st

CONFIDENCE = 0.95
BOOTSTRAP_MIN_N = 5
WILCOXON_MIN_N = 6
MAX_SEEDS_ESTIMATE = 1000


@dataclass(frozen=True)
class Comparison:
    """The statistics of one hypothesis and its verdict."""

    expect: str
    rope: float
    n: int
    mean: float
    sd: float
    ci: tuple[float, float]
    p_t: float
    verdict: str
    paired: bool = True
    ci_bootstrap: tuple[float, float] | None = None
    p_wilcoxon: float | None = None
    effect_dz: float | None = None
    seeds_needed: int | None = None
    note: str = ""
    differences: list[float] = field(default_factory=list)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return (-math.inf, math.inf)
    half = st.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return (float(x.mean() - half), float(x.mean() + half))


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                       resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean (seeded, so reports are reproducible)."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return (float(lo), float(hi))


def decide(expect: str, mean: float, ci: tuple[float, float], rope: float) -> str:
    """The verdict rules of the module docstring."""
    lo, hi = ci
    if expect == "a > b":
        if lo > 0 and mean > rope:
            return "supported"
        return "refuted" if hi < rope else "inconclusive"
    if expect == "a < b":
        if hi < 0 and mean < -rope:
            return "supported"
        return "refuted" if lo > -rope else "inconclusive"
    if expect == "a == b":
        if -rope < lo and hi < rope:
            return "supported"
        return "refuted" if lo >= rope or hi <= -rope else "inconclusive"
    raise ValueError(f"unknown expectation {expect!r}")


def seeds_to_decide(expect: str, mean: float, sd: float, rope: float, n_now: int) -> int | None:
    """Smallest n whose t-interval (same mean and sd) would give a verdict; None if none
    up to MAX_SEEDS_ESTIMATE would (e.g. a mean sitting exactly on the rope)."""
    if not math.isfinite(sd):
        return None
    for n in range(max(n_now + 1, 2), MAX_SEEDS_ESTIMATE + 1):
        half = st.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
        if decide(expect, mean, (mean - half, mean + half), rope) != "inconclusive":
            return n
    return None


def compare(a: Mapping[int, float], b: Mapping[int, float], expect: str,
            rope: float) -> Comparison:
    """Compare metric values by seed; paired on shared seeds, Welch when seeds differ."""
    shared = sorted(set(a) & set(b))
    if set(a) == set(b):
        d = [a[s] - b[s] for s in shared]
        return _paired(d, expect, rope)
    return _welch([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], expect, rope)


def _paired(d: list[float], expect: str, rope: float) -> Comparison:
    n = len(d)
    if n == 0:
        return Comparison(expect, rope, 0, math.nan, math.nan, (-math.inf, math.inf), math.nan,
                          "inconclusive", note="no seed has both sides")
    x = np.asarray(d, dtype=float)
    mean = float(x.mean())
    if n < 2:
        return Comparison(expect, rope, n, mean, math.nan, (-math.inf, math.inf), math.nan,
                          "inconclusive", seeds_needed=None,
                          note="too few seeds: one paired difference has no spread",
                          differences=list(d))
    sd = float(x.std(ddof=1))
    ci = t_interval(x)
    if sd == 0:
        p_t = 0.0 if mean != 0 else 1.0
        dz = math.copysign(math.inf, mean) if mean else 0.0
        ci = (mean, mean)
    else:
        p_t = float(st.ttest_1samp(x, 0.0).pvalue)
        dz = mean / sd
    verdict = decide(expect, mean, ci, rope)
    boot = bootstrap_interval(x) if n >= BOOTSTRAP_MIN_N else None
    p_w = None
    if n >= WILCOXON_MIN_N and np.any(x != 0):
        p_w = float(st.wilcoxon(x).pvalue)
    needed = seeds_to_decide(expect, mean, sd, rope, n) if verdict == "inconclusive" else None
    return Comparison(expect, rope, n, mean, sd, ci, p_t, verdict, True, boot, p_w, dz, needed,
                      "", list(d))


def _welch(a: list[float], b: list[float], expect: str, rope: float) -> Comparison:
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    mean = float(xa.mean() - xb.mean()) if len(xa) and len(xb) else math.nan
    note = "unpaired: the sides do not share their seeds, so Welch's t-test is used"
    if len(xa) < 2 or len(xb) < 2:
        return Comparison(expect, rope, min(len(xa), len(xb)), mean, math.nan,
                          (-math.inf, math.inf), math.nan, "inconclusive", paired=False,
                          note=note + "; too few runs on one side")
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        ci, p = (mean, mean), (0.0 if mean else 1.0)
    else:
        df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
        half = st.t.ppf(0.5 + CONFIDENCE / 2, df) * se
        ci = (mean - half, mean + half)
        p = float(st.ttest_ind(xa, xb, equal_var=False).pvalue)
    pooled = math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2)
    return Comparison(expect, rope, min(len(xa), len(xb)), mean, pooled, ci, p,
                      decide(expect, mean, ci, rope), paired=False,
                      effect_dz=mean / pooled if pooled else None, note=note)


@dataclass(frozen=True)
class Effect:
    """A main effect or interaction of a 2^k design: mean over seeds of the per-seed contrast."""

    name: str
    n: int
    mean: float
    ci: tuple[float, float]
    p_t: float


def factorial_effects(values: Mapping[tuple[tuple[str, object], ...], Mapping[int, float]],
                      factors: Mapping[str, Sequence[object]]) -> list[Effect]:
    """Main effects and interactions of a 2^k grid, blocked by seed.

    `values` maps a cell (tuple of (factor, level) in factor order) to {seed: metric}. Each
    factor is coded +1 at its first listed level and -1 at its second; an effect's per-seed
    estimate is mean(y | sign +) - mean(y | sign -), where the sign of an interaction is the
    product of its factors' signs. Only seeds present in every cell are used.
    """
    keys = list(factors)
    if any(len(levels) != 2 for levels in factors.values()):
        raise ValueError("factorial effects need exactly two levels per factor")
    cells = list(itertools.product(*[[(k, lv) for lv in factors[k]] for k in keys]))
    seeds = sorted(set.intersection(*[set(values.get(c, {})) for c in cells]))
    effects = []
    for order in range(1, len(keys) + 1):
        for combo in itertools.combinations(range(len(keys)), order):
            per_seed = []
            for s in seeds:
                plus, minus = [], []
                for c in cells:
                    sign = math.prod(1 if c[i][1] == factors[keys[i]][0] else -1 for i in combo)
                    (plus if sign > 0 else minus).append(values[c][s])
                per_seed.append(float(np.mean(plus) - np.mean(minus)))
            name = " x ".join(keys[i] for i in combo)
            x = np.asarray(per_seed)
            if len(x) >= 2 and x.std(ddof=1) > 0:
                p = float(st.ttest_1samp(x, 0.0).pvalue)
            else:
                p = math.nan
            effects.append(Effect(name, len(x), float(x.mean()) if len(x) else math.nan,
                                  t_interval(x), p))
    return effects
