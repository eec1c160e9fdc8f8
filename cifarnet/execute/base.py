"""The seam between what a grid or search runs and where it runs.

A job is a picklable function call that is idempotent against the tracking store (see
`cifarnet.ablation.jobs.run_job`), so an executor only has to call functions somewhere and
hand back what each returned or raised. Executors are named in `EXECUTORS` (the CLI's
`--executor` and the tests loop over it) and each lives in a file of its own.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Iterator, Sequence


class ExecutorKind(StrEnum):
    LOCAL = "local"  # processes on this machine (no extra dependency)
    RAY = "ray"  # Ray tasks on a running cluster, or a local Ray started for the command
    SLURM = "slurm"  # one Slurm job per run, submitted as an array through submitit


@dataclass(frozen=True)
class Resources:
    """What one run asks of a worker: CPU cores and GPUs (fractional: runs share a GPU)."""

    cpus: int = 1
    gpus: float = 0.0


@dataclass(frozen=True)
class ExecutorOptions:
    """Everything an executor is built from (one object, passed down from the CLI).

    `workers`: runs at once (local) or the most at once (ray/slurm arrays); `runs_per_gpu`:
    runs sharing one GPU; `ray_address`: a running cluster (None: a local Ray for the
    command); `slurm_cluster`: submitit's cluster ("slurm", or "local" to run the Slurm code
    path on this machine); `slurm`: partition, time (minutes) and the like for sbatch;
    `folder`: where submitit keeps its logs and pickles."""

    kind: ExecutorKind = ExecutorKind.LOCAL
    workers: int = 1
    runs_per_gpu: int = 1
    gpus: int = 0  # GPUs this machine (local) or each run's node (slurm) has for the runs
    ray_address: str | None = None
    slurm_cluster: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    folder: str = "runs/submitit"
    max_retries: int = 3

    @property
    def in_process(self) -> bool:
        """One local worker: the jobs run in the launcher's process (its display, signals)."""
        return self.kind is ExecutorKind.LOCAL and self.workers == 1

    def resources(self) -> Resources:
        """Per run: the cores split between the runs at once; a GPU split K ways."""
        cpus = max(1, cpu_count() // max(1, self.workers))
        return Resources(cpus, 1.0 / self.runs_per_gpu if self.gpus else 0.0)


@dataclass
class Done:
    """One job's end: its index in the submitted list, and what it returned or raised."""

    index: int
    value: Any = None
    error: BaseException | None = None


class Executor(ABC):
    """Runs `fn(item)` for each item somewhere and yields each `Done` as it ends."""

    kind: ExecutorKind

    @abstractmethod
    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      stop: Any = None) -> Iterator[Done]:
        """Start every call and yield each as it ends. `stop` (an event a signal sets) or
        KeyboardInterrupt while waiting cancels what has not ended (a running job ends KILLED
        and resumes on a rerun) and raises KeyboardInterrupt."""

    def close(self) -> None:
        """Release what the executor started (a local Ray, worker processes)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_executor(options: ExecutorOptions) -> Executor:
    """The executor `options.kind` names (its module imported only then: ray and submitit
    are optional extras)."""
    if options.kind is ExecutorKind.RAY:
        from cifarnet.execute.ray_tasks import RayExecutor

        return RayExecutor(options)
    if options.kind is ExecutorKind.SLURM:
        from cifarnet.execute.slurm import SlurmExecutor

        return SlurmExecutor(options)
    from cifarnet.execute.local import LocalExecutor

    return LocalExecutor(options)
