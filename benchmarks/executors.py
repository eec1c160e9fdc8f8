"""The overhead per run of each executor, side by side in one session.

    python benchmarks/executors.py --runs 24 --workers 2

A grid of `--runs` tiny runs (generated 32x32 images, 1 epoch, 2 seeds per cell) is run
once per executor (`local` with one worker in the launcher's process, `local` with
`--workers` processes, `ray` on a local Ray, `slurm --slurm-cluster local` through
submitit), each in a fresh folder, as a user types it (`cifarnet-exp run`). Per executor:
the wall time, and the overhead per run: (wall - the runs' own training time / workers) /
runs, where a run's training time is its MLflow run's duration. The runs are tiny on
purpose: what is left is what the executor costs (process starts, imports, scheduling).

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


def measure(tree: Path, runs: int, args: list[str], workers: int) -> tuple[float, float]:
    """(wall s, overhead s per run) of one grid in a fresh folder."""
    import mlflow

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
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        df = mlflow.search_runs(experiment_names=["overhead"])
        kids = df[df["tags.cifarnet.role"] == "child"]
        train_s = (kids["end_time"] - kids["start_time"]).dt.total_seconds().sum()
    return wall, (wall - train_s / workers) / runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    w = str(args.workers)
    setups = [("local, 1 worker (in the launcher's process)", [], 1),
              (f"local, {w} worker processes", ["--workers", w], args.workers),
              (f"ray (local Ray), {w} at once", ["--executor", "ray", "--workers", w],
               args.workers),
              (f"slurm --slurm-cluster local (submitit), {w} at once",
               ["--executor", "slurm", "--slurm-cluster", "local", "--workers", w],
               args.workers)]
    with tempfile.TemporaryDirectory(prefix="executors-data-") as tmp:
        tree = make_tree(Path(tmp) / "data")
        rows = []
        for name, extra, workers in setups:
            wall, overhead = measure(tree, args.runs, extra, workers)
            rows.append((name, wall, overhead))
            print(f"{name}: {wall:.1f} s wall, {overhead:.2f} s overhead per run")
    base = rows[0][1]
    lines = [f"A grid of {args.runs} tiny runs (generated 32x32 images, 80 training and 20 "
             "test images, 1 epoch each), once per executor, each in a fresh folder and "
             "store; overhead per run = (wall - the runs' own MLflow durations / workers) / "
             "runs.", "",
             "| executor | wall (s) | vs local, 1 worker | overhead per run (s) |",
             "|---|---:|---:|---:|",
             *(f"| {n} | {w:.1f} | {w / base:.2f}x | {o:.2f} |" for n, w, o in rows)]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark(f"Executors: overhead per run ({args.runs} tiny runs)", lines)


if __name__ == "__main__":
    main()
