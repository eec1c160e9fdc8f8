"""This machine: the jobs in this process (one worker), or in N worker processes.

Each worker process gets its share of the cores (threads) and, on a machine with GPUs, one
device, shared by `runs_per_gpu` workers (small runs fill a GPU together). Workers end with
the launcher (Linux's parent-death signal), and SIGTERM in a worker stops its job as Ctrl-C
does (the run ends KILLED and resumes on a rerun); a terminal's Ctrl-C, sent to the whole
process group, is left to the launcher, which passes a SIGTERM on.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
from typing import Any, Callable, Iterator, Sequence

from cifarnet.execute.base import Done, Executor, ExecutorKind, ExecutorOptions
from cifarnet.signals import StopFlag


class LocalExecutor(Executor):
    kind = ExecutorKind.LOCAL

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      stop: Any = None) -> Iterator[Done]:
        if self.options.workers == 1:  # in this process: its display and signals as they are
            for i, item in enumerate(items):
                try:
                    yield Done(i, fn(item))
                except Exception as exc:  # the job's own failures are recorded by the job
                    yield Done(i, error=exc)
            return
        yield from self._in_processes(fn, items, stop)

    def _in_processes(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      stop: Any) -> Iterator[Done]:
        ctx = multiprocessing.get_context("spawn")  # no forked copy of a torch or MLflow state
        slots = ctx.Queue()
        for slot in range(self.options.workers):
            slots.put(slot)
        pool = cf.ProcessPoolExecutor(self.options.workers, mp_context=ctx,
                                      initializer=init_worker,
                                      initargs=(slots, self.options.resources().cpus,
                                                self.options.gpus))
        futures = {pool.submit(InWorker(fn), item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                ended, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for future in ended:
                    try:
                        yield Done(futures[future], future.result())
                    except Exception as exc:  # a worker that died (BrokenProcessPool) too
                        yield Done(futures[future], error=exc)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            stop_workers()
            raise
        pool.shutdown(wait=True)


# after a second stop, the seconds a worker gets to end its run KILLED (MLflow's
# system-metrics monitor alone may take its 5 s sampling interval to stop)
SECOND_STOP_S = 20.0


def signal_workers(sig: int = signal.SIGTERM) -> list[Any]:
    """Send `sig` to this process's worker processes (not multiprocessing's resource
    tracker, which ignores SIGTERM and must outlive them); the workers signalled."""
    import psutil

    children = []
    for child in psutil.Process().children():
        try:
            if "--multiprocessing-fork" in child.cmdline():
                children.append(child)
        except psutil.Error:
            pass
    for child in children:
        try:
            child.send_signal(sig)
        except psutil.Error:
            pass
    return children


def stop_workers(timeout_s: float = 60.0) -> None:
    """Stop this process's worker processes: SIGTERM ends a running job KILLED (an idle
    worker exits at once); one still alive after `timeout_s` seconds (`SECOND_STOP_S`
    after a further signal) is killed. Signals meanwhile are recorded, not raised: one
    raised in here would leave workers unsignalled, and the process waiting on them."""
    import time

    import psutil

    from cifarnet.signals import record_signals

    with record_signals() as again:
        workers = signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        alive = workers
        while alive and time.monotonic() < deadline:
            _, alive = psutil.wait_procs(alive, timeout=0.5)
            if again.received:  # a second stop: time to record the runs KILLED, no more
                deadline = min(deadline, time.monotonic() + SECOND_STOP_S)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


_JOB = {"running": False, "stopping": False}  # this worker process's one job at a time
# set by the launcher's stop in a worker: its job ends KILLED at the next batch (the trainer's
# `StopOnEvent`), a safe point; a second stop raises at once
WORKER_STOP = StopFlag()


class InWorker:
    """`fn` as a worker runs it: a stop (SIGTERM) during the job sets `WORKER_STOP` (the job
    ends KILLED at its next batch; a second stop raises at once) and the worker exits after
    it; an idle worker exits at once. A KeyboardInterrupt raised while a worker waits for
    its next job could leave the pool's queue lock held, and the launcher waiting for ever."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        _JOB["running"] = True
        try:
            return self.fn(item)
        finally:
            _JOB["running"] = False
            if _JOB["stopping"]:
                os._exit(128 + signal.SIGTERM)


def _on_stop(signum: int, frame: object) -> None:
    if not _JOB["running"]:
        os._exit(128 + signum)
    if _JOB["stopping"]:  # a second stop: at once
        raise KeyboardInterrupt
    _JOB["stopping"] = True
    WORKER_STOP.set()


def init_worker(slots: Any, threads: int, gpus: int) -> None:
    """A worker process's start: its slot's device and threads, death with the launcher,
    SIGTERM as a stop of its job (`_on_stop`)."""
    slot = slots.get()
    die_with_parent()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["CIFARNET_WORKER_INDEX"] = str(slot)
    signal.signal(signal.SIGTERM, _on_stop)  # the launcher's stop, passed on
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the launcher
    import torch

    torch.set_num_threads(threads)


def _libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: a child outlives a killed parent
        return None


_LIBC = _libc()  # loaded here: a child between fork and exec should not import


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no-op elsewhere); safe
    as a `preexec_fn`."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
