"""The README's quick look, timed as a user runs it; and a grid whose verdicts are known.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/quick_look.py \\
        --workers 1 2

1. The quick look (`dilation_add` at 2 epochs on 2,000 training and 1,000 test images, lr
   0.05: 12 runs), once per `--workers` value, each in a fresh folder (a fresh store, so
   nothing is reused): the `--dry-run` prediction for that many workers, then the wall time
   of the grid itself (`run ... --workers N`, the command a user types; the decoded-image
   cache is warm, as after the first start).
2. `benchmarks/specs/lr_sanity.yaml` at the same budget, 3 seeds: lr 0.05 against lr 1e-6.
   "a > b" must come out "a > b by more than the rope" and "a == b" (rope 0.01) the same.

Prints each figure and appends them to BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark  # noqa: E402

QUICK = ["--set", "train.epochs=2", "--set", "data.train_subset=2000",
         "--set", "data.test_subset=1000", "--set", "train.lr=0.05"]
SANITY = Path(__file__).resolve().parent / "specs" / "lr_sanity.yaml"
MAIN_SPEC = Path(__file__).resolve().parents[1] / "experiments" / "ablations" / "dilation_add.yaml"
PREDICTED = re.compile(r"predicted: (\d+) run\(s\) to train .*?, (\d+):(\d\d):(\d\d) \(h:mm:ss\)")


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarnet", *args], cwd=folder,
                          capture_output=True, text=True, env=dict(os.environ))


def quick_look(workers: int, budget: list[str]) -> tuple[float, float]:
    """(predicted, measured) wall time of `dilation_add` at `budget` (`--set` arguments) and
    `workers` workers, seconds."""
    with tempfile.TemporaryDirectory(prefix="quick-look-") as tmp:
        folder = Path(tmp)
        dry = cli(folder, "run", str(MAIN_SPEC), *budget, "--dry-run", "--workers", str(workers))
        m = PREDICTED.search(dry.stdout)
        if dry.returncode != 0 or m is None:
            raise SystemExit(f"dry run failed:\n{dry.stdout}\n{dry.stderr}")
        predicted = int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4])
        start = time.perf_counter()
        r = cli(folder, "run", str(MAIN_SPEC), *budget, "--workers", str(workers))
        measured = time.perf_counter() - start
        if r.returncode != 0:
            raise SystemExit(f"the grid failed:\n{r.stdout}\n{r.stderr[-3000:]}")
        print(r.stdout.strip().splitlines()[-1])
    return predicted, measured


def sanity(workers: int) -> list[str]:
    """The known-answer grid's verdicts, one table row per hypothesis."""
    from cifarnet.analysis.report import analyze_grid
    from cifarnet.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="lr-sanity-") as tmp:
        folder = Path(tmp)
        r = cli(folder, "run", str(SANITY), "--workers", str(workers))
        if r.returncode != 0:
            raise SystemExit(f"the sanity grid failed:\n{r.stdout}\n{r.stderr[-3000:]}")
        analysis = analyze_grid("lr_sanity", Workspace.resolve(folder), with_history=False)
        acc = analysis.variants.set_index("cell")["final_acc_mean"].to_dict()
        rows = []
        for v in analysis.verdicts:
            c = v.comparison
            rows.append(f"| {v.hypothesis.id} | {c.expect.value} | {c.rope} | {c.n} | "
                        f"{c.mean:+.4f} | [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}] | "
                        f"{c.verdict.value} |")
        print("\n".join(rows))
        print("mean test accuracy per cell:", acc)
        return rows + ["", "Mean test accuracy per cell: " + ", ".join(
            f"{k}: {v:.4f}" for k, v in acc.items())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--set", dest="assignments", action="append", default=None,
                    metavar="KEY=VALUE",
                    help="the grid's budget instead of the quick look's (repeatable)")
    ap.add_argument("--no-sanity", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    lines = ["| --workers | predicted by --dry-run | measured wall time | measured / predicted |",
             "|---:|---:|---:|---:|"]
    budget = QUICK if args.assignments is None else [
        x for a in args.assignments for x in ("--set", a)]
    for w in args.workers:
        predicted, measured = quick_look(w, budget)
        row = (f"| {w} | {predicted:.0f} s | {measured:.0f} s | {measured / predicted:.2f} |")
        print(row)
        lines.append(row)
    if not args.no_sanity:
        lines += ["", "Known-answer grid (`benchmarks/specs/lr_sanity.yaml`, lr 0.05 against "
                  f"lr 1e-6, 3 seeds, same budget, --workers {max(args.workers)}):", "",
                  "| hypothesis | expect | rope | n | mean difference | 95% interval | verdict |",
                  "|---|---|---:|---:|---:|---|---|", *sanity(max(args.workers))]
    if not args.no_write:
        what = ("The README's quick look" if args.assignments is None else "A reduced budget")
        append_benchmark(f"{what} of dilation_add, timed beside its prediction", [
            f"`run dilation_add {' '.join(budget)}` (12 runs), at each `--workers`, each in a "
            "fresh store, the decoded-image cache warm; the wall time is the whole command "
            "(start-up, data loading, the prediction's own probe, training, the verdicts):",
            "", *lines])


if __name__ == "__main__":
    main()
