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


class LocalExecutor(Executor):
    kind = ExecutorKind.LOCAL

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Done]:
        if self.options.workers == 1:  # in this process: its display and signals as they are
            for i, item in enumerate(items):
                try:
                    yield Done(i, fn(item))
                except Exception as exc:  # the job's own failures are recorded by the job
                    yield Done(i, error=exc)
            return
        yield from self._in_processes(fn, items)

    def _in_processes(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Done]:
        ctx = multiprocessing.get_context("spawn")  # no forked copy of a torch or MLflow state
        slots = ctx.Queue()
        for slot in range(self.options.workers):
            slots.put(slot)
        pool = cf.ProcessPoolExecutor(self.options.workers, mp_context=ctx,
                                      initializer=init_worker,
                                      initargs=(slots, self.options.resources().cpus,
                                                self.options.gpus))
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for future in cf.as_completed(futures):
                try:
                    yield Done(futures[future], future.result())
                except Exception as exc:  # a worker that died (BrokenProcessPool) included
                    yield Done(futures[future], error=exc)
        except BaseException:
            stop_workers()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def stop_workers(sig: int = signal.SIGTERM) -> None:
    """Pass a stop on to this process's worker processes (each ends its run KILLED)."""
    import psutil

    for child in psutil.Process().children():
        try:
            child.send_signal(sig)
        except psutil.Error:
            pass


def init_worker(slots: Any, threads: int, gpus: int) -> None:
    """A worker process's start: its slot's device and threads, death with the launcher,
    SIGTERM as KeyboardInterrupt."""
    slot = slots.get()
    die_with_parent()
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["CIFARNET_WORKER_INDEX"] = str(slot)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # the launcher's stop, passed on
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the launcher
    import torch

    torch.set_num_threads(threads)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
