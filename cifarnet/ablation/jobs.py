"""One job of a grid (a cell at a seed), idempotent against the tracking store.

`run_job` is a plain function of a picklable `JobRequest`, so any executor can call it, once
or again: MLflow is the single record of what is done. The launcher gives each job one MLflow
run (`JobRequest.run_id`) that it keeps across attempts; `run_job` then decides from that
run alone:
  FINISHED                                   -> nothing to do
  RUNNING/SCHEDULED, heartbeat fresh and set by another launch -> alive elsewhere, left alone
  a FINISHED copy in another experiment      -> copied (`tracking.reuse`), not trained
  otherwise                                  -> trained, resuming from the run's checkpoint
A worker's heartbeat is the tag `cifarnet.heartbeat` ("<launch id> <unix seconds>"), written
every `heartbeat_s`; a run whose heartbeat is older than `grace_s` belongs to a dead worker.
The same launch never runs one job twice at once, so a run heartbeating under this job's own
launch id is a dead earlier attempt (a Ray retry, a worker that died) and is taken over.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Sequence

from cifarnet.config.schema import build_config
from cifarnet.data.datasets import Dataset, load_data
from cifarnet.errors import ConfigError, DiskFull
from cifarnet.execute.local import WORKER_STOP
from cifarnet.hardware import check_device_present
from cifarnet.tracking.checkpoints import CheckpointArtifact, fetch_checkpoint
from cifarnet.tracking.reuse import copy_run, find_source
from cifarnet.tracking.runs import adopted_run
from cifarnet.tracking.store import MlflowRunCallback, setup_mlflow
from cifarnet.tracking.tags import TAG_HEARTBEAT, TAG_RESUMED_FROM, TAG_STATUS
from cifarnet.training.callbacks import Callback, StopOnEvent
from cifarnet.training.checkpoint import OnBadCheckpoint
from cifarnet.training.loop import default_run_dir, train
from cifarnet.training.status import RunStatus
from cifarnet.workspace import Workspace


class JobStatus(StrEnum):
    FINISHED = "finished"  # trained to its last epoch here
    REUSED = "reused"  # copied from a FINISHED run of another experiment
    ALREADY_DONE = "already done"  # its run was FINISHED before this call
    ELSEWHERE = "running elsewhere"  # another launch's worker is alive on it
    FAILED = "failed"  # diverged or crashed (recorded on its run)
    REFUSED = "refused"  # this worker would not compute the job's identity (see `run_job`)


@dataclass(frozen=True)
class JobRequest:
    """One job as an executor ships it: picklable, complete, no open handles."""

    workspace: Workspace
    experiment_id: str
    run_id: str  # the job's MLflow run, made by the launcher, kept across attempts
    launch_id: str
    config: dict[str, Any]
    config_hash: str  # as the launcher's machine computes it
    data_fingerprint: str
    label: str  # "cell seed=s", for messages
    reuse: bool = True
    heartbeat_s: float = 10.0
    grace_s: float = 30.0
    threads: int = 0  # torch's CPU threads for the run (0: leave the process's setting)


@dataclass
class JobResult:
    status: JobStatus
    label: str
    reason: str = ""
    test_acc: float | None = None
    source_run_id: str = ""  # REUSED: the run it copied
    detail: str = ""  # FAILED: the run's failure reason in full


def heartbeat_value(launch_id: str, now: float | None = None) -> str:
    return f"{launch_id} {int(time.time() if now is None else now)}"


def alive_elsewhere(tags: dict[str, str], launch_id: str, grace_s: float,
                    now: float | None = None) -> bool:
    """Whether another launch's worker beat on the run within `grace_s` seconds."""
    owner, _, beat = tags.get(TAG_HEARTBEAT, "").partition(" ")
    fresh = beat.isdigit() and (time.time() if now is None else now) - int(beat) < grace_s
    return fresh and owner != launch_id


class Heartbeat:
    """Writes the run's heartbeat tag now and every `interval_s` seconds until closed."""

    def __init__(self, client: Any, run_id: str, launch_id: str, interval_s: float) -> None:
        self.client, self.run_id, self.launch_id = client, run_id, launch_id
        self.interval_s, self._stop = interval_s, threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.client.set_tag(self.run_id, TAG_HEARTBEAT, heartbeat_value(self.launch_id))
            except Exception:  # a store outage: the next beat tries again
                pass

    def __enter__(self) -> "Heartbeat":
        self.client.set_tag(self.run_id, TAG_HEARTBEAT, heartbeat_value(self.launch_id))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_job(req: JobRequest, data: Dataset | None = None,
            callbacks: Sequence[Callback] = ()) -> JobResult:
    """Bring the job to an end state in its MLflow run (see the module's table) and say what
    happened. `data`: the job's data set when the caller has it loaded (else loaded here);
    `callbacks`: extra training callbacks (a display, a stop flag). A job whose config hash
    or data differ on this worker from the launcher's is REFUSED, not trained: its identity
    would not hold (say `train.precision: auto` resolved to bf16 there and fp32 here).
    KeyboardInterrupt ends the run KILLED (resumable) and propagates."""
    cfg = build_config(req.config)
    if cfg.hash() != req.config_hash:
        return JobResult(JobStatus.REFUSED, req.label,
                         f"config hash {cfg.hash()} on this worker, {req.config_hash} at the "
                         "launcher (train.precision auto or a device resolves differently)")
    try:  # a node without the run's device (the launcher checked resources, not nodes)
        check_device_present(cfg.train.device)
    except ConfigError as exc:
        return JobResult(JobStatus.REFUSED, req.label, str(exc))
    client = setup_mlflow(req.workspace)
    run = client.get_run(req.run_id)
    if run.info.status == "FINISHED":
        return JobResult(JobStatus.ALREADY_DONE, req.label,
                         test_acc=run.data.metrics.get("test_acc"))
    if alive_elsewhere(run.data.tags, req.launch_id, req.grace_s):
        return JobResult(JobStatus.ELSEWHERE, req.label)
    if req.threads:  # the same count on every executor: the same last bits
        import torch

        torch.set_num_threads(req.threads)
    data = data if data is not None else load_data(cfg.data)
    if data.fingerprint != req.data_fingerprint:
        return JobResult(JobStatus.REFUSED, req.label,
                         f"data {data.fingerprint} on this worker, {req.data_fingerprint} at "
                         "the launcher")
    with Heartbeat(client, req.run_id, req.launch_id, req.heartbeat_s):
        source = (find_source(client, req.experiment_id, req.config_hash, req.data_fingerprint)
                  if req.reuse else None)
        if source is not None:
            return _copy(client, req, source)
        return _train(client, req, cfg, data, callbacks)


def _mark_interrupted(client: Any, run_id: str) -> None:
    """End the run KILLED (resumable, not a failure); best effort, the store may be full."""
    try:
        client.set_tag(run_id, TAG_STATUS, RunStatus.KILLED)
        client.set_terminated(run_id, "KILLED")
    except Exception:
        pass


def _copy(client: Any, req: JobRequest, source: Any) -> JobResult:
    with adopted_run(client, req.run_id) as run:
        copy_run(client, source, req.run_id)
        run.end_as(RunStatus.FINISHED)
    return JobResult(JobStatus.REUSED, req.label, test_acc=source.data.metrics.get("test_acc"),
                     source_run_id=source.info.run_id)


def _train(client: Any, req: JobRequest, cfg: Any, data: Dataset,
           callbacks: Sequence[Callback]) -> JobResult:
    """Train in the job's run, from its last uploaded checkpoint when it has one (the
    checkpoint is uploaded before the epoch's metrics: a run showing epoch N resumes after
    epoch N)."""
    run_dir = default_run_dir(cfg)
    resume = fetch_checkpoint(client, req.run_id, run_dir)
    if resume:
        client.set_tag(req.run_id, TAG_RESUMED_FROM, req.run_id)
    try:
        with adopted_run(client, req.run_id, system_metrics=True) as run:
            result = train(cfg, [CheckpointArtifact(client, req.run_id),
                                 MlflowRunCallback(req.run_id),
                                 StopOnEvent(WORKER_STOP), *callbacks],
                           data=data, run_dir=run_dir, resume=resume,
                           on_bad_checkpoint=OnBadCheckpoint.FRESH)
            run.end_as(RunStatus(result.status))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a crash: recorded on the run (FAILED), and the grid goes on
        full = DiskFull.from_error(exc, str(run_dir))
        if full is not None:  # not the run's fault: the command stops, the run resumes
            _mark_interrupted(client, req.run_id)
            raise full from None
        return JobResult(JobStatus.FAILED, req.label,
                         f"crashed: {type(exc).__name__}: {exc}"[:200])
    if result.status != RunStatus.FINISHED:
        return JobResult(JobStatus.FAILED, req.label, str(result.status), detail=result.reason)
    return JobResult(JobStatus.FINISHED, req.label, test_acc=result.final.get("test_acc"))
