"""Report figures (matplotlib, PNG): curves per variant, paired differences, class deltas."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cifarnet.analysis import Analysis  # noqa: E402

VERDICT_COLOURS = {"supported": "#2e7d32", "refuted": "#c62828", "inconclusive": "#9e9e9e"}


def _title(analysis: Analysis, what: str) -> str:
    data = f" - {analysis.data_label}" if analysis.data_label else ""
    return f"{analysis.spec.name}: {what}{data}"


def plot_curves(analysis: Analysis, path: Path) -> Path:
    """Test accuracy per epoch for each variant: mean over seeds, band = min..max."""
    fig, ax = plt.subplots(figsize=(8, 5))
    runs = analysis.runs
    for cell in analysis.spec.cells():
        mine = runs[(runs["cell"] == cell.label) & (runs["status"] == "FINISHED")]
        curves = [h.get("test_acc", []) for h in mine.get("history", [])]
        curves = [c for c in curves if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        arr = np.array([c[:length] for c in curves]) * 100
        epochs = np.arange(1, length + 1)
        line, = ax.plot(epochs, arr.mean(0), label=f"{cell.label} (n={len(curves)})")
        ax.fill_between(epochs, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
    ax.axhline(85, color="black", lw=0.8, ls=":", label="85%")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_title(analysis, "test accuracy per epoch"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_differences(analysis: Analysis, path: Path) -> Path:
    """Each hypothesis: its paired differences, the 95% interval, the rope and the verdict."""
    n = max(1, len(analysis.verdicts))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 1.1 * n))
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
        lo, hi = c.ci
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo * scale, hi * scale], [y, y], color=VERDICT_COLOURS[c.verdict], lw=4,
                    alpha=0.8, solid_capstyle="butt")
        if np.isfinite(c.mean):
            ax.plot(c.mean * scale, y, "D", color=VERDICT_COLOURS[c.verdict], ms=8, zorder=4)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{v.hypothesis.id}: {v.hypothesis.expect}\n{v.comparison.verdict}"
                        for v in reversed(analysis.verdicts)] or [""], fontsize=8)
    ax.set_xlabel("a - b (accuracy points); bar = 95% CI, diamond = mean")
    ax.set_title(_title(analysis, "paired differences"), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_class_deltas(analysis: Analysis, path: Path) -> Path:
    """Per-class test accuracy, a minus b, averaged over shared seeds, for each hypothesis."""
    runs = analysis.runs
    cols = sorted(c for c in runs.columns if c.startswith("metrics.test_acc_class."))
    classes = [c.rsplit(".", 1)[1] for c in cols]
    n = max(1, len(analysis.verdicts))
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n), squeeze=False)
    for ax, v in zip(axes[:, 0], analysis.verdicts):
        ok = runs[runs["status"] == "FINISHED"]
        a = ok[ok["cell"] == v.a_cell].set_index("seed")
        b = ok[ok["cell"] == v.b_cell].set_index("seed")
        shared = sorted(set(a.index) & set(b.index))
        if shared and cols:
            delta = (a.loc[shared, cols].astype(float).values
                     - b.loc[shared, cols].astype(float).values).mean(0) * 100
            ax.bar(classes, delta, color=["#2e7d32" if d >= 0 else "#c62828" for d in delta])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("points")
        ax.set_title(f"{v.hypothesis.id}: {v.a_cell} minus {v.b_cell} "
                     f"(n={len(shared)} seeds)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(_title(analysis, "per-class accuracy deltas"), fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
