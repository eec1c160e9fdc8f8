"""A work queue of ablation runs on Optuna's RDB storage, shared by any number of workers.

Each (cell, seed) is an enqueued trial whose user attributes carry the job (its config and
hash). A worker pops a job by moving a WAITING trial to RUNNING with the storage's own
`set_trial_state_values`, which RDBStorage does under a row lock, so exactly one worker wins
each trial; no home-made locking. Workers send heartbeats while a job runs; a job whose worker
died (kill -9, power loss) goes stale after the grace period, is failed by the next worker
that looks (`optuna.storages.fail_stale_trials`) and enqueued again.

Two workers starting at once may enqueue the same job twice; the copy with the lower trial
number is the one that runs (`is_duplicate`), the other is skipped, so a job runs once.
"""

from __future__ import annotations

import json
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from cifarnet.errors import UserError
from cifarnet.retry import is_setup_race

DEFAULT_OPTUNA_DB = Path("mlruns") / "optuna.db"
LIVE = (TrialState.WAITING, TrialState.RUNNING)
JOB_ATTRS = ("config_hash", "cell", "seed", "config")


def default_storage_url() -> str:
    """The embedded storage: SQLite under mlruns/ (one machine, a few workers)."""
    return f"sqlite:///{DEFAULT_OPTUNA_DB.resolve()}"


def make_storage(url: str | None, heartbeat_interval: int = 10,
                 grace_period: int = 30) -> optuna.storages.RDBStorage:
    url = url or default_storage_url()
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=_requeue_stale,
                engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True})
    except Exception as exc:  # bad URL, unreachable server, missing driver
        if is_setup_race(exc):
            raise
        raise UserError(f"--storage {url}: cannot open ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Called by fail_stale_trials for each trial this process failed: run the job again."""
    attrs = {k: trial.user_attrs[k] for k in JOB_ATTRS if k in trial.user_attrs}
    study.enqueue_trial({}, user_attrs={**attrs, "requeued_from": trial.number})


@dataclass(frozen=True)
class QueuedJob:
    number: int
    trial_id: int
    config_hash: str
    cell: str
    seed: int
    config: dict[str, Any]


class Heartbeat:
    """Records a heartbeat for a running trial every `interval` seconds, in a thread."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 10
        while not self.stop_event.wait(interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a passing database hiccup must not kill training
                pass

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()


def open_study(name: str, storage: optuna.storages.RDBStorage,
               **create: Any) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if another worker did; True when this call created it.
    The storage's unique study name makes exactly one worker the creator."""
    try:
        return optuna.create_study(study_name=name, storage=storage, **create), True
    except optuna.exceptions.DuplicatedStudyError:
        kwargs = {k: v for k, v in create.items() if k in ("sampler", "pruner")}
        return optuna.load_study(study_name=name, storage=storage, **kwargs), False


class JobQueue:
    """The jobs of one ablation grid in one Optuna study."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_name: str) -> None:
        self.storage = storage
        self.study, self.created = open_study(study_name, storage, direction="maximize")
        self.study_id = storage.get_study_id_from_name(study_name)

    def trials(self, states: Iterable[TrialState] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False,
                                     states=tuple(states) if states is not None else None)

    def enqueue_missing(self, jobs: list[dict[str, Any]], done: set[str]) -> int:
        """Enqueue every job whose hash is neither done nor already waiting or running."""
        live = {t.user_attrs.get("config_hash") for t in self.trials(LIVE)}
        added = 0
        for job in jobs:
            if job["config_hash"] in done or job["config_hash"] in live:
                continue
            self.study.enqueue_trial({}, user_attrs={**job, "config": json.dumps(job["config"])})
            live.add(job["config_hash"])
            added += 1
        return added

    def fail_stale(self) -> None:
        optuna.storages.fail_stale_trials(self.study)

    def pop(self) -> QueuedJob | None:
        """Atomically claim one waiting job, or None when none is waiting."""
        for t in self.trials([TrialState.WAITING]):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id,
                                                                             t.number)
            try:
                won = self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
            except UpdateFinishedTrialError:
                continue
            if won:
                # At once: a RUNNING trial without a heartbeat never counts as stale, so a
                # worker killed before its first beat would hold the job forever.
                self.storage.record_heartbeat(trial_id)
                a = t.user_attrs
                return QueuedJob(t.number, trial_id, a["config_hash"], a["cell"], int(a["seed"]),
                                 json.loads(a["config"]))
        return None

    def is_duplicate(self, job: QueuedJob) -> bool:
        """Another live copy of the same job with a lower trial number runs instead."""
        return any(t.user_attrs.get("config_hash") == job.config_hash and t.number < job.number
                   for t in self.trials(LIVE))

    def finish(self, job: QueuedJob, state: TrialState, value: float | None = None,
               **attrs: Any) -> None:
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(job.trial_id, k, v)
        if state == TrialState.COMPLETE:
            self.study.tell(job.number, value if value is not None else float("nan"))
        else:
            self.study.tell(job.number, state=state)

    def counts(self) -> dict[str, int]:
        out = {s.name.lower(): 0 for s in TrialState}
        for t in self.trials():
            out[t.state.name.lower()] += 1
        return out

