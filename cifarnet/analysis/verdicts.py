"""From runs to answers: the variants table, hypothesis verdicts and factorial effects.

Per hypothesis, beside the fixed-n verdict of `stats.compare`:
- the runs that did not learn (`chance`): both arms at chance give NO_VERDICT, one arm at
  chance is a real effect, with a note;
- a metric no finished run logged gives NO_VERDICT (more seeds would not help);
- the anytime-valid verdict (`sequential`), the one `--until-decided` stops on;
- the Holm-adjusted p-value and verdict over the spec's hypotheses (`multiple`);
- the pairing's gain (`stats.PairingGain`), the skew diagnostics and the sign-flip check
  beside the t (`stats.SkewCheck`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from cifarnet.spec.ablation import AblationSpec, Hypothesis, Job, format_level
from cifarnet.analysis.tuning import TuningCurve, tuning_curves
from cifarnet.analysis.chance import did_not_learn
from cifarnet.analysis.multiple import adjusted_verdict, holm_adjust
from cifarnet.analysis.provenance import GridSource, Provenance, describe
from cifarnet.analysis.sequential import anytime_verdict
from cifarnet.analysis.test_set import TwoSources, two_sources
from cifarnet.analysis.time_to import censoring_note, time_to_by_seed
from cifarnet.spec.metrics import parse_time_to
from cifarnet.analysis.stats import (
    NO_INTERVAL,
    Comparison,
    Effect,
    Outcome,
    PairingGain,
    compare,
    factorial_effects,
    sign_flip_agreement,
    verdict_p_value,
)
from cifarnet.errors import UserError

TARGET_ACC = 0.85
CLASS_PREFIX = "metrics.test_acc_class."


@dataclass(frozen=True)
class ArmLearning:
    """How many of an arm's finished runs were checked against chance, and how many of those
    did not learn."""

    checked: int
    not_learned: int

    @property
    def none_learned(self) -> bool:
        return self.checked > 0 and self.not_learned == self.checked

    def label(self) -> str:
        return f"{self.not_learned}/{self.checked}" if self.checked else "-"


@dataclass(frozen=True)
class Verdict:
    """One hypothesis answered. `comparison.verdict` is the fixed-n verdict (NO_VERDICT when
    the data cannot answer); the others are the anytime-valid and Holm-adjusted ones.
    `seeds_added`: the seeds of its arms that `--until-decided` added (`added_seeds`);
    `outcome` is the verdict to read."""

    hypothesis: Hypothesis
    a_cell: str
    b_cell: str
    comparison: Comparison
    a_learning: ArmLearning = ArmLearning(0, 0)
    b_learning: ArmLearning = ArmLearning(0, 0)
    verdict_anytime: Outcome = Outcome.INCONCLUSIVE
    ci_anytime: tuple[float, float] = NO_INTERVAL
    p_verdict: float = math.nan
    p_holm: float = math.nan
    verdict_holm: Outcome = Outcome.INCONCLUSIVE
    why_no_verdict: str = ""
    seeds_added: tuple[int, ...] = ()

    @property
    def outcome(self) -> Outcome:
        """The verdict to read: the anytime-valid one when seeds were added one at a time
        until a verdict came (`seeds_added`: the fixed-n t-interval, looked at after every
        seed, overclaims; `analysis.sequential`), else the fixed-n one."""
        return self.verdict_anytime if self.seeds_added else self.comparison.verdict


@dataclass(frozen=True)
class Analysis:
    spec: AblationSpec
    variants: pd.DataFrame
    verdicts: list[Verdict]
    effects: list[Effect]
    runs: pd.DataFrame
    data_label: str
    provenance: Provenance | None = None
    # hypothesis id (test_acc ones) -> McNemar per seed, the test set's error beside the
    # seeds' spread
    test_set: dict[str, TwoSources | None] = field(default_factory=dict)
    # a tuned grid's arms (`analysis.tuning`): each arm's tuning curve and best trial
    tuning: list[TuningCurve] = field(default_factory=list)


def metric_by_seed(runs: pd.DataFrame, cell: str, metric: str) -> dict[int, float]:
    """{seed: final metric} over the FINISHED runs of a cell (NaN values kept: `compare`
    leaves them out and says so); for an `epochs_to:` metric the epochs to its target of the
    runs that reached it (`analysis.time_to`: the censored ones are not in it)."""
    target = parse_time_to(metric)
    if target is not None:
        return time_to_by_seed(runs, cell, target)[0]
    col = f"metrics.{metric}"
    if col not in runs:
        return {}
    ok = runs[(runs["cell"] == cell) & (runs["status"] == "FINISHED")]
    return {int(s): float(v) for s, v in zip(ok["seed"], ok[col]) if v is not None}


def _num_classes(row: pd.Series) -> int | None:
    given = row.get("params.data.num_classes")
    if given is not None and not pd.isna(given):
        return int(float(given))
    n = sum(1 for k, v in row.items() if str(k).startswith(CLASS_PREFIX) and not pd.isna(v))
    return n or None


def learning_flags(runs: pd.DataFrame) -> pd.Series:
    """Per run: True when its test accuracy is within noise of chance (`chance.did_not_learn`
    over params.data.num_test images and its number of classes: params.data.num_classes, else
    its per-class metrics), False when it learned, None when it cannot be checked (not
    FINISHED, or the accuracy, test size or classes are missing)."""
    out = []
    for _, row in runs.iterrows():
        acc = row.get("metrics.test_acc")
        n_test = row.get("params.data.num_test")
        k = _num_classes(row)
        if (row.get("status") != "FINISHED" or acc is None or pd.isna(acc) or n_test is None
                or pd.isna(n_test) or not k or k < 2 or int(float(n_test)) < 1):
            out.append(None)
            continue
        out.append(did_not_learn(float(acc), int(float(n_test)), k))
    return pd.Series(out, index=runs.index, dtype=object)


def _arm(runs: pd.DataFrame, cell: str) -> ArmLearning:
    if "did_not_learn" not in runs or not len(runs):
        return ArmLearning(0, 0)
    flags = [f for f in runs.loc[runs["cell"] == cell, "did_not_learn"] if f is not None]
    return ArmLearning(len(flags), sum(bool(f) for f in flags))


def _no_verdict(c: Comparison, why: str) -> Comparison:
    return replace(c, verdict=Outcome.NO_VERDICT, seeds_needed=None,
                   note="; ".join(x for x in (why, c.note) if x))


def _finished(runs: pd.DataFrame, cell: str) -> int:
    if not len(runs):
        return 0
    return int(((runs["cell"] == cell) & (runs["status"] == "FINISHED")).sum())


def judge(h: Hypothesis, a: str, b: str, runs: pd.DataFrame) -> Verdict:
    """One hypothesis over `runs` (which carry a `did_not_learn` column, see
    `learning_flags`), before the Holm adjustment."""
    target = parse_time_to(h.metric)
    if target is not None:  # (reached, censored) per arm, read once
        arms = time_to_by_seed(runs, a, target), time_to_by_seed(runs, b, target)
        values = arms[0][0], arms[1][0]
    else:
        values = metric_by_seed(runs, a, h.metric), metric_by_seed(runs, b, h.metric)
    cmp = compare(*values, h.expect, h.rope)
    la, lb = _arm(runs, a), _arm(runs, b)
    why = ""
    if target is not None:
        censored = censoring_note(target, *arms)
        if censored:
            cmp = replace(cmp, note="; ".join(x for x in (censored, cmp.note) if x))
    if (target is not None and not arms[0][0] and not arms[1][0]
            and (arms[0][1] or arms[1][1])):
        why = f"no run reached {target}"
        cmp = _no_verdict(cmp, f"no verdict: no run of either arm reached {target} within "
                               "its epochs (all censored); train longer or lower the target")
    elif la.none_learned and lb.none_learned:
        why = "both arms did not learn"
        cmp = _no_verdict(cmp, "no verdict: both arms did not learn (every run's test accuracy "
                               "is within noise of chance), so they cannot differ in anything "
                               "but noise; train longer or fix the recipe")
    elif cmp.n == 0 and _finished(runs, a) and _finished(runs, b) and not any(
            math.isfinite(x) for side in values for x in side.values()):
        why = f"no run logged {h.metric}"
        cmp = _no_verdict(cmp, f"no verdict: no finished run logged a finite value of the "
                               f"metric {h.metric!r}")
    else:
        notes = [f"{side} did not learn in {arm.not_learned} of {arm.checked} run(s)"
                 + (": a real effect, but it says only that one arm trains at all"
                    if arm.none_learned else "")
                 for side, arm in (("a", la), ("b", lb)) if arm.not_learned]
        if notes:
            cmp = replace(cmp, note="; ".join([*notes, cmp.note] if cmp.note else notes))
    if cmp.verdict is Outcome.NO_VERDICT:
        anytime, cs = Outcome.NO_VERDICT, NO_INTERVAL
    elif cmp.paired:
        anytime, cs = anytime_verdict(h.expect, cmp.differences, h.rope)
    else:
        anytime, cs = Outcome.INCONCLUSIVE, NO_INTERVAL
    return Verdict(h, a, b, cmp, la, lb, anytime, cs, verdict_p_value(cmp),
                   why_no_verdict=why)


def arm_predictions(runs: pd.DataFrame, cell: str,
                    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]
                    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{seed: (predicted, labels)} of the FINISHED runs of `cell` whose test predictions
    were loaded (`predictions`: run id -> arrays)."""
    if not len(runs):
        return {}
    ok = runs[(runs["cell"] == cell) & (runs["status"] == "FINISHED")]
    return {int(s): predictions[r] for s, r in zip(ok["seed"], ok["run_id"]) if r in predictions}


def added_seeds(runs: pd.DataFrame, a: str, b: str) -> tuple[int, ...]:
    """The seeds of cells `a` and `b`'s FINISHED runs that `--until-decided` added (column
    `seed_added`, from each run's tag: recorded when the seed was added, so editing the
    spec's `seeds` list later changes nothing), sorted; () for a grid of fixed seeds."""
    if not len(runs) or "seed_added" not in runs:
        return ()
    ok = runs[runs["cell"].isin([a, b]) & (runs["status"] == "FINISHED")
              & runs["seed_added"].fillna(False).astype(bool)]
    return tuple(sorted({int(s) for s in ok["seed"]}))


def _with_added_seeds(v: Verdict, added: tuple[int, ...]) -> Verdict:
    """`v` with its added seeds; with any, no fixed-n "~N seeds would decide" (that count
    assumes a fixed design, not seeds added until a verdict comes)."""
    if not added:
        return v
    return replace(v, seeds_added=added, comparison=replace(v.comparison, seeds_needed=None))


def analyze(spec: AblationSpec, runs: pd.DataFrame,
            source: GridSource | None = None,
            predictions: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
            tuning: pd.DataFrame | None = None) -> Analysis:
    """Everything a report shows, from the runs of one grid.

    `runs`: one row per run (`cifarnet.tracking.results.load_runs`: columns cell, seed,
    status, metrics.*, params.*). Returns the variants table (mean and sd over seeds per
    cell), one verdict per hypothesis (`stats.compare` over the paired seeds, Holm-adjusted
    across hypotheses, runs at chance flagged), the factorial effects of a 2^k grid, and,
    given the runs' test `predictions` (run id -> (predicted, labels)), McNemar's test per
    seed for each hypothesis (`analysis.test_set`); given a tuned grid's trials (`tuning`,
    `tracking.results.load_tuning`), each arm's tuning curve (`analysis.tuning`)."""
    runs = runs.copy()
    runs["did_not_learn"] = learning_flags(runs) if len(runs) else pd.Series(dtype=object)
    verdicts = [judge(h, spec.cell_of(h.a).label, spec.cell_of(h.b).label, runs)
                for h in spec.hypotheses]
    if spec.tune is not None:  # an arm not tuned yet has no verdict runs to answer with
        untuned = {c.label for c in spec.arms()} - set(spec.tuned)
        why = "tuning incomplete: rerun the grid to finish its studies and verdict runs"
        verdicts = [replace(v, comparison=_no_verdict(v.comparison, why), why_no_verdict=why)
                    if {v.a_cell, v.b_cell} & untuned else v for v in verdicts]
    verdicts = [_with_added_seeds(v, added_seeds(runs, v.a_cell, v.b_cell)) for v in verdicts]
    # a hypothesis with added seeds has no valid fixed-n p-value: it enters Holm's family as
    # p = 1 (the others are adjusted for it) and gets no Holm verdict (read its anytime one)
    adjusted = holm_adjust([1.0 if v.seeds_added else v.p_verdict for v in verdicts])
    verdicts = [replace(v, p_holm=math.nan, verdict_holm=Outcome.NO_VERDICT) if v.seeds_added
                else replace(v, p_holm=p, verdict_holm=adjusted_verdict(v.comparison.verdict, p))
                for v, p in zip(verdicts, adjusted)]
    effects: list[Effect] = []
    if spec.factors and all(len(v) == 2 for v in spec.factors.values()):
        values = {tuple(c.levels.items()): metric_by_seed(runs, c.label, "test_acc")
                  for c in spec.cells()}
        effects = factorial_effects(values, spec.factors)
    labels = runs["params.data.label"].dropna() if "params.data.label" in runs else []
    label = str(labels.iloc[0]) if len(labels) else ""
    test_set = {}
    if predictions:
        for v in verdicts:
            if v.hypothesis.metric != "test_acc":  # the predictions are the final test's
                continue
            test_set[v.hypothesis.id] = two_sources(arm_predictions(runs, v.a_cell, predictions),
                                                    arm_predictions(runs, v.b_cell, predictions))
    curves = tuning_curves(tuning) if tuning is not None and len(tuning) else []
    return Analysis(spec, variants_table(spec, runs), verdicts, effects, runs, label,
                    describe(runs, source), test_set, curves)


def check_matched(spec: AblationSpec, runs: pd.DataFrame, verdicts: list[Verdict]) -> None:
    """Refuse a hypothesis that has no seed with both sides although its runs finished: a
    side whose cell matched no run while the runs of its jobs (by config hash), or runs
    tagged with no cell of the grid, finished is cifarnet-exp failing to read its own store,
    never an inconclusive verdict. Raises UserError naming the hypothesis, each cell that
    matched no run and why."""
    if not len(runs):
        return
    done = runs[runs["status"] == "FINISHED"]
    labels = {c.label for c in spec.cells()}
    strays = sorted({str(c) for c in done["cell"]} - labels)
    jobs: list[Job] | None = None
    for v in verdicts:
        if v.comparison.n:
            continue
        why = []
        for cell in dict.fromkeys((v.a_cell, v.b_cell)):
            if (runs["cell"] == cell).any():
                continue
            jobs = spec.settled_jobs() if jobs is None else jobs
            hashes = {j.config_hash for j in jobs if j.cell.label == cell}
            theirs = done[done["config_hash"].isin(hashes)]
            if len(theirs):
                why.append(f"cell {cell} matched no run, though {len(theirs)} run(s) of its "
                           "jobs finished, tagged cifarnet.cell "
                           + ", ".join(sorted({str(c) for c in theirs["cell"]})))
            elif strays:
                why.append(f"cell {cell} matched no run, while finished runs carry a "
                           f"cifarnet.cell tag naming no cell of the grid: {', '.join(strays)}")
        if why:
            raise UserError(f"hypothesis {v.hypothesis.id}: no seed has both sides although "
                            f"its runs finished: {'; '.join(why)} (cifarnet-exp did not match "
                            "the runs to their cells; this is not a verdict)")


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd; the sd is NaN for one value (no spread estimate, not zero)."""
    if not values:
        return (math.nan, math.nan)
    return (float(np.mean(values)),
            float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def _param(run: pd.Series | None, key: str) -> float:
    if run is None or pd.isna(run.get(f"params.{key}")):
        return math.nan
    return float(run[f"params.{key}"])


def variants_table(spec: AblationSpec, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: flags, size, accuracy over seeds, epochs to 85%, run counts, runs
    that did not learn."""
    rows = []
    for cell in spec.cells():
        mine = runs[runs["cell"] == cell.label] if len(runs) else runs
        ok = mine[mine["status"] == "FINISHED"] if len(mine) else mine
        first = ok.iloc[0] if len(ok) else None

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
               "params": _param(first, "arch.params"), "MACs": _param(first, "arch.macs"),
               "RF": _param(first, "arch.receptive_field")}
        if spec.match is not None:  # the size each cell would have had, beside its own
            from cifarnet.model.summary import summarize

            row["width"] = _param(first, "model.width")
            row["unmatched_params"] = float(summarize(
                spec.base_config().replace(cell.levels).model).total_params)
        row["final_acc_mean"], row["final_acc_std"] = _mean_std(final)
        row["best_acc_mean"], row["best_acc_std"] = _mean_std(best)
        row["epochs_to_85"] = float(np.mean(reach)) if reach else math.nan
        row["reached_85"] = len(reach)
        row["finished"] = int((mine["status"] == "FINISHED").sum()) if len(mine) else 0
        row["failed"] = int((mine["status"] == "FAILED").sum()) if len(mine) else 0
        flags = ([f for f in ok["did_not_learn"] if f is not None]
                 if "did_not_learn" in ok else [])
        row["did_not_learn"] = sum(bool(f) for f in flags)
        row["checked_vs_chance"] = len(flags)
        rows.append(row)
    return pd.DataFrame(rows)


def hypotheses_table(analysis: Analysis) -> pd.DataFrame:
    """Differences in accuracy points (x100) for people, losses in nats, `epochs_to:` metrics
    in epochs (column `unit`); raw values stay in `comparison`. Variances of the pairing in
    squared units."""
    rows = []
    for v in analysis.verdicts:
        c, h = v.comparison, v.hypothesis
        scale = 100.0 if h.metric.endswith("_acc") else 1.0
        unit = ("epochs" if parse_time_to(h.metric) else "points" if scale == 100.0
                else "nats" if h.metric.endswith("_loss") else "")
        rows.append({
            "id": h.id, "claim": h.claim, "metric": h.metric, "unit": unit,
            "a": v.a_cell, "b": v.b_cell,
            "expect": str(h.expect), "rope": h.rope * scale, "n": c.n,
            "mean_diff": c.mean * scale, "ci_low": c.ci[0] * scale, "ci_high": c.ci[1] * scale,
            "p_t": c.p_t,
            "effect_size": c.effect_size if c.effect_size is not None else math.nan,
            "effect_size_name": c.effect_name,
            "verdict": str(v.outcome), "verdict_fixed_n": str(c.verdict),
            "seeds_added": " ".join(map(str, v.seeds_added)),
            "why_no_verdict": v.why_no_verdict, "paired": c.paired,
            "seeds_needed": c.seeds_needed if c.seeds_needed is not None else math.nan,
            "p_verdict": v.p_verdict, "p_holm": v.p_holm,
            "verdict_holm": "n/a (seeds added)" if v.seeds_added else str(v.verdict_holm),
            "anytime_low": v.ci_anytime[0] * scale, "anytime_high": v.ci_anytime[1] * scale,
            "verdict_anytime": str(v.verdict_anytime),
            "a_did_not_learn": v.a_learning.label(), "b_did_not_learn": v.b_learning.label(),
            **_pairing_columns(c.pairing, scale), **_check_columns(c),
            **_test_set_columns(analysis.test_set.get(h.id), scale), "note": c.note})
    return pd.DataFrame(rows)


def _pairing_columns(g: PairingGain | None, scale: float) -> dict[str, float]:
    nan = math.nan
    return {"corr": g.corr if g else nan,
            "var_paired": g.var_paired * scale ** 2 if g else nan,
            "var_unpaired": g.var_unpaired * scale ** 2 if g else nan,
            "pairing_efficiency": g.efficiency if g else nan,
            "efficiency_low": g.efficiency_ci[0] if g else nan,
            "efficiency_high": g.efficiency_ci[1] if g else nan,
            "seeds_saved": g.seeds_saved if g else nan}


def _check_columns(c: Comparison) -> dict[str, object]:
    """The skew diagnostics and the sign-flip check beside the t (`stats.SkewCheck`)."""
    k = c.check
    return {"skewness": k.skewness if k else math.nan,
            "furthest_seed": k.furthest_seed if k and k.furthest_seed is not None else "",
            "furthest_sd": k.furthest_z if k else math.nan,
            "p_sign_flip": k.p_sign_flip if k else math.nan,
            "verdict_sign_flip": str(k.verdict_sign_flip) if k else "",
            "sign_flip_vs_t": sign_flip_agreement(c)}


def _test_set_columns(ts: TwoSources | None, scale: float) -> dict[str, object]:
    """McNemar's test per seed (`analysis.test_set`), as the report shows it."""
    if ts is None:
        return {"mcnemar_seeds": 0, "mcnemar_differ": math.nan, "mcnemar_p": "",
                "mcnemar_discordant": "", "test_set_se": math.nan}
    return {"mcnemar_seeds": len(ts.tests), "mcnemar_differ": ts.differing,
            "mcnemar_p": " ".join(f"{t.seed}:{t.p:.4g}" for t in ts.tests),
            "mcnemar_discordant": " ".join(f"{t.seed}:{t.n01}/{t.n10}" for t in ts.tests),
            "test_set_se": ts.test_set_se * scale}


def effects_table(analysis: Analysis) -> pd.DataFrame:
    return pd.DataFrame([{"effect": e.name, "n": e.n, "mean_points": e.mean * 100,
                          "ci_low": e.ci[0] * 100, "ci_high": e.ci[1] * 100, "p_t": e.p_t}
                         for e in analysis.effects])


def undecided_cells(analysis: Analysis) -> set[str]:
    """The cells of every hypothesis whose anytime-valid verdict is inconclusive: where more
    seeds could decide (NO_VERDICT hypotheses are left out: seeds would not help)."""
    out: set[str] = set()
    for v in analysis.verdicts:
        if v.verdict_anytime is Outcome.INCONCLUSIVE:
            out |= {v.a_cell, v.b_cell}
    return out
