"""Paired statistics over seeds: does variant a beat variant b, and how sure are we?

For a hypothesis on a metric, the seeds both sides share give paired differences
d_s = metric(a, s) - metric(b, s). We report n, the mean difference, a 95% t-interval (and a
percentile bootstrap interval when n >= 5), the paired t-test's p-value, Wilcoxon's signed-rank
p-value when n >= 6 (scipy's exact permutation distribution, ties included), and Cohen's
d_z = mean / sd. With the region of practical equivalence (rope) r:

- `a > b` is supported when the interval's lower bound is above 0 and the mean above r;
  refuted when the upper bound is below r (no effect worth having, or the reverse);
  otherwise inconclusive.
- `a < b` is the mirror image.
- `a == b` is supported when the whole interval lies inside (-r, r); refuted when it lies
  wholly outside; otherwise inconclusive.

**No spread, no verdict.** An interval needs an estimate of the spread over seeds. With fewer
than two paired differences, or differences that are all equal (sd = 0, e.g. 0.004 and 0.004:
test accuracies are multiples of 1/num_test, so equal differences happen), there is none: the
verdict is inconclusive, the interval is (-inf, inf), p-values of t and d_z are undefined
(NaN / None), no bootstrap interval is given and no "seeds needed" estimate either. We do not
floor the spread by the test set's binomial sampling error: that error is shared by every
seed (the same test images), so it is not seed-to-seed spread, and the verdict is about the
training procedure on this test set (Bouthillier et al. 2021, "Accounting for variance in
machine learning benchmarks", MLSys, separate the two sources). Non-finite metric values
(a diverged run's NaN) are left out with their seed, and the note says so.

**The verdict's own p-value** (`verdict_p_value`) is the p-value of the one-sided t-test the
verdict rests on, doubled to match the two-sided 95% interval: it is below 0.05 exactly when
the interval's relevant end clears its threshold (for `a > b`: H0 d <= 0 when supported,
H0 d >= r when refuted; for `a == b`: the larger of the two one-sided tests against -r and r
(Schuirmann's TOST, 1987) when supported). `cifarnet.analysis.multiple` adjusts these for the
number of hypotheses (Holm 1979).

An inconclusive verdict comes with the number of seeds that would decide it if the observed
mean and spread held. When the sides share fewer than two seeds, Welch's unpaired test is used
instead, and the result says so; when they share two or more but not all, the shared seeds are
paired and the others left out, with a note.

This module imports neither torch nor MLflow.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import stats as st

from cifarnet.spec.metrics import Expect

CONFIDENCE = 0.95
BOOTSTRAP_MIN_N = 5
WILCOXON_MIN_N = 6
PAIRING_MIN_N = 3
MAX_SEEDS_ESTIMATE = 1000
NO_INTERVAL = (-math.inf, math.inf)
EQUAL_TOL = 1e-9


class Outcome(StrEnum):
    """A verdict. NO_VERDICT: the data cannot answer the question at all (both arms at
    chance, or the metric was never logged), so more seeds would not help."""

    SUPPORTED = "supported"
    REFUTED = "refuted"
    INCONCLUSIVE = "inconclusive"
    NO_VERDICT = "no verdict"


@dataclass(frozen=True)
class PairingGain:
    """What pairing the seeds bought for one hypothesis (n >= 3 shared seeds).

    corr: Pearson correlation of the two arms over seeds. var_paired = var(a - b);
    var_unpaired = var(a) + var(b) (what the difference of two independent arms would have;
    both ddof=1, metric units squared). efficiency = var_unpaired / var_paired: an unpaired
    design needs `efficiency` times as many seeds per arm for the same standard error, so the
    pairing saved n * (efficiency - 1) seeds per arm (negative: it cost seeds). NaN when not
    estimable (fewer than 3 seeds, or no spread)."""

    n: int
    corr: float
    var_paired: float
    var_unpaired: float
    efficiency: float
    seeds_saved: float


@dataclass(frozen=True)
class Comparison:
    """The statistics of one hypothesis and its verdict (values in metric units).

    se and df are the standard error and degrees of freedom of the mean difference (paired t
    or Welch); NaN when there is no spread estimate."""

    expect: Expect
    rope: float
    n: int
    mean: float
    sd: float
    ci: tuple[float, float]
    p_t: float
    verdict: Outcome
    paired: bool = True
    ci_bootstrap: tuple[float, float] | None = None
    p_wilcoxon: float | None = None
    effect_dz: float | None = None
    seeds_needed: int | None = None
    note: str = ""
    differences: list[float] = field(default_factory=list)
    se: float = math.nan
    df: float = math.nan
    pairing: PairingGain | None = None


def has_spread(values: Sequence[float]) -> bool:
    """True when `values` give a usable spread estimate: at least two finite values that are
    not all equal. Equal means within EQUAL_TOL (relative above 1): 0.804 - 0.8 and
    0.704 - 0.7 differ in the last bits of a float, not in the number of test images."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or not np.all(np.isfinite(x)):
        return False
    return bool(np.ptp(x) > EQUAL_TOL * max(1.0, float(np.max(np.abs(x)))))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student t interval of the mean; (-inf, inf) when there is no spread estimate
    (`has_spread` is False): a zero-width interval would claim certainty from two equal
    values."""
    x = np.asarray(values, dtype=float)
    if not has_spread(x):
        return NO_INTERVAL
    n = len(x)
    half = st.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return (float(x.mean() - half), float(x.mean() + half))


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                       resamples: int = 10_000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap of the mean (Efron & Tibshirani 1993; seeded, so reports are
    reproducible). None when there is no spread: resampling equal values only returns them."""
    x = np.asarray(values, dtype=float)
    if not has_spread(x):
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return (float(lo), float(hi))


def wilcoxon_p(values: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value (scipy; exact permutation distribution for small
    n, ties included; zeros dropped). All differences zero: 1.0 (no evidence of any
    difference)."""
    x = np.asarray(values, dtype=float)
    if not np.any(x != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(st.wilcoxon(x).pvalue)


def supported_mask(expect: Expect | str, mean, lo, hi, rope: float):
    """Where the verdict is "supported" (scalars or numpy arrays of equal shape)."""
    expect = Expect(expect)
    if expect is Expect.GREATER:
        return (lo > 0) & (mean > rope)
    if expect is Expect.LESS:
        return (hi < 0) & (mean < -rope)
    return (lo > -rope) & (hi < rope)


def refuted_mask(expect: Expect | str, mean, lo, hi, rope: float):
    """Where the verdict is "refuted" (scalars or numpy arrays of equal shape)."""
    expect = Expect(expect)
    if expect is Expect.GREATER:
        return hi < rope
    if expect is Expect.LESS:
        return lo > -rope
    return (lo >= rope) | (hi <= -rope)


def decide(expect: Expect | str, mean: float, ci: tuple[float, float], rope: float) -> Outcome:
    """The verdict rules of the module docstring. Raises ValueError for an unknown
    expectation. A NaN mean or interval end decides nothing (inconclusive)."""
    lo, hi = ci
    if any(math.isnan(v) for v in (mean, lo, hi)):
        Expect(expect)
        return Outcome.INCONCLUSIVE
    if supported_mask(expect, mean, lo, hi, rope):
        return Outcome.SUPPORTED
    if refuted_mask(expect, mean, lo, hi, rope):
        return Outcome.REFUTED
    return Outcome.INCONCLUSIVE


def _p_above(mean: float, se: float, df: float, threshold: float) -> float:
    """2 x P(T >= t) for H0: d <= threshold (the two-sided-interval scale)."""
    return min(1.0, 2 * float(st.t.sf((mean - threshold) / se, df)))


def _p_below(mean: float, se: float, df: float, threshold: float) -> float:
    """2 x P(T <= t) for H0: d >= threshold."""
    return min(1.0, 2 * float(st.t.cdf((mean - threshold) / se, df)))


def verdict_p_values(expect: Expect | str, mean: float, se: float, df: float,
                     rope: float) -> tuple[float, float]:
    """(p for "supported", p for "refuted"), each below 1 - CONFIDENCE exactly when the
    t-interval with this mean, se and df gives that verdict's interval condition (see the
    module docstring). NaN when se is not a positive finite number."""
    if not (math.isfinite(se) and se > 0 and math.isfinite(mean)):
        return (math.nan, math.nan)
    expect = Expect(expect)
    if expect is Expect.GREATER:
        return (_p_above(mean, se, df, 0.0), _p_below(mean, se, df, rope))
    if expect is Expect.LESS:
        return (_p_below(mean, se, df, 0.0), _p_above(mean, se, df, -rope))
    support = max(_p_above(mean, se, df, -rope), _p_below(mean, se, df, rope))
    refute = min(_p_above(mean, se, df, rope), _p_below(mean, se, df, -rope))
    return (support, refute)


def verdict_p_value(c: Comparison) -> float:
    """The p-value the comparison's verdict rests on: the "supported" test's when supported,
    the "refuted" test's when refuted, the smaller of the two otherwise; NaN without a spread
    estimate or for NO_VERDICT."""
    if c.verdict is Outcome.NO_VERDICT:
        return math.nan
    support, refute = verdict_p_values(c.expect, c.mean, c.se, c.df, c.rope)
    if c.verdict is Outcome.SUPPORTED:
        return support
    if c.verdict is Outcome.REFUTED:
        return refute
    return min(support, refute)


def seeds_to_decide(expect: Expect | str, mean: float, sd: float, rope: float,
                    n_now: int) -> int | None:
    """Smallest n whose t-interval (same mean and sd) would give a verdict; None if none up to
    MAX_SEEDS_ESTIMATE would (e.g. a mean sitting exactly on the rope), and None when the
    spread is unknown or zero (sd NaN or 0: no basis for an estimate)."""
    if not (math.isfinite(sd) and sd > 0 and math.isfinite(mean)):
        return None
    for n in range(max(n_now + 1, 2), MAX_SEEDS_ESTIMATE + 1):
        half = st.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
        if decide(expect, mean, (mean - half, mean + half), rope) is not Outcome.INCONCLUSIVE:
            return n
    return None


def pairing_gain(a: Sequence[float], b: Sequence[float]) -> PairingGain:
    """Correlation of the arms over seeds and the variance the pairing removed (see
    PairingGain). `a` and `b` are the two arms' values at the same seeds, in seed order."""
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    n = len(xa)
    nan = PairingGain(n, math.nan, math.nan, math.nan, math.nan, math.nan)
    if n < PAIRING_MIN_N or len(xb) != n:
        return nan
    va, vb = float(xa.var(ddof=1)), float(xb.var(ddof=1))
    vd = float((xa - xb).var(ddof=1))
    corr = float(np.corrcoef(xa, xb)[0, 1]) if va > 0 and vb > 0 else math.nan
    if not has_spread(xa - xb):
        return PairingGain(n, corr, vd, va + vb, math.nan, math.nan)
    eff = (va + vb) / vd
    return PairingGain(n, corr, vd, va + vb, eff, n * (eff - 1))


def compare(a: Mapping[int, float], b: Mapping[int, float], expect: Expect | str,
            rope: float) -> Comparison:
    """Compare metric values by seed ({seed: value}, metric units).

    Non-finite values are left out with their seed. Paired on the shared seeds when there are
    at least two (seeds on one side only are left out, with a note) or when both sides have the
    same seeds; Welch's unpaired test otherwise. Raises ValueError for an unknown expectation.
    """
    expect = Expect(expect)
    notes = []
    bad = sorted({s for s, v in {**a, **b}.items()
                  if not math.isfinite(a.get(s, 0.0)) or not math.isfinite(b.get(s, 0.0))})
    if bad:
        notes.append(f"non-finite metric left out at seed(s) {_seeds(bad)}")
        a = {s: v for s, v in a.items() if math.isfinite(v)}
        b = {s: v for s, v in b.items() if math.isfinite(v)}
    shared = sorted(set(a) & set(b))
    if set(a) == set(b) or len(shared) >= 2:
        only = sorted(set(a) ^ set(b))
        if only:
            notes.append(f"seed(s) {_seeds(only)} ran on one side only and are left out")
        c = _paired([a[s] for s in shared], [b[s] for s in shared], expect, rope)
    else:
        c = _welch([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], expect, rope)
    if notes:
        c = _with_note(c, "; ".join(notes))
    return c


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _with_note(c: Comparison, note: str) -> Comparison:
    from dataclasses import replace

    return replace(c, note="; ".join(x for x in (c.note, note) if x))


def _paired(va: list[float], vb: list[float], expect: Expect, rope: float) -> Comparison:
    d = [x - y for x, y in zip(va, vb)]
    n = len(d)
    if n == 0:
        return Comparison(expect, rope, 0, math.nan, math.nan, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, note="no seed has both sides")
    x = np.asarray(d, dtype=float)
    mean = float(x.mean())
    if n < 2:
        return Comparison(expect, rope, n, mean, math.nan, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE,
                          note="too few seeds: one paired difference has no spread",
                          differences=list(d))
    sd = float(x.std(ddof=1))
    p_w = wilcoxon_p(x) if n >= WILCOXON_MIN_N else None
    gain = pairing_gain(va, vb)
    if not has_spread(x):
        return Comparison(expect, rope, n, mean, 0.0, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, True, None, p_w, None, None,
                          f"no spread: all {n} paired differences are equal, so the spread "
                          "over seeds cannot be estimated", list(d), pairing=gain)
    se = sd / math.sqrt(n)
    ci = t_interval(x)
    verdict = decide(expect, mean, ci, rope)
    p_t = float(st.ttest_1samp(x, 0.0).pvalue)
    boot = bootstrap_interval(x) if n >= BOOTSTRAP_MIN_N else None
    needed = (seeds_to_decide(expect, mean, sd, rope, n)
              if verdict is Outcome.INCONCLUSIVE else None)
    return Comparison(expect, rope, n, mean, sd, ci, p_t, verdict, True, boot, p_w, mean / sd,
                      needed, "", list(d), se, float(n - 1), gain)


def _welch(a: list[float], b: list[float], expect: Expect, rope: float) -> Comparison:
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    mean = float(xa.mean() - xb.mean()) if len(xa) and len(xb) else math.nan
    note = "unpaired: the sides do not share their seeds, so Welch's t-test is used"
    n = min(len(xa), len(xb))
    if len(xa) < 2 or len(xb) < 2:
        return Comparison(expect, rope, n, mean, math.nan, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, paired=False,
                          note=note + "; too few runs on one side")
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    pooled = math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2)
    if va + vb == 0:
        return Comparison(expect, rope, n, mean, 0.0, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, paired=False,
                          note=note + "; no spread: every run on each side has the same value")
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    half = st.t.ppf(0.5 + CONFIDENCE / 2, df) * se
    ci = (mean - half, mean + half)
    p = float(st.ttest_ind(xa, xb, equal_var=False).pvalue)
    return Comparison(expect, rope, n, mean, pooled, ci, p, decide(expect, mean, ci, rope),
                      paired=False, effect_dz=mean / pooled, note=note, se=se, df=float(df))


@dataclass(frozen=True)
class Effect:
    """A main effect or interaction of a 2^k design: mean over seeds of the per-seed contrast.
    ci is (-inf, inf) and p_t NaN when the contrasts have no spread (fewer than two seeds, or
    all equal)."""

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
    product of its factors' signs. Only seeds present with a finite value in every cell are
    used. Raises ValueError unless every factor has exactly two levels.
    """
    keys = list(factors)
    if any(len(levels) != 2 for levels in factors.values()):
        raise ValueError("factorial effects need exactly two levels per factor")
    cells = list(itertools.product(*[[(k, lv) for lv in factors[k]] for k in keys]))
    finite = [{s for s, v in values.get(c, {}).items() if math.isfinite(v)} for c in cells]
    seeds = sorted(set.intersection(*finite)) if finite else []
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
            p = float(st.ttest_1samp(x, 0.0).pvalue) if has_spread(x) else math.nan
            effects.append(Effect(name, len(x), float(x.mean()) if len(x) else math.nan,
                                  t_interval(x), p))
    return effects
