"""A grid's predicted wall time before it starts, on this machine.

    covered = covered_jobs(spec, jobs, data, workspace, reuse=True)
    estimate = estimate_grid(jobs, data, workers=2, threads=1, covered=covered,
                             started_s=seconds_since_start())
    estimate.line()   # "predicted: 12 run(s) to train (0 already done or reusable), ..."

Each distinct cell's configuration is timed by `training.probe` (a few real training steps
and evaluation batches, at the threads a worker will have; a figure kept from an earlier
probe of the same cost is reused, `remembered_probe`); a run is predicted as its epochs
x the probe's seconds per epoch, plus `RUN_OVERHEAD_S` (its MLflow run, params, per-epoch
checkpoint and metrics). The runs' wall time at N workers is the larger of their summed time
/ N and the longest run (runs are not split between workers). To that the fixed costs are
added, measured in this process: its start (imports, data loading: `started_s`) and the
probe itself, which a real run also makes as it starts; with more than one worker, each
worker's own start as well (it imports and loads the data again, in parallel with the
others). Jobs the store already holds FINISHED (here, or reusable from another experiment)
cost nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cifarnet.spec.ablation import AblationSpec, Job
from cifarnet.data.datasets import Dataset, data_key


# seconds a run costs beyond its epochs: its MLflow run and params, a checkpoint uploaded and
# metrics logged per epoch (measured: 12 runs of 2 epochs on 10,000 images took 115 s against
# 91 s of epochs and about 12 s of start-up, BENCHMARKS.md "A reduced budget")
RUN_OVERHEAD_S = 1.0


@dataclass(frozen=True)
class GridEstimate:
    """A grid's predicted cost: `runs` left to train, `covered` jobs already done or
    reusable, at `workers` workers; `wall_s` seconds in all, of which `fixed_s` are start-up
    (see the module docstring); `epoch_s`: cell -> seconds per epoch."""

    runs: int
    covered: int
    workers: int
    wall_s: float
    fixed_s: float = 0.0
    epoch_s: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        per = "; ".join(f"{label}: {s:.0f} s/epoch" for label, s in self.epoch_s.items())
        return (f"predicted: {self.runs} run(s) to train ({self.covered} already done or "
                f"reusable), {hms(self.wall_s)} (h:mm:ss) with "
                f"--workers {self.workers} on this machine"
                + (f" ({per}; {self.fixed_s:.0f} s of start-up; measured by a probe of a few "
                   "training steps)" if per else ""))


def hms(seconds: float) -> str:
    """`31:03:26` for 31 h 3 min 26 s (hours not folded into days, as timedelta's
    `1 day, 7:03:26` was, under an "(h:mm:ss)" label)."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def seconds_since_start() -> float:
    """How long this process has run (its imports, its data loading so far), seconds."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def estimate_grid(jobs: list[Job], data: dict[tuple, Dataset], workers: int, threads: int,
                  covered: set[str], started_s: float = 0.0) -> GridEstimate:
    """Probe each cell of the jobs not in `covered` (config hashes) with `threads` torch
    threads (restored after) and predict the grid's wall time at `workers` workers;
    `started_s`: this process's start-up so far (`seconds_since_start`), counted once, and
    once more for the workers' own start when `workers` > 1."""
    import torch

    from cifarnet.training.probe import remembered_probe

    todo = [j for j in jobs if j.config_hash not in covered]
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    probe_start = time.perf_counter()
    try:
        costs: dict[str, Any] = {}
        for j in todo:
            if j.cell.label not in costs:
                costs[j.cell.label] = remembered_probe(j.config, data[data_key(j.config.data)])
    finally:
        torch.set_num_threads(before)
    probe_s = time.perf_counter() - probe_start
    seconds = [costs[j.cell.label].run_s(j.config.train.epochs) + RUN_OVERHEAD_S for j in todo]
    runs_s = max(sum(seconds) / workers, max(seconds, default=0.0))
    fixed = started_s + probe_s + (started_s if workers > 1 and todo else 0.0)
    return GridEstimate(len(todo), len(jobs) - len(todo), workers, fixed + runs_s, fixed,
                        {label: c.epoch_s() for label, c in costs.items()})


def covered_jobs(spec: AblationSpec, jobs: list[Job], data: dict[tuple, Dataset],
                 workspace: Any, reuse: bool) -> set[str]:
    """Config hashes of the jobs the store already has FINISHED in the spec's experiment on
    the same data, or (with `reuse`) in another one; reads only an existing store."""
    from cifarnet.tracking.client import mlflow_client
    from cifarnet.tracking.reuse import find_source
    from cifarnet.tracking.runs import finished_hashes

    from cifarnet.tracking.store import store_exists

    if not store_exists(workspace):  # opening it would create it (--dry-run writes nothing)
        return set()
    client = mlflow_client(workspace.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    out = set()
    settled = {j.config_hash for j in spec.settled_jobs()}  # an untuned arm is never done
    for j in jobs:
        if j.config_hash not in settled:
            continue
        fp = data[data_key(j.config.data)].fingerprint
        if exp is not None and finished_hashes(client, exp.experiment_id, j.config_hash, fp):
            out.add(j.config_hash)
        elif reuse and find_source(client, exp.experiment_id if exp else "", j.config_hash,
                                   fp) is not None:
            out.add(j.config_hash)
    return out

