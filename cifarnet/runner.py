"""The ablation runner: a spec's runs, popped from the shared queue, trained and tracked.

Any number of workers run `run_spec` on the same spec and storage; each job runs once. A job
whose config hash already has a FINISHED MLflow run is skipped, so a rerun after an
interruption runs only what is missing. A diverged or crashed run ends FAILED (with the
reason as a tag, the traceback as an artifact) and the others go on. Ctrl-C or SIGTERM ends
the current run KILLED. An MLflow run left RUNNING by a dead worker is marked FAILED before
its job runs again.

Paired design: every job of a seed has the same `train.seed`, so the trainer gives every
variant the same data order and augmentations (streams derived from the seed, never from the
model) and the same initial weights for every layer they share (`model.paired_init`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from cifarnet.callbacks import Callback
from cifarnet.config import RunConfig, build_config
from cifarnet.data import Dataset, data_key, load_data, preload_data
from cifarnet.retry import retry_setup
from cifarnet.spec import AblationSpec, Job
from cifarnet.tracking import (TAG_CELL, TAG_HASH, TAG_REASON, TAG_ROLE, TAG_SEED, TAG_SPEC,
                               TAG_STATUS, TAG_TRIAL, MlflowRunCallback, get_or_create_experiment,
                               mlflow_status, setup_mlflow, shared_parent_run)
from cifarnet.train import default_run_dir, train
from cifarnet.workqueue import JobQueue, QueuedJob, make_storage


@dataclass
class Outcome:
    """What this worker did."""

    finished: list[str] = field(default_factory=list)
    already_done: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    parent_run_id: str = ""
    experiment_id: str = ""

    def merge(self, other: "Outcome") -> None:
        """Fold a later round's outcome (adaptive seeds) into this one."""
        self.finished += other.finished
        self.skipped += other.skipped
        self.failed += other.failed
        self.already_done = self.already_done or other.already_done
        self.parent_run_id = other.parent_run_id or self.parent_run_id
        self.experiment_id = other.experiment_id or self.experiment_id

    def failure_line(self) -> str:
        items = "; ".join(f"{label} ({reason})" for label, reason in self.failed)
        return f"{len(self.failed)} run(s) failed: {items}"


def grid_id(spec: AblationSpec) -> str:
    """Identity of the grid (base config and factors, not seeds): one study and parent run."""
    text = json.dumps({"base": spec.base_config().hash(), "factors": spec.factors},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def quiet_libraries() -> None:
    """Keep MLflow's and Optuna's chatter (system-metrics INFO lines, experimental-feature
    warnings) out of the progress display."""
    import logging
    import warnings

    import optuna

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def job_records(jobs: list[Job]) -> list[dict[str, Any]]:
    return [{"config_hash": j.config_hash, "cell": j.cell.label, "seed": j.seed,
             "config": j.config.to_dict()} for j in jobs]


class Progress:
    """What the runner tells its display; the CLI plugs a rich one in."""

    def grid(self, counts: dict[str, int], total: int) -> None: ...

    def run_callbacks(self, label: str) -> list[Callback]:
        return []

    def message(self, text: str) -> None: ...


def run_spec(spec: AblationSpec, *, storage_url: str | None = None,
             jobs: list[Job] | None = None, progress: Progress | None = None,
             heartbeat_interval: int = 10, grace_period: int = 30,
             poll_interval: float = 2.0,
             data: dict[tuple, Dataset] | None = None,
             stop: threading.Event | None = None) -> Outcome:
    """Work on the spec's queue until no job is waiting or running anywhere.

    `jobs` defaults to the whole grid at the spec's seeds; `--until-decided` passes extra
    seeds for some cells.

    Setting `stop` (the CLI does on SIGTERM or Ctrl-C) ends the current run KILLED at its
    next batch and raises KeyboardInterrupt.
    """
    from mlflow import MlflowClient

    quiet_libraries()
    progress = progress or Progress()
    jobs = jobs if jobs is not None else spec.jobs()
    records = job_records(jobs)
    # every dataset up front, so a bad data path fails before any write
    data = data if data is not None else preload_data(j.config.data for j in jobs)

    storage = retry_setup(lambda: make_storage(storage_url, heartbeat_interval, grace_period))
    setup_mlflow()
    client = retry_setup(MlflowClient)
    out = Outcome(experiment_id=retry_setup(lambda: get_or_create_experiment(spec.name)))
    queue = JobQueue(storage, f"cifarnet.{spec.name}.{grid_id(spec)}")
    out.parent_run_id = _parent_run(queue, client, out.experiment_id, spec)
    done = finished_hashes(client, out.experiment_id)
    out.already_done = sum(r["config_hash"] in done for r in records)
    queue.enqueue_missing(records, done)
    total = len(records)

    stop = stop or threading.Event()
    try:
        while True:
            if stop.is_set():
                raise KeyboardInterrupt
            queue.fail_stale()
            job = queue.pop()
            counts = queue.counts()
            progress.grid(counts, total)
            if job is None:
                if counts["running"] == 0 and counts["waiting"] == 0:
                    break
                stop.wait(poll_interval)  # others are still running; one may go stale
                continue
            label = f"{job.cell} seed={job.seed}"
            if job.config_hash in finished_hashes(client, out.experiment_id, job.config_hash):
                queue.finish(job, TrialState.PRUNED, skipped="already finished")
                out.skipped.append(label)
                continue
            if queue.is_duplicate(job):
                queue.finish(job, TrialState.PRUNED, skipped="duplicate")
                continue
            _fail_stale_mlflow_runs(client, out.experiment_id, job.config_hash)
            cfg = build_config(job.config)
            key = data_key(cfg.data)
            if key not in data:
                data[key] = load_data(cfg.data)
            _run_job(job, cfg, data[key], queue, client, out, spec.name,
                     [*progress.run_callbacks(label), StopOnSignal(stop)], progress, label)
    except KeyboardInterrupt:
        client.set_terminated(out.parent_run_id, "KILLED")  # the next run reopens it
        raise

    _close_parent(client, queue, out)
    return out


class StopOnSignal(Callback):
    """Turns a stop request (set from a signal handler) into KeyboardInterrupt at a batch
    boundary, where the trainer can end the run cleanly."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def on_batch_end(self, ctx, epoch, step, loss) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt


def _run_job(job: QueuedJob, cfg: RunConfig, data: Dataset, queue: JobQueue, client,
             out: Outcome, spec_name: str, callbacks: list[Callback], progress: Progress,
             label: str) -> None:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from cifarnet.workqueue import Heartbeat

    run = client.create_run(out.experiment_id, run_name=label, tags={
        MLFLOW_PARENT_RUN_ID: out.parent_run_id, TAG_ROLE: "child", TAG_SPEC: spec_name,
        TAG_HASH: job.config_hash, TAG_CELL: job.cell, TAG_SEED: str(job.seed),
        TAG_TRIAL: str(job.number)})
    run_id = run.info.run_id
    monitor = SystemMetricsMonitor(run_id, sampling_interval=5)
    monitor.start()
    try:
        with Heartbeat(queue.storage, job.trial_id):
            result = train(cfg, [MlflowRunCallback(run_id), *callbacks], data=data,
                           run_dir=default_run_dir(cfg))
    except KeyboardInterrupt:
        _safe_finish(monitor)
        client.set_terminated(run_id, "KILLED")
        queue.finish(job, TrialState.FAIL, outcome="killed")
        raise
    except Exception as exc:  # a crash: recorded, and the grid goes on
        _safe_finish(monitor)
        client.set_terminated(run_id, "FAILED")
        queue.finish(job, TrialState.FAIL, outcome="crashed")
        out.failed.append((label, f"crashed: {type(exc).__name__}: {exc}"[:200]))
        progress.message(f"[red]{label} crashed[/]: {type(exc).__name__}: {exc}")
        return
    _safe_finish(monitor)
    client.set_terminated(run_id, mlflow_status(result.status))
    if result.status == "finished":
        queue.finish(job, TrialState.COMPLETE, result.final.get("test_acc", 0.0),
                     mlflow_run_id=run_id)
        out.finished.append(label)
    else:
        queue.finish(job, TrialState.FAIL, outcome=result.status, mlflow_run_id=run_id)
        out.failed.append((label, result.status))
        progress.message(f"[red]{label} {result.status}[/]: {result.reason}")


def _safe_finish(monitor) -> None:
    try:
        monitor.finish()
    except Exception:
        pass


def _parent_run(queue: JobQueue, client, experiment_id: str, spec: AblationSpec) -> str:
    """The grid's parent run, shared by every worker of the queue."""
    return shared_parent_run(
        client, experiment_id, queue.study, queue.created, spec.name,
        {TAG_ROLE: "parent", TAG_SPEC: spec.name, "mlflow.note.content": spec.description,
         "cifarnet.grid": grid_id(spec)},
        {"spec.yaml": {"name": spec.name, "description": spec.description, "base": spec.base,
                       "factors": spec.factors, "seeds": spec.seeds,
                       "hypotheses": [h.__dict__ for h in spec.hypotheses]}})


def _close_parent(client, queue: JobQueue, out: Outcome) -> None:
    """FINISHED when every job of the queue has a FINISHED run, else FAILED."""
    needed = {t.user_attrs.get("config_hash") for t in queue.trials()}
    done = finished_hashes(client, out.experiment_id)
    client.set_terminated(out.parent_run_id, "FINISHED" if needed <= done else "FAILED")


def finished_hashes(client, experiment_id: str, config_hash: str | None = None) -> set[str]:
    """Config hashes of FINISHED child runs (optionally only `config_hash`)."""
    flt = f"tags.`{TAG_ROLE}` = 'child' and attributes.status = 'FINISHED'"
    if config_hash:
        flt += f" and tags.`{TAG_HASH}` = '{config_hash}'"
    return {r.data.tags[TAG_HASH] for r in _all_runs(client, experiment_id, flt)}


def _fail_stale_mlflow_runs(client, experiment_id: str, config_hash: str) -> None:
    """Runs of this job left RUNNING by a dead worker: this worker now owns the job."""
    flt = (f"tags.`{TAG_HASH}` = '{config_hash}' and attributes.status = 'RUNNING'")
    for r in _all_runs(client, experiment_id, flt):
        client.set_tag(r.info.run_id, TAG_REASON, "stale: its worker stopped without ending it")
        client.set_tag(r.info.run_id, TAG_STATUS, "stale")
        client.set_terminated(r.info.run_id, "FAILED")


def _all_runs(client, experiment_id: str, flt: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=flt, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs

