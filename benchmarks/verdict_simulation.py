"""What each verdict promises, measured: error rates by simulation with their Monte Carlo error.

    python benchmarks/verdict_simulation.py [--reps 20000] [--no-write]

Paired differences are drawn with sd 1 around a true difference placed where the verdict's
statement is false and hardest to avoid (the boundary): normal, t(3), skewed (occasional bad
seeds: a gamma of skewness -1 and -2) and discrete (normal rounded to half an sd, so ties and
equal differences happen) differences, n = 2..40 seeds. Every rule runs through the product's
own code (`stats.t_verdicts`, `stats.sign_flip_verdicts`, `sequential.confidence_sequences`,
`power`, `stats.pairing_efficiency`), so the figures are the rules' as shipped. Prints a table
per rule (rates in %, against the level docs/statistics.md promises) and appends them to
BENCHMARKS.md unless --no-write. Under 2 minutes on one core at 20,000 replications.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cifarnet.analysis import power  # noqa: E402
from cifarnet.analysis.sequential import confidence_sequences  # noqa: E402
from cifarnet.analysis.stats import (  # noqa: E402
    OUTCOMES,
    SIDE_LEVEL,
    Outcome,
    interval_verdicts,
    pairing_efficiency,
    sign_flip_verdicts,
    t_verdicts,
)
from cifarnet.spec.metrics import Expect  # noqa: E402

DISTS = ("normal", "t(3)", "skew -1", "skew -2", "discrete")
NS = (2, 3, 4, 5, 6, 8, 10, 15, 20, 40)
ROPE = 0.5  # in sds of the differences
GB, NEG, G = (OUTCOMES.index(o) for o in (Outcome.GREATER_BEYOND_ROPE, Outcome.NEGLIGIBLE,
                                          Outcome.GREATER))


def draw(dist: str, reps: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, n) differences of mean 0 and sd 1 (the discrete one: sd about 1.01)."""
    if dist == "normal":
        return rng.standard_normal((reps, n))
    if dist == "t(3)":
        return rng.standard_t(3, (reps, n)) / math.sqrt(3)
    if dist.startswith("skew"):
        shape = (2 / float(dist.split()[1])) ** 2  # gamma skewness 2 / sqrt(shape)
        g = rng.gamma(shape, 1.0, (reps, n))
        return -np.sign(float(dist.split()[1])) * (shape - g) / math.sqrt(shape)
    return np.round(rng.standard_normal((reps, n)) * 2) / 2


def rate(hits: np.ndarray) -> tuple[float, float]:
    """(share, its Monte Carlo standard error)."""
    p = float(np.mean(hits))
    return p, math.sqrt(max(p * (1 - p), 1e-12) / len(hits))


def fixed_n_rates(dist: str, n: int, reps: int, rng: np.random.Generator) -> dict[str, tuple]:
    """Per rule, the share of replications with the false statement (module docstring)."""
    z = draw(dist, reps, n, rng)
    at_rope = z + ROPE
    codes, lo, hi = t_verdicts(Expect.GREATER, at_rope, ROPE)
    mean = at_rope.mean(1)
    out = {"a > b by more than the rope (truth = rope)": rate(codes == GB),
           "old 'supported' (truth = rope)": rate((lo > 0) & (mean > ROPE)),
           "no difference worth having, a > b (truth = rope)": rate(codes == NEG)}
    at_zero = t_verdicts(Expect.GREATER, z, ROPE)[0]
    out["a > b, any amount (truth = 0)"] = rate(np.isin(at_zero, [GB, G]))
    tost = t_verdicts(Expect.EQUAL, z + 1.0, 1.0)[0]  # rope 1 sd, truth on its edge
    out["no difference worth having, a == b (truth = rope 1 sd)"] = rate(tost == NEG)
    lo0, hi0 = t_verdicts(Expect.GREATER, z, ROPE)[1:]
    out["t-interval misses the truth (95%)"] = rate(~((lo0 < 0) & (hi0 > 0)))
    flips = sign_flip_verdicts(Expect.GREATER, at_rope[:reps // 2], ROPE)
    out["sign-flip: a > b by more than the rope (truth = rope)"] = rate(flips == GB)
    return out


def sequential_rates(dist: str, reps: int, rng: np.random.Generator,
                     max_n: int = 20) -> dict[str, tuple]:
    """Looking after every seed from 2 to `max_n` and stopping at the first decisive verdict
    (the anytime-valid rule of `--until-decided`): the share stopped at "a > b by more than
    the rope" when the truth is the rope, and the share whose sequence ever misses the truth."""
    d = draw(dist, reps, max_n, rng) + ROPE
    stopped = np.zeros(reps, bool)
    false = np.zeros(reps, bool)
    missed = np.zeros(reps, bool)
    for n in range(2, max_n + 1):
        lo, hi = confidence_sequences(d[:, :n])
        codes = interval_verdicts(Expect.GREATER, lo, hi, ROPE)
        false |= ~stopped & (codes == GB)
        stopped |= codes != OUTCOMES.index(Outcome.INCONCLUSIVE)
        missed |= (lo > ROPE) | (hi < ROPE)
    return {"anytime: stops at 'a > b by more than the rope' (truth = rope)": rate(false),
            "anytime: the sequence ever misses the truth (95%)": rate(missed)}


def power_rates(reps: int, rng: np.random.Generator) -> list[str]:
    """The power figures `run --dry-run` prints (exact, noncentral t), against simulation
    under normal differences (sd 1; the issue's "rope 0.005, sd 0.004" is rope 1.25)."""
    lines = ["| figure | exact | simulated | MC s.e. |", "|---|---|---|---|"]
    for expect, n in ((Expect.GREATER, 7), (Expect.GREATER, 8), (Expect.EQUAL, 9)):
        exact = power.decisive_power(expect, 1.0, 1.25, n)
        codes = t_verdicts(expect, rng.standard_normal((reps, n)), 1.25)[0]
        p, se = rate(codes == NEG)
        lines.append(f"| {expect}, rope 1.25 sd, {n} seeds, truth 0: 'no difference worth "
                     f"having' | {exact:.1%} | {p:.1%} | {se:.1%} |")
    for expect, n, rope in ((Expect.GREATER, 3, 0.0), (Expect.GREATER, 10, 1.25),
                            (Expect.EQUAL, 5, 1.25)):
        mde = power.minimum_detectable_effect(1.0, n, rope, expect=expect)
        codes = t_verdicts(expect, rng.standard_normal((reps, n)) + mde, rope)[0]
        p, se = rate(np.isin(codes, [GB, OUTCOMES.index(Outcome.LESS_BEYOND_ROPE)]))
        lines.append(f"| {expect}, rope {rope:g} sd, {n} seeds, truth = MDE {mde:.3f}: '... by "
                     f"more than the rope' | 80.0% | {p:.1%} | {se:.1%} |")
    return lines


def pairing_rates(reps: int, rng: np.random.Generator) -> list[str]:
    """The pairing efficiency's 95% F interval: how often it misses the truth, and how often
    it claims seeds saved (interval above 1) when pairing gains nothing (uncorrelated arms);
    beside it the old figure, the observed efficiency alone at 2 or more."""
    lines = ["| arms | seeds | interval misses (95%) | 'seeds saved' claimed | observed "
             "efficiency >= 2 |", "|---|---|---|---|---|"]
    for corr, ratio in ((0.0, 1.0), (0.6, 1.0), (0.0, 4.0)):
        for n in (3, 6, 10):
            a = rng.standard_normal((reps, n))
            b = corr * a + math.sqrt(1 - corr ** 2) * rng.standard_normal((reps, n))
            a = a * math.sqrt(ratio)
            truth = (ratio + 1) / (ratio + 1 - 2 * corr * math.sqrt(ratio))
            eff, lo, hi = pairing_efficiency(a, b)
            miss, saved, old = (rate(~((lo <= truth) & (truth <= hi))), rate(lo > 1),
                                rate(eff >= 2))
            lines.append(f"| corr {corr:g}, var ratio {ratio:g} (true efficiency "
                         f"{truth:.2f}) | {n} | {_pct(miss)} | "
                         f"{_pct(saved) if corr == 0 else '-'} | "
                         f"{_pct(old) if corr == 0 else '-'} |")
    return lines


def _pct(r: tuple[float, float]) -> str:
    return f"{r[0]:.1%} ± {r[1]:.2%}"


def table(rule: str, level: float, cells: dict[tuple[str, int], tuple[float, float]],
          ns: tuple[int, ...]) -> list[str]:
    """One rule: rows = distributions, columns = seeds; rates in %, in bold where above the
    level by more than 3 Monte Carlo standard errors."""
    out = [f"**{rule}**, promised at most {level:.1%}:", "",
           "| differences | " + " | ".join(f"n={n}" for n in ns) + " |",
           "|---|" + "---|" * len(ns)]
    for dist in DISTS:
        row = []
        for n in ns:
            p, se = cells[(dist, n)]
            text = f"{100 * p:.1f}"
            row.append(f"**{text}**" if p > level + 3 * se else text)
        out.append(f"| {dist} | " + " | ".join(row) + " |")
    return out + [""]


LEVELS = {"a > b by more than the rope (truth = rope)": SIDE_LEVEL,
          "old 'supported' (truth = rope)": SIDE_LEVEL,
          "a > b, any amount (truth = 0)": SIDE_LEVEL,
          "no difference worth having, a > b (truth = rope)": SIDE_LEVEL,
          "no difference worth having, a == b (truth = rope 1 sd)": SIDE_LEVEL,
          "sign-flip: a > b by more than the rope (truth = rope)": SIDE_LEVEL,
          "t-interval misses the truth (95%)": 2 * SIDE_LEVEL}


def run(reps: int, seed: int = 0, ns: tuple[int, ...] = NS) -> list[str]:
    rng = np.random.default_rng(seed)
    cells: dict[str, dict] = {rule: {} for rule in LEVELS}
    for dist in DISTS:
        for n in ns:
            for rule, r in fixed_n_rates(dist, n, reps, rng).items():
                cells[rule][(dist, n)] = r
    lines = [f"{reps:,} replications per cell (the sign-flip rows: {reps // 2:,}); "
             f"differences of sd 1, rope {ROPE} sd unless said; rates in %, **bold** where "
             "above the promised level by more than 3 Monte Carlo standard errors (MC s.e. "
             f"at 2.5%: {100 * math.sqrt(0.025 * 0.975 / reps):.2f} points). Normal "
             "differences are the stated assumption; the other rows measure what happens "
             "when it fails.", ""]
    for rule, level in LEVELS.items():
        lines += table(rule, level, cells[rule], ns)
    lines += ["**Anytime-valid rule** (`--until-decided`: looks at 2..20 seeds, stops at the "
              "first decisive verdict), promised at most 2.5% false 'beyond the rope' and 5% "
              "misses over the whole sequence:", "",
              "| differences | false 'a > b by more than the rope' | sequence ever misses |",
              "|---|---|---|"]
    for dist in (*DISTS, "skew 2"):
        r = sequential_rates(dist, reps, rng)
        lines.append(f"| {dist} | " + " | ".join(_pct(v) for v in r.values()) + " |")
    lines += ["", "**Power figures** (`run --dry-run`, RESULTS.md), normal differences:", "",
              *power_rates(reps, rng), "",
              "**Pairing efficiency** (95% F interval; bivariate normal arms):", "",
              *pairing_rates(reps, rng)]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20_000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    lines = run(args.reps)
    lines += ["", f"Took {time.perf_counter() - start:.0f} s."]
    print("\n".join(lines))
    if not args.no_write:
        from common import append_benchmark

        append_benchmark("Verdict error rates by simulation (issue 26)", lines)


if __name__ == "__main__":
    main()
