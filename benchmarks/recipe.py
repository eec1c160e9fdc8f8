"""Recipe techniques against the default recipe on real data, paired over seeds, through the
product itself.

    CIFARNET_DATA=/work/shared/datasets/cifar10-jpeg python benchmarks/recipe.py \\
        --workers 2 --set train.epochs=10

Runs every spec in `benchmarks/specs/recipe/` (one technique each, as a factor with the
default recipe as its other level: flip TTA, a weight EMA, no weight decay on BatchNorm and
biases, a BatchNorm learning-rate multiplier, label smoothing, the augmentation ramp, batch size
and the schedule's shape) with `cifarnet-exp run` in the
working folder's store (so the default cell, the same config in every spec, trains once per
seed and is reused by the others), then reads each grid back with the product's analysis and
prints, per technique, both arms' mean test accuracy, the paired difference (technique -
default) with its 95% interval, the verdict of "a > b" (rope 0.2 points) and the decision: kept
when "a > b by more than the rope", dropped otherwise. Appends the table to BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark  # noqa: E402

SPECS = sorted((Path(__file__).resolve().parent / "specs" / "recipe").glob("recipe_*.yaml"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--set", dest="assignments", action="append", default=[])
    ap.add_argument("--only", nargs="*", default=None, help="spec names (default: all)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from cifarnet.analysis.report import analyze_grid
    from cifarnet.analysis.verdicts import hypotheses_table
    from cifarnet.analysis.stats import Outcome
    from cifarnet.tracking.results import find_parent_run
    from cifarnet.workspace import Workspace

    specs = [p for p in SPECS if args.only is None or p.stem in args.only]
    sets = [a for kv in args.assignments for a in ("--set", kv)]
    wall = {}
    for spec in specs:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "cifarnet", "run", str(spec), *sets,
                               "--workers", str(args.workers)], capture_output=True, text=True,
                              env=dict(os.environ))
        wall[spec.stem] = time.monotonic() - started
        if done.returncode != 0:
            sys.exit(f"{spec.stem} failed ({done.returncode}): {done.stdout[-1500:]}"
                     f"{done.stderr[-1500:]}")
        print(f"{spec.stem}: {wall[spec.stem]:.0f} s", flush=True)

    workspace = Workspace.resolve()
    lines = ["| technique | n | default (mean test acc) | with it | a - b (points) | 95% CI | "
             "verdict (a > b, rope 0.2) | decision | grid wall s |",
             "|---|---:|---:|---:|---:|---|---|---|---:|"]
    label, budget = "", ""
    for spec in specs:
        a = analyze_grid(find_parent_run(spec.stem, workspace), with_history=False)
        label = label or a.data_label
        budget = budget or (a.provenance.budget if a.provenance else "")
        row = hypotheses_table(a).iloc[0]
        v = a.variants.set_index("cell")
        lines.append(
            f"| {a.spec.hypotheses[0].claim} | {row['n']} | "
            f"{v.loc[row['b'], 'final_acc_mean']:.4f} | {v.loc[row['a'], 'final_acc_mean']:.4f} | "
            f"{row['mean_diff']:+.2f} | [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] | "
            f"{row['verdict']} | {'kept' if row['verdict'] == Outcome.GREATER_BEYOND_ROPE else 'dropped'} | "
            f"{wall[spec.stem]:.0f} |")
    lines = [f"Data: {label}; {budget}; seeds as in each spec, paired (same train.seed); the "
             "default cell is one run per seed, shared by every spec (reused).", "", *lines]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("Recipe techniques against the default recipe, paired over seeds",
                         lines)


if __name__ == "__main__":
    main()
