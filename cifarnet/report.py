"""Reports: tables (Markdown, CSV), plots (PNG) and one self-contained HTML page.

The page embeds its images, so it opens in a browser without a server. Every file is also
logged as an artifact of the grid's parent run, under `report/`.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from rich.table import Table

from cifarnet.analysis import Analysis, analyze, effects_table, hypotheses_table
from cifarnet.plots import plot_class_deltas, plot_curves, plot_differences
from cifarnet.results import Grid, find_grid, load_runs

FORMATS = ("md", "html", "csv")
VERDICT_STYLE = {"supported": "green", "refuted": "red", "inconclusive": "yellow"}


def analyze_grid(spec_or_experiment: str | Grid, with_history: bool = True) -> Analysis:
    grid = spec_or_experiment if isinstance(spec_or_experiment, Grid) else find_grid(
        spec_or_experiment)
    return analyze(grid.spec, load_runs(grid, with_history=with_history))


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


def variants_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["cell", "params", "MACs", "RF", "final acc %", "best acc %", "epochs to 85%",
            "finished", "failed"]
    rows = []
    for r in a.variants.to_dict("records"):
        rows.append([r["cell"], _fmt(r["params"], 0), _fmt(r["MACs"], 0), _fmt(r["RF"], 0),
                     f"{_fmt(r['final_acc_mean'] * 100)} ± {_fmt(r['final_acc_std'] * 100)}",
                     f"{_fmt(r['best_acc_mean'] * 100)} ± {_fmt(r['best_acc_std'] * 100)}",
                     (f"{_fmt(r['epochs_to_85'], 1)} ({r['reached_85']} run(s))"
                      if r["reached_85"] else "not reached"),
                     str(r["finished"]), str(r["failed"])])
    return head, rows


def hypotheses_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["id", "claim", "n", "a - b (points)", "95% CI", "p (t)", "p (Wilcoxon)", "d_z",
            "verdict"]
    rows = []
    for r in hypotheses_table(a).to_dict("records"):
        verdict = r["verdict"]
        if verdict == "inconclusive" and not math.isnan(r["seeds_needed"]):
            verdict += f" (~{int(r['seeds_needed'])} seeds would decide)"
        if not r["paired"]:
            verdict += " [unpaired, Welch]"
        rows.append([r["id"], f"{r['claim']} ({r['expect']}, rope {_fmt(r['rope'], 2)})",
                     str(r["n"]), _fmt(r["mean_diff"]),
                     f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", _p(r["p_t"]),
                     _p(r["p_wilcoxon"]), _fmt(r["effect_dz"]), verdict])
    return head, rows


def effects_rows(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["effect (first level minus second)", "n", "points", "95% CI", "p (t)"]
    rows = [[r["effect"], str(r["n"]), _fmt(r["mean_points"]),
             f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", _p(r["p_t"])]
            for r in effects_table(a).to_dict("records")]
    return head, rows


def verdict_table(a: Analysis) -> Table:
    """The hypotheses as a compact rich table for the terminal (claims in the caption)."""
    head, rows = hypotheses_rows(a)
    keep = [0, 2, 3, 4, 5, 8]
    t = Table(title=f"{a.spec.name}: hypotheses",
              caption="\n".join(f"{r[0]}: {r[1]}" for r in rows), caption_justify="left")
    for i in keep:
        t.add_column(head[i], overflow="fold", justify="left" if i in (0, 8) else "right")
    for row in rows:
        style = VERDICT_STYLE.get(row[-1].split()[0], "")
        t.add_row(*[row[i] for i in keep[:-1]], f"[{style}]{row[-1]}[/]")
    return t


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *["| " + " | ".join(r) + " |" for r in esc]])


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(c: str) -> str:
        cls = next((k for k in VERDICT_STYLE if c.startswith(k)), "")
        return f'<td class="{cls}">{html.escape(c)}</td>'
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
            + "</tbody></table>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;
padding:4px 8px;text-align:left}th{background:#f3f3f3}td.supported{background:#e8f5e9;
font-weight:600}td.refuted{background:#ffebee;font-weight:600}td.inconclusive{
background:#fffde7}img{max-width:100%;border:1px solid #eee;margin:.5em 0}.note{color:#666;
font-size:13px}"""

RULES = ("Verdicts use paired differences over shared seeds and a 95% t-interval: 'a > b' is "
         "supported when the interval is above 0 and the mean above the rope, refuted when "
         "the interval's upper end is below the rope; 'a == b' is supported when the interval "
         "lies inside (-rope, rope). Anything else is inconclusive.")


def write_report(a: Analysis, out: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write the plots and the requested formats into `out`; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_curves(a, out / "curves.png"), plot_differences(a, out / "differences.png"),
             plot_class_deltas(a, out / "class_deltas.png")]
    files = list(plots)
    sections = [("Variants", variants_rows(a)), ("Hypotheses", hypotheses_rows(a))]
    if a.effects:
        sections.append(("Factorial effects on test accuracy", effects_rows(a)))
    title = f"{a.spec.name}" + (f" - {a.data_label}" if a.data_label else "")
    if "csv" in formats:
        for name, df in (("variants", a.variants), ("hypotheses", hypotheses_table(a)),
                         ("effects", effects_table(a)),
                         ("runs", a.runs.drop(columns=["history"], errors="ignore"))):
            df.to_csv(out / f"{name}.csv", index=False)
            files.append(out / f"{name}.csv")
    if "md" in formats:
        md = [f"# {title}", "", a.spec.description.strip(), "", RULES, ""]
        for name, (head, rows) in sections:
            md += [f"## {name}", "", _md_table(head, rows), ""]
        md += [f"![{p.stem}]({p.name})" for p in plots]
        (out / "report.md").write_text("\n".join(md) + "\n")
        files.append(out / "report.md")
    if "html" in formats:
        body = [f"<h1>{html.escape(title)}</h1>",
                f"<p>{html.escape(a.spec.description.strip())}</p>",
                f'<p class="note">{html.escape(RULES)}</p>']
        for name, (head, rows) in sections:
            body += [f"<h2>{html.escape(name)}</h2>", _html_table(head, rows)]
        for p in plots:
            data = base64.b64encode(p.read_bytes()).decode()
            body.append(f'<img alt="{p.stem}" src="data:image/png;base64,{data}">')
        (out / "report.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>")
        files.append(out / "report.html")
    return files


def log_report(parent_run_id: str, files: list[Path]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for f in files:
        client.log_artifact(parent_run_id, str(f), "report")

