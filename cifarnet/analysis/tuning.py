"""Tuning curves: the expected best validation accuracy against the number of trials.

Dodge, Gururangan, Card, Schwartz & Smith 2019, "Show Your Work: Improved Reporting of
Experimental Results" (EMNLP), section 3: with N trials of validation scores v_1..v_N sorted
ascending, the expected maximum of n trials drawn (with replacement) from their empirical
distribution is

    E[max_n] = sum_i v_(i) * ((i / N)^n - ((i - 1) / N)^n),

and its standard deviation follows from E[max_n^2] with v_(i)^2 in place of v_(i). Plotted for
n = 1..N per arm, a curve still rising at n = N says the arm's budget was not enough: more
trials would likely have found a better configuration. Tang et al. 2020 ("Showing Your Work
Doesn't Always Work", ACL) show the estimator is biased for n near N; `unbiased=True` gives
their unbiased estimator for sampling without replacement, sum_i v_(i) C(i-1, n-1) / C(N, n).

A pruned trial enters with the last validation accuracy it reported (a lower bound of what it
would have reached: the pruner judged it worse); failed trials do not enter. Both arms of a
hypothesis ran the same number of trials, so their curves have the same length.

This module imports neither torch nor MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd

COUNTED_STATES = ("COMPLETE", "PRUNED")  # trials whose validation accuracy enters the curve


def expected_max(values: Sequence[float], n: int, unbiased: bool = False) -> tuple[float, float]:
    """(mean, sd) of the best of `n` trials, from the `values` of N observed trials (any
    order; validation accuracies, fractions). Dodge et al. 2019 (with replacement); with
    `unbiased`, Tang et al. 2020's estimator without replacement (its sd is that of the
    same weights). Raises ValueError for no values, n < 1, or (unbiased) n > N."""
    v = np.sort(np.asarray(values, dtype=float))
    big_n = len(v)
    if big_n == 0 or n < 1:
        raise ValueError(f"expected_max: need values and n >= 1 (got {big_n} values, n={n})")
    i = np.arange(1, big_n + 1)
    if unbiased:
        if n > big_n:
            raise ValueError(f"expected_max: n={n} is more than the {big_n} trials observed")
        w = np.array([comb(k - 1, n - 1) for k in i], dtype=float) / comb(big_n, n)
    else:
        w = (i / big_n) ** n - ((i - 1) / big_n) ** n
    mean = float((w * v).sum())
    var = float((w * v**2).sum()) - mean**2
    return mean, float(np.sqrt(max(var, 0.0)))


@dataclass(frozen=True)
class TuningCurve:
    """One arm's curve: `mean[k]`, `sd[k]` = expected best validation accuracy (fraction)
    of k + 1 trials; the trials by state; the best trial and its value."""

    cell: str
    mean: list[float]
    sd: list[float]
    trials: dict[str, int]
    best_trial: int | None
    best_value: float | None
    tuned: dict[str, str]

    def tuned_text(self) -> str:
        """The tuned values as `key=value` pairs, numbers to 4 significant digits
        (`train.lr=0.04627, data.augment_strength=0.3562`); '' when none is recorded."""
        def short(text: str) -> str:
            try:
                return f"{float(text):.4g}"
            except ValueError:
                return text

        return ", ".join(f"{k}={short(v)}" for k, v in self.tuned.items())

    @property
    def n(self) -> int:
        return len(self.mean)

    def last_doubling_gain(self) -> float:
        """E[max_N] - E[max_ceil(N/2)] (fraction): what the second half of the budget
        added to the expected best; NaN with fewer than 2 trials."""
        if self.n < 2:
            return float("nan")
        return self.mean[-1] - self.mean[(self.n + 1) // 2 - 1]


def tuning_curves(trials: pd.DataFrame) -> list[TuningCurve]:
    """One curve per arm from the trial table of `tracking.results.load_tuning` (columns
    cell, trial, state, val_acc, best_trial, best_val_acc, tuned.*)."""
    out = []
    for cell, rows in trials.groupby("cell", sort=True):
        counted = rows[rows["state"].isin(COUNTED_STATES) & rows["val_acc"].notna()]
        values = counted["val_acc"].astype(float).tolist()
        curve = [expected_max(values, k) for k in range(1, len(values) + 1)]
        states = rows["state"].fillna("RUNNING").value_counts().to_dict()
        best = rows["best_trial"].dropna()
        best_val = rows["best_val_acc"].dropna()
        tuned = {c[len("tuned."):]: str(rows[c].iloc[0]) for c in rows.columns
                 if str(c).startswith("tuned.") and rows[c].notna().any()}
        out.append(TuningCurve(str(cell), [m for m, _ in curve], [s for _, s in curve],
                               {str(k): int(v) for k, v in states.items()},
                               int(best.iloc[0]) if len(best) else None,
                               float(best_val.iloc[0]) if len(best_val) else None, tuned))
    return out
