"""Epochs to a target, the field's "time to accuracy", as a hypothesis metric, with censoring.

A hypothesis metric `epochs_to:test_acc>=0.80` is, per run, the first epoch (1-based) after
which the run's test accuracy reached 0.80: "time to accuracy" as in DAWNBench (Coleman et
al. 2017) and MLPerf Training (Mattson et al. 2020), counted in epochs. `val_acc` works the
same with a validation split. Lower is faster: `a < b` says that a reaches the target in
fewer epochs.

**Censoring.** A run that never reaches the target within its epochs has no value, only a
lower bound ("more than its epochs"): it is right-censored (Klein & Moeschberger 2003,
"Survival Analysis", ch. 1). It is not given a made-up value. A seed where either arm is
censored leaves the paired comparison (the t interval needs both values), and the verdict's
note names every censored run and, for each seed where only one arm reached the target,
which arm was faster there: those seeds hold real information the interval does not use,
and a reader should see it. When no run of either arm reached the target there is no
verdict. The report's variants table also counts the runs that reached the target per cell.

This module imports neither torch nor MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cifarnet.spec.metrics import TimeToTarget



def epochs_to(history: Sequence[float], threshold: float) -> int | None:
    """The first epoch (1-based) whose value is >= threshold; None when none is (censored)."""
    return next((i + 1 for i, v in enumerate(history) if v >= threshold), None)


def time_to_by_seed(runs: pd.DataFrame, cell: str,
                    target: TimeToTarget) -> tuple[dict[int, float], dict[int, int]]:
    """Over the FINISHED runs of `cell` (their `history` column, see
    `tracking.results.load_runs(with_history=True)`): ({seed: epochs to the target} of the
    runs that reached it, {seed: epochs run} of those that did not: censored)."""
    reached: dict[int, float] = {}
    censored: dict[int, int] = {}
    if not len(runs) or "history" not in runs:
        return reached, censored
    ok = runs[(runs["cell"] == cell) & (runs["status"] == "FINISHED")]
    for seed, hist in zip(ok["seed"], ok["history"]):
        values = (hist or {}).get(target.metric, [])
        hit = epochs_to(values, target.threshold)
        if hit is None:
            censored[int(seed)] = len(values)
        else:
            reached[int(seed)] = float(hit)
    return reached, censored


def censoring_note(target: TimeToTarget, a: tuple[dict[int, float], dict[int, int]],
                   b: tuple[dict[int, float], dict[int, int]]) -> str:
    """The note on censored runs of one hypothesis (empty when none is censored)."""
    (ra, ca), (rb, cb) = a, b
    if not ca and not cb:
        return ""
    parts = [f"censored (never reached {target} within their epochs): "
             + "; ".join(f"{side} in seed(s) {', '.join(map(str, sorted(c)))}"
                         for side, c in (("a", ca), ("b", cb)) if c)
             + "; those seeds are left out of the pairs"]
    only_a = sorted(s for s in ca.keys() & rb.keys())
    only_b = sorted(s for s in cb.keys() & ra.keys())
    if only_b:
        parts.append(f"only a reached it in seed(s) {', '.join(map(str, only_b))} (a sooner)")
    if only_a:
        parts.append(f"only b reached it in seed(s) {', '.join(map(str, only_a))} (b sooner)")
    return "; ".join(parts)
