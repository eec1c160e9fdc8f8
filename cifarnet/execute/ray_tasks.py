"""Ray: each job a Ray task (`@ray.remote` with the run's CPUs and fractional GPUs).

`--ray-address` joins a running cluster (`ray start --head` on one machine, `ray start
--address HEAD:6379` on the others); without it a local Ray is started for the command and
stopped with it. A task whose worker or node dies is retried by Ray itself (`max_retries`);
the retry finds its job's run and resumes from the last checkpoint. Every node must reach
the tracking store (an MLflow server or a shared database) and hold the data at the same
path.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from cifarnet.errors import UserError
from cifarnet.execute.base import Done, Executor, ExecutorKind, ExecutorOptions, cpu_count


class RayExecutor(Executor):
    kind = ExecutorKind.RAY

    def __init__(self, options: ExecutorOptions) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray: Ray is not installed; pip install "
                            "'cifarnet-exp[ray]'") from None
        self.ray, self.options = ray, options
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=options.ray_address,
                     num_cpus=None if options.ray_address else cpu_count(),
                     include_dashboard=False, log_to_driver=False,
                     configure_logging=False)

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      stop: Any = None) -> Iterator[Done]:
        res = self.options.resources()
        task = self.ray.remote(fn).options(num_cpus=res.cpus, num_gpus=res.gpus,
                                           max_retries=self.options.max_retries,
                                           retry_exceptions=False)
        refs = {task.remote(item): i for i, item in enumerate(items)}
        left = list(refs)
        try:
            while left:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                ready, left = self.ray.wait(left, num_returns=1, timeout=0.5)
                if not ready:
                    continue
                try:
                    yield Done(refs[ready[0]], self.ray.get(ready[0]))
                except self.ray.exceptions.RayError as exc:  # died past its retries
                    yield Done(refs[ready[0]], error=exc)
        except BaseException:
            for ref in left:  # each running job ends KILLED (KeyboardInterrupt in its task)
                self.ray.cancel(ref)
            raise

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
