"""Statistics against hand-computed cases, verdict rules at their boundaries, factorial effects."""

import itertools
import math

import numpy as np
import pytest

from cifarnet.analysis.stats import (
    NO_INTERVAL,
    OUTCOMES,
    SIGN_FLIP_MIN_N,
    Outcome,
    compare,
    decide,
    factorial_effects,
    has_spread,
    pairing_gain,
    seeds_to_decide,
    sign_flip_p,
    sign_flip_verdicts,
    t_interval,
    t_verdicts,
    verdict_p_values,
)

GB, LB, NEG = Outcome.GREATER_BEYOND_ROPE, Outcome.LESS_BEYOND_ROPE, Outcome.NEGLIGIBLE
INC = Outcome.INCONCLUSIVE


def test_known_t_interval_and_p_value() -> None:
    # d = 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3)
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 2.484138, abs=1e-5)
    assert hi == pytest.approx(2 + 2.484138, abs=1e-5)
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0}, "a > b", 0.0)
    assert c.n == 3 and c.mean == 2.0 and c.sd == 1.0
    assert c.p_t == pytest.approx(0.074180, abs=1e-5)  # t = 3.4641, df = 2
    assert c.effect_size == pytest.approx(2.0) and c.effect_name == "d_z"
    assert c.verdict == "inconclusive"  # the interval crosses 0
    assert c.check.p_sign_flip == pytest.approx(2 / 8)  # +1 +2 +3: 1 of 8 patterns per side


def test_clear_improvement_beyond_the_rope_with_all_statistics() -> None:
    a = {s: 0.85 + 0.01 + 0.001 * (s % 3) for s in range(6)}
    b = {s: 0.85 + 0.0005 * (s % 2) for s in range(6)}
    c = compare(a, b, "a > b", 0.002)
    assert c.verdict == GB and c.paired
    assert c.ci[0] > 0.002
    assert c.check.p_sign_flip == pytest.approx(0.03125)  # all six differences positive
    assert c.check.verdict_sign_flip == GB  # 1 of 64 sign patterns per side: 1.6% < 2.5%
    assert c.p_t < 1e-4


def test_equivalence_case() -> None:
    d = [0.001, -0.001, 0.0005, -0.0005, 0.0]
    a = {s: 0.8 + x for s, x in enumerate(d)}
    b = {s: 0.8 for s in range(5)}
    assert compare(a, b, "a == b", 0.01).verdict == NEG
    assert compare(a, b, "a > b", 0.01).verdict == NEG


def test_reversed_effect_refutes() -> None:
    a = {0: 0.80, 1: 0.79, 2: 0.805, 3: 0.798}
    b = {0: 0.82, 1: 0.82, 2: 0.83, 3: 0.82}
    c = compare(a, b, "a > b", 0.002)
    assert c.mean < 0 and c.verdict == NEG  # a > b: nothing worth having
    assert compare(a, b, "a < b", 0.002).verdict == LB


def test_too_few_seeds_is_inconclusive() -> None:
    c = compare({0: 0.9}, {0: 0.8}, "a > b", 0.002)
    assert c.verdict == "inconclusive" and c.n == 1 and "too few" in c.note
    assert compare({}, {}, "a > b", 0.0).verdict == "inconclusive"


def test_unpaired_falls_back_to_welch() -> None:
    c = compare({0: 0.90, 1: 0.91, 2: 0.905}, {3: 0.80, 4: 0.81, 5: 0.805}, "a > b", 0.002)
    assert not c.paired and "Welch" in c.note
    assert c.verdict == GB and c.effect_name == "d"  # Cohen's d, not d_z


def test_one_shared_seed_is_kept_on_one_side_only() -> None:
    # seed 0 on both sides: its two values are not independent, so Welch keeps it on one
    c = compare({0: 0.90, 1: 0.91, 2: 0.905}, {0: 0.80, 4: 0.81, 5: 0.805}, "a > b", 0.002)
    assert not c.paired and "seed 0" in c.note and "one side only" in c.note
    plain = compare({0: 0.90, 1: 0.91, 2: 0.905}, {4: 0.81, 5: 0.805}, "a > b", 0.002)
    assert (c.mean, c.ci) == (plain.mean, plain.ci)


@pytest.mark.parametrize(("expect", "ci", "rope", "verdict"), [
    ("a > b", (0.0021, 0.006), 0.002, GB),
    ("a > b", (0.002, 0.006), 0.002, Outcome.GREATER),      # above 0, not above the rope
    ("a > b", (0.0001, 0.003), 0.002, Outcome.GREATER),
    ("a > b", (0.0, 0.006), 0.002, INC),                    # the lower end must be > 0
    ("a > b", (0.0001, 0.0019), 0.002, NEG),                # below the rope wins over > 0
    ("a > b", (-0.001, 0.0019), 0.002, NEG),                # upper end below the rope
    ("a > b", (-0.001, 0.002), 0.002, INC),                 # ... strictly
    ("a < b", (-0.006, -0.0021), 0.002, LB),
    ("a < b", (-0.006, -0.0001), 0.002, Outcome.LESS),
    ("a < b", (-0.0019, 0.001), 0.002, NEG),
    ("a == b", (-0.0019, 0.0019), 0.002, NEG),
    ("a == b", (-0.002, 0.0019), 0.002, INC),                # inside the open interval
    ("a == b", (0.0021, 0.008), 0.002, GB),                 # wholly outside
    ("a == b", (-0.008, -0.0021), 0.002, LB),
    ("a == b", (0.0019, 0.004), 0.002, Outcome.GREATER),
    ("a == b", (-0.003, 0.001), 0.002, INC),
])
def test_verdict_boundaries(expect, ci, rope, verdict) -> None:
    assert decide(expect, ci, rope) == verdict


def test_seeds_needed_estimate_decides() -> None:
    n = seeds_to_decide("a > b", 0.01, 0.01, 0.002, 3)
    assert n is not None and n > 3
    from scipy import stats as st
    t_prev = st.t.ppf(0.975, n - 2) * 0.01 / math.sqrt(n - 1)
    assert decide("a > b", (0.01 - t_prev, 0.01 + t_prev), 0.002) == "inconclusive"
    t_n = st.t.ppf(0.975, n - 1) * 0.01 / math.sqrt(n)
    assert decide("a > b", (0.01 - t_n, 0.01 + t_n), 0.002) == Outcome.GREATER
    c = compare({0: 0.81, 1: 0.80, 2: 0.83}, {0: 0.80, 1: 0.80, 2: 0.80}, "a > b", 0.002)
    assert c.verdict == "inconclusive" and c.seeds_needed and c.seeds_needed > 3


def test_factorial_effects_recover_a_known_interaction() -> None:
    # y = 0.80 + 0.01 a + 0.005 b + 0.004 ab (a, b = +-1) + seed offset + tiny noise, so the
    # effects (mean at + minus mean at -) are 0.02, 0.01 and 0.008.
    factors = {"model.dilation": [2, 1], "model.residual_add": [True, False]}
    noise = [0.0003, -0.0002, 0.0001, -0.0001, 0.0002]
    values = {}
    for a_level, a in ((2, 1), (1, -1)):
        for b_level, b in ((True, 1), (False, -1)):
            cell = (("model.dilation", a_level), ("model.residual_add", b_level))
            values[cell] = {s: 0.80 + 0.01 * a + 0.005 * b + 0.004 * a * b + 0.01 * s
                            + noise[(s + a + 2 * b) % 5] for s in range(5)}
    effects = {e.name: e for e in factorial_effects(values, factors)}
    assert set(effects) == {"model.dilation", "model.residual_add",
                            "model.dilation x model.residual_add"}
    assert effects["model.dilation"].mean == pytest.approx(0.02, abs=4e-4)
    assert effects["model.residual_add"].mean == pytest.approx(0.01, abs=4e-4)
    inter = effects["model.dilation x model.residual_add"]
    assert inter.mean == pytest.approx(0.008, abs=4e-4)
    assert inter.ci[0] > 0 and inter.n == 5 and inter.p_t < 0.001


def test_factorial_effects_need_two_levels() -> None:
    with pytest.raises(ValueError):
        factorial_effects({}, {"model.dilation": [1, 2, 3]})


# --- No spread, no verdict (issue 17, section 5): every member of the kind -------------------

def test_identical_differences_decide_nothing() -> None:
    # 0.804 - 0.8 and 0.704 - 0.7 are both 0.004 (40 of 10,000 images) but differ in the last
    # float bits: no spread over seeds, so no interval, no p, no verdict beyond inconclusive.
    c = compare({0: 0.804, 1: 0.704}, {0: 0.8, 1: 0.7}, "a > b", 0.002)
    assert c.n == 2 and c.mean == pytest.approx(0.004)
    assert c.verdict == Outcome.INCONCLUSIVE
    assert c.ci == NO_INTERVAL and math.isnan(c.p_t) and math.isnan(c.se)
    assert c.sd == 0.0 and c.effect_size is None and c.seeds_needed is None
    assert "no spread" in c.note
    for expect in ("a < b", "a == b"):
        assert compare({0: 0.804, 1: 0.704}, {0: 0.8, 1: 0.7}, expect, 0.01).verdict == (
            "inconclusive")


def test_varying_differences_keep_the_t_interval() -> None:
    # d = 0.004, 0.006: mean 0.005, sd 0.0014142, t(0.975, 1) = 12.7062, half = 0.0127062;
    # t = 5 with df 1: p = 1 - 2 atan(5) / pi = 0.125666
    c = compare({0: 0.804, 1: 0.706}, {0: 0.8, 1: 0.7}, "a > b", 0.002)
    assert c.ci[0] == pytest.approx(0.005 - 0.0127062, abs=1e-6)
    assert c.ci[1] == pytest.approx(0.005 + 0.0127062, abs=1e-6)
    assert c.p_t == pytest.approx(1 - 2 * math.atan(5) / math.pi, abs=1e-9)
    assert c.verdict == "inconclusive" and c.seeds_needed is not None


def test_one_and_zero_seeds_have_no_interval() -> None:
    one = compare({0: 0.9}, {0: 0.8}, "a > b", 0.002)
    assert one.ci == NO_INTERVAL and math.isnan(one.p_t) and math.isnan(one.sd)
    assert one.effect_size is None and one.seeds_needed is None and one.mean == pytest.approx(0.1)
    none = compare({}, {}, "a == b", 0.01)
    assert none.n == 0 and math.isnan(none.mean) and none.ci == NO_INTERVAL


def test_t_interval_without_spread() -> None:
    assert t_interval([0.004, 0.004]) == NO_INTERVAL
    assert t_interval([0.004]) == NO_INTERVAL and t_interval([]) == NO_INTERVAL
    assert t_interval([0.004, math.nan, 0.005]) == NO_INTERVAL
    assert not has_spread([0.804 - 0.8, 0.704 - 0.7]) and has_spread([0.004, 0.0041])


def test_no_spread_with_many_seeds_is_still_inconclusive() -> None:
    a = {s: 0.8 + 0.004 for s in range(6)}
    b = {s: 0.8 for s in range(6)}
    c = compare(a, b, "a > b", 0.0)
    assert c.verdict == "inconclusive" and math.isnan(c.p_t)
    # the sign-flip distribution is still defined: 6 of 6 positive, p = 2 / 64; its verdict
    # needs a spread like the t's
    assert c.check.p_sign_flip == pytest.approx(2 / 64) and c.check.verdict_sign_flip == INC
    assert math.isnan(c.check.skewness) and c.check.furthest_seed is None


def test_sign_flip_edge_values_and_exact_distribution() -> None:
    assert sign_flip_p([0.0] * 6) == 1.0  # no non-zero difference: no evidence at all
    d = [0.001, 0.002, 0.002, 0.004, 0.005, -0.006]
    sums = [sum(s * x for s, x in zip(signs, d))
            for signs in itertools.product([1, -1], repeat=6)]
    expected = sum(abs(t) >= abs(sum(d)) - 1e-12 for t in sums) / 64
    assert sign_flip_p(d) == pytest.approx(expected)
    # below SIGN_FLIP_MIN_N = 6 seeds one pattern per side is over 2.5%: never decisive
    assert SIGN_FLIP_MIN_N == 6
    huge = np.array([[1.0, 1.1, 1.2, 1.3, 1.4]])
    assert OUTCOMES[int(sign_flip_verdicts("a > b", huge, 0.0)[0])] == INC
    assert OUTCOMES[int(sign_flip_verdicts("a > b", np.c_[huge, [[1.5]]], 0.0)[0])] == GB


def test_skew_diagnostics_name_the_seed_furthest_out() -> None:
    # five seeds near +0.004 and one bad seed at -0.02: skewed left, seed 7 furthest out
    a = {3: 0.804, 4: 0.805, 5: 0.803, 6: 0.8045, 7: 0.78, 8: 0.8035}
    c = compare(a, {s: 0.8 for s in a}, "a > b", 0.002)
    assert c.check.furthest_seed == 7 and c.check.furthest_z < -2
    from scipy import stats as st
    d = np.array([a[s] - 0.8 for s in sorted(a)])
    assert c.check.skewness == pytest.approx(st.skew(d, bias=False)) and c.check.skewness < -2


def test_compare_and_the_vectorised_core_agree_on_the_same_data() -> None:
    """`compare` (one hypothesis) and `t_verdicts` / `sign_flip_verdicts` (the simulation's
    rows) give the same verdicts on the same differences, for every claim kind."""
    rng = np.random.default_rng(3)
    for n in (2, 3, 6, 9):
        d = rng.normal(0.002, 0.003, (150, n))
        for expect in ("a > b", "a < b", "a == b"):
            codes, lo, hi = t_verdicts(expect, d, 0.002)
            flips = sign_flip_verdicts(expect, d, 0.002)
            for row, code, flip, low in zip(d, codes, flips, lo):
                c = compare(dict(enumerate(0.8 + row)), dict.fromkeys(range(n), 0.8),
                            expect, 0.002)
                assert c.verdict is OUTCOMES[code] and c.ci[0] == pytest.approx(low)
                assert c.check.verdict_sign_flip is OUTCOMES[flip]


def test_nan_metric_leaves_its_seed_out_and_keeps_the_pairing() -> None:
    a = {0: 0.80, 1: math.nan, 2: 0.82, 3: 0.81}
    b = {0: 0.79, 1: 0.78, 2: 0.80, 3: 0.80}
    c = compare(a, b, "a > b", 0.0)
    assert c.paired and c.n == 3
    assert c.mean == pytest.approx((0.01 + 0.02 + 0.01) / 3)
    assert "seed(s) 1" in c.note and "non-finite" in c.note
    # a missing run (seed 3 only on one side) keeps the other seeds paired
    c2 = compare({0: 0.80, 1: 0.81, 2: 0.82, 3: 0.9}, {0: 0.79, 1: 0.8, 2: 0.80}, "a > b", 0.0)
    assert c2.paired and c2.n == 3 and "seed(s) 3" in c2.note


def test_welch_without_spread_is_inconclusive() -> None:
    c = compare({0: 0.9, 1: 0.9}, {2: 0.8, 3: 0.8}, "a > b", 0.002)
    assert not c.paired and c.verdict == "inconclusive" and c.ci == NO_INTERVAL
    assert math.isnan(c.p_t) and "no spread" in c.note


def test_seeds_needed_without_spread_is_none() -> None:
    assert seeds_to_decide("a > b", 0.004, 0.0, 0.002, 2) is None
    assert seeds_to_decide("a > b", 0.004, math.nan, 0.002, 1) is None
    assert seeds_to_decide("a > b", math.nan, 0.01, 0.002, 2) is None


def test_decide_with_nan_is_inconclusive_and_unknown_expectation_raises() -> None:
    assert decide("a > b", (math.nan, 0.2), 0.0) == "inconclusive"
    assert decide("a == b", (math.nan, 0.001), 0.01) == "inconclusive"
    with pytest.raises(ValueError):
        decide("a >= b", (0.05, 0.2), 0.0)


def test_effects_without_spread_have_no_interval() -> None:
    factors = {"model.dilation": [2, 1], "model.residual_add": [True, False]}
    values = {}
    for a_level, a in ((2, 1), (1, -1)):
        for b_level, b in ((True, 1), (False, -1)):
            cell = (("model.dilation", a_level), ("model.residual_add", b_level))
            values[cell] = {s: 0.80 + 0.01 * a + 0.001 * s for s in range(3)}
    effects = {e.name: e for e in factorial_effects(values, factors)}
    dil = effects["model.dilation"]
    assert dil.mean == pytest.approx(0.02) and dil.ci == NO_INTERVAL and math.isnan(dil.p_t)


# --- the verdict's own p-value ------------------------------------------------------------

def test_verdict_p_values_match_the_interval_rule() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(2, 8))
        d = rng.normal(rng.normal(0, 0.004), 0.003, n)
        rope = float(rng.choice([0.0, 0.002, 0.005]))
        for expect in ("a > b", "a < b", "a == b"):
            mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
            verdict = decide(expect, t_interval(d), rope)
            ps = verdict_p_values(expect, mean, se, n - 1, rope)
            if verdict.decisive:
                assert ps[verdict] < 0.05
            # the first verdict (in precedence) whose p is below 0.05 is the verdict
            first = next((o for o, p in ps.items() if p < 0.05), Outcome.INCONCLUSIVE)
            assert first is verdict


def test_verdict_p_value_hand_checked() -> None:
    # d = 0.02, 0.03, 0.04: t = 0.03 / (0.01 / sqrt 3) = 3 sqrt 3, df 2, where
    # P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2, so p = 1 - sqrt(27 / 29) = 0.0350989
    ps = verdict_p_values("a > b", 0.03, 0.01 / math.sqrt(3), 2, 0.0)
    assert ps[GB] == pytest.approx(1 - math.sqrt(27 / 29), abs=1e-9)
    assert ps[NEG] == pytest.approx(1.0)  # H0 d >= 0 against a positive mean: min(1, 2 x ...)


# --- the pairing's gain (issue 14, section 4) ----------------------------------------------

def test_pairing_gain_hand_checked() -> None:
    # a = .80 .82 .84, b = .79 .80 .83: var(a) = 4e-4, var(b) = 4.3333e-4, d = .01 .02 .01,
    # var(d) = 3.3333e-5; efficiency = 8.3333e-4 / 3.3333e-5 = 25; s = a + b has var
    # 1.63333e-3, so var(s) / var(d) = 49 and the 95% interval is (49 / F_.975(2, 2) + 1) / 2
    # .. (49 / F_.025(2, 2) + 1) / 2 = 1.11 .. 955.5: at least 3 x 0.11 = 0.34 seeds saved
    g = pairing_gain([0.80, 0.82, 0.84], [0.79, 0.80, 0.83])
    assert g.var_paired == pytest.approx(1 / 30_000, rel=1e-9)
    assert g.var_unpaired == pytest.approx(0.0004 + 0.0013 / 3, rel=1e-9)
    assert g.efficiency == pytest.approx(25.0, rel=1e-9)
    assert g.efficiency_ci[0] == pytest.approx((49 / 39 + 1) / 2, rel=1e-9)  # F_.975(2,2) = 39
    assert g.efficiency_ci[1] == pytest.approx((49 * 39 + 1) / 2, rel=1e-9)
    assert g.seeds_saved == pytest.approx(3 * (g.efficiency_ci[0] - 1), rel=1e-9)
    assert g.corr == pytest.approx(4e-4 / math.sqrt(4e-4 * 0.0013 / 3), rel=1e-9)


def test_pairing_gain_from_few_seeds_claims_no_seeds_saved() -> None:
    # 3 seeds with an observed efficiency of 2.7 ("5 seeds saved" by the old rule): its
    # interval includes 1, so nothing is said about seeds saved
    g = pairing_gain([0.80, 0.82, 0.84], [0.81, 0.80, 0.83])
    assert g.efficiency == pytest.approx(19 / 7)
    assert g.efficiency_ci[0] < 1 < g.efficiency_ci[1] and math.isnan(g.seeds_saved)


def test_pairing_gain_not_estimable() -> None:
    two = pairing_gain([0.80, 0.82], [0.79, 0.80])
    assert math.isnan(two.corr) and math.isnan(two.seeds_saved)  # 2 points: corr is +-1
    flat = pairing_gain([0.804, 0.704, 0.904], [0.8, 0.7, 0.9])  # equal differences
    assert math.isnan(flat.efficiency) and math.isnan(flat.seeds_saved)
    assert flat.corr == pytest.approx(1.0)
    c = compare({0: 0.80, 1: 0.82, 2: 0.84}, {0: 0.79, 1: 0.80, 2: 0.83}, "a > b", 0.0)
    assert c.pairing is not None and c.pairing.efficiency == pytest.approx(25.0)


def test_pure_statistics_import_neither_torch_nor_mlflow() -> None:
    import subprocess
    import sys

    code = ("import sys, cifarnet.analysis.stats, cifarnet.analysis.sequential, "
            "cifarnet.analysis.chance, cifarnet.analysis.multiple; "
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("rope", [-0.5, math.nan, math.inf])
def test_a_rope_that_is_not_a_finite_number_at_least_0_is_refused(rope) -> None:
    """A negative rope said "a > b by more than the rope" of a mean of 0 (p = 1)."""
    a = {i: .8 + .01 * (i % 2) - .005 for i in range(6)}
    with pytest.raises(ValueError, match="rope"):
        compare(a, {i: .8 for i in range(6)}, "a > b", rope)


def test_differences_within_the_tolerance_are_said_to_be_equal_within_it() -> None:
    """1e-12 (i + 1)^2 differ, below EQUAL_TOL: the note said "all ... are equal"."""
    c = compare({i: 1e-12 * (i + 1) ** 2 for i in range(6)}, {i: 0.0 for i in range(6)},
                "a > b", 0.0)
    assert c.verdict == Outcome.INCONCLUSIVE
    assert "are equal (within 1e-09, relative above 1)" in c.note
