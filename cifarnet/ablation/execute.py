"""A grid's launcher: its jobs mapped onto an executor until every one is decided.

One launcher per grid holds the grid's lock in the tracking store (`tracking.startup.
store_lock`: a file lock beside SQLite, an advisory lock on PostgreSQL); a second launcher of
the same grid is refused in one line. The launcher finds or makes the grid's parent run and
one MLflow run per job (`prepare`), then hands the jobs to the executor
(`cifarnet.execute`) as `JobRequest`s. Jobs alive under an earlier launch (a cluster job that
outlived a killed launcher) are waited for, not submitted again; a job whose worker died is
submitted again (it resumes from its run's checkpoint), at most `max_retries` times.

Paired design: every job of a seed has the same `train.seed`, so the trainer gives every
variant the same data order and augmentations and the same initial weights for every layer
they share (`model.paired_init`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from cifarnet.ablation.estimate import GridEstimate
from cifarnet.ablation.jobs import (
    JobRequest,
    JobResult,
    JobStatus,
    heartbeat_value,
    run_job,
)
from cifarnet.spec.ablation import AblationSpec, Job
from cifarnet.data.datasets import Dataset, data_key, preload_data
from cifarnet.errors import UserError
from cifarnet.execute.base import Executor, ExecutorOptions, make_executor
from cifarnet.tracking.limits import check_store_limits
from cifarnet.tracking.names import parent_run_name, short_run_name
from cifarnet.tracking.runs import all_runs
from cifarnet.tracking.startup import LockHeld, store_lock
from cifarnet.tracking.store import (
    ABLATION_ROLES,
    check_experiment_kind,
    get_or_create_experiment,
    setup_mlflow,
)
from cifarnet.tracking.tags import (
    METRIC_PREDICTED,
    MLFLOW_PARENT,
    TAG_CELL,
    TAG_DATA,
    TAG_GRID,
    TAG_GROUP,
    TAG_HASH,
    TAG_HEARTBEAT,
    TAG_LAUNCHER,
    TAG_NOTE,
    TAG_PREDICTED,
    TAG_ROLE,
    TAG_SEED,
    TAG_SEED_ADDED,
    TAG_SPEC,
    TAG_STATUS,
    Role,
)
from cifarnet.training.callbacks import Callback, StopEvent, StopOnEvent
from cifarnet.training.status import RunStatus
from cifarnet.workspace import Workspace

INTERRUPTED = {RunStatus.KILLED, RunStatus.STALE}  # a job's run to resume, not to replace


@dataclass
class Outcome:
    """What a launch did, job by job."""

    finished: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)  # copied from another experiment
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    parent_run_id: str = ""
    experiment_id: str = ""

    def merge(self, other: "Outcome") -> None:
        """Fold a later round's outcome (adaptive seeds) into this one."""
        self.finished += other.finished
        self.reused += other.reused
        self.failed += other.failed
        self.already_done += other.already_done
        self.parent_run_id = other.parent_run_id or self.parent_run_id
        self.experiment_id = other.experiment_id or self.experiment_id

    def failure_line(self) -> str:
        items = "; ".join(f"{label} ({reason})" for label, reason in self.failed)
        return f"{len(self.failed)} run(s) failed: {items}"


class GridListener:
    """What the launcher tells its display (the CLI plugs a rich one in); does nothing."""

    def grid(self, counts: dict[str, int], total: int) -> None: ...

    def run_callbacks(self, label: str) -> list[Callback]:
        return []

    def message(self, text: str) -> None: ...


@dataclass
class Grid:
    """An open grid: its store, experiment, parent run and data (one object, passed down)."""

    spec: AblationSpec
    workspace: Workspace
    client: Any
    experiment_id: str
    parent_run_id: str
    grid_id: str
    data: dict[tuple, Dataset]
    created: bool = False  # this launch made the parent run


def grid_id(spec: AblationSpec, fingerprints: set[str] = frozenset()) -> str:
    """Identity of the grid (base config, factors, the `tune:` block and the data it trains
    on; not seeds, not the tuned values): one parent run. `fingerprints`: the
    `Dataset.fingerprint` of every data set its jobs load."""
    text = json.dumps({"base": spec.base_config().hash(), "factors": spec.factors,
                       **({"match": str(spec.match)} if spec.match else {}),
                       **({"tune": spec.tune.to_dict()} if spec.tune else {}),
                       **({"data": sorted(fingerprints)} if fingerprints else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def check_grid_limits(spec: AblationSpec, jobs: list[Job]) -> None:
    """Refuse (UserError, before any write) a grid whose names or values the tracking store
    cannot hold (`tracking.limits.check_store_limits`)."""
    longest_cell = max((j.cell.label for j in jobs), key=len, default="")
    check_store_limits(spec.name, {"description": spec.description, "factors": longest_cell},
                       (j.config.flatten() for j in jobs))


def fingerprints(data: dict[tuple, Dataset]) -> set[str]:
    return {ds.fingerprint for ds in data.values()}


def open_grid(spec: AblationSpec, workspace: Workspace, client: Any,
              data: dict[tuple, Dataset]) -> Grid:
    """Find (or make) the grid's experiment and parent run, reopened RUNNING. Call under the
    grid's lock (`launcher_lock`): one launcher makes it."""
    check_experiment_kind(client, spec.name, ABLATION_ROLES)
    experiment_id = get_or_create_experiment(client, workspace, spec.name)
    if spec.description:  # the experiment's description in MLflow's UI
        client.set_experiment_tag(experiment_id, TAG_NOTE, spec.description)
    gid = grid_id(spec, fingerprints(data))
    tags = {TAG_ROLE: Role.PARENT, TAG_SPEC: spec.name, TAG_NOTE: spec.description,
            TAG_GRID: gid, TAG_DATA: ",".join(sorted(fingerprints(data))),
            TAG_LAUNCHER: f"{socket.gethostname()} pid {os.getpid()}"}
    found = all_runs(client, experiment_id, f"tags.`{TAG_ROLE}` = '{Role.PARENT}' and "
                                            f"tags.`{TAG_GRID}` = '{gid}'")
    if found:
        parent = max(found, key=lambda r: r.info.start_time).info.run_id
        client.update_run(parent, status="RUNNING")
        for key, value in tags.items():  # an edited description or hypotheses are answered
            client.set_tag(parent, key, value)
    else:
        name = parent_run_name(spec.name, spec.base_config().train.epochs, gid)
        parent = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    client.log_dict(parent, spec_record(spec), "spec.yaml")
    return Grid(spec, workspace, client, experiment_id, parent, gid, data, not found)


def spec_record(spec: AblationSpec) -> dict[str, Any]:
    """The spec as the parent run's `spec.yaml` artifact records it (reports read it), in
    plain values: YAML would write an enum level (`train.precision: bf16`) as a Python
    object that reading the spec back refuses."""
    return json.loads(json.dumps(_spec_fields(spec)))


def _spec_fields(spec: AblationSpec) -> dict[str, Any]:
    return {"name": spec.name, "description": spec.description, "base": spec.base,
            "factors": spec.factors, "seeds": spec.seeds,
            **({"match": str(spec.match)} if spec.match else {}),
            **({"tune": spec.tune.to_dict()} if spec.tune else {}),
            "hypotheses": [{**h.__dict__, "expect": str(h.expect)} for h in spec.hypotheses]}


def log_estimate(grid: Grid, estimate: GridEstimate) -> None:
    """Record the grid's predicted cost on its parent run: the metric `predicted_wall_s`
    (seconds) and the tag `cifarnet.predicted` (the line `--dry-run` prints)."""
    grid.client.log_metric(grid.parent_run_id, METRIC_PREDICTED, estimate.wall_s)
    grid.client.set_tag(grid.parent_run_id, TAG_PREDICTED, estimate.line())


def prepare(grid: Grid, jobs: Sequence[Job], launch_id: str,
            options: "LaunchOptions") -> tuple[list[JobRequest], int]:
    """One request per job without a FINISHED run (on its data), and how many had one. A
    job keeps its interrupted run (killed, stale, or never ended); one that never ran, or
    whose last run failed, gets a new run, SCHEDULED, with this launch's heartbeat."""
    flt = f"tags.`{TAG_ROLE}` = '{Role.CHILD}'"
    runs: dict[tuple[str, str], list] = {}
    for r in all_runs(grid.client, grid.experiment_id, flt):
        runs.setdefault((r.data.tags.get(TAG_HASH), r.data.tags.get(TAG_DATA)), []).append(r)
    requests, done = [], 0
    for job in jobs:
        fingerprint = grid.data[data_key(job.config.data)].fingerprint
        mine = sorted(runs.get((job.config_hash, fingerprint), []),
                      key=lambda r: r.info.start_time)
        if any(r.info.status == "FINISHED" for r in mine):
            done += 1
            continue
        resumable = [r for r in mine if r.info.status in ("RUNNING", "SCHEDULED", "KILLED")
                     or r.data.tags.get(TAG_STATUS) in INTERRUPTED]
        run_id = (resumable[-1].info.run_id if resumable
                  else _new_run(grid, job, fingerprint, launch_id))
        requests.append(JobRequest(grid.workspace, grid.experiment_id, run_id, launch_id,
                                   job.config.to_dict(), job.config_hash, fingerprint,
                                   f"{job.cell.label} seed={job.seed}", options.reuse,
                                   options.heartbeat_s, options.grace_s,
                                   0 if options.executor.in_process
                                   else options.executor.resources().cpus))
    return requests, done


def _new_run(grid: Grid, job: Job, fingerprint: str, launch_id: str) -> str:
    flat = job.config.flatten()
    tags = {MLFLOW_PARENT: grid.parent_run_id, TAG_ROLE: Role.CHILD,
            TAG_SPEC: grid.spec.name, TAG_HASH: job.config_hash, TAG_CELL: job.cell.label,
            TAG_GROUP: f"{job.cell.label} | {job.config.train.epochs}ep g{grid.grid_id[:6]}",
            TAG_SEED: str(job.seed), TAG_DATA: fingerprint,
            TAG_HEARTBEAT: heartbeat_value(launch_id),
            **({TAG_SEED_ADDED: "true"} if job.added else {})}
    name = short_run_name({k: flat[k] for k in grid.spec.factors}, job.seed)
    run_id = grid.client.create_run(grid.experiment_id, run_name=name, tags=tags).info.run_id
    grid.client.update_run(run_id, status="SCHEDULED")
    return run_id


class InProcessJob:
    """`run_job` in the launcher's own process: its loaded data, display and stop flag."""

    def __init__(self, data: dict[str, Dataset], listener: GridListener,
                 stop: StopEvent) -> None:
        self.data, self.listener, self.stop = data, listener, stop

    def __call__(self, req: JobRequest) -> JobResult:
        return run_job(req, self.data.get(req.data_fingerprint),
                       [*self.listener.run_callbacks(req.label), StopOnEvent(self.stop)])


def launch(grid: Grid, requests: list[JobRequest], executor: Executor, *,
           listener: GridListener, stop: StopEvent, in_process: bool,
           max_retries: int = 3, poll_s: float = 2.0) -> Outcome:
    """Map the requests onto the executor until each is decided: ended here, done before,
    or failed. A job alive under an earlier launch is asked again every `poll_s` seconds
    (it ends, or its heartbeat goes stale and this launch takes it over); a job whose
    worker died is submitted again, at most `max_retries` times."""
    out = Outcome(parent_run_id=grid.parent_run_id, experiment_id=grid.experiment_id)
    fn: Callable[[JobRequest], JobResult] = (
        InProcessJob({ds.fingerprint: ds for ds in grid.data.values()}, listener, stop)
        if in_process else run_job)
    pending, tries, total = list(requests), {r.run_id: 0 for r in requests}, len(requests)
    while pending:
        again = []
        for done in executor.map_unordered(fn, pending, stop):
            req = pending[done.index]
            if isinstance(done.error, UserError):  # a full disk, a store refused: stop
                raise done.error
            if done.error is not None:  # the worker died, or the job could not start
                tries[req.run_id] += 1
                if tries[req.run_id] > max_retries:
                    out.failed.append((req.label, f"{type(done.error).__name__}: "
                                                  f"{done.error}"[:200]))
                else:
                    again.append(req)
                continue
            _record(out, done.value, listener)
            if done.value.status is JobStatus.ELSEWHERE:
                again.append(req)
            listener.grid(_counts(out, len(again)), total)
        if again and stop.wait(poll_s if _only_elsewhere(again, tries) else 0):
            raise KeyboardInterrupt
        pending = again
    return out


def _only_elsewhere(reqs: list[JobRequest], tries: dict[str, int]) -> bool:
    return all(tries[r.run_id] == 0 for r in reqs)


def _record(out: Outcome, result: JobResult, listener: GridListener) -> None:
    if result.status is JobStatus.FINISHED:
        out.finished.append(result.label)
    elif result.status is JobStatus.REUSED:
        out.reused.append(result.label)
        listener.message(f"{result.label}: reused run {result.source_run_id} (same config "
                         "and data)")
    elif result.status is JobStatus.ALREADY_DONE:
        out.already_done += 1
    elif result.status in (JobStatus.FAILED, JobStatus.REFUSED):
        out.failed.append((result.label, result.reason))
        listener.message(f"[red]{result.label} {result.reason}[/]: "
                         f"{result.detail or result.reason}")


def _counts(out: Outcome, waiting: int) -> dict[str, int]:
    return {"done": len(out.finished) + len(out.reused), "skipped": out.already_done,
            "failed": len(out.failed), "running": 0, "waiting": waiting}


@dataclass
class LaunchOptions:
    """How a grid is launched (one object, from the CLI)."""

    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    reuse: bool = True
    heartbeat_s: float = 10.0
    grace_s: float = 30.0


def run_grid(spec: AblationSpec, workspace: Workspace, options: LaunchOptions, *,
             jobs: list[Job] | None = None, data: dict[tuple, Dataset] | None = None,
             listener: GridListener | None = None, stop: StopEvent,
             estimate: Callable[[], GridEstimate] | None = None) -> Outcome:
    """Launch the grid (`jobs`, default: every cell at the spec's seeds) and return what
    happened. Raises UserError when another launcher holds the grid, KeyboardInterrupt on
    a stop (the parent run ends KILLED; a rerun resumes)."""
    jobs = jobs if jobs is not None else spec.jobs()
    data = data if data is not None else preload_data(j.config.data for j in jobs)
    check_grid_limits(spec, jobs)
    listener = listener or GridListener()
    client = setup_mlflow(workspace)
    with launcher_lock(spec, workspace, data):
        grid = open_grid(spec, workspace, client, data)
        if estimate is not None and grid.created:
            log_estimate(grid, estimate())
        requests, done = prepare(grid, jobs, uuid.uuid4().hex[:12], options)
        try:
            with make_executor(options.executor) as executor:
                out = launch(grid, requests, executor, listener=listener, stop=stop,
                             in_process=options.executor.in_process,
                             max_retries=options.executor.max_retries)
        except (KeyboardInterrupt, UserError):  # a stop, a full disk: a rerun reopens it
            client.set_terminated(grid.parent_run_id, "KILLED")
            raise
        out.already_done += done
        client.set_terminated(grid.parent_run_id, "FAILED" if out.failed else "FINISHED")
        return out


@contextlib.contextmanager
def launcher_lock(spec: AblationSpec, workspace: Workspace,
                  data: dict[tuple, Dataset]) -> Iterator[None]:
    """Hold the grid's launcher lock (see the module's docstring) for the block; UserError
    at once when another launcher holds it."""
    gid = grid_id(spec, fingerprints(data))
    try:
        with store_lock(workspace.tracking_uri, f"grid.{spec.name}.{gid}", timeout_s=0,
                        own_file=True):
            yield
    except LockHeld:
        raise UserError(f"{spec.name}: another launcher is running this grid "
                        f"({_launcher_of(workspace, spec, gid)}); wait for it, or stop it and "
                        "rerun") from None


def _launcher_of(workspace: Workspace, spec: AblationSpec, gid: str) -> str:
    """The live launcher as the grid's parent run names it (tag cifarnet.launcher)."""
    from cifarnet.tracking.client import mlflow_client

    client = mlflow_client(workspace.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], f"tags.`{TAG_GRID}` = '{gid}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return (f"{runs[0].data.tags.get(TAG_LAUNCHER, '?')}, parent run {runs[0].info.run_id}"
            if runs else "it is opening the grid")
