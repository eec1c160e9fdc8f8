"""Verdict tables from runs built in memory: runs at chance, Holm, the report's header and
plots, adaptive seeds that skip questions the data cannot answer."""

from __future__ import annotations

import datetime as dt
import math

import matplotlib
import pandas as pd
import pytest

from cifarnet.ablation.adaptive import next_jobs
from cifarnet.spec.ablation import parse_spec
from cifarnet.analysis.chance import above_chance_p, chance_threshold, did_not_learn
from cifarnet.analysis.multiple import adjusted_verdict, holm_adjust
from cifarnet.analysis.plots import class_deltas_figure, curves_figure
from cifarnet.analysis.provenance import GridSource, describe
from cifarnet.analysis.report import (
    header_lines,
    hypotheses_rows,
    verdict_table,
    write_report,
)
from cifarnet.analysis.stats import Outcome
from cifarnet.analysis.verdicts import analyze, hypotheses_table

matplotlib.use("Agg")

A, B = "lr=0.05", "lr=1e-06"
SPEC_RAW = {
    "name": "lr_check", "factors": {"train.lr": [0.05, 1e-6]}, "seeds": [0, 1, 2],
    "hypotheses": [
        {"id": "H1", "claim": "a larger lr learns more", "a": {"train.lr": 0.05},
         "b": {"train.lr": 1e-6}, "expect": "a > b", "rope": 0.01},
        {"id": "H2", "claim": "the lr does not matter [/]", "a": {"train.lr": 0.05},
         "b": {"train.lr": 1e-6}, "expect": "a == b", "rope": 0.01}]}
SPEC = parse_spec(SPEC_RAW)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed by hand."""
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def fake_runs(values: dict[str, dict[int, float]], num_test: int = 500, classes: int = 10,
              epochs: int = 2, train: int = 2000, history: bool = False) -> pd.DataFrame:
    rows = []
    for cell, by_seed in values.items():
        for seed, acc in by_seed.items():
            row = {"run_id": f"{cell}-{seed}", "cell": cell, "seed": seed, "status": "FINISHED",
                   "metrics.test_acc": acc, "params.data.num_test": str(num_test),
                   "params.data.num_train": str(train), "params.data.num_val": "0",
                   "params.train.epochs": str(epochs), "params.train.lr": cell.split("=")[1],
                   "params.train.batch_size": "256", "params.train.schedule": "onecycle",
                   "params.train.optimizer": "sgd", "params.train.weight_decay": "0.0005",
                   "params.train.label_smoothing": "0.1",
                   "params.data.train_subset": str(train), "params.data.test_subset": "None",
                   "params.data.label": "CIFAR-10 (JPEG q75 mirror)",
                   "start_time": pd.Timestamp("2026-11-29 09:00", tz="UTC"),
                   "end_time": pd.Timestamp("2026-11-29 09:05", tz="UTC")}
            for c in range(classes):
                row[f"metrics.test_acc_class.c{c}"] = acc + 0.001 * (c - seed)
            if history:
                row["history"] = {"test_acc": [acc / 2, acc]}
            rows.append(row)
    return pd.DataFrame(rows)


# --- chance (issue 17, section 4) ----------------------------------------------------------

def test_chance_test_hand_checked() -> None:
    # 50 of 500 (10.0%): P(X >= 50 | 500, 0.1) is about one half: did not learn
    assert above_chance_p(0.10, 500, 10) == pytest.approx(binom_sf(50, 500, 0.1), rel=1e-6)
    assert did_not_learn(0.10, 500, 10)
    # the threshold on 500 images: 67 correct (13.4%) is above chance at 1%, 66 is not
    assert binom_sf(67, 500, 0.1) < 0.01 <= binom_sf(66, 500, 0.1)
    assert chance_threshold(500, 10) == pytest.approx(0.134)
    assert not did_not_learn(0.134, 500, 10) and did_not_learn(0.132, 500, 10)
    assert not did_not_learn(0.15, 500, 10)  # the "done" budget ends above 15%
    # a bigger test set resolves smaller gains: 1,071 of 10,000
    assert chance_threshold(10_000, 10) == pytest.approx(0.1071)
    assert did_not_learn(0.30, 20, 10)  # 6 of 20 images cannot tell a net from a guess
    with pytest.raises(ValueError):
        above_chance_p(0.5, 500, 1)
    with pytest.raises(ValueError):
        above_chance_p(math.nan, 500, 10)


def test_both_arms_at_chance_get_no_verdict() -> None:
    runs = fake_runs({A: {0: 0.100, 1: 0.102, 2: 0.098}, B: {0: 0.100, 1: 0.096, 2: 0.104}})
    an = analyze(SPEC, runs)
    for v in an.verdicts:
        assert v.comparison.verdict == Outcome.NO_VERDICT
        assert v.verdict_anytime == Outcome.NO_VERDICT and v.verdict_holm == Outcome.NO_VERDICT
        assert "both arms did not learn" in v.comparison.note
        assert v.a_learning.label() == "3/3" and v.b_learning.label() == "3/3"
        assert v.comparison.n == 3  # the numbers are still shown
    assert list(an.variants["did_not_learn"]) == [3, 3]
    assert next_jobs(SPEC, an, max_seeds=10) == []  # more seeds would not help
    rows = {r[0]: r for r in hypotheses_rows(an)[1]}
    assert rows["H1"][-1] == "no verdict (both arms did not learn)"


def test_one_arm_at_chance_is_a_real_effect() -> None:
    # the "done" case: lr 0.05 learns (about 20%), lr 1e-6 stays at chance
    runs = fake_runs({A: {0: 0.200, 1: 0.220, 2: 0.190}, B: {0: 0.100, 1: 0.098, 2: 0.102}})
    an = analyze(SPEC, runs)
    h1, h2 = an.verdicts
    assert h1.comparison.verdict == h2.comparison.verdict == Outcome.GREATER_BEYOND_ROPE
    assert "b did not learn in 3 of 3 run(s)" in h1.comparison.note
    assert h1.a_learning.label() == "0/3"
    assert list(an.runs["did_not_learn"]) == [False] * 3 + [True] * 3
    rows = {r[0]: r for r in hypotheses_rows(an)[1]}
    assert rows["H1"][-1] == "a > b by more than the rope [b: 3/3 runs did not learn]"


def test_runs_that_cannot_be_checked_are_not_flagged() -> None:
    runs = fake_runs({A: {0: 0.1, 1: 0.1}, B: {0: 0.1, 1: 0.1}}).drop(
        columns=["params.data.num_test"])
    an = analyze(SPEC, runs)
    assert all(f is None for f in an.runs["did_not_learn"])
    assert an.verdicts[0].comparison.verdict != Outcome.NO_VERDICT


def test_a_metric_no_run_logged_gets_no_verdict() -> None:
    """A validation split was asked for (so the spec is valid) but no run logged the metric."""
    spec = parse_spec({
        "name": "val", "base": {"data.val_size": 10},
        "factors": {"train.lr": [0.05, 1e-6]}, "seeds": [0, 1],
        "hypotheses": [{"id": "V", "metric": "val_acc", "a": {"train.lr": 0.05},
                        "b": {"train.lr": 1e-6}, "expect": "a > b", "rope": 0.0}]})
    an = analyze(spec, fake_runs({A: {0: 0.3, 1: 0.31}, B: {0: 0.2, 1: 0.22}}))
    v = an.verdicts[0]
    assert v.comparison.verdict == Outcome.NO_VERDICT and "val_acc" in v.comparison.note
    assert next_jobs(spec, an, max_seeds=10) == []


# --- Holm (issue 14, section 3) --------------------------------------------------------------

def test_holm_adjust_hand_checked() -> None:
    # sorted 0.01, 0.03, 0.04 with k = 3: 0.03, max(0.06, 0.03), max(0.04, 0.06)
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # a NaN counts as p = 1 in k = 4: 0.04, 0.09, max(0.08, 0.09), NaN
    out = holm_adjust([0.01, 0.04, math.nan, 0.03])
    assert out[:2] == pytest.approx([0.04, 0.09]) and out[3] == pytest.approx(0.09)
    assert math.isnan(out[2]) and holm_adjust([]) == []
    assert adjusted_verdict(Outcome.GREATER_BEYOND_ROPE, 0.06) == Outcome.INCONCLUSIVE
    assert adjusted_verdict(Outcome.NEGLIGIBLE, 0.01) == Outcome.NEGLIGIBLE
    assert adjusted_verdict(Outcome.GREATER, 0.06) == Outcome.INCONCLUSIVE
    assert adjusted_verdict(Outcome.NO_VERDICT, math.nan) == Outcome.NO_VERDICT


def test_holm_does_not_collect_the_whole_heap() -> None:
    """statsmodels' Holm calls gc.collect() each time: with torch and MLflow loaded that was
    1.9 s per analysed grid (a third of the quick tests' time). Objects already alive are
    frozen out of that collection, and unfrozen after."""
    import gc
    import time

    heap = [{"n": [i]} for i in range(400_000)]  # a long-lived process's objects
    start = time.perf_counter()
    gc.collect()
    full = time.perf_counter() - start
    start = time.perf_counter()
    holm_adjust([0.01, 0.04, 0.03])
    adjusted = time.perf_counter() - start
    assert adjusted < full / 5, (adjusted, full)
    assert gc.get_freeze_count() == 0 and len(heap) == 400_000
    gc.freeze()  # a caller that froze its own objects keeps them frozen (breaker)
    try:
        frozen = gc.get_freeze_count()
        holm_adjust([0.01, 0.04, 0.03])
        # still frozen (unfrozen, the count would be 0; frozen objects that die leave it)
        assert gc.get_freeze_count() > frozen // 2, (gc.get_freeze_count(), frozen)
    finally:
        gc.unfreeze()


def test_two_decisive_hypotheses_do_not_survive_holm() -> None:
    # both hypotheses see d = 0.02, 0.03, 0.04: raw p = 1 - sqrt(27/29) = 0.0351 each (see
    # test_stats), beyond the rope 0; Holm with k = 2: 0.0702 for both, so inconclusive
    spec = parse_spec({
        "name": "two", "factors": {"train.lr": [0.05, 1e-6]}, "seeds": [0, 1, 2],
        "hypotheses": [{"id": i, "a": {"train.lr": 0.05}, "b": {"train.lr": 1e-6},
                        "expect": "a > b", "rope": 0.0} for i in ("P", "Q")]})
    an = analyze(spec, fake_runs({A: {0: 0.52, 1: 0.53, 2: 0.54}, B: {0: 0.5, 1: 0.5, 2: 0.5}}))
    raw = 1 - math.sqrt(27 / 29)
    for v in an.verdicts:
        assert v.comparison.verdict == Outcome.GREATER_BEYOND_ROPE
        assert v.p_verdict == pytest.approx(raw, rel=1e-6)
        assert v.p_holm == pytest.approx(2 * raw, rel=1e-6)
        assert v.verdict_holm == "inconclusive"
    table = hypotheses_table(an)
    assert list(table["verdict_holm"]) == ["inconclusive"] * 2
    assert {"p_holm", "verdict_anytime", "corr", "seeds_saved", "efficiency_low", "skewness",
            "furthest_seed", "p_sign_flip", "verdict_sign_flip", "sign_flip_vs_t",
            "mcnemar_p"} <= set(table.columns)


# --- what a report reports (issue 17, section 5) ---------------------------------------------

def test_header_says_what_the_report_reports() -> None:
    runs = fake_runs({A: {0: 0.200, 1: 0.220, 2: 0.190}, B: {0: 0.100, 1: 0.098, 2: 0.102}})
    runs["params.precision"] = "fp32"
    p = describe(runs, GridSource("lr_check", "abc123", "run42"),
                 now=dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC))
    fields = dict(p.fields)
    assert p.reduced and p.budget == "reduced budget: 2 epochs, 2,000 training images"
    assert fields["grid"] == "lr_check (grid id abc123)" and fields["parent run"] == "run42"
    assert fields["data"] == "CIFAR-10 (JPEG q75 mirror)"
    assert fields["images"] == "2,000 train, 0 validation, 500 test"
    assert fields["epochs"] == "2"
    assert "sgd, lr 1e-06, 0.05 (varies by cell)" in fields["recipe"]
    assert "batch 256" in fields["recipe"] and "schedule onecycle" in fields["recipe"]
    assert fields["precision"] == "fp32"
    assert fields["seeds"].startswith("3 (0, 1, 2)")
    assert fields["runs"] == "2026-11-29 09:00 UTC to 2026-11-29 09:05 UTC"
    assert fields["report written"] == "2026-11-29 10:00 UTC"
    full = fake_runs({A: {0: 0.83}}, num_test=10_000, epochs=30, train=50_000)
    full["params.data.train_subset"] = "None"
    assert describe(full).budget == (
        "full budget: 30 epochs, 50,000 training images, 10,000 test images")


def test_report_files_start_with_the_header(tmp_path) -> None:
    runs = fake_runs({A: {0: 0.200, 1: 0.220, 2: 0.190}, B: {0: 0.100, 1: 0.098, 2: 0.102}},
                     history=True)
    an = analyze(SPEC, runs, GridSource("lr_check", "abc123", "run42"))
    write_report(an, tmp_path)
    md = (tmp_path / "report.md").read_text().splitlines()
    assert md[2] == "**reduced budget: 2 epochs, 2,000 training images**"
    assert "grid id abc123" in md[4] and "run42" in md[5]
    text = "\n".join(md)
    for needed in ("Holm", "verdict (anytime)", "did not learn", "seeds the pairing saved",
                   "b did not learn in 3 of 3"):
        assert needed in text, needed
    html = (tmp_path / "report.html").read_text()
    assert "reduced budget: 2 epochs" in html and "grid id abc123" in html
    hyp = pd.read_csv(tmp_path / "hypotheses.csv")
    assert {"corr", "var_paired", "var_unpaired", "seeds_saved", "p_holm"} <= set(hyp.columns)
    assert header_lines(an)[0].startswith("reduced budget")


def test_terminal_table_prints_markup_in_claims() -> None:
    from rich.console import Console

    an = analyze(SPEC, fake_runs({A: {0: 0.2, 1: 0.22}, B: {0: 0.1, 1: 0.098}}))
    console = Console(record=True, width=200)
    console.print(verdict_table(an))
    assert "the lr does not matter [/]" in console.export_text()


# --- plots ----------------------------------------------------------------------------------

def test_curves_fit_the_data() -> None:
    runs = fake_runs({A: {0: 0.200, 1: 0.220}, B: {0: 0.100, 1: 0.098}}, history=True)
    fig = curves_figure(analyze(SPEC, runs))
    lo, hi = fig.axes[0].get_ylim()
    # data span 4.9% .. 22%: padded by 5% of the span (0.855 points), and 85% left out
    assert lo == pytest.approx(4.9 - 0.855) and hi == pytest.approx(22.0 + 0.855)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("85% target: 63.0 points above" in t for t in labels)
    assert "reduced budget" in fig.axes[0].get_title()


def test_class_deltas_show_intervals_or_say_they_have_none() -> None:
    runs = fake_runs({A: {0: 0.200, 1: 0.220, 2: 0.190}, B: {0: 0.100, 1: 0.098, 2: 0.104}})
    fig = class_deltas_figure(analyze(SPEC, runs))
    ax = fig.axes[0]
    assert "95% t-interval over seeds" in ax.get_title()
    assert any(isinstance(c, matplotlib.container.ErrorbarContainer) for c in ax.containers)
    one = class_deltas_figure(analyze(SPEC, fake_runs({A: {0: 0.2}, B: {0: 0.1}})))
    assert "no interval: one seed" in one.axes[0].get_title()
    assert not any(isinstance(c, matplotlib.container.ErrorbarContainer)
                   for c in one.axes[0].containers)


def test_one_run_has_no_spread_in_the_variants_table() -> None:
    an = analyze(SPEC, fake_runs({A: {0: 0.2}, B: {0: 0.1, 1: 0.12}}))
    v = an.variants.set_index("cell")
    assert v.loc[A, "final_acc_mean"] == pytest.approx(0.2)
    assert math.isnan(v.loc[A, "final_acc_std"])  # not 0.00: one run has no spread
    assert v.loc[B, "final_acc_std"] == pytest.approx(0.0141421, rel=1e-5)


# --- seeds added by --until-decided: the verdict to read ----------------------------------

def test_a_grid_with_seeds_added_reads_the_anytime_verdict(tmp_path) -> None:
    """`--until-decided` adds seeds one at a time and stops at a verdict; the fixed-n
    t-interval looked at after each seed overclaims, so such a grid's verdict is the
    anytime-valid one. Here six seeds (3-5 added: their runs' tag, column seed_added) give a
    fixed-n 'a > b, by less than the rope or an unknown amount' that the confidence sequence
    does not: every place that shows the verdict (the report's row and CSV, the terminal
    table, RESULTS.md's claim section and summary, the plot's label) says 'inconclusive'; Holm's verdict is
    n/a for it (its p enters the family as 1). The same values without the tag (seeds listed
    in the spec, whatever the spec says now) keep the fixed-n verdict."""
    from cifarnet.analysis.plots import plot_differences
    from cifarnet.analysis.results import Claim, agreement, claim_section

    diffs = [0.025, 0.005, 0.035, 0.010, 0.030, 0.015]
    values = {A: {s: 0.60 + d for s, d in enumerate(diffs)}, B: dict.fromkeys(range(6), 0.60)}
    runs = fake_runs(values)
    runs["seed_added"] = runs["seed"] >= 3
    an = analyze(SPEC, runs)
    v = an.verdicts[0]
    assert v.comparison.verdict == Outcome.GREATER  # the fixed-n interval alone
    assert v.verdict_anytime == Outcome.INCONCLUSIVE
    assert v.seeds_added == (3, 4, 5) and v.outcome == Outcome.INCONCLUSIVE
    assert v.verdict_holm == Outcome.NO_VERDICT and math.isnan(v.p_holm)
    row = hypotheses_table(an).set_index("id").loc["H1"]
    assert (row["verdict"], row["verdict_fixed_n"], row["seeds_added"], row["verdict_holm"]) == (
        "inconclusive", Outcome.GREATER, "3 4 5", "n/a (seeds added)")
    assert math.isnan(row["seeds_needed"])  # a fixed-n figure, not offered here
    text = dict((r[0], r[-1]) for r in hypotheses_rows(an)[1])["H1"]
    assert text.startswith("inconclusive [anytime-valid: seeds 3 4 5 added by --until-decided; "
                           f"the fixed-n interval alone would say {Outcome.GREATER}]"), text
    assert agreement(v).startswith("undecided: the anytime-valid interval spans")
    page = "\n".join(claim_section(Claim("1", "lr_check", "H1", "words"), an, [], {}))
    assert "| **inconclusive** |" in page and f"| **{Outcome.GREATER}** |" not in page
    lo, hi = (100 * x for x in v.ci_anytime)
    assert f"[{lo:+.2f}, {hi:+.2f}] (anytime)" in page  # the interval its verdict comes from
    assert "Seeds 3, 4, 5 were added one at a time by `--until-decided`" in page
    assert f"alone it would say {Outcome.GREATER}" in page
    assert "a fixed design" in page and "needs about" in page
    assert plot_differences(an, tmp_path / "d.png").stat().st_size > 0
    untagged = analyze(parse_spec({**SPEC_RAW, "seeds": [0]}), fake_runs(values)).verdicts[0]
    assert untagged.seeds_added == () and untagged.outcome == Outcome.GREATER
