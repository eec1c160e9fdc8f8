"""`run --workers N`: N worker processes on one queue, started, shown and stopped together;
and the worker of `search --workers N` (`search_worker`, run by `execute.local`).

Each grid worker is the same `run` command with `--worker` (the code path of workers
on many machines: they share the queue, each job is run once). A worker shows no display of its
own: it writes its events as JSON lines on standard output (`EventListener`), and the
supervisor (this module, in the command the user started) shows every worker's run and the
grid's counts in one display.

Threads: on the CPU each worker gets `cores // N` threads (OMP_NUM_THREADS, at least 1), so
that workers x threads <= cores; on CUDA, worker i sees device i mod (device count)
(CUDA_VISIBLE_DEVICES; several workers may share a device).

Signals: the workers run in sessions of their own, so a Ctrl-C at the terminal reaches the
supervisor only, which passes each signal on once to every worker: the first ends each
worker's run KILLED at its next batch (the jobs go back to the queue), a second stops them at
once. A worker whose supervisor dies (kill -9) gets SIGTERM from the kernel
(PR_SET_PDEATHSIG, Linux) and ends its run the same way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cifarnet.ablation.execute import GridListener
from cifarnet.training.callbacks import Callback, RunContext, RunResult

EVENT_PREFIX = "cifarnet-event "  # marks an event line among a worker's other output
SUMMARY = re.compile(r": (\d+) run\(s\) finished here, (\d+) already done, (\d+) failed; "
                     r"parent run (\w+)$")


def emit(event: dict[str, Any]) -> None:
    """Write one event line on standard output (a worker's side). A supervisor killed with
    -9 leaves the pipe closed: the event is dropped (the kernel's SIGTERM, PR_SET_PDEATHSIG,
    is ending this worker's run KILLED), rather than the write crashing the run (a trial
    recorded FAIL and never run again)."""
    try:
        sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # closed pipe; a stdout closed after an earlier one
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        except OSError:
            pass


class RunEvents(Callback):
    """A worker's run, as events: its start, each epoch, its end."""

    def __init__(self, label: str) -> None:
        self.label = label

    def on_run_start(self, ctx: RunContext) -> None:
        emit({"run": self.label, "epoch": ctx.start_epoch - 1,
              "epochs": ctx.config.train.epochs})

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        emit({"run": self.label, "epoch": epoch, "epochs": ctx.config.train.epochs,
              "test_acc": metrics.get("test_acc"), "val_acc": metrics.get("val_acc")})

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        emit({"run": self.label, "end": str(result.status)})


class EventListener(GridListener):
    """The grid listener of a `--worker`: every event as a line on standard output."""

    def grid(self, counts: dict[str, int], total: int) -> None:
        emit({"grid": counts, "total": total})

    def run_callbacks(self, label: str) -> list[Callback]:
        return [RunEvents(label)]

    def message(self, text: str) -> None:
        emit({"message": text})

    def close(self) -> None: ...


@dataclass(frozen=True)
class SearchWorker:
    """What a `search --workers N` worker process is given (pickled to it, never on a
    command line: the storage URL may hold a password)."""

    spec: Any
    workspace: Any
    storage_url: str | None
    until: int  # fill the study up to this many counted trials
    heartbeat: int
    grace: int


def search_worker(job: SearchWorker) -> str:
    """One worker of `search --workers N` (in a process of `execute.local`): Optuna's
    `Study.optimize` on the study until it counts `job.until` trials; no display, no
    held-out test (the launcher's). "done", or "interrupted" when a signal stopped it (its
    trial ends KILLED and is enqueued again). It leaves the terminal's process group, so a
    Ctrl-C reaches the launcher only, which passes each signal on once."""
    import contextlib

    from cifarnet.cli.logs import quiet_libraries
    from cifarnet.cli.signals import stop_on_signals
    from cifarnet.search.study import run_search
    from cifarnet.training.callbacks import StopOnEvent

    with contextlib.suppress(OSError):
        os.setsid()
    quiet_libraries()
    with stop_on_signals() as request:
        try:
            run_search(job.spec, job.workspace, storage_url=job.storage_url, until=job.until,
                       final=False, heartbeat_interval=job.heartbeat, grace_period=job.grace,
                       callbacks=lambda number: [StopOnEvent(request.event)])
        except KeyboardInterrupt:
            return "interrupted"
    return "interrupted" if request.event.is_set() else "done"


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_env(index: int, workers: int, cores: int, cuda_devices: int,
               base: dict[str, str]) -> dict[str, str]:
    """The environment of worker `index` (0-based) of `workers`: `cores // workers` threads
    (at least 1) and, given `cuda_devices` > 0, device `index % cuda_devices`."""
    threads = str(max(1, cores // workers))
    env = {**base, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "CIFARNET_WORKER_INDEX": str(index)}
    if cuda_devices > 0:
        env["CUDA_VISIBLE_DEVICES"] = str(index % cuda_devices)
    return env


def _libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: workers outlive a killed supervisor
        return None


_LIBC = _libc()  # loaded here: the child may not import between fork and exec


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class WorkerState:
    """What the supervisor knows of one worker."""

    run: str | None = None
    epoch: int = 0
    epochs: int = 0
    summary: tuple[int, int, int, str] | None = None  # finished, done, failed, parent run
    errors: list[str] = field(default_factory=list)


@dataclass
class Supervision:
    """The outcome of `supervise`: each worker's exit code and final state."""

    codes: list[int]
    workers: list[WorkerState]

    @property
    def parent_run_id(self) -> str | None:
        return next((w.summary[3] for w in self.workers if w.summary), None)

    def count(self, i: int) -> int:
        return sum(w.summary[i] for w in self.workers if w.summary)


def supervise(argv: list[str], workers: int, request: Any,
              on_event: Callable[[int, dict[str, Any]], None],
              on_error: Callable[[int, str], None], cuda_devices: int = 0,
              storage: str | None = None) -> Supervision:
    """Start `workers` processes of `python -m cifarnet <argv> --worker`, pass their events
    to `on_event(worker, event)` and their error lines to `on_error(worker, line)`, pass
    every signal `request` records (a `signals.StopRequest` of `signals.record_signals`) on
    to each of them once, and wait for all to end. Raises nothing for a worker's failure:
    see `Supervision.codes`. `storage` (a `--storage` URL) reaches the workers in their
    environment (CIFARNET_STORAGE), never on their command line, which `ps` shows to every
    user of the machine, password included."""
    cores = cpu_count()
    states = [WorkerState() for _ in range(workers)]
    base = {**os.environ, **({"CIFARNET_STORAGE": storage} if storage else {})}
    procs = [subprocess.Popen([sys.executable, "-m", "cifarnet", *argv, "--worker"],
                              env=worker_env(i, workers, cores, cuda_devices, base),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, preexec_fn=_die_with_parent)
             for i in range(workers)]
    def errors(index: int, line: str) -> None:
        if request.event.is_set() and line.startswith("interrupted:"):
            return  # each worker's own line: the supervisor says it once for all
        on_error(index, line)

    readers = []
    for i, p in enumerate(procs):
        readers.append(threading.Thread(target=_read_stdout, daemon=True,
                                        args=(p.stdout, i, states[i], on_event)))
        readers.append(threading.Thread(target=_read_stderr, daemon=True,
                                        args=(p.stderr, i, states[i], errors)))
    for t in readers:
        t.start()
    passed_on = 0  # signals passed on so far (`request.received`, see signals.record_signals)
    while any(p.poll() is None for p in procs):
        if request.event.is_set():
            # after the first signal `wait` returns at once: sleep, or the loop spins a core
            # at 100% while the workers end their runs (and slows them on a small machine)
            time.sleep(0.05)
        else:
            request.event.wait(0.2)
        while passed_on < len(request.received):
            for p in procs:
                if p.poll() is None:
                    try:
                        os.kill(p.pid, request.received[passed_on])
                    except ProcessLookupError:
                        pass
            passed_on += 1
    for t in readers:
        t.join(timeout=5)
    return Supervision([p.returncode for p in procs], states)


def _read_stdout(stream: Any, index: int, state: WorkerState,
                 on_event: Callable[[int, dict[str, Any]], None]) -> None:
    for line in stream:
        line = line.rstrip("\n")
        if line.startswith(EVENT_PREFIX):
            event = json.loads(line[len(EVENT_PREFIX):])
            if "run" in event:
                state.run = None if "end" in event else event["run"]
                state.epoch, state.epochs = event.get("epoch", 0), event.get("epochs", 0)
            on_event(index, event)
        elif m := SUMMARY.search(line):
            state.summary = (int(m[1]), int(m[2]), int(m[3]), m[4])


def _read_stderr(stream: Any, index: int, state: WorkerState,
                 on_error: Callable[[int, str], None]) -> None:
    for line in stream:
        line = line.rstrip("\n")
        if line.strip():
            state.errors.append(line)
            on_error(index, line)
