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
from typing import Any, Callable

from cifarnet.ablation.estimate import GridEstimate
from cifarnet.ablation.spec import AblationSpec, Job
from cifarnet.config.schema import RunConfig, build_config
from cifarnet.data.datasets import Dataset, data_key, load_data, preload_data
from cifarnet.queue.jobs import Heartbeat, JobQueue, QueuedJob, open_storage
from cifarnet.queue.retry import retry_setup
from cifarnet.tracking.checkpoints import (
    CheckpointArtifact,
    fetch_checkpoint,
    interrupted_runs,
)
from cifarnet.tracking.limits import check_store_limits
from cifarnet.tracking.names import parent_run_name, short_run_name
from cifarnet.tracking.reuse import copy_run, find_source
from cifarnet.tracking.runs import fail_stale_runs, finished_hashes, tracked_run
from cifarnet.tracking.startup import check_tracking_store
from cifarnet.tracking.store import (
    ABLATION_ROLES,
    MlflowRunCallback,
    check_experiment_kind,
    get_or_create_experiment,
    setup_mlflow,
    shared_parent_run,
)
from cifarnet.tracking.tags import (
    METRIC_PREDICTED,
    TAG_CELL,
    TAG_DATA,
    TAG_GRID,
    TAG_HASH,
    TAG_NOTE,
    TAG_PREDICTED,
    TAG_RESUMED_FROM,
    TAG_ROLE,
    TAG_SEED,
    TAG_SEED_ADDED,
    TAG_SPEC,
    TAG_TRIAL,
    Role,
)
from cifarnet.training.callbacks import Callback, StopEvent, StopOnEvent
from cifarnet.training.checkpoint import OnBadCheckpoint
from cifarnet.training.loop import default_run_dir, train
from cifarnet.training.status import RunStatus
from cifarnet.workspace import Workspace


@dataclass
class Outcome:
    """What this worker did."""

    finished: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)  # copied from another experiment
    already_done: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    parent_run_id: str = ""
    experiment_id: str = ""

    def merge(self, other: "Outcome") -> None:
        """Fold a later round's outcome (adaptive seeds) into this one."""
        self.finished += other.finished
        self.reused += other.reused
        self.skipped += other.skipped
        self.failed += other.failed
        self.already_done = self.already_done or other.already_done
        self.parent_run_id = other.parent_run_id or self.parent_run_id
        self.experiment_id = other.experiment_id or self.experiment_id

    def failure_line(self) -> str:
        items = "; ".join(f"{label} ({reason})" for label, reason in self.failed)
        return f"{len(self.failed)} run(s) failed: {items}"


def grid_id(spec: AblationSpec, fingerprints: set[str] = frozenset()) -> str:
    """Identity of the grid (base config, factors, the `tune:` block and the data it trains
    on; not seeds, not the tuned values): one queue and parent run. `fingerprints`: the `Dataset.fingerprint` of every data set its
    jobs load (the config hash leaves the data folder out; its content is in here)."""
    text = json.dumps({"base": spec.base_config().hash(), "factors": spec.factors,
                       **({"match": str(spec.match)} if spec.match else {}),
                       **({"tune": spec.tune.to_dict()} if spec.tune else {}),
                       **({"data": sorted(fingerprints)} if fingerprints else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def job_records(jobs: list[Job]) -> list[dict[str, Any]]:
    return [{"config_hash": j.config_hash, "cell": j.cell.label, "seed": j.seed,
             "config": j.config.to_dict(), "added": j.added} for j in jobs]


class GridListener:
    """What the runner tells its display (the CLI plugs a rich one in); does nothing itself."""

    def grid(self, counts: dict[str, int], total: int) -> None: ...

    def run_callbacks(self, label: str) -> list[Callback]:
        return []

    def message(self, text: str) -> None: ...


@dataclass
class GridContext:
    """Everything a worker needs to run the jobs of one grid (one object, passed down)."""

    spec: AblationSpec
    client: Any
    queue: JobQueue
    experiment_id: str
    parent_run_id: str
    data: dict[tuple, Dataset]
    listener: GridListener
    stop: StopEvent
    outcome: Outcome
    reuse: bool = True  # copy a FINISHED run of the same job from another experiment
    parent_created: bool = False  # this worker started the grid (its parent run)
    grid_id: str = ""  # `grid_id` of the spec on its data


def run_spec(spec: AblationSpec, workspace: Workspace, *, storage_url: str | None = None,
             jobs: list[Job] | None = None, progress: GridListener | None = None,
             heartbeat_interval: int = 10, grace_period: int = 30,
             poll_interval: float = 2.0,
             data: dict[tuple, Dataset] | None = None,
             stop: StopEvent | None = None, reuse: bool = True,
             estimate: Callable[[], GridEstimate] | None = None) -> Outcome:
    """Work on the spec's queue until no job is waiting or running anywhere.

    `jobs` defaults to the whole grid at the spec's seeds; `--until-decided` passes extra
    seeds for some cells. `storage_url` defaults to the workspace's. With `reuse`, a job that
    another experiment of the store has FINISHED (same config hash, same data) is copied
    (`tracking.reuse`), not trained. `estimate()`, the grid's predicted cost, is made once
    the stores are open and recorded on a new parent run (`log_estimate`).

    Setting `stop` (the CLI does on SIGTERM or Ctrl-C) ends the current run KILLED at its
    next batch and raises KeyboardInterrupt.
    """
    jobs = jobs if jobs is not None else spec.jobs()
    records = job_records(jobs)
    # every dataset up front, so a bad data path fails before any write
    data = data if data is not None else preload_data(j.config.data for j in jobs)
    check_grid_limits(spec, jobs)
    grid = open_grid(spec, workspace, storage_url or workspace.storage_url,
                     heartbeat_interval, grace_period, data, progress or GridListener(),
                     stop or threading.Event())
    grid.reuse = reuse
    if estimate is not None and grid.parent_created:
        log_estimate(grid, estimate())
    done = _finished(grid, jobs)
    grid.outcome.already_done = sum(r["config_hash"] in done for r in records)
    interrupted = set(interrupted_runs(grid.client, grid.experiment_id,
                                       set(_fingerprints(data).values())))
    grid.queue.enqueue_missing(records, done, first=interrupted)
    hashes = {r["config_hash"] for r in records}
    try:
        while (job := _next_job(grid, hashes, poll_interval)) is not None:
            _take_job(grid, job)
    except KeyboardInterrupt:
        grid.client.set_terminated(grid.parent_run_id, "KILLED")  # the next run reopens it
        raise
    needed = grid.queue.needed_hashes()  # every job of the grid, earlier batches included
    done = set().union(*_finished_by_fingerprint(grid).values())
    grid.client.set_terminated(grid.parent_run_id, "FINISHED" if needed <= done else "FAILED")
    return grid.outcome


def check_grid_limits(spec: AblationSpec, jobs: list[Job]) -> None:
    """Refuse (UserError, before any write) a grid whose names or values the tracking store
    cannot hold (`tracking.limits.check_store_limits`)."""
    longest_cell = max((j.cell.label for j in jobs), key=len, default="")
    check_store_limits(spec.name, {"description": spec.description, "factors": longest_cell},
                       (j.config.flatten() for j in jobs))


def open_grid(spec: AblationSpec, workspace: Workspace, storage_url: str,
              heartbeat_interval: int, grace_period: int, data: dict[tuple, Dataset],
              listener: GridListener, stop: StopEvent) -> GridContext:
    """Open the queue's storage, then MLflow (so a bad --storage writes nothing), and join
    (or start) the grid's shared parent run."""
    check_tracking_store(workspace)  # read-only: before any store is written
    storage = retry_setup(lambda: open_storage(workspace, storage_url, heartbeat_interval,
                                               grace_period))
    client = retry_setup(lambda: setup_mlflow(workspace))
    check_experiment_kind(client, spec.name, ABLATION_ROLES)
    experiment_id = retry_setup(lambda: get_or_create_experiment(client, workspace, spec.name))
    fingerprints = set(_fingerprints(data).values())
    queue = JobQueue(storage, f"cifarnet.{spec.name}.{grid_id(spec, fingerprints)}")
    parent = _parent_run(queue, client, experiment_id, spec, fingerprints)
    return GridContext(spec, client, queue, experiment_id, parent, data, listener, stop,
                       Outcome(parent_run_id=parent, experiment_id=experiment_id),
                       parent_created=queue.created, grid_id=grid_id(spec, fingerprints))


def log_estimate(grid: GridContext, estimate: GridEstimate) -> None:
    """Record the grid's predicted cost on its parent run when it starts: the metric
    `predicted_wall_s` (seconds; beside the run's own duration in MLflow's UI) and the tag
    `cifarnet.predicted` (the line `--dry-run` prints)."""
    grid.client.log_metric(grid.parent_run_id, METRIC_PREDICTED, estimate.wall_s)
    grid.client.set_tag(grid.parent_run_id, TAG_PREDICTED, estimate.line())


def _next_job(grid: GridContext, hashes: set[str], poll_interval: float) -> QueuedJob | None:
    """Claim the next job, waiting while others run (one of them may go stale); None when no
    job is waiting or running anywhere."""
    while True:
        if grid.stop.is_set():
            raise KeyboardInterrupt
        grid.queue.fail_stale()
        job = grid.queue.pop()
        counts = grid.queue.counts(hashes)
        grid.listener.grid(counts, len(hashes))
        if job is not None:
            return job
        if counts["running"] == 0 and counts["waiting"] == 0:
            return None
        grid.stop.wait(poll_interval)


def _take_job(grid: GridContext, job: QueuedJob) -> None:
    """Skip a claimed job that needs no run, else train it."""
    label = f"{job.cell} seed={job.seed}"
    cfg = build_config(job.config)
    key = data_key(cfg.data)
    if key not in grid.data:
        grid.data[key] = load_data(cfg.data)
    fingerprint = grid.data[key].fingerprint
    if finished_hashes(grid.client, grid.experiment_id, job.config_hash, fingerprint):
        grid.queue.skip(job, "already finished")
        grid.outcome.skipped.append(label)
        return
    if grid.queue.is_duplicate(job):
        grid.queue.skip(job, "duplicate")
        return
    fail_stale_runs(grid.client, grid.experiment_id, job.config_hash)
    flat = cfg.flatten()
    run_name = short_run_name({k: flat[k] for k in grid.spec.factors}, job.seed)
    source = (find_source(grid.client, grid.experiment_id, job.config_hash, fingerprint)
              if grid.reuse else None)
    if source is not None:
        _reuse_job(grid, job, label, run_name, fingerprint, source)
        return
    resume_from = interrupted_runs(grid.client, grid.experiment_id,
                                   {fingerprint}).get(job.config_hash)
    _run_job(grid, job, cfg, label, run_name, resume_from)


def _job_tags(grid: GridContext, job: QueuedJob, fingerprint: str) -> dict[str, str]:
    return {TAG_ROLE: Role.CHILD, TAG_SPEC: grid.spec.name, TAG_HASH: job.config_hash,
            TAG_CELL: job.cell, TAG_SEED: str(job.seed), TAG_TRIAL: str(job.number),
            TAG_DATA: fingerprint, **({TAG_SEED_ADDED: "true"} if job.added else {})}


def _reuse_job(grid: GridContext, job: QueuedJob, label: str, run_name: str,
               fingerprint: str, source: Any) -> None:
    """Copy `source`, a FINISHED run of the same job in another experiment, as this grid's
    child run (`tracking.reuse.copy_run`) and complete the job with its test accuracy."""
    with tracked_run(grid.client, grid.experiment_id, run_name,
                     _job_tags(grid, job, fingerprint),
                     parent_run_id=grid.parent_run_id) as run:
        copy_run(grid.client, source, run.run_id)
        run.end_as(RunStatus.FINISHED)
    grid.queue.complete(job, source.data.metrics.get("test_acc", 0.0),
                        mlflow_run_id=run.run_id, reused_from=source.info.run_id)
    grid.outcome.reused.append(label)
    experiment = grid.client.get_experiment(source.info.experiment_id)  # retried
    acc = source.data.metrics.get("test_acc")
    grid.listener.message(f"{label}: reused run {source.info.run_id} of experiment "
                          f"{experiment.name} (same config and data)"
                          + (f", test_acc {acc:.4f}" if acc is not None else ""))


def _run_job(grid: GridContext, job: QueuedJob, cfg: RunConfig, label: str, run_name: str,
             resume_from: str | None) -> None:
    """Train one job in its own tracked child run and tell the queue how it ended. A job
    whose last attempt was interrupted (`resume_from`, its MLflow run) continues from that
    attempt's last checkpoint. A crash is recorded and the grid goes on; an interrupt ends
    the run KILLED and propagates."""
    tags = _job_tags(grid, job, grid.data[data_key(cfg.data)].fingerprint)
    run_dir = default_run_dir(cfg)
    resume = resume_from is not None and fetch_checkpoint(grid.client, resume_from, run_dir)
    if resume:
        tags[TAG_RESUMED_FROM] = resume_from
    callbacks = [*grid.listener.run_callbacks(label), StopOnEvent(grid.stop)]
    out = grid.outcome
    try:
        with tracked_run(grid.client, grid.experiment_id, run_name, tags,
                         parent_run_id=grid.parent_run_id, system_metrics=True) as run:
            with Heartbeat(grid.queue.storage, job.trial_id):
                # the checkpoint is uploaded before the epoch's metrics are logged: a run
                # whose epoch N shows in MLflow can always be resumed after epoch N
                result = train(cfg, [CheckpointArtifact(grid.client, run.run_id),
                                     MlflowRunCallback(run.run_id), *callbacks],
                               data=grid.data[data_key(cfg.data)], run_dir=run_dir,
                               resume=resume, on_bad_checkpoint=OnBadCheckpoint.FRESH)
            run.end_as(RunStatus(result.status))
    except KeyboardInterrupt:
        grid.queue.release(job)  # taken first by the next worker, which resumes it
        raise
    except Exception as exc:  # a crash: recorded, and the grid goes on
        grid.queue.fail(job, RunStatus.CRASHED)
        out.failed.append((label, f"crashed: {type(exc).__name__}: {exc}"[:200]))
        grid.listener.message(f"[red]{label} crashed[/]: {type(exc).__name__}: {exc}")
        return
    if result.status == RunStatus.FINISHED:
        grid.queue.complete(job, result.final.get("test_acc", 0.0), mlflow_run_id=run.run_id)
        out.finished.append(label)
    else:
        grid.queue.fail(job, result.status, mlflow_run_id=run.run_id)
        out.failed.append((label, result.status))
        grid.listener.message(f"[red]{label} {result.status}[/]: {result.reason}")


def _fingerprints(data: dict[tuple, Dataset]) -> dict[tuple, str]:
    """data key -> the loaded data set's content fingerprint."""
    return {key: ds.fingerprint for key, ds in data.items()}


def _finished_by_fingerprint(grid: GridContext) -> dict[str, set[str]]:
    """data fingerprint -> config hashes with a FINISHED run trained on that data."""
    return {fp: finished_hashes(grid.client, grid.experiment_id, data_fingerprint=fp)
            for fp in set(_fingerprints(grid.data).values())}


def _finished(grid: GridContext, jobs: list[Job]) -> set[str]:
    """Config hashes of the jobs that have a FINISHED run trained on the same data (the
    same config hash on another data set is a different job)."""
    fps = _fingerprints(grid.data)
    by_fp = _finished_by_fingerprint(grid)
    return {j.config_hash for j in jobs
            if j.config_hash in by_fp.get(fps.get(data_key(j.config.data)), set())}


def _parent_run(queue: JobQueue, client: Any, experiment_id: str, spec: AblationSpec,
                fingerprints: set[str]) -> str:
    """The grid's parent run, shared by every worker of the queue. Its spec.yaml holds plain
    values (a level such as `train.precision: bf16` as its text: YAML would write the enum
    as a Python object that reading the spec back refuses)."""
    written = {"name": spec.name, "description": spec.description, "base": spec.base,
               "factors": spec.factors, "seeds": spec.seeds,
               **({"match": str(spec.match)} if spec.match else {}),
               **({"tune": spec.tune.to_dict()} if spec.tune else {}),
               "hypotheses": [{**h.__dict__, "expect": str(h.expect)}
                              for h in spec.hypotheses]}
    return shared_parent_run(
        client, experiment_id, queue.parent_slot(), queue.created,
        parent_run_name(spec.name, spec.base_config().train.epochs,
                        grid_id(spec, fingerprints)),
        {TAG_ROLE: Role.PARENT, TAG_SPEC: spec.name, TAG_NOTE: spec.description,
         TAG_GRID: grid_id(spec, fingerprints), TAG_DATA: ",".join(sorted(fingerprints))},
        {"spec.yaml": json.loads(json.dumps(written))})
