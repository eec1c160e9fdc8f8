"""Paired statistics over seeds: what the data show about a - b, and how sure we are.

For a hypothesis on a metric, the seeds both sides share give paired differences
d_s = metric(a, s) - metric(b, s). We report n, the mean difference, a 95% t-interval, the
paired t-test's p-value, Cohen's d_z = mean / sd, and beside the t (which assumes normal
differences) an exact sign-flip permutation check (which assumes only differences symmetric
about their mean), the sample skewness and the seed furthest out.

**The verdicts** (`Outcome`) say what the interval shows, with the region of practical
equivalence (rope) r; each decisive one is a one-sided t-test at 2.5% (an end of the 95%
interval beyond a threshold), so under normal differences each is wrong at most 2.5% of
the time when its statement is false:
- *a > b by more than the rope*: the interval lies above r;
- *no difference worth having*: for `a > b` the interval lies below r, for `a < b` above
  -r, for `a == b` inside (-r, r) (Schuirmann's TOST, 2.5% per side);
- *a > b, by less than the rope or an unknown amount*: the interval lies above 0 only;
- the mirror images for `a < b` (and, for `a == b`, either direction);
- otherwise *inconclusive*.
Their precedence is that order. One vectorised core (`decide_tests`) applies these rules to
rows of paired differences, for the t-interval (`t_verdicts`), the sign-flip check
(`sign_flip_verdicts`) and the confidence sequence (`analysis.sequential`);
`benchmarks/verdict_simulation.py` measures their error rates with the same functions.

**No spread, no verdict.** With fewer than two paired differences, or differences all equal
(`has_spread`: test accuracies are multiples of 1/num_test, so equal differences happen),
there is no spread estimate: the verdict is inconclusive, the interval (-inf, inf), and p of
t, d_z and "seeds needed" are undefined. We do not floor the spread by the test set's
binomial error: every seed shares the test images, so it is not seed-to-seed spread
(Bouthillier et al. 2021, MLSys). Non-finite metric values are left out with their seed.

**The verdict's own p-value** (`verdict_p_value`) is twice the one-sided p-value of the t-test
the verdict rests on: below 0.05 exactly when that test rejects at 2.5%.
`analysis.multiple` adjusts these for the number of hypotheses (Holm 1979).

When the sides share fewer than two seeds, Welch's unpaired test is used (a single shared
seed is kept on one side only: its two values are not independent), and the result says so.

This module imports neither torch nor MLflow.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
from scipy import stats as st

from cifarnet.spec.metrics import Expect

CONFIDENCE = 0.95
SIDE_LEVEL = (1 - CONFIDENCE) / 2  # each decisive verdict: a one-sided test at 2.5%
PAIRING_MIN_N = 3
MAX_SEEDS_ESTIMATE = 1000
NO_INTERVAL = (-math.inf, math.inf)
EQUAL_TOL = 1e-9
SIGN_FLIP_EXACT_MAX = 12  # exact enumeration up to 2^12 sign patterns, random flips above
SIGN_FLIP_DRAWS = 4095
# the fewest seeds at which an exact sign-flip test can reject at 2.5% one-sided: 2^-n <= 2.5%
SIGN_FLIP_MIN_N = math.ceil(math.log2(1 / SIDE_LEVEL))


class Outcome(StrEnum):
    """A verdict: what the data show about a - b (module docstring). NO_VERDICT: the data
    cannot answer at all (both arms at chance, the metric never logged)."""

    GREATER_BEYOND_ROPE = "a > b by more than the rope"
    LESS_BEYOND_ROPE = "a < b by more than the rope"
    NEGLIGIBLE = "no difference worth having"
    GREATER = "a > b, by less than the rope or an unknown amount"
    LESS = "a < b, by less than the rope or an unknown amount"
    INCONCLUSIVE = "inconclusive"
    NO_VERDICT = "no verdict"

    @property
    def decisive(self) -> bool:
        return self not in (Outcome.INCONCLUSIVE, Outcome.NO_VERDICT)


OUTCOMES = tuple(Outcome)  # the vectorised core returns indices into this tuple
_CODE = {o: i for i, o in enumerate(OUTCOMES)}


@dataclass(frozen=True)
class PairingGain:
    """What pairing the seeds bought for one hypothesis (n >= 3 shared seeds).

    corr: Pearson correlation of the arms over seeds; var_paired = var(a - b), var_unpaired =
    var(a) + var(b) (ddof=1, metric units squared); efficiency = var_unpaired / var_paired, the
    factor of seeds per arm an unpaired design needs for the same standard error, with its 95%
    interval (`pairing_efficiency`). seeds_saved: the seeds per arm the pairing saved at
    least, n (low - 1), only when the interval lies above 1; n (high - 1) < 0 (it cost seeds)
    when it lies below 1; NaN when it includes 1 or is not estimable: from few seeds the
    observed ratio alone is mostly noise."""

    n: int
    corr: float
    var_paired: float
    var_unpaired: float
    efficiency: float
    efficiency_ci: tuple[float, float]
    seeds_saved: float


@dataclass(frozen=True)
class SkewCheck:
    """Beside the t, which assumes normal differences: their sample skewness (adjusted
    Fisher-Pearson, NaN under 3 seeds or without spread), the seed furthest from their mean
    and its distance in sds, the exact two-sided sign-flip p-value of a - b = 0, and the
    verdict with sign-flip tests in place of the t (`sign_flip_verdicts`)."""

    skewness: float
    furthest_seed: int | None
    furthest_z: float
    p_sign_flip: float
    verdict_sign_flip: Outcome


@dataclass(frozen=True)
class Comparison:
    """The statistics of one hypothesis and its verdict (values in metric units).

    se and df: of the mean difference (paired t or Welch), NaN without a spread estimate.
    effect_size: d_z = mean / sd of the differences when paired, Cohen's d (pooled sd) when
    unpaired (`effect_name`)."""

    expect: Expect
    rope: float
    n: int
    mean: float
    sd: float
    ci: tuple[float, float]
    p_t: float
    verdict: Outcome
    paired: bool = True
    effect_size: float | None = None
    seeds_needed: int | None = None
    note: str = ""
    differences: list[float] = field(default_factory=list)
    se: float = math.nan
    df: float = math.nan
    pairing: PairingGain | None = None
    check: SkewCheck | None = None

    @property
    def effect_name(self) -> str:
        return "d_z" if self.paired else "d"


Tests = tuple[tuple[int, float], ...]


def rules(expect: Expect | str, rope: float) -> list[tuple[Outcome, Tests]]:
    """The verdicts a claim can reach, in precedence order, each with the one-sided tests it
    needs at 2.5%: (+1, x) rejects d <= x, (-1, x) rejects d >= x. Raises ValueError for an
    unknown expectation."""
    up, down = ((1, rope),), ((-1, -rope),)
    if Expect(expect) is Expect.GREATER:
        return [(Outcome.GREATER_BEYOND_ROPE, up), (Outcome.NEGLIGIBLE, ((-1, rope),)),
                (Outcome.GREATER, ((1, 0.0),))]
    if Expect(expect) is Expect.LESS:
        return [(Outcome.LESS_BEYOND_ROPE, down), (Outcome.NEGLIGIBLE, ((1, -rope),)),
                (Outcome.LESS, ((-1, 0.0),))]
    return [(Outcome.GREATER_BEYOND_ROPE, up), (Outcome.LESS_BEYOND_ROPE, down),
            (Outcome.NEGLIGIBLE, ((1, -rope), (-1, rope))), (Outcome.GREATER, ((1, 0.0),)),
            (Outcome.LESS, ((-1, 0.0),))]


def decide_tests(expect: Expect | str, rejects: Callable[[int, float], np.ndarray],
                 rope: float) -> np.ndarray:
    """The verdict core: codes (indices into OUTCOMES) from one-sided tests, where
    `rejects(side, x)` is a boolean array (see `rules`)."""
    conds, codes = [], []
    for outcome, tests in rules(expect, rope):
        conds.append(np.logical_and.reduce([np.asarray(rejects(s, x)) for s, x in tests]))
        codes.append(_CODE[outcome])
    return np.select(conds, codes, _CODE[Outcome.INCONCLUSIVE])


def interval_verdicts(expect: Expect | str, lo, hi, rope: float) -> np.ndarray:
    """Verdict codes from intervals (arrays lo, hi): an end beyond a threshold rejects it.
    NaN or infinite ends decide nothing."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return decide_tests(expect, lambda s, x: lo > x if s > 0 else hi < x, rope)


def decide(expect: Expect | str, ci: tuple[float, float], rope: float) -> Outcome:
    """The verdict of one interval (`interval_verdicts`)."""
    return OUTCOMES[int(interval_verdicts(expect, ci[0], ci[1], rope))]


def has_spread(values) -> bool | np.ndarray:
    """True where `values` (along the last axis) give a usable spread estimate: at least two
    finite values not all equal. Equal means within EQUAL_TOL (relative above 1): 0.804 - 0.8
    and 0.704 - 0.7 differ in the last bits of a float, not in the number of test images."""
    x = np.asarray(values, dtype=float)
    if x.shape[-1] < 2:
        out = np.zeros(x.shape[:-1], bool)
    else:
        with np.errstate(invalid="ignore"):
            out = np.isfinite(x).all(-1) & (
                np.ptp(x, -1) > EQUAL_TOL * np.maximum(1.0, np.abs(x).max(-1)))
    return bool(out) if out.ndim == 0 else out


def t_intervals(d, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Student t intervals of the mean of each row of `d` (shape (R, n)); (-inf, inf) for a
    row without a spread estimate: a zero-width interval would claim certainty."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    n, spread = d.shape[1], has_spread(d)
    if n < 2 or not spread.any():
        return np.full(len(d), -math.inf), np.full(len(d), math.inf)
    half = st.t.ppf(0.5 + confidence / 2, n - 1) * d.std(1, ddof=1) / math.sqrt(n)
    m = d.mean(1)
    return np.where(spread, m - half, -math.inf), np.where(spread, m + half, math.inf)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t interval of one sample (`t_intervals`)."""
    lo, hi = t_intervals(np.asarray(values, dtype=float).reshape(1, -1), confidence)
    return (float(lo[0]), float(hi[0]))


def t_verdicts(expect: Expect | str, d, rope: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The verdicts of rows of paired differences `d` (shape (R, n)) by the 95% t-interval:
    (codes, lo, hi). `compare` and the simulation both call this."""
    lo, hi = t_intervals(d)
    return interval_verdicts(expect, lo, hi, rope), lo, hi


def _sign_patterns(n: int) -> np.ndarray:
    """All 2^n sign patterns (n <= SIGN_FLIP_EXACT_MAX) or the identity and SIGN_FLIP_DRAWS
    random ones (seeded by n); row 0 is all +1 (the observed sample)."""
    if n <= SIGN_FLIP_EXACT_MAX:
        return 1.0 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    flips = np.random.default_rng(n).choice([-1.0, 1.0], (SIGN_FLIP_DRAWS, n))
    return np.vstack([np.ones(n), flips])


def sign_flip_verdicts(expect: Expect | str, d, rope: float) -> np.ndarray:
    """Verdict codes with exact sign-flip tests in place of the t: d <= x is rejected when at
    most 2.5% of the sign patterns of d - x give a sum at least the observed one (Fisher
    1935; exact up to SIGN_FLIP_EXACT_MAX seeds, a valid Monte Carlo p above). Assumes only
    differences symmetric about their mean; cannot reject below SIGN_FLIP_MIN_N seeds. Rows
    without a spread are inconclusive, as for the t."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    n, signs = d.shape[1], _sign_patterns(d.shape[1])
    total, out = signs.sum(1), np.empty(len(d), int)
    step = max(1, 2 ** 21 // len(signs))
    for i in range(0, len(d), step):
        x = d[i:i + step]
        flipped, obs = x @ signs.T, x.sum(1, keepdims=True)
        scale = EQUAL_TOL * np.abs(x).sum(1, keepdims=True)

        def rejects(side: int, t: float) -> np.ndarray:
            excess = side * (flipped - t * total - (obs - t * n))
            return np.mean(excess >= -(scale + EQUAL_TOL * n * abs(t)), 1) <= SIDE_LEVEL
        codes = decide_tests(expect, rejects, rope)
        out[i:i + step] = np.where(has_spread(x), codes, _CODE[Outcome.INCONCLUSIVE])
    return out


def sign_flip_p(values: Sequence[float]) -> float:
    """Two-sided exact sign-flip p-value of mean 0: the share of sign patterns whose |sum| is
    at least the observed one (6 of 6 differences positive: 2 / 64)."""
    x = np.asarray(values, dtype=float)
    sums = _sign_patterns(len(x)) @ x
    return float(np.mean(np.abs(sums) >= abs(x.sum()) * (1 - EQUAL_TOL)))


def skew_check(seeds: Sequence[int], d: np.ndarray, expect: Expect, rope: float) -> SkewCheck:
    """The `SkewCheck` of paired differences `d` at `seeds` (n >= 2)."""
    spread = has_spread(d)
    sd = float(d.std(ddof=1))
    z = (d - d.mean()) / sd if spread else np.zeros(len(d))
    far = int(np.argmax(np.abs(z)))
    skew = float(st.skew(d, bias=False)) if spread and len(d) >= 3 else math.nan
    verdict = OUTCOMES[int(sign_flip_verdicts(expect, d, rope)[0])]
    return SkewCheck(skew, int(seeds[far]) if spread else None,
                     float(z[far]) if spread else math.nan, sign_flip_p(d), verdict)


def sign_flip_agreement(c: Comparison) -> str:
    """Whether the sign-flip check agrees with the t's verdict, in words ("-" without it)."""
    if c.check is None or c.verdict is Outcome.NO_VERDICT:
        return "-"
    if c.n < SIGN_FLIP_MIN_N:
        return f"cannot decide below {SIGN_FLIP_MIN_N} seeds"
    if c.check.verdict_sign_flip is c.verdict:
        return "agrees"
    return f"disagrees: {c.check.verdict_sign_flip}"


def verdict_p_values(expect: Expect | str, mean: float, se: float, df: float,
                     rope: float) -> dict[Outcome, float]:
    """For each decisive verdict the claim can reach (`rules`), twice the one-sided t-test
    p-value it rests on (the largest of its tests'): below 0.05 exactly when the t-interval
    with this mean, se and df gives its condition. {} when se is not positive and finite."""
    if not (math.isfinite(se) and se > 0 and math.isfinite(mean)):
        return {}

    def p(side: int, x: float) -> float:
        t = (mean - x) / se
        return min(1.0, 2 * float(st.t.sf(t, df) if side > 0 else st.t.cdf(t, df)))
    return {o: max(p(s, x) for s, x in tests) for o, tests in rules(expect, rope)}


def verdict_p_value(c: Comparison) -> float:
    """The p-value the comparison's verdict rests on; the smallest of the decisive verdicts'
    when inconclusive; NaN without a spread estimate or for NO_VERDICT."""
    ps = verdict_p_values(c.expect, c.mean, c.se, c.df, c.rope)
    if c.verdict is Outcome.NO_VERDICT or not ps:
        return math.nan
    return ps.get(c.verdict, min(ps.values()))


def seeds_to_decide(expect: Expect | str, mean: float, sd: float, rope: float,
                    n_now: int) -> int | None:
    """Smallest n whose t-interval (same mean and sd) would not be inconclusive; None if none
    up to MAX_SEEDS_ESTIMATE would (a mean exactly on the rope), or without a spread."""
    if not (math.isfinite(sd) and sd > 0 and math.isfinite(mean)):
        return None
    ns = np.arange(max(n_now + 1, 2), MAX_SEEDS_ESTIMATE + 1)
    half = st.t.ppf(0.5 + CONFIDENCE / 2, ns - 1) * sd / np.sqrt(ns)
    hit = np.flatnonzero(interval_verdicts(expect, mean - half, mean + half, rope)
                         != _CODE[Outcome.INCONCLUSIVE])
    return int(ns[hit[0]]) if len(hit) else None


def pairing_efficiency(a, b, confidence: float = CONFIDENCE):
    """Rows of two arms (shape (R, n)): (efficiency, low, high). With s = a + b and d = a - b,
    efficiency = (var(a) + var(b)) / var(d) = (var(s) / var(d) + 1) / 2; for bivariate normal
    arms of equal variance s and d are independent, so var(s) / var(d) over its true value is
    F(n - 1, n - 1) (the Pitman-Morgan construction, 1939). NaN where not estimable (no spread
    in a - b or in a + b)."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    n = a.shape[1]
    vd = (a - b).var(1, ddof=1)
    ok = has_spread(a - b) & has_spread(a + b)  # a zero-width interval would claim certainty
    ratio = np.where(ok, (a + b).var(1, ddof=1) / np.where(ok, vd, 1.0), math.nan)
    f_hi, f_lo = st.f.ppf([0.5 + confidence / 2, 0.5 - confidence / 2], n - 1, n - 1)
    return (ratio + 1) / 2, (ratio / f_hi + 1) / 2, (ratio / f_lo + 1) / 2


def pairing_gain(a: Sequence[float], b: Sequence[float]) -> PairingGain:
    """Correlation of the arms over seeds and what the pairing bought (`PairingGain`). `a`
    and `b` are the two arms' values at the same seeds, in seed order."""
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    n, nan = len(xa), math.nan
    if n < PAIRING_MIN_N or len(xb) != n:
        return PairingGain(n, nan, nan, nan, nan, (nan, nan), nan)
    va, vb = float(xa.var(ddof=1)), float(xb.var(ddof=1))
    corr = float(np.corrcoef(xa, xb)[0, 1]) if has_spread(xa) and has_spread(xb) else nan
    eff, lo, hi = (float(v[0]) for v in pairing_efficiency(xa, xb))
    saved = n * (lo - 1) if lo > 1 else n * (hi - 1) if hi < 1 else nan
    return PairingGain(n, corr, float((xa - xb).var(ddof=1)), va + vb, eff, (lo, hi), saved)


def compare(a: Mapping[int, float], b: Mapping[int, float], expect: Expect | str,
            rope: float) -> Comparison:
    """Compare metric values by seed ({seed: value}, metric units).

    Non-finite values are left out with their seed. Paired on the shared seeds when there are
    at least two (seeds on one side only are left out, with a note) or when both sides have the
    same seeds; Welch's unpaired test otherwise. Raises ValueError for an unknown expectation.
    """
    expect = Expect(expect)
    if not (math.isfinite(rope) and rope >= 0):  # the rules assume one; specs check it too
        raise ValueError(f"rope: expected a finite number >= 0, got {rope!r}")
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
        c = _paired(shared, [a[s] for s in shared], [b[s] for s in shared], expect, rope)
    else:
        c = _welch(a, b, expect, rope)
    if notes:
        c = replace(c, note="; ".join(x for x in (c.note, *notes) if x))
    return c


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _paired(seeds: list[int], va: list[float], vb: list[float], expect: Expect,
            rope: float) -> Comparison:
    x = np.asarray(va, dtype=float) - np.asarray(vb, dtype=float)
    n, d = len(x), [float(v) for v in np.asarray(va, float) - np.asarray(vb, float)]
    if n == 0:
        return Comparison(expect, rope, 0, math.nan, math.nan, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, note="no seed has both sides")
    mean = float(x.mean())
    if n < 2:
        return Comparison(expect, rope, n, mean, math.nan, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, differences=d,
                          note="too few seeds: one paired difference has no spread")
    sd, gain, check = float(x.std(ddof=1)), pairing_gain(va, vb), skew_check(seeds, x, expect,
                                                                            rope)
    if not has_spread(x):
        return Comparison(expect, rope, n, mean, 0.0, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, differences=d, pairing=gain, check=check,
                          note=f"no spread: all {n} paired differences are equal (within "
                               f"{EQUAL_TOL:g}, relative above 1), so the spread over seeds "
                               "cannot be estimated")
    codes, lo, hi = t_verdicts(expect, x, rope)
    verdict = OUTCOMES[int(codes[0])]
    needed = (seeds_to_decide(expect, mean, sd, rope, n)
              if verdict is Outcome.INCONCLUSIVE else None)
    return Comparison(expect, rope, n, mean, sd, (float(lo[0]), float(hi[0])),
                      float(st.ttest_1samp(x, 0.0).pvalue), verdict, True, mean / sd, needed,
                      "", d, sd / math.sqrt(n), float(n - 1), gain, check)


def _welch(a: Mapping[int, float], b: Mapping[int, float], expect: Expect,
           rope: float) -> Comparison:
    note = "unpaired: the sides do not share their seeds, so Welch's t-test is used"
    for s in set(a) & set(b):  # one shared seed: its two values are not independent
        a, b = (a, {k: v for k, v in b.items() if k != s}) if len(b) >= len(a) else (
            {k: v for k, v in a.items() if k != s}, b)
        note += f"; seed {s}, the only one both sides ran, is kept on one side only"
    xa, xb = np.asarray([a[s] for s in sorted(a)]), np.asarray([b[s] for s in sorted(b)])
    mean = float(xa.mean() - xb.mean()) if len(xa) and len(xb) else math.nan
    n = min(len(xa), len(xb))
    if len(xa) < 2 or len(xb) < 2:
        return Comparison(expect, rope, n, mean, math.nan, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, paired=False,
                          note=note + "; too few runs on one side")
    if not (has_spread(xa) or has_spread(xb)):
        return Comparison(expect, rope, n, mean, 0.0, NO_INTERVAL, math.nan,
                          Outcome.INCONCLUSIVE, paired=False,
                          note=note + "; no spread: every run on each side has the same value")
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    pooled = math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    half = st.t.ppf(0.5 + CONFIDENCE / 2, df) * se
    ci = (float(mean - half), float(mean + half))
    p = float(st.ttest_ind(xa, xb, equal_var=False).pvalue)
    return Comparison(expect, rope, n, mean, pooled, ci, p, decide(expect, ci, rope),
                      paired=False, effect_size=mean / pooled, note=note, se=se, df=float(df))


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
