"""Tune, then compare, beside the same grid without tuning, on real data.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/tune_compare.py \\
        --workers 2

Runs `benchmarks/specs/tune_demo.yaml` (or --spec) twice in one fresh folder (a fresh store):
first without its `tune:` block (every arm at the base recipe), then as written (every arm
tuned with the same budget, then trained on the same seeds). Prints, per hypothesis, both
verdicts side by side (n, a - b with its 95% interval, the verdict), each arm's tuned values
and best validation accuracy, the tuning curve's last-doubling gain, and the wall time of each
grid; appends them to BENCHMARKS.md unless --no-write. Every figure is read back from the
store with the product's own analysis (`cifarnet.analysis.report.analyze_grid`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark  # noqa: E402

SPEC = Path(__file__).resolve().parent / "specs" / "tune_demo.yaml"


def run_grid(spec: Path, folder: Path, workers: int, sets: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cifarnet", "run", str(spec), *sets,
                           "--workers", str(workers)], cwd=folder, capture_output=True,
                          text=True, env=dict(os.environ))
    if done.returncode != 0:
        sys.exit(f"{spec.name} failed ({done.returncode}): {done.stdout[-1500:]}"
                 f"{done.stderr[-1500:]}")
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--set", dest="assignments", action="append", default=[])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from cifarnet.analysis.report import analyze_grid
    from cifarnet.tracking.results import find_parent_run
    from cifarnet.workspace import Workspace

    folder = Path(tempfile.mkdtemp(prefix="tune_compare_"))
    raw = yaml.safe_load(args.spec.read_text())
    untuned = {k: v for k, v in raw.items() if k != "tune"}
    untuned["name"] = raw["name"] + "_untuned"
    paths = {"untuned": folder / "untuned.yaml", "tuned": folder / "tuned.yaml"}
    paths["untuned"].write_text(yaml.safe_dump(untuned))
    paths["tuned"].write_text(yaml.safe_dump(raw))
    sets = [a for kv in args.assignments for a in ("--set", kv)]
    wall = {k: run_grid(p, folder, args.workers, sets) for k, p in paths.items()}

    os.chdir(folder)
    workspace = Workspace.resolve()
    analyses = {k: analyze_grid(find_parent_run(n, workspace), with_history=False)
                for k, n in (("untuned", untuned["name"]), ("tuned", raw["name"]))}
    label = analyses["tuned"].data_label
    t = analyses["tuned"].spec.tune
    from cifarnet.config.schema import flatten_mapping

    base_text = ", ".join(f"{k}={v}" for k, v in flatten_mapping(raw["base"]).items())
    lines = [f"Data: {label}. Spec `{args.spec.name}`: "
             f"verdict runs {base_text}, seeds {', '.join(map(str, raw['seeds']))}; "
             "tuning per arm "
             f"{t.n_trials} trials x {t.epochs} epochs on {t.val_size:,} validation images, "
             f"sampler {t.sampler}, pruner {t.pruner}, trial seed {t.seed}; "
             f"--workers {args.workers}.", "",
             "| hypothesis | grid | n | a - b (points) | 95% CI | verdict |",
             "|---|---|---:|---:|---|---|"]
    for kind, a in analyses.items():
        for v in a.verdicts:
            c = v.comparison
            lines.append(f"| {v.hypothesis.id} ({v.hypothesis.expect}, rope "
                         f"{v.hypothesis.rope * 100:g} points) | {kind} | {c.n} | "
                         f"{c.mean * 100:+.2f} | [{c.ci[0] * 100:+.2f}, "
                         f"{c.ci[1] * 100:+.2f}] | {c.verdict} |")
    lines += ["", "| arm | base recipe | tuned values | best val_acc (trial) | "
                  "trials complete / pruned / other | expected best, n/2 -> n | "
                  "test acc untuned | test acc tuned |", "|---|---|---|---|---|---|---:|---:|"]
    variants = {k: a.variants.set_index("cell") for k, a in analyses.items()}
    base = analyses["untuned"].spec.base_config()
    for c in analyses["tuned"].tuning:
        other = sum(v for s, v in c.trials.items() if s not in ("COMPLETE", "PRUNED"))
        half = (c.n + 1) // 2
        accs = [variants[k].loc[c.cell].get("final_acc_mean", float("nan"))
                for k in ("untuned", "tuned")]
        lines.append(f"| {c.cell} | lr {base.train.lr:g}, augment_strength "
                     f"{base.data.augment_strength:g} | "
                     + ", ".join(f"{k}={float(v):.4g}" for k, v in c.tuned.items())
                     + f" | {c.best_value:.4f} ({c.best_trial}) | "
                     f"{c.trials.get('COMPLETE', 0)} / {c.trials.get('PRUNED', 0)} / {other} | "
                     f"{c.mean[half - 1]:.4f} -> {c.mean[-1]:.4f} | "
                     + " | ".join(f"{x:.4f}" for x in accs) + " |")
    lines += ["", f"Wall time: untuned grid {wall['untuned']:.0f} s, tuned grid (tuning and "
                  f"verdict) {wall['tuned']:.0f} s; store kept in {folder}."]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("Tune, then compare, beside the same grid untuned", lines)


if __name__ == "__main__":
    main()
