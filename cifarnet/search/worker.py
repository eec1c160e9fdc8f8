"""The worker of `search --workers N`, run in a process of `cifarnet.execute` (or started
by hand on many machines against one storage: each calls Optuna's `Study.optimize`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


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

    from cifarnet.search.storage import quiet_optuna
    from cifarnet.search.study import run_search
    from cifarnet.signals import stop_on_signals
    from cifarnet.training.callbacks import StopOnEvent

    with contextlib.suppress(OSError):
        os.setsid()
    quiet_optuna()
    with stop_on_signals() as request:
        try:
            run_search(job.spec, job.workspace, storage_url=job.storage_url, until=job.until,
                       final=False, heartbeat_interval=job.heartbeat, grace_period=job.grace,
                       callbacks=lambda number: [StopOnEvent(request.event)])
        except KeyboardInterrupt:
            return "interrupted"
    return "interrupted" if request.event.is_set() else "done"
