"""Several hypotheses in one spec: Holm's adjustment of the verdicts' p-values.

With k hypotheses each decided at 5%, the chance that at least one verdict is wrong grows
towards 1 - 0.95^k. Holm's step-down procedure (Holm 1979, "A simple sequentially rejective
multiple test procedure", Scand. J. Statist. 6(2):65-70) keeps that family-wise error at 5%
under any dependence between the hypotheses: sort the p-values, compare the i-th smallest with
0.05 / (k - i + 1), stop at the first that fails. The adjusted p-values
(`statsmodels.stats.multitest.multipletests(method="holm")`) are the smallest family-wise
level at which each hypothesis would still be decided.

The p-value of each hypothesis is the one its verdict rests on (`stats.verdict_p_value`):
twice a one-sided p-value, so "adjusted p < 0.05" is exactly "the verdict survives the
adjustment" and each verdict's one-sided error stays at 2.5% for the family. Directional
verdicts with Holm keep the family-wise error (Shaffer 1980). A hypothesis with
no p-value (no spread, too few seeds, no verdict) still counts in k, as p = 1: it was part of
the question asked.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence

import numpy as np

from cifarnet.analysis.stats import CONFIDENCE, Outcome

LEVEL = 1 - CONFIDENCE


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order; NaN stays NaN (counted as 1 in k)."""
    from statsmodels.stats.multitest import (
        multipletests,  # 1-2 s to import: only when used
    )

    p = np.asarray(p_values, dtype=float)
    if len(p) == 0:
        return []
    # statsmodels' Holm branch calls gc.collect() on every call (multitest.py, 0.14-0.15): a
    # full collection of the process, 0.5-2 s where torch, MLflow and pandas are loaded, once
    # per analysed grid. Frozen objects are left out of it (gc.freeze, Python 3.7+), so it
    # scans only what this call made; a caller's own freeze is left as it was.
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    try:
        adjusted = multipletests(np.where(np.isnan(p), 1.0, p), method="holm")[1]
    finally:
        if ours:
            gc.unfreeze()
    return [math.nan if math.isnan(raw) else float(adj) for raw, adj in zip(p, adjusted)]


def adjusted_verdict(verdict: Outcome, p_adjusted: float, level: float = LEVEL) -> Outcome:
    """The verdict under the family-wise level: kept when its adjusted p is below `level`,
    otherwise inconclusive (NO_VERDICT stays)."""
    if verdict.decisive and not p_adjusted < level:
        return Outcome.INCONCLUSIVE
    return verdict
