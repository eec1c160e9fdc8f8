"""Statistics against hand-computed cases, verdict rules at their boundaries, factorial effects."""

import math

import pytest

from cifarnet.stats import (compare, decide, factorial_effects, seeds_to_decide, t_interval)


def test_known_t_interval_and_p_value() -> None:
    # d = 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3)
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 2.484138, abs=1e-5)
    assert hi == pytest.approx(2 + 2.484138, abs=1e-5)
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0}, "a > b", 0.0)
    assert c.n == 3 and c.mean == 2.0 and c.sd == 1.0
    assert c.p_t == pytest.approx(0.074180, abs=1e-5)  # t = 3.4641, df = 2
    assert c.effect_dz == pytest.approx(2.0)
    assert c.verdict == "inconclusive"  # the interval crosses 0
    assert c.ci_bootstrap is None and c.p_wilcoxon is None  # n < 5, n < 6


def test_clear_improvement_is_supported_with_all_statistics() -> None:
    a = {s: 0.85 + 0.01 + 0.001 * (s % 3) for s in range(6)}
    b = {s: 0.85 + 0.0005 * (s % 2) for s in range(6)}
    c = compare(a, b, "a > b", 0.002)
    assert c.verdict == "supported" and c.paired
    assert c.ci[0] > 0 and c.mean > 0.002
    assert c.ci_bootstrap is not None and c.ci_bootstrap[0] > 0
    assert c.p_wilcoxon == pytest.approx(0.03125)  # all six differences positive
    assert c.p_t < 1e-4


def test_equivalence_case() -> None:
    d = [0.001, -0.001, 0.0005, -0.0005, 0.0]
    a = {s: 0.8 + x for s, x in enumerate(d)}
    b = {s: 0.8 for s in range(5)}
    assert compare(a, b, "a == b", 0.01).verdict == "supported"
    assert compare(a, b, "a > b", 0.01).verdict == "refuted"


def test_reversed_effect_refutes() -> None:
    a = {0: 0.80, 1: 0.79, 2: 0.805, 3: 0.798}
    b = {0: 0.82, 1: 0.82, 2: 0.83, 3: 0.82}
    c = compare(a, b, "a > b", 0.002)
    assert c.mean < 0 and c.verdict == "refuted"
    assert compare(a, b, "a < b", 0.002).verdict == "supported"


def test_too_few_seeds_is_inconclusive() -> None:
    c = compare({0: 0.9}, {0: 0.8}, "a > b", 0.002)
    assert c.verdict == "inconclusive" and c.n == 1 and "too few" in c.note
    assert compare({}, {}, "a > b", 0.0).verdict == "inconclusive"


def test_unpaired_falls_back_to_welch() -> None:
    c = compare({0: 0.90, 1: 0.91, 2: 0.905}, {3: 0.80, 4: 0.81, 5: 0.805}, "a > b", 0.002)
    assert not c.paired and "Welch" in c.note
    assert c.verdict == "supported"


@pytest.mark.parametrize(("expect", "mean", "ci", "rope", "verdict"), [
    ("a > b", 0.003, (0.0001, 0.006), 0.002, "supported"),
    ("a > b", 0.003, (0.0, 0.006), 0.002, "inconclusive"),      # lower bound must be > 0
    ("a > b", 0.002, (0.001, 0.003), 0.002, "inconclusive"),    # mean must exceed the rope
    ("a > b", 0.0, (-0.001, 0.0019), 0.002, "refuted"),         # upper bound below the rope
    ("a > b", 0.0, (-0.001, 0.002), 0.002, "inconclusive"),     # ... strictly
    ("a < b", -0.003, (-0.006, -0.0001), 0.002, "supported"),
    ("a < b", 0.0, (-0.0019, 0.001), 0.002, "refuted"),
    ("a == b", 0.0, (-0.0019, 0.0019), 0.002, "supported"),
    ("a == b", 0.0, (-0.002, 0.0019), 0.002, "inconclusive"),   # inside the open interval
    ("a == b", 0.005, (0.002, 0.008), 0.002, "refuted"),        # wholly outside
    ("a == b", 0.003, (0.0019, 0.004), 0.002, "inconclusive"),
])
def test_verdict_boundaries(expect, mean, ci, rope, verdict) -> None:
    assert decide(expect, mean, ci, rope) == verdict


def test_seeds_needed_estimate_decides() -> None:
    n = seeds_to_decide("a > b", 0.01, 0.01, 0.002, 3)
    assert n is not None and n > 3
    from scipy import stats as st
    t_prev = st.t.ppf(0.975, n - 2) * 0.01 / math.sqrt(n - 1)
    assert decide("a > b", 0.01, (0.01 - t_prev, 0.01 + t_prev), 0.002) == "inconclusive"
    t_n = st.t.ppf(0.975, n - 1) * 0.01 / math.sqrt(n)
    assert decide("a > b", 0.01, (0.01 - t_n, 0.01 + t_n), 0.002) == "supported"
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
