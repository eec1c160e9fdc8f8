"""Report figures (matplotlib, PNG): curves per variant, paired differences, class deltas.

Each `*_figure` builds a matplotlib Figure (tests read its axes); `plot_*` saves it. Titles
carry the budget when it is reduced ("reduced budget: 2 epochs, ...")."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from cifarnet.analysis.stats import Outcome, t_interval
from cifarnet.analysis.verdicts import Analysis

VERDICT_COLOURS = {Outcome.GREATER_BEYOND_ROPE: "#2e7d32", Outcome.LESS_BEYOND_ROPE: "#2e7d32",
                   Outcome.NEGLIGIBLE: "#1565c0", Outcome.GREATER: "#7cb342",
                   Outcome.LESS: "#7cb342", Outcome.INCONCLUSIVE: "#9e9e9e",
                   Outcome.NO_VERDICT: "#8e24aa"}
TARGET_PCT = 85.0
PAD = 0.05
LIMIT_POINTS = 100.0


def _title(analysis: Analysis, what: str) -> str:
    data = f" - {analysis.data_label}" if analysis.data_label else ""
    p = analysis.provenance
    budget = f"\n{p.budget}" if p is not None and p.reduced else ""
    return f"{analysis.spec.name}: {what}{data}{budget}"


def curves_figure(analysis: Analysis):
    """Test accuracy per epoch for each variant: mean over seeds, band = min..max. The axes fit
    the data (5% padding); the 85% target is drawn only when it lies inside them, otherwise the
    legend says how far above the data it is."""
    fig, ax = plt.subplots(figsize=(8, 5))
    runs = analysis.runs
    lows, highs, last = [], [], 0
    for cell in analysis.spec.cells():
        if not len(runs) or "history" not in runs:
            break
        mine = runs[(runs["cell"] == cell.label) & (runs["status"] == "FINISHED")]
        curves = [h.get("test_acc", []) for h in mine["history"] if isinstance(h, dict)]
        curves = [c for c in curves if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        arr = np.array([c[:length] for c in curves]) * 100
        epochs = np.arange(1, length + 1)
        line, = ax.plot(epochs, arr.mean(0), marker="o" if length < 4 else None,
                        label=f"{cell.label} (n={len(curves)})")
        ax.fill_between(epochs, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
        lows.append(float(np.nanmin(arr)))
        highs.append(float(np.nanmax(arr)))
        last = max(last, length)
    if lows:
        lo, hi = min(lows), max(highs)
        pad = max(PAD * (hi - lo), 0.5)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(0.8, max(last, 1) + 0.2)
        if lo - pad <= TARGET_PCT <= hi + pad:
            ax.axhline(TARGET_PCT, color="black", lw=0.8, ls=":", label="85% target")
        else:
            ax.plot([], [], " ", label=f"85% target: {TARGET_PCT - hi:.1f} points above the best")
    else:
        ax.text(0.5, 0.5, "no finished run with a test accuracy history",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_title(analysis, "test accuracy per epoch"), fontsize=10)
    ax.grid(alpha=0.3)
    if lows:
        ax.legend(fontsize=8)
    return fig


def plot_curves(analysis: Analysis, path: Path) -> Path:
    return _save(curves_figure(analysis), path)


def plot_differences(analysis: Analysis, path: Path) -> Path:
    """Each hypothesis: its paired differences, the 95% interval, the rope and the verdict
    to read (`Verdict.outcome`; with seeds added by --until-decided also the anytime-valid
    confidence sequence that verdict comes from, as a thin line)."""
    n = max(1, len(analysis.verdicts))
    fig, ax = plt.subplots(figsize=(8, 1.6 + 1.1 * n))
    any_cs = False
    for i, v in enumerate(analysis.verdicts):
        c, scale = v.comparison, (100 if v.hypothesis.metric.endswith("_acc") else 1)
        y = n - 1 - i
        r = v.hypothesis.rope * scale
        ax.fill_betweenx([y - 0.35, y + 0.35], -r, r, color="#ffe082", alpha=0.6,
                         label="rope" if i == 0 else None)
        if c.differences:
            jitter = np.linspace(-0.15, 0.15, len(c.differences))
            ax.scatter(np.array(c.differences) * scale, y + jitter, s=18, color="#37474f",
                       zorder=3, label="paired differences" if i == 0 else None)
        colour = VERDICT_COLOURS[v.outcome]
        lo, hi = c.ci
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo * scale, hi * scale], [y, y], color=colour, lw=4,
                    alpha=0.8, solid_capstyle="butt")
        cs_lo, cs_hi = v.ci_anytime
        if v.seeds_added and np.isfinite(cs_lo) and np.isfinite(cs_hi):  # its verdict's CS
            ax.plot([cs_lo * scale, cs_hi * scale], [y - 0.25, y - 0.25], color=colour, lw=1.5,
                    label="anytime 95% CS" if not any_cs else None)
            any_cs = True
        if np.isfinite(c.mean):
            ax.plot(c.mean * scale, y, "D", color=colour, ms=8, zorder=4)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{v.hypothesis.id}: {v.hypothesis.expect}\n{v.outcome}"
                        + (" (anytime)" if v.seeds_added else "")
                        + ("" if np.isfinite(v.comparison.ci).all() else " (no interval)")
                        for v in reversed(analysis.verdicts)] or [""], fontsize=8)
    ax.set_xlabel("a - b (accuracy points); bar = 95% CI, diamond = mean")
    ax.set_title(_title(analysis, "paired differences"), fontsize=10)
    if analysis.verdicts:  # no hypotheses: nothing labelled to list; below the axes, so
        # that it never covers a difference or an interval
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3,
                  frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def class_deltas_figure(analysis: Analysis):
    """Per-class test accuracy, a minus b, mean over shared seeds, for each hypothesis, with
    95% t-intervals over seeds as error bars; a panel without intervals (one seed, or no
    spread) says so in its title."""
    runs = analysis.runs
    cols = sorted(c for c in runs.columns if c.startswith("metrics.test_acc_class."))
    classes = [c.split("metrics.test_acc_class.", 1)[1] for c in cols]
    n = max(1, len(analysis.verdicts))
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.0 * n), squeeze=False)
    for ax, v in zip(axes[:, 0], analysis.verdicts):
        ok = runs[runs["status"] == "FINISHED"]
        a = ok[ok["cell"] == v.a_cell].set_index("seed")
        b = ok[ok["cell"] == v.b_cell].set_index("seed")
        shared = sorted(set(a.index) & set(b.index))
        what = f"n={len(shared)} seed{'s' if len(shared) != 1 else ''}"
        if shared and cols:
            per_seed = (a.loc[shared, cols].astype(float).values
                        - b.loc[shared, cols].astype(float).values) * 100
            delta = per_seed.mean(0)
            ci = np.array([t_interval(per_seed[:, j]) for j in range(len(cols))])
            finite = np.isfinite(ci).all(1)
            ax.bar(classes, delta, color=["#2e7d32" if d >= 0 else "#c62828" for d in delta])
            if finite.any():
                x = np.arange(len(cols))[finite]
                ax.errorbar(x, delta[finite], yerr=[delta[finite] - ci[finite, 0],
                                                    ci[finite, 1] - delta[finite]],
                            fmt="none", ecolor="black", capsize=3, lw=1)
                what += ", bars: 95% t-interval over seeds"
                if not finite.all():
                    what += f"\n{int((~finite).sum())} class(es) without spread: no interval"
                top = min(LIMIT_POINTS, float(np.max(np.abs(ci[finite]))))
                top = max(top, float(np.max(np.abs(delta))), 0.5) * (1 + PAD)
                ax.set_ylim(-top, top)  # a difference of accuracies lies within +-100 points
            else:
                what += (", no interval: one seed has no spread" if len(shared) < 2
                         else ", no interval: no spread over seeds")
        else:
            what += ", no shared seeds" if cols else ", no per-class metrics logged"
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("points")
        ax.set_title(f"{v.hypothesis.id}: {v.a_cell} minus {v.b_cell}\n({what})", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(_title(analysis, "per-class accuracy deltas"), fontsize=10)
    return fig


def plot_class_deltas(analysis: Analysis, path: Path) -> Path:
    return _save(class_deltas_figure(analysis), path)


def tuning_curves_figure(analysis: Analysis):
    """Each arm's expected best validation accuracy against the number of trials (Dodge et
    al. 2019), band = +/- one sd of the best; the arms share the budget, so the curves end
    at the same n."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in analysis.tuning:
        if not c.n:
            continue
        n = np.arange(1, c.n + 1)
        mean, sd = np.array(c.mean) * 100, np.array(c.sd) * 100
        line, = ax.plot(n, mean, marker="o", label=f"{c.cell} (best trial {c.best_trial})")
        ax.fill_between(n, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("trials")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("expected best validation accuracy (%)")
    t = analysis.spec.tune
    data = f" - {analysis.data_label}" if analysis.data_label else ""
    trial = (f"\neach trial: {t.epochs} epoch(s), validated on {t.val_size:,} images"
             if t is not None else "")
    ax.set_title(f"{analysis.spec.name}: tuning curves{data}{trial}", fontsize=9)
    ax.grid(alpha=0.3)
    if any(c.n for c in analysis.tuning):
        ax.legend(fontsize=8)
    return fig


def plot_tuning_curves(analysis: Analysis, path: Path) -> Path:
    return _save(tuning_curves_figure(analysis), path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
