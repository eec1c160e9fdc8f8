"""RESULTS.md: the seed author's claims, each answered by the product's own analysis.

`cifarnet-exp results` reads a claims file (`experiments/seed_claims.yaml`: for each of the
seed write-up's points, the spec and hypothesis that state it and the author's own
conclusion, quoted), analyses the newest grid of each spec in the tracking store
(`analysis.report.analyze_grid`, the same figures as `cifarnet-exp report`), and writes one
Markdown page: per claim the verdict, the paired difference with its 95% interval (points),
the seeds, the pairing gain, the budget and the data label, the grid's parent run and the
MLflow runs of both arms, the author's conclusion beside it and whether the evidence agrees,
and the grid's plots (written beside the page). No number on the page is typed by hand:
rerunning the command after more runs regenerates it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cifarnet.analysis.stats import Outcome
from cifarnet.spec.metrics import Expect
from cifarnet.analysis.verdicts import Analysis, Verdict, hypotheses_table
from cifarnet.config.yamlio import read_yaml_mapping
from cifarnet.errors import UserError, shown

CLAIM_KEYS = {"point", "spec", "hypothesis", "author"}


@dataclass(frozen=True)
class Claim:
    """One point of the seed's analysis: its number, the spec and hypothesis id that state
    it, and the author's conclusion as written."""

    point: str
    spec: str
    hypothesis: str
    author: str


@dataclass(frozen=True)
class ClaimsFile:
    title: str
    source: str
    claims: list[Claim]


def claims_file(name: str) -> Path:
    """The claims file `name`: the path as given, else under the working folder's
    experiments/, else among the files shipped with cifarnet-exp. Raises UserError (--claims)
    naming where it looked."""
    from cifarnet.spec.common import SHIPPED_ROOT, SPECS_ROOT

    for candidate in (Path(name), SPECS_ROOT / name, SHIPPED_ROOT / name):
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # a name longer than the file system allows
            continue
    raise UserError(f"--claims: no such file {name!r} (also looked for "
                    f"{SPECS_ROOT / name} and the shipped {SHIPPED_ROOT.name}/{name})")


def load_claims(path: Path) -> ClaimsFile:
    """Read a claims file; raise UserError naming the key (`claims[2].spec`) of a bad one."""
    raw = read_yaml_mapping(path)
    unknown = sorted(set(raw) - {"title", "source", "claims"})
    if unknown:
        raise UserError(f"{unknown[0]}: unknown key in {path} (expected title, source, claims)")
    items = raw.get("claims")
    if not isinstance(items, list) or not items:
        raise UserError(f"claims: expected a non-empty list in {path}")
    out = []
    for i, item in enumerate(items):
        where = f"claims[{i}]"
        if not isinstance(item, Mapping):
            raise UserError(f"{where}: expected a mapping with {', '.join(sorted(CLAIM_KEYS))}")
        extra = sorted(map(str, set(item) - CLAIM_KEYS))
        if extra:
            raise UserError(f"{where}.{extra[0]}: unknown key")
        for key in sorted(CLAIM_KEYS):
            if not isinstance(item.get(key), (str, int)) or isinstance(item.get(key), bool) \
                    or not str(item.get(key)).strip():
                raise UserError(f"{where}.{key}: expected text, got {shown(item.get(key))}")
        out.append(Claim(str(item["point"]), str(item["spec"]), str(item["hypothesis"]),
                         " ".join(str(item["author"]).split())))
    for key in ("title", "source"):
        if key in raw and not isinstance(raw[key], str):
            raise UserError(f"{key}: expected a string in {path}, got {shown(raw[key])}")
    return ClaimsFile(raw.get("title", "Results"), raw.get("source", ""), out)


CLAIMED = {Expect.GREATER: Outcome.GREATER_BEYOND_ROPE, Expect.LESS: Outcome.LESS_BEYOND_ROPE,
           Expect.EQUAL: Outcome.NEGLIGIBLE}


def agreement(v: Verdict) -> str:
    """Whether the evidence agrees with the claim as the spec states it (`expect`): a
    directional claim with its rope is shown only "by more than the rope"."""
    outcome, expect = v.outcome, v.hypothesis.expect
    if outcome is CLAIMED[expect]:
        return f"agrees: {outcome}"
    if outcome in (Outcome.GREATER, Outcome.LESS):
        return (f"undecided: a difference is shown ({outcome}), not whether it is worth having"
                if expect is Expect.EQUAL else
                f"agrees on the direction only: {outcome}; a gain worth having is not shown")
    if outcome is Outcome.INCONCLUSIVE:
        need = v.comparison.seeds_needed
        more = f"; about {need} seeds would decide" if need and need > v.comparison.n else ""
        which = "the anytime-valid interval" if v.seeds_added else "the interval"
        return f"undecided: {which} spans the claim's boundary at this budget{more}"
    if outcome is Outcome.NO_VERDICT:
        return f"no verdict ({v.why_no_verdict or v.comparison.note or 'the data cannot answer'})"
    return f"disagrees: {outcome}"


def _num(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.2f}"


def anytime_line(v: Verdict, row: Mapping[str, Any]) -> str:
    """Why a grid with seeds added by `--until-decided` shows the anytime-valid verdict, and
    what the fixed-n t-interval alone would have said (`row`: its `hypotheses_table` row)."""
    unit = row["unit"]
    return (f"Seeds {', '.join(map(str, v.seeds_added))} were added one at a time by "
            "`--until-decided`, which stops when a verdict comes: the verdict above is the "
            "anytime-valid one (Lai 1976; Howard et al. 2021), from the 95% confidence "
            "sequence in the table, which holds at every number of seeds at once. The fixed-n "
            f"95% t-interval, [{_num(row['ci_low'])}, {_num(row['ci_high'])}] {unit}, would "
            f"overclaim after such looks; alone it would say {v.comparison.verdict}.")


def power_line(v: Verdict) -> str:
    """The seeds "no difference worth having" needs (80% power, `power.seeds_for_rope`), from
    the spread of this grid's own paired differences (or the documented default)."""
    from cifarnet.analysis.power import DEFAULT_SD, MAX_SEEDS, POWER, seeds_for_rope

    c, h = v.comparison, v.hypothesis
    if h.metric.startswith("epochs_to:") or h.rope <= 0:
        return "Power: no seed count (a rope of 0, or epochs to a target)."
    own = c.n >= 2 and math.isfinite(c.sd) and c.sd > 0
    if not own and not h.metric.endswith("_acc"):
        return "Power: no seed count (no spread yet, and the default is for accuracies)."
    sd = c.sd if own else DEFAULT_SD
    scale, unit = (100, "points") if h.metric.endswith("_acc") else (1, "nats")
    need = seeds_for_rope(h.expect, sd, h.rope)
    src = (f"the sd of this grid's {c.n} paired differences, {sd * scale:.2f} {unit}" if own
           else f"the documented default sd, {sd * scale:.2f} {unit}")
    seeds = f"about {need} seeds" if need is not None else f"more than {MAX_SEEDS} seeds"
    if v.seeds_added:  # the count is the fixed-n t-test's: a design declared in advance
        return (f"Power: with {src}, a fixed design (its seeds listed in the spec, no "
                f"`--until-decided`) needs {seeds} for '{Outcome.NEGLIGIBLE}' at this rope "
                f"({h.rope * scale:g} {unit}) with {POWER:.0%} power if the true difference "
                f"is 0 (exact, noncentral t); the anytime-valid verdict of this adaptive grid "
                "needs more.")
    return (f"Power: with {src}, '{Outcome.NEGLIGIBLE}' at this rope ({h.rope * scale:g} "
            f"{unit}) needs {seeds} for {POWER:.0%} power if the true difference is 0 (exact, "
            f"noncentral t); this grid has "
            f"{c.n}. (The verdict's \"~N seeds would decide\" instead assumes the observed "
            "difference is the true one.)")


def claim_section(claim: Claim, a: Analysis | None, plots: list[str],
                  run_ids: Mapping[str, list[str]], written: Any = None) -> list[str]:
    """The Markdown of one claim: `a` is its spec's analysis (None: not run yet);
    `written`: the spec file as it reads now (None: no file), to name how the grid differs."""
    out = [f"## Point {claim.point}: {claim.hypothesis} ({claim.spec})", "",
           f"**The author's conclusion:** \"{claim.author}\"", ""]
    if a is None:
        return out + [f"**Not run yet:** the store holds no grid of `{claim.spec}`. Run "
                      f"`cifarnet-exp run {claim.spec}`, then this command again.", ""]
    v = next((v for v in a.verdicts if v.hypothesis.id == claim.hypothesis), None)
    if v is None:
        raise UserError(f"claims: spec {claim.spec} has no hypothesis {claim.hypothesis!r} "
                        f"(its hypotheses: {', '.join(h.id for h in a.spec.hypotheses)})")
    c, h = v.comparison, v.hypothesis
    # the report's own row (`hypotheses_table`): points for accuracies, nats for losses,
    # epochs for `epochs_to:`
    row = hypotheses_table(a).set_index("id").loc[h.id]
    unit = row["unit"]
    seeds = sorted(set(a.runs[a.runs["cell"].isin([v.a_cell, v.b_cell])
                              & (a.runs["status"] == "FINISHED")]["seed"])) if len(a.runs) else []
    eff, corr = row["pairing_efficiency"], row["corr"]
    out += [f"**Claim as tested:** {h.claim} (`{h.expect}` on {h.metric}, region of practical "
            f"equivalence {row['rope']:g} {unit}); a = `{v.a_cell}`, b = `{v.b_cell}`.", "",
            "| verdict | evidence vs the author | a - b | 95% interval | p (t) | seeds (n) | "
            "pairing gain |", "|---|---|---:|---|---:|---|---|",
            f"| **{v.outcome}** | {agreement(v)} | {_num(row['mean_diff'])} {unit} | "
            + (f"[{_num(row['anytime_low'])}, {_num(row['anytime_high'])}] (anytime) | "
               if v.seeds_added else f"[{_num(row['ci_low'])}, {_num(row['ci_high'])}] | ")
            + f"{'n/a' if not math.isfinite(c.p_t) else f'{c.p_t:.3g}'} | "
            f"{', '.join(map(str, seeds)) or '-'} ({c.n}) | "
            + (f"x{eff:.2f}, 95% [{row['efficiency_low']:.2f}, {row['efficiency_high']:.2f}] "
               f"(corr {corr:+.2f})" if math.isfinite(eff) else "n/a") + " |", ""]
    if v.seeds_added:
        out += [anytime_line(v, row), ""]
    if c.note:
        out += [f"Note: {c.note}", ""]
    out += [power_line(v), ""]
    out += _budget_lines(a, claim, spec_changes(a.spec, written) if written is not None else [])
    for c_ in a.tuning:
        if c_.cell in (v.a_cell, v.b_cell):
            out.append(f"- tuned before the verdict (tune, then compare): `{c_.cell}` at "
                       + c_.tuned_text()
                       + f" (best of {c_.n} trials, trial {c_.best_trial}, val_acc "
                       + (f"{c_.best_value:.4f})" if c_.best_value is not None else "n/a)"))
    for side, cell in (("a", v.a_cell), ("b", v.b_cell)):
        ids = run_ids.get(cell, [])
        out.append(f"- MLflow runs of {side} (`{cell}`): {', '.join(ids) or 'none'}")
    out.append("")
    out += [f"![{Path(x).stem}]({x})" for x in plots] + [""]
    return out


def _budget_lines(a: Analysis, claim: Claim, changes: list[str]) -> list[str]:
    """The grid's budget and data, how its spec differed from the file, and its provenance."""
    p = a.provenance
    if p is None:
        return []
    budget = f"{p.budget[:1].upper()}{p.budget[1:]}. Data: {a.data_label or 'unknown'}."
    if changes:
        budget += (f" **The grid ran the spec with changes**: {'; '.join(changes)}. The "
                   f"spec as written: `cifarnet-exp run {claim.spec}`.")
    elif p.reduced:
        budget += (" This is the spec's own budget, below the default recipe's (30 epochs "
                   "on the full training set).")
    out = [budget, ""]
    out += [f"- {k}: {val}" for k, val in p.fields
            if k in ("grid", "parent run", "recipe", "precision", "images", "epochs")]
    out.append("")
    return out


PLOT_FILES = ("differences.png", "curves.png")  # a grid's plots on the page, in this order


def _cell(text: object) -> str:
    """`text` safe inside a Markdown table cell (a '|' would start another column)."""
    return str(text).replace("|", "\\|")


def write_results(claims: ClaimsFile, analyses: Mapping[str, Analysis | None],
                  plots: Mapping[str, list[Path]], out: Path, command: str,
                  store: str, written: Mapping[str, Any] | None = None) -> Path:
    """Write `out` (RESULTS.md) and copy each spec's plots into `out`'s folder under
    `results/<spec>/`; return the page's path."""
    folder = out.parent
    rel: dict[str, list[str]] = {}
    copies: list[tuple[Path, Path]] = []
    for spec, files in plots.items():
        name = analyses[spec].spec.name  # the experiment's name: one folder per grid
        rel[spec] = [f"results/{name}/{f.name}" for f in files]
        copies += [(f, folder / "results" / name / f.name) for f in files]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {claims.title}", "",
             f"Generated by `{command}` on {now} from the tracking store {store}; every "
             "figure below is read back from its MLflow runs (parent and child run ids "
             "given), with the same analysis as `cifarnet-exp report`. Do not edit by hand: "
             "run the command again.", ""]
    if claims.source:
        lines += [f"Source of the claims: {claims.source}", ""]
    lines += ["| point | hypothesis | verdict | evidence vs the author | budget |",
              "|---|---|---|---|---|"]
    for c in claims.claims:
        a = analyses.get(c.spec)
        v = next((v for v in a.verdicts if v.hypothesis.id == c.hypothesis), None) if a else None
        lines.append(f"| {_cell(c.point)} | {_cell(c.hypothesis)} ({_cell(c.spec)}) | "
                     + (f"{v.outcome}{' (anytime-valid)' if v.seeds_added else ''} | "
                        f"{agreement(v)} | "
                        f"{a.provenance.budget if a.provenance else '-'} |" if v else
                        "not run yet | - | - |"))
    lines.append("")
    for c in claims.claims:
        a = analyses.get(c.spec)
        ids: dict[str, list[str]] = {}
        if a is not None and len(a.runs):
            done = a.runs[a.runs["status"] == "FINISHED"]
            for cell, rows in done.groupby("cell"):
                ids[str(cell)] = list(rows.sort_values("seed")["run_id"])
        lines += claim_section(c, a, rel.get(c.spec, []), ids, (written or {}).get(c.spec))
    try:  # the page first: a path that cannot be written leaves no plots behind
        folder.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        for src, dest in copies:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        for c in claims.claims:  # a claim not run (any more): no plots of an earlier page
            if analyses.get(c.spec) is None:
                stale = folder / "results" / Path(c.spec).stem
                for name in PLOT_FILES:
                    (stale / name).unlink(missing_ok=True)
                if stale.is_dir() and not any(stale.iterdir()):
                    stale.rmdir()
    except OSError as exc:
        raise UserError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    return out


GENERATED = "Generated by `cifarnet-exp results"  # how every page of the command begins
_PARENT_LINE = re.compile(r"^- parent run: ([0-9a-f]{32})$", re.MULTILINE)


def check_replace(out: Path, analyses: Mapping[str, Analysis | None]) -> None:
    """Refuse to write over `out` when the page there answers from runs the new page would not
    name: a file this command did not write, or a page whose grids' parent runs are not the
    newest grids in this store (e.g. `results` in a folder holding a quick look's runs would
    have replaced the committed answers with 2-epoch figures). Raises UserError naming
    `--out`; a missing `out` passes."""
    if not out.is_file():
        return
    text = out.read_text(errors="replace")
    if GENERATED not in text:
        raise UserError(f"--out: {out} exists and was not written by cifarnet-exp results; "
                        "give another file, or pass --force to replace it")
    new = {dict(a.provenance.fields).get("parent run") for a in analyses.values()
           if a is not None and a.provenance is not None}
    gone = [run for run in _PARENT_LINE.findall(text) if run not in new]
    if gone:
        raise UserError(f"--out: {out} answers from grids this store's newest do not include "
                        f"(parent run {gone[0]}" + (f" and {len(gone) - 1} more" if len(gone) > 1
                                                     else "")
                        + "); run results in the folder whose mlruns/ holds them (this "
                        "project's: results/store), give another file, or pass --force to "
                        "replace it")


def check_claims(claims: ClaimsFile, analyses: Mapping[str, Analysis | None],
                 written: Mapping[str, Any]) -> None:
    """Every claim's hypothesis exists in its grid's spec (or, not run yet, in its spec
    file); raise UserError naming `claims[i].hypothesis` before anything is written."""
    for i, c in enumerate(claims.claims):
        a = analyses.get(c.spec)
        spec = a.spec if a is not None else written.get(c.spec)
        if spec is None:
            continue
        ids = [h.id for h in spec.hypotheses]
        if c.hypothesis not in ids:
            raise UserError(f"claims[{i}].hypothesis: spec {c.spec} has no hypothesis "
                            f"{c.hypothesis!r} (its hypotheses: {', '.join(ids) or 'none'})")


def spec_plots(a: Analysis, folder: Path) -> list[Path]:
    """The grid's paired-difference and per-epoch plots (`analysis.plots`), in `folder`."""
    from cifarnet.analysis.plots import plot_curves, plot_differences

    folder.mkdir(parents=True, exist_ok=True)
    differences, curves = PLOT_FILES
    return [plot_differences(a, folder / differences), plot_curves(a, folder / curves)]


def analyses_for(claims: ClaimsFile, analyse: Any) -> dict[str, Analysis | None]:
    """Each claimed spec's analysis by `analyse(spec_name)`; None where the store has no
    grid of it yet but the spec file exists (it can be run). Raises UserError naming
    `claims[i].spec` for a name that is neither a spec file nor an experiment of the store."""
    from cifarnet.spec.common import resolve_spec_path

    out: dict[str, Analysis | None] = {}
    for i, claim in enumerate(claims.claims):
        if claim.spec in out:
            continue
        try:
            out[claim.spec] = analyse(claim.spec)
        except UserError as exc:
            if "no experiment" not in str(exc) and "no ablation parent run" not in str(exc):
                raise
            try:
                resolve_spec_path(claim.spec)
            except UserError:
                raise UserError(f"claims[{i}].spec: {claim.spec!r} is neither a spec file nor "
                                "an experiment of the store") from None
            out[claim.spec] = None
    return out


def _yaml_text(value: Any) -> str:
    """A value as a spec or `--set` spells it (true, not Python's True)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def spec_changes(ran: Any, written: Any) -> list[str]:
    """How the grid's spec as it ran (`ran`, logged on its parent run) differs from the spec
    file as written (`written`): base keys, factors, seeds, match, tune; [] when alike. The
    bases are compared as configs, so a default written out in one and left out in the other
    is no change."""
    c_ran, c_file = ran.base_config().flatten(), written.base_config().flatten()
    out = []
    for key in sorted(k for k in c_ran if c_ran[k] != c_file[k]):
        out.append(f"{key}={_yaml_text(ran.base.get(key, 'default'))} (the file: "
                   f"{_yaml_text(written.base.get(key, 'default'))})")
    for name in ("factors", "seeds", "match"):
        if getattr(ran, name) != getattr(written, name):
            out.append(f"{name} {getattr(ran, name)} (the file: {getattr(written, name)})")
    tr = ran.tune.to_dict() if ran.tune else None
    tw = written.tune.to_dict() if written.tune else None
    if tr != tw:
        out.append(f"tune {tr} (the file: {tw})")
    return out
