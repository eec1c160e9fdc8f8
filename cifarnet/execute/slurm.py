"""Slurm, through submitit: one Slurm job per run, submitted as a job array.

`--slurm-cluster slurm` submits with sbatch (partition, time and GPUs from `--slurm-*`
options); `--slurm-cluster local` runs the same code path on this machine through
submitit's local executor (how the tests exercise it). Jobs outlive a killed launcher: a
rerun finds them alive by their runs' heartbeats and does not submit them again. submitit
keeps its pickles and logs under `folder`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

from cifarnet.errors import UserError
from cifarnet.execute.base import Done, Executor, ExecutorKind, ExecutorOptions

POLL_S = 1.0


class SlurmExecutor(Executor):
    kind = ExecutorKind.SLURM

    def __init__(self, options: ExecutorOptions) -> None:
        try:
            import submitit
        except ImportError:
            raise UserError("--executor slurm: submitit is not installed; pip install "
                            "'cifarnet-exp[slurm]'") from None
        self.options = options
        self.local = options.slurm_cluster == "local"
        self.executor = submitit.AutoExecutor(options.folder, cluster=options.slurm_cluster)
        res = options.resources()
        params: dict[str, Any] = {"timeout_min": options.slurm.get("time", 24 * 60),
                                  "cpus_per_task": res.cpus,
                                  "slurm_array_parallelism": options.workers}
        if options.gpus:
            params["gpus_per_node"] = options.gpus
        if options.slurm.get("partition"):
            params["slurm_partition"] = options.slurm["partition"]
        self.executor.update_parameters(**params)
        self.jobs: list[Any] = []

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      stop: Any = None) -> Iterator[Done]:
        if self.local:  # submitit's local cluster ignores array parallelism: a window here
            queue, running = list(enumerate(items)), {}
        else:  # one job array (`slurm_array_parallelism` at once)
            queue, running = [], dict(enumerate(self.executor.map_array(fn, items)))
        window = self.options.workers
        try:
            while queue or running:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                while queue and len(running) < window:
                    i, item = queue.pop(0)
                    running[i] = self.executor.submit(fn, item)
                for i, job in list(running.items()):
                    if job.done():
                        del running[i]
                        yield _outcome(i, job)
                time.sleep(POLL_S if running else 0)
        except BaseException:
            for job in running.values():  # scancel (local: SIGINT): each run ends KILLED
                job.cancel(check=False)
            raise


def _outcome(index: int, job: Any) -> Done:
    try:
        return Done(index, job.result())
    except Exception as exc:  # the job died (node failure, timeout, scancel)
        return Done(index, error=exc)
