"""Tracked runs: one way to make an MLflow run whose end state is always true.

`tracked_run` is the lifecycle of every run cifarnet-exp writes (a grid's child, a search's
trial, a search's final test), after MLflow's nested-runs tutorial: create the run with its tags
under an explicit experiment and parent, hand it to the block, and set its terminal status
from how the block ended. The queries that decide what is already done live here too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

from cifarnet.tracking.tags import (
    TAG_DATA,
    TAG_HASH,
    TAG_REASON,
    TAG_ROLE,
    TAG_STATUS,
    Role,
)
from cifarnet.training.status import RunStatus


@dataclass
class TrackedRun:
    """The run inside a `tracked_run` block. `end_as` records how the block's training ended;
    unset, a block that returns normally ends FINISHED."""

    client: Any
    run_id: str
    status: str = "FINISHED"

    def end_as(self, status: RunStatus | str) -> None:
        """`status`: a trainer `RunStatus` (mapped to MLflow's) or an MLflow status name."""
        self.status = status.mlflow_status if isinstance(status, RunStatus) else status


@contextlib.contextmanager
def tracked_run(client: Any, experiment_id: str, name: str, tags: dict[str, str], *,
                parent_run_id: str | None = None,
                system_metrics: bool = False) -> Iterator[TrackedRun]:
    """Create an MLflow run, yield it, and end it in a state that says how the block ended.

    Args:
        client: an `mlflow.MlflowClient` of the store.
        experiment_id: the experiment the run belongs to.
        name: the run name shown in the UI.
        tags: tags set at creation (use the names in `cifarnet.tracking.tags`).
        parent_run_id: nests the run under this one (tag `mlflow.parentRunId`).
        system_metrics: sample CPU, memory and GPU while the block runs (every 5 s, MLflow's
            `SystemMetricsMonitor`).

    End states: the block's `end_as(...)` status when it returns (default FINISHED); KILLED
    when it raises KeyboardInterrupt or SystemExit; FAILED when it raises anything else. The
    exception propagates either way.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    if parent_run_id:
        tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, **tags}
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    with adopted_run(client, run_id, system_metrics=system_metrics) as run:
        yield run


@contextlib.contextmanager
def adopted_run(client: Any, run_id: str, *, system_metrics: bool = False
                ) -> Iterator[TrackedRun]:
    """`tracked_run`'s lifecycle for a run that exists already (a job's run, made by its
    launcher and kept across attempts): set RUNNING, yielded, ended as the block ended."""
    run = TrackedRun(client, run_id)
    monitor = None
    try:  # a stop that lands right after the run is set RUNNING still ends it
        client.update_run(run_id, status="RUNNING")
        monitor = _start_monitor(run.run_id) if system_metrics else None
        yield run
    except (KeyboardInterrupt, SystemExit):
        run.status = "KILLED"
        raise
    except BaseException:
        run.status = "FAILED"
        raise
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
        client.set_terminated(run.run_id, run.status)


def _start_monitor(run_id: str) -> Any:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=5)
    monitor.start()
    return monitor


def all_runs(client: Any, experiment_id: str, filter_string: str) -> list:
    """Every run of the experiment that matches `filter_string` (MLflow's search syntax),
    across result pages."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_hashes(client: Any, experiment_id: str, config_hash: str | None = None,
                    data_fingerprint: str | None = None) -> set[str]:
    """Config hashes of the experiment's FINISHED grid runs (optionally only `config_hash`,
    and only runs trained on the data set with `data_fingerprint`)."""
    flt = f"tags.`{TAG_ROLE}` = '{Role.CHILD}' and attributes.status = 'FINISHED'"
    if config_hash:
        flt += f" and tags.`{TAG_HASH}` = '{config_hash}'"
    if data_fingerprint:
        flt += f" and tags.`{TAG_DATA}` = '{data_fingerprint}'"
    return {r.data.tags[TAG_HASH] for r in all_runs(client, experiment_id, flt)}


def fail_stale_run(client: Any, run_id: str) -> None:
    """End FAILED (status `stale`) a run whose worker stopped without ending it."""
    client.set_tag(run_id, TAG_REASON, "stale: its worker stopped without ending it")
    client.set_tag(run_id, TAG_STATUS, RunStatus.STALE)
    client.set_terminated(run_id, "FAILED")
