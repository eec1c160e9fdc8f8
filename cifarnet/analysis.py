"""From runs to answers: the variants table, hypothesis verdicts and factorial effects."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cifarnet.spec import AblationSpec, Hypothesis, format_level
from cifarnet.stats import Comparison, Effect, compare, factorial_effects

TARGET_ACC = 0.85


@dataclass(frozen=True)
class Verdict:
    hypothesis: Hypothesis
    a_cell: str
    b_cell: str
    comparison: Comparison


@dataclass(frozen=True)
class Analysis:
    spec: AblationSpec
    variants: pd.DataFrame
    verdicts: list[Verdict]
    effects: list[Effect]
    runs: pd.DataFrame
    data_label: str


def metric_by_seed(runs: pd.DataFrame, cell: str, metric: str) -> dict[int, float]:
    """{seed: final metric} over the FINISHED runs of a cell."""
    col = f"metrics.{metric}"
    if col not in runs:
        return {}
    ok = runs[(runs["cell"] == cell) & (runs["status"] == "FINISHED")]
    return {int(s): float(v) for s, v in zip(ok["seed"], ok[col]) if not pd.isna(v)}


def analyze(spec: AblationSpec, runs: pd.DataFrame) -> Analysis:
    verdicts = []
    for h in spec.hypotheses:
        a, b = spec.cell_of(h.a).label, spec.cell_of(h.b).label
        cmp = compare(metric_by_seed(runs, a, h.metric), metric_by_seed(runs, b, h.metric),
                      h.expect, h.rope)
        verdicts.append(Verdict(h, a, b, cmp))
    effects: list[Effect] = []
    if spec.factors and all(len(v) == 2 for v in spec.factors.values()):
        values = {tuple(c.levels.items()): metric_by_seed(runs, c.label, "test_acc")
                  for c in spec.cells()}
        effects = factorial_effects(values, spec.factors)
    labels = runs["params.data.label"].dropna() if "params.data.label" in runs else []
    label = str(labels.iloc[0]) if len(labels) else ""
    return Analysis(spec, variants_table(spec, runs), verdicts, effects, runs, label)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return (math.nan, math.nan)
    return (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def variants_table(spec: AblationSpec, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: flags, size, accuracy over seeds, epochs to 85%, run counts."""
    rows = []
    for cell in spec.cells():
        mine = runs[runs["cell"] == cell.label] if len(runs) else runs
        ok = mine[mine["status"] == "FINISHED"] if len(mine) else mine
        first = ok.iloc[0] if len(ok) else None

        def param(key: str) -> float:
            if first is None or f"params.{key}" not in ok:
                return math.nan
            return float(first[f"params.{key}"])

        final = list(ok["metrics.test_acc"].dropna()) if "metrics.test_acc" in ok else []
        best = list(ok["metrics.best_test_acc"].dropna()) if "metrics.best_test_acc" in ok else []
        reach = []
        if "history" in ok:
            for hist in ok["history"]:
                accs = hist.get("test_acc", [])
                hit = next((i + 1 for i, a in enumerate(accs) if a >= TARGET_ACC), None)
                if hit is not None:
                    reach.append(hit)
        row = {"cell": cell.label,
               **{k.split(".", 1)[1]: format_level(v) for k, v in cell.levels.items()},
               "params": param("arch.params"), "MACs": param("arch.macs"),
               "RF": param("arch.receptive_field")}
        row["final_acc_mean"], row["final_acc_std"] = _mean_std(final)
        row["best_acc_mean"], row["best_acc_std"] = _mean_std(best)
        row["epochs_to_85"] = float(np.mean(reach)) if reach else math.nan
        row["reached_85"] = len(reach)
        row["finished"] = int((mine["status"] == "FINISHED").sum()) if len(mine) else 0
        row["failed"] = int((mine["status"] == "FAILED").sum()) if len(mine) else 0
        rows.append(row)
    return pd.DataFrame(rows)


def hypotheses_table(analysis: Analysis) -> pd.DataFrame:
    """Differences in accuracy points (x100) for people; raw values stay in `comparison`."""
    rows = []
    for v in analysis.verdicts:
        c, h = v.comparison, v.hypothesis
        scale = 100.0 if h.metric.endswith("_acc") else 1.0
        rows.append({
            "id": h.id, "claim": h.claim, "metric": h.metric, "a": v.a_cell, "b": v.b_cell,
            "expect": h.expect, "rope": h.rope * scale, "n": c.n, "mean_diff": c.mean * scale,
            "ci_low": c.ci[0] * scale, "ci_high": c.ci[1] * scale,
            "boot_low": c.ci_bootstrap[0] * scale if c.ci_bootstrap else math.nan,
            "boot_high": c.ci_bootstrap[1] * scale if c.ci_bootstrap else math.nan,
            "p_t": c.p_t, "p_wilcoxon": c.p_wilcoxon if c.p_wilcoxon is not None else math.nan,
            "effect_dz": c.effect_dz if c.effect_dz is not None else math.nan,
            "verdict": c.verdict, "paired": c.paired,
            "seeds_needed": c.seeds_needed if c.seeds_needed is not None else math.nan,
            "note": c.note})
    return pd.DataFrame(rows)


def effects_table(analysis: Analysis) -> pd.DataFrame:
    return pd.DataFrame([{"effect": e.name, "n": e.n, "mean_points": e.mean * 100,
                          "ci_low": e.ci[0] * 100, "ci_high": e.ci[1] * 100, "p_t": e.p_t}
                         for e in analysis.effects])


def undecided_cells(analysis: Analysis) -> set[str]:
    """The cells of every inconclusive hypothesis: where more seeds would help."""
    out: set[str] = set()
    for v in analysis.verdicts:
        if v.comparison.verdict == "inconclusive":
            out |= {v.a_cell, v.b_cell}
    return out
