"""The overhead per run of each executor, side by side in one session.

    python benchmarks/executors.py --runs 24 --workers 2

A grid of `--runs` tiny runs (generated 32x32 images, 1 epoch, 2 seeds per cell) is run
once per executor (`local` with one worker in the launcher's process, `local` with
`--workers` processes, `ray` on a local Ray, `slurm --slurm-cluster local` through
submitit), each in a fresh folder and store, as a user types it (`cifarnet-exp run`). Per
executor: the wall time of the command, the wall time per run, and the cost per run beyond
one in-process worker: (wall - wall of `local`, 1 worker) / runs. The runs are tiny on
purpose: what is left is what the executor costs (process starts, imports, scheduling).
A run's MLflow duration is no measure here: the launcher makes every run (SCHEDULED) before
any starts. The probe of the grid's one cost (`remembered_probe`) is kept after the first
setup; the first setup probes once.

Prints each figure and appends them to BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark  # noqa: E402

EXE = str(Path(sys.executable).with_name("cifarnet-exp"))


def make_tree(root: Path, per_class: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 5)):
        for k in range(4):
            d = root / split / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3))
                img[:, :, k % 3] += 120
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root


def spec(folder: Path, tree: Path, runs: int) -> Path:
    lrs = [round(0.01 * (i + 1), 3) for i in range(runs // 2)]
    raw = {"name": "overhead", "base": {"data": {"path": str(tree), "num_workers": 0},
                                        "train": {"epochs": 1, "batch_size": 32,
                                                  "device": "cpu",
                                                  "out_dir": str(folder / "runs")}},
           "factors": {"train.lr": lrs}, "seeds": [0, 1]}
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def measure(tree: Path, runs: int, args: list[str]) -> float:
    """Wall seconds of one grid in a fresh folder and store."""
    with tempfile.TemporaryDirectory(prefix="executors-") as tmp:
        folder = Path(tmp)
        path = spec(folder, tree, runs)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns/mlflow.db'}"}
        start = time.perf_counter()
        r = subprocess.run([EXE, "run", str(path), *args], cwd=folder, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - start
        if r.returncode != 0:
            raise SystemExit(f"{args}: failed\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        if f"{runs} run(s) finished here" not in r.stdout:
            raise SystemExit(f"{args}: not every run finished\n{r.stdout[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    w = str(args.workers)
    setups = [("local, 1 worker (in the launcher's process)", []),
              (f"local, {w} worker processes", ["--workers", w]),
              (f"ray (local Ray), {w} at once", ["--executor", "ray", "--workers", w]),
              (f"slurm --slurm-cluster local (submitit), {w} at once",
               ["--executor", "slurm", "--slurm-cluster", "local", "--workers", w])]
    with tempfile.TemporaryDirectory(prefix="executors-data-") as tmp:
        tree = make_tree(Path(tmp) / "data")
        rows = []
        for name, extra in setups:
            wall = measure(tree, args.runs, extra)
            rows.append((name, wall))
            print(f"{name}: {wall:.1f} s wall", flush=True)
    base, n = rows[0][1], args.runs
    lines = [f"A grid of {n} tiny runs (generated 32x32 images, 80 training and 20 test "
             "images, 1 epoch each), once per executor, each in a fresh folder and store, "
             "`cifarnet-exp run` as a user types it; cost per run beyond one in-process "
             "worker = (wall - wall of local, 1 worker) / runs.", "",
             "| executor | wall (s) | wall per run (s) | vs local, 1 worker | cost per run "
             "beyond it (s) |", "|---|---:|---:|---:|---:|",
             *(f"| {name} | {wall:.1f} | {wall / n:.2f} | {wall / base:.2f}x | "
               f"{(wall - base) / n:+.2f} |" for name, wall in rows)]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark(f"Executors: cost per run ({n} tiny runs)", lines)


if __name__ == "__main__":
    main()
