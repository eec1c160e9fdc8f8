"""Reports: tables (Markdown, CSV), plots (PNG) and one self-contained HTML page.

The page embeds its images, so it opens in a browser without a server. Every file is also
logged as an artifact of the grid's parent run, under `report/`.
"""

from __future__ import annotations

import base64
import html
import math
import time
from pathlib import Path

import pandas as pd
from rich.markup import escape
from rich.table import Table

from cifarnet.analysis.chance import ALPHA as CHANCE_ALPHA
from cifarnet.analysis.plots import (
    plot_class_deltas,
    plot_curves,
    plot_differences,
    plot_tuning_curves,
)
from cifarnet.analysis.provenance import GridSource
from cifarnet.analysis.stats import SIGN_FLIP_MIN_N, Outcome
from cifarnet.spec.metrics import parse_time_to
from cifarnet.analysis.verdicts import (
    Analysis,
    analyze,
    check_matched,
    effects_table,
    hypotheses_table,
)
from cifarnet.tracking.results import (
    ParentRun,
    find_parent_run,
    load_predictions,
    load_runs,
    load_tuning,
)
from cifarnet.tracking.tags import TAG_GRID
from cifarnet.workspace import Workspace

FORMATS = ("md", "html", "csv")
# each verdict's terminal style and HTML class
VERDICT_STYLE = {Outcome.GREATER_BEYOND_ROPE: ("green", "beyond"),
                 Outcome.LESS_BEYOND_ROPE: ("green", "beyond"),
                 Outcome.NEGLIGIBLE: ("blue", "negligible"),
                 Outcome.GREATER: ("cyan", "direction"), Outcome.LESS: ("cyan", "direction"),
                 Outcome.INCONCLUSIVE: ("yellow", "inconclusive"),
                 Outcome.NO_VERDICT: ("magenta", "none")}


def _style(text: str) -> tuple[str, str]:
    """(terminal style, HTML class) of a cell that starts with a verdict; ("", "") if none."""
    return next((v for k, v in VERDICT_STYLE.items() if text.startswith(k)), ("", ""))


def analyze_grid(spec_or_experiment: str | ParentRun, workspace: Workspace | None = None,
                 with_history: bool = True, with_predictions: bool = False) -> Analysis:
    """The analysis of a grid's latest runs, read back from the workspace's store;
    `with_predictions` also downloads the runs' test predictions for McNemar's test per
    seed (one artifact per run of a hypothesis's cells). Raises UserError for a hypothesis
    without pairs whose runs finished (`verdicts.check_matched`)."""
    grid = spec_or_experiment if isinstance(spec_or_experiment, ParentRun) else (
        find_parent_run(spec_or_experiment, workspace))
    # an `epochs_to:` hypothesis is read from the per-epoch histories
    with_history = with_history or any(parse_time_to(h.metric) for h in grid.spec.hypotheses)
    runs = load_runs(grid, with_history=with_history)
    predictions = None
    if with_predictions and grid.spec.hypotheses and len(runs):
        cells = {grid.spec.cell_of(side).label for h in grid.spec.hypotheses for side in (h.a, h.b)}
        done = runs[runs["cell"].isin(cells) & (runs["status"] == "FINISHED")]
        predictions = load_predictions(grid.workspace, list(done["run_id"]))
    tuning = load_tuning(grid) if grid.spec.tune is not None else None
    analysis = analyze(grid.spec, runs, grid_source(grid), predictions, tuning)
    check_matched(grid.spec, runs, analysis.verdicts)  # runs that finished, yet no pair: ours
    return analysis


def grid_source(grid: ParentRun) -> GridSource:
    """The grid's identity for the report header (the parent run's `cifarnet.grid` tag)."""
    from cifarnet.tracking.client import mlflow_client

    tags = mlflow_client(grid.workspace.tracking_uri).get_run(grid.parent_run_id).data.tags
    return GridSource(grid.experiment, tags.get(TAG_GRID, ""), grid.parent_run_id)


def _fmt(v: object, digits: int = 2) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    return str(v)


def _p(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}"


def _mean_sd(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{_fmt(mean * 100)} ± {_fmt(sd * 100)}" if not math.isnan(sd) else (
        f"{_fmt(mean * 100)} (one run)")


def variants_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    matched = "unmatched_params" in a.variants
    head = ["cell", "params", *(["width", "unmatched params"] if matched else []), "MACs", "RF",
            "final acc %", "best acc %", "epochs to 85%", "finished", "failed", "did not learn"]
    rows = []
    for r in a.variants.to_dict("records"):
        size = ([_fmt(r["width"], 4), _fmt(r["unmatched_params"], 0)] if matched else [])
        rows.append([r["cell"], _fmt(r["params"], 0), *size, _fmt(r["MACs"], 0), _fmt(r["RF"], 0),
                     _mean_sd(r["final_acc_mean"], r["final_acc_std"]),
                     _mean_sd(r["best_acc_mean"], r["best_acc_std"]),
                     (f"{_fmt(r['epochs_to_85'], 1)} ({r['reached_85']} run(s))"
                      if r["reached_85"] else "not reached"),
                     str(r["finished"]), str(r["failed"]),
                     (f"{r['did_not_learn']} of {r['checked_vs_chance']}"
                      if r["checked_vs_chance"] else "not checked")])
    return head, rows


def _verdict_text(r: dict) -> str:
    """The verdict with its reasons: seeds that would decide, why there is none, the arms whose
    runs did not learn, Welch."""
    verdict = r["verdict"]
    if verdict == Outcome.INCONCLUSIVE and not math.isnan(r["seeds_needed"]):
        verdict += f" (~{int(r['seeds_needed'])} seeds would decide)"
    if r["why_no_verdict"]:
        verdict += f" ({r['why_no_verdict']})"
    else:
        stuck = [f"{side}: {r[f'{side}_did_not_learn']} runs did not learn" for side in "ab"
                 if r[f"{side}_did_not_learn"][:1] not in ("0", "-")]
        if stuck:
            verdict += f" [{'; '.join(stuck)}]"
    if not r["paired"]:
        verdict += " [unpaired, Welch]"
    if r["seeds_added"]:
        verdict += (f" [anytime-valid: seeds {r['seeds_added']} added by --until-decided; "
                    f"the fixed-n interval alone would say {r['verdict_fixed_n']}]")
    return verdict


def _claim(r: dict) -> str:
    return f"{r['claim']} ({r['expect']}, rope {_fmt(r['rope'], 2)} {r['unit']})".replace(' )', ')')


def _interval(lo: float, hi: float) -> str:
    if math.isinf(lo) and math.isinf(hi):
        return "none"
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def hypotheses_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["id", "claim", "n", "a - b", "95% CI", "p (t)", "d_z (d if unpaired)", "verdict"]
    rows = [[r["id"], _claim(r), str(r["n"]), f"{_fmt(r['mean_diff'])} {r['unit']}".strip(),
             _interval(r["ci_low"], r["ci_high"]), _p(r["p_t"]),
             ("" if r["paired"] or math.isnan(r["effect_size"]) else "d ")
             + _fmt(r["effect_size"]), _verdict_text(r)]
            for r in hypotheses_table(a).to_dict("records")]
    return head, rows


def check_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["id", "n", "skewness", "seed furthest out (sds from the mean)", "p (sign-flip)",
            "verdict (sign-flip)", "sign-flip vs t"]
    rows = [[r["id"], str(r["n"]), _fmt(r["skewness"]),
             "-" if r["furthest_seed"] == "" or math.isnan(r["furthest_sd"]) else
             f"{r['furthest_seed']} ({r['furthest_sd']:+.2f})", _p(r["p_sign_flip"]),
             r["verdict_sign_flip"] or "-", r["sign_flip_vs_t"]]
            for r in hypotheses_table(a).to_dict("records")]
    return head, rows


def adjusted_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["id", "p (verdict)", "p (Holm)", "verdict (Holm)", "anytime 95% CS",
            "verdict (anytime)", "a: did not learn", "b: did not learn"]
    rows = [[r["id"], _p(r["p_verdict"]), _p(r["p_holm"]), r["verdict_holm"],
             _interval(r["anytime_low"], r["anytime_high"]), r["verdict_anytime"],
             r["a_did_not_learn"], r["b_did_not_learn"]]
            for r in hypotheses_table(a).to_dict("records")]
    return head, rows


def pairing_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["id", "n", "corr(a, b)", "var(a - b)", "var(a) + var(b)", "efficiency",
            "95% interval", "seeds the pairing saved"]
    rows = []
    for r in hypotheses_table(a).to_dict("records"):
        saved = r["seeds_saved"]
        rows.append([r["id"], str(r["n"]), _fmt(r["corr"]), _fmt(r["var_paired"], 4),
                     _fmt(r["var_unpaired"], 4), _fmt(r["pairing_efficiency"]),
                     _interval(r["efficiency_low"], r["efficiency_high"]),
                     "not shown (the interval includes 1)" if math.isnan(saved) else
                     (f"at least {saved:.1f} per arm" if saved >= 0
                      else f"cost at least {-saved:.1f} per arm")])
    return head, rows


def notes(a: Analysis) -> list[str]:
    return [f"{v.hypothesis.id}: {v.comparison.note}" for v in a.verdicts if v.comparison.note]


def effects_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["effect (first level minus second)", "n", "points", "95% CI", "p (t)"]
    rows = [[r["effect"], str(r["n"]), _fmt(r["mean_points"]),
             _interval(r["ci_low"], r["ci_high"]), _p(r["p_t"])]
            for r in effects_table(a).to_dict("records")]
    return head, rows


def verdict_table(a: Analysis) -> Table:
    """The hypotheses as a compact rich table for the terminal (claims and notes in the
    caption; user text is escaped, so `[/]` in a claim prints as written)."""
    head, rows = hypotheses_rows(a)
    adj = {r[0]: r for r in adjusted_rows(a)[1]}
    keep = [0, 2, 3, 4, 5, 7]
    caption = [f"{r[0]}: {r[1]}" for r in rows] + [f"note {n}" for n in notes(a)]
    if a.provenance is not None:
        caption.insert(0, a.provenance.budget)
    t = Table(title=escape(f"{a.spec.name}: hypotheses"),
              caption=escape("\n".join(caption)), caption_justify="left")
    for i in keep:
        t.add_column(head[i], overflow="fold", justify="left" if i in (0, 7) else "right")
    t.add_column("Holm", overflow="fold")
    t.add_column("anytime", overflow="fold")
    for row in rows:
        styled = []
        for text in (row[-1], adj[row[0]][3], adj[row[0]][5]):
            style = _style(text)[0]
            styled.append(f"[{style}]{escape(text)}[/]" if style else escape(text))
        t.add_row(*[escape(row[i]) for i in keep[:-1]], *styled)
    return t


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *["| " + " | ".join(r) + " |" for r in esc]])


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(c: str) -> str:
        cls = _style(c)[1]
        return f'<td class="{cls}">{html.escape(c)}</td>'
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
            + "</tbody></table>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;
padding:4px 8px;text-align:left}th{background:#f3f3f3}td.beyond{background:#e8f5e9;
font-weight:600}td.negligible{background:#e3f2fd;font-weight:600}td.direction{
background:#f1f8e9}td.inconclusive{background:#fffde7}td.none{background:#f3e5f5}img{max-width:100%;border:1px solid #eee;margin:.5em 0}.note{color:#666;
font-size:13px}"""

RULES = ("Verdicts use paired differences over shared seeds and a 95% t-interval with the "
         "rope r: 'a > b by more than the rope' when the interval lies above r; 'no "
         "difference worth having' when it lies below r (for 'a > b'; above -r for 'a < b', "
         "inside (-r, r) for 'a == b'); 'a > b, by less than the rope or an unknown amount' "
         "when it lies above 0 only; mirrored for a < b; otherwise inconclusive. Each is a "
         "one-sided t-test at 2.5% (TOST at 2.5% per side for 'a == b'), wrong at most 2.5% "
         "of the time under normal differences (docs/statistics.md: the rates measured under "
         "skew). Without a spread estimate (one seed, or differences all equal) there is no "
         "interval and the verdict is inconclusive.")
HOLM = ("With several hypotheses, the chance that at least one verdict is wrong grows with "
        "their number; Holm's adjustment (Holm 1979) keeps it at the verdicts' level for the "
        "whole spec, and 'verdict (Holm)' is what survives it. A hypothesis with seeds added "
        "by --until-decided has no valid fixed-n p-value: it counts in the family as p = 1 "
        "and its Holm verdict is n/a. 'p (verdict)' is twice the one-sided p-value of the "
        "t-test the fixed-n verdict rests on (against 0 or the rope; the smallest of the "
        "decisive verdicts' when inconclusive), so it is below 0.05 exactly when that test "
        "rejects at 2.5%; Holm adjusts it. 'p (t)' above is the two-sided test of a - b = 0.")
ANYTIME = ("'verdict (anytime)' uses a 95% confidence sequence (Lai 1976; Howard et al. 2021) "
           "that holds at every number of seeds at once: it is the verdict to read when seeds "
           "were added with --until-decided, whose stopping rule it is, and the 'verdict' "
           "column then shows it (marked 'anytime-valid').")
CHANCE = (f"A run 'did not learn' when its test accuracy is not above chance (1/classes) by an "
          f"exact one-sided binomial test over its test images at the {CHANCE_ALPHA:g} level; "
          "a hypothesis whose arms both did not learn gets no verdict.")
PAIRING = ("The seeds pair the variants. 'efficiency' is var(a) + var(b) over var(a - b): an "
           "unpaired design would need that many times the seeds for the same precision; "
           "below 1 the pairing cost seeds. From few seeds the ratio is mostly noise, so it "
           "comes with a 95% interval (an F interval, assuming normal arms of equal spread), "
           "and seeds saved (or cost) are given only when the interval excludes 1, as the "
           "least the interval supports.")
CHECK = ("The t assumes normal differences; a few bad seeds skew them. 'skewness' is the "
         "sample skewness of the paired differences, and the seed furthest out is named with "
         "its distance from the mean in sds. The sign-flip check (Fisher 1935) applies the "
         "same verdict rules with exact permutation tests that assume only differences "
         "symmetric about their mean; it cannot reach 2.5% one-sided below "
         f"{SIGN_FLIP_MIN_N} seeds (2^n sign patterns). Where it disagrees with the t, read "
         "the verdict with care: skew or an outlier may be driving it.")


TWO_SOURCES = ("Per seed, McNemar's exact test (1947) on the test images where exactly one "
               "network is right asks whether the two trained networks differ on this test set; "
               "the verdict over seeds asks whether the training procedures differ. 'test-set "
               "error' is the standard error of one seed's difference from the test images "
               "alone: how far it would move on a fresh test set of the same size. It is not a "
               "rival to the spread over seeds: that spread already contains the test images' "
               "share of the seed noise.")


def two_sources_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["id", "seeds", "differ on the test set (p < 0.05)", "McNemar p per seed",
            "discordant images (a only / b only)", "test-set error (points)"]
    rows = []
    for v in a.verdicts:
        ts = a.test_set.get(v.hypothesis.id)
        if ts is None:
            continue
        rows.append([v.hypothesis.id, str(len(ts.tests)), f"{ts.differing} of {len(ts.tests)}",
                     ", ".join(f"{t.seed}: {_p(t.p)}" for t in ts.tests),
                     ", ".join(f"{t.n01}/{t.n10}" for t in ts.tests),
                     _fmt(ts.test_set_se * 100)])
    return head, rows


TUNING = ("Every arm of a hypothesis was tuned with the same budget before the verdict: the "
          "same search space, number of trials, epochs per trial, validation split (carved "
          "from the training set; the trials held no test split), trial seed, sampler and "
          "pruner. The verdict runs train each arm's best configuration on the spec's seeds, "
          "none of them the trials' seed. 'expected best' is the expected best validation "
          "accuracy of n trials (Dodge et al. 2019, 'Show Your Work'). 'budget enough?' says "
          "no when the expected best rose, from half the trials to all of them, by more than "
          "half the smallest rope at stake for that arm and by more than two validation "
          "images: more trials would likely have changed the arm's recipe.")


def tuning_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    t = a.spec.tune
    head = ["arm", "trials (complete / pruned / failed or interrupted)", "budget per trial",
            "sampler",
            "best trial", "best val_acc", "tuned values", "expected best: n/2 -> n trials",
            "budget enough?"]
    rows = []
    order = {cell.label: i for i, cell in enumerate(a.spec.cells())}
    for c in sorted(a.tuning, key=lambda c: order.get(c.cell, len(order))):
        failed = sum(v for k, v in c.trials.items() if k not in ("COMPLETE", "PRUNED"))
        gain = c.last_doubling_gain()
        half = (c.n + 1) // 2
        ropes = [h.rope for h in a.spec.hypotheses
                 if c.cell in (a.spec.cell_of(h.a).label, a.spec.cell_of(h.b).label)]
        # half the smallest rope at stake, and at least two validation images' worth
        bar = max(min(ropes, default=0.0) / 2, 2 / t.val_size)
        enough = ("-" if math.isnan(gain) else
                  f"no: +{gain * 100:.2f} points from {half} to {c.n} trials" if gain > bar
                  else f"yes: +{gain * 100:.2f} points from {half} to {c.n} trials")
        rows.append([c.cell, f"{c.trials.get('COMPLETE', 0)} / {c.trials.get('PRUNED', 0)} / "
                     f"{failed}", f"{t.epochs} epoch(s), {t.val_size:,} validation images, "
                     f"train.seed {t.seed}",
                     ", ".join(f"{k} {v}" for k, v in t.sampler.items()),
                     "-" if c.best_trial is None else str(c.best_trial),
                     "-" if c.best_value is None else f"{c.best_value:.4f}",
                     c.tuned_text() or "-",
                     f"{c.mean[half - 1]:.4f} -> {c.mean[-1]:.4f}" if c.n else "-", enough])
    return head, rows


def _sections(a: Analysis) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    out = [("Variants", "", variants_rows(a)), ("Hypotheses", RULES, hypotheses_rows(a))]
    if a.tuning:
        out.insert(0, ("Tuning, then comparing", TUNING, tuning_rows(a)))
    if a.verdicts:
        out.append(("Several hypotheses, optional stopping, runs at chance",
                    f"{HOLM} {ANYTIME} {CHANCE}", adjusted_rows(a)))
        out.append(("Beside the t: skew and a sign-flip check", CHECK, check_rows(a)))
        out.append(("What the pairing bought", PAIRING, pairing_rows(a)))
    if any(a.test_set.values()):
        out.append(("The test set, per seed", TWO_SOURCES, two_sources_rows(a)))
    if a.effects:
        out.append(("Factorial effects on test accuracy", "", effects_rows(a)))
    return out


def header_lines(a: Analysis) -> list[str]:
    """The report's first lines: the budget, then grid, parent run, data, recipe, dates."""
    if a.provenance is None:
        return []
    return [a.provenance.budget, *[f"{k}: {v}" for k, v in a.provenance.fields]]


def write_report(a: Analysis, out: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write the plots and the requested formats into `out`; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_curves(a, out / "curves.png"), plot_differences(a, out / "differences.png"),
             plot_class_deltas(a, out / "class_deltas.png"),
             *([plot_tuning_curves(a, out / "tuning_curves.png")] if a.tuning else [])]
    files = list(plots)
    sections = _sections(a)
    title = f"{a.spec.name}" + (f" - {a.data_label}" if a.data_label else "")
    head = header_lines(a)
    if "csv" in formats:
        for name, df in (("variants", a.variants), ("hypotheses", hypotheses_table(a)),
                         ("effects", effects_table(a)),
                         *([("tuning", pd.DataFrame(tuning_rows(a)[1],
                                                    columns=tuning_rows(a)[0]))]
                           if a.tuning else []),
                         ("runs", a.runs.drop(columns=["history"], errors="ignore"))):
            df.to_csv(out / f"{name}.csv", index=False)
            files.append(out / f"{name}.csv")
    if "md" in formats:
        md = [f"# {title}", ""]
        if head:
            md += [f"**{head[0]}**", "", *[f"- {line}" for line in head[1:]], ""]
        md += [a.spec.description.strip(), ""]
        for name, text, (cols, rows) in sections:
            md += [f"## {name}", ""] + ([text, ""] if text else []) + [_md_table(cols, rows), ""]
        if notes(a):
            md += ["## Notes", "", *[f"- {n}" for n in notes(a)], ""]
        md += [f"![{p.stem}]({p.name})" for p in plots]
        (out / "report.md").write_text("\n".join(md) + "\n")
        files.append(out / "report.md")
    if "html" in formats:
        body = [f"<h1>{html.escape(title)}</h1>"]
        if head:
            body += [f"<p><strong>{html.escape(head[0])}</strong></p><ul>"
                     + "".join(f"<li>{html.escape(line)}</li>" for line in head[1:]) + "</ul>"]
        body.append(f"<p>{html.escape(a.spec.description.strip())}</p>")
        for name, text, (cols, rows) in sections:
            body += [f"<h2>{html.escape(name)}</h2>"]
            if text:
                body.append(f'<p class="note">{html.escape(text)}</p>')
            body.append(_html_table(cols, rows))
        if notes(a):
            body += ["<h2>Notes</h2><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes(a)) + "</ul>"]
        for p in plots:
            data = base64.b64encode(p.read_bytes()).decode()
            body.append(f'<img alt="{p.stem}" src="data:image/png;base64,{data}">')
        (out / "report.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>")
        files.append(out / "report.html")
    return files


def log_verdicts(grid: ParentRun, analysis: Analysis) -> None:
    """Each hypothesis's answer on the grid's parent run, where MLflow's UI shows it: the
    tag `cifarnet.verdict.<id>` (the verdict) and the metrics `<id>.mean_diff`, `<id>.ci_low`,
    `<id>.ci_high` (points, nats or epochs, as the report's table) and `<id>.n` (seeds)."""
    from mlflow.entities import Metric

    from cifarnet.tracking.client import mlflow_client
    from cifarnet.tracking.tags import TAG_VERDICT

    client = mlflow_client(grid.workspace.tracking_uri)
    now = int(time.time() * 1000)
    metrics = []
    for row in hypotheses_table(analysis).to_dict("records"):
        client.set_tag(grid.parent_run_id, TAG_VERDICT + row["id"], row["verdict"])
        metrics += [Metric(f"{row['id']}.{k}", float(row[k]), now, 0)
                    for k in ("mean_diff", "ci_low", "ci_high", "n") if math.isfinite(row[k])]
    if metrics:
        client.log_batch(grid.parent_run_id, metrics=metrics)


def log_report(grid: ParentRun, files: list[Path]) -> None:
    """Attach the report's files to the grid's parent run (artifact folder `report/`)."""
    from cifarnet.tracking.client import mlflow_client

    client = mlflow_client(grid.workspace.tracking_uri)
    parent_run_id = grid.parent_run_id
    for f in files:
        client.log_artifact(parent_run_id, str(f), "report")

