"""What the paired design buys on a real grid: `dilation_add` over several seeds.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/pairing_gain.py \\
        --seeds 0 1 2 3 4 5 --set train.epochs=2 --set data.train_subset=10000 \\
        --set data.test_subset=2000 --set train.lr=0.05

Runs the shipped `dilation_add` spec with the given seeds and `--set` budget in a fresh
folder (a fresh store: nothing reused), then reads the report's pairing figures per
hypothesis and for every pair of cells: the correlation of the two arms over seeds, var(a - b)
against var(a) + var(b), their ratio (how many times the seeds an unpaired design would need
for the same precision) with its 95% interval, and the seeds the pairing saved at least, only
where that interval excludes 1. Prints them and appends them to
BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark  # noqa: E402

MAIN_SPEC = Path(__file__).resolve().parents[1] / "experiments" / "ablations" / "dilation_add.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--set", dest="assignments", action="append", default=[])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from cifarnet.analysis.report import analyze_grid
    from cifarnet.analysis.stats import pairing_gain
    from cifarnet.analysis.verdicts import metric_by_seed
    from cifarnet.workspace import Workspace

    folder = Path(tempfile.mkdtemp(prefix="pairing_"))
    raw = yaml.safe_load(MAIN_SPEC.read_text())
    raw["seeds"] = args.seeds
    spec = folder / "dilation_add.yaml"
    spec.write_text(yaml.safe_dump(raw))
    sets = [a for kv in args.assignments for a in ("--set", kv)]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cifarnet", "run", str(spec), *sets,
                           "--workers", str(args.workers)], cwd=folder, capture_output=True,
                          text=True, env=dict(os.environ))
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"the grid failed ({done.returncode}): {done.stderr[-2000:]}")
    os.chdir(folder)
    analysis = analyze_grid("dilation_add", Workspace.resolve(), with_history=False)
    lines = [f"`dilation_add`, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), "
             f"budget {' '.join(args.assignments) or 'the spec default'}; the grid took "
             f"{wall:.0f} s. Test accuracy in points; var in squared points; ratio = "
             "var(a) + var(b) over var(a - b) (an unpaired design needs that many times the "
             "seeds); saved = seeds x (low - 1).", "",
             "| pair | corr | var(a - b) | var(a) + var(b) | ratio | 95% interval | seeds saved "
             "(at least; only where the interval excludes 1) |", "|---|---|---|---|---|---|---|"]
    ratios = []
    runs = analysis.runs
    cells = sorted(set(runs["cell"]))
    for a, b in itertools.combinations(cells, 2):
        va, vb = metric_by_seed(runs, a, "test_acc"), metric_by_seed(runs, b, "test_acc")
        shared = sorted(set(va) & set(vb))
        g = pairing_gain([100 * va[s] for s in shared], [100 * vb[s] for s in shared])
        ratios.append(g.efficiency)
        hyp = [v.hypothesis.id for v in analysis.verdicts if {v.a_cell, v.b_cell} == {a, b}]
        label = f"{a} vs {b}" + (f" ({hyp[0]})" if hyp else "")
        lines.append(f"| {label} | {g.corr:+.2f} | {g.var_paired:.3f} | {g.var_unpaired:.3f} | "
                     f"{g.efficiency:.2f} | [{g.efficiency_ci[0]:.2f}, {g.efficiency_ci[1]:.2f}] | "
                     + ("-" if g.seeds_saved != g.seeds_saved else f"{g.seeds_saved:+.1f}") + " |")
    finite = [r for r in ratios if r == r]
    if finite:
        lines += ["", f"Median ratio over the {len(finite)} pairs: "
                      f"{statistics.median(finite):.2f}."]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("Pairing gain on a real grid (issue 14, section 4)", lines)


if __name__ == "__main__":
    main()
