"""A work queue of ablation runs on Optuna's RDB storage, shared by any number of workers.

Each (cell, seed) is an enqueued trial whose user attributes carry the job (its config and
hash). A worker pops a job by moving a WAITING trial to RUNNING with one conditional UPDATE
(`claim_trial`: `... SET state = RUNNING WHERE trial_id = ? AND state = WAITING`, inside
`BEGIN IMMEDIATE` on SQLite), so exactly one worker wins each trial on every storage. (Optuna's
own `set_trial_state_values` reads the row, then writes it, counting on `SELECT ... FOR
UPDATE`, which SQLite ignores: two workers could both win.) A worker that finds its trial
already finished by another worker (failed as stale) records that as an outcome
(`JobQueue.finish` returns False), not a crash. Workers send heartbeats while a job runs; a job whose worker
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
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._rdb.models import TrialModel, TrialUserAttributeModel
from optuna.trial import FrozenTrial, TrialState

from cifarnet.errors import StoreError
from cifarnet.queue.retry import retry_setup, retry_startup, retrying_methods
from cifarnet.search.storage import check_apart_from_tracking
from cifarnet.tracking.startup import store_lock
from cifarnet.tracking.urls import (
    check_not_in_memory,
    check_userinfo,
    masked,
    scrubbed,
)
from cifarnet.workspace import Workspace

LIVE = (TrialState.WAITING, TrialState.RUNNING)
JOB_ATTRS = ("config_hash", "cell", "seed", "config", "added")


def claim_trial(engine: sa.engine.Engine, trial_id: int) -> bool:
    """Move trial `trial_id` from WAITING to RUNNING; True when this call did it.

    One conditional UPDATE (`... WHERE trial_id = ? AND state = 'WAITING'`), run by `_claim`.
    False when the trial is RUNNING, finished or absent."""
    return _claim(engine, TrialModel.trial_id == trial_id) is not None


REQUEUED_FROM = "requeued_from"  # user attribute of a job enqueued again after going stale


def claim_next(engine: sa.engine.Engine, study_id: int) -> tuple[int, int] | None:
    """Move the next WAITING trial of the study to RUNNING; its (trial id, number), or None
    when no trial is waiting. Next: a job enqueued again after its worker died
    (`REQUEUED_FROM`, it resumes from its checkpoint) before the others, then the lowest
    number. On PostgreSQL the candidate row is chosen with `FOR UPDATE SKIP LOCKED`, so
    concurrent workers take different rows."""
    requeued = (sa.select(TrialUserAttributeModel.trial_id)
                .where(TrialUserAttributeModel.trial_id == TrialModel.trial_id,
                       TrialUserAttributeModel.key == REQUEUED_FROM)
                .correlate(TrialModel).exists())
    waiting = (sa.select(TrialModel.trial_id)
               .where(TrialModel.study_id == study_id, TrialModel.state == TrialState.WAITING)
               .order_by(sa.case((requeued, 0), else_=1), TrialModel.number).limit(1))
    pick = waiting.with_for_update(skip_locked=True).scalar_subquery()
    while True:
        claimed = _claim(engine, TrialModel.trial_id == pick)
        if claimed is not None:
            return claimed
        with engine.connect() as conn:  # none left, or another worker won this row
            if conn.execute(waiting).first() is None:
                return None


def _claim(engine: sa.engine.Engine, which: sa.ColumnElement[bool]) -> tuple[int, int] | None:
    """`UPDATE trials SET state = 'RUNNING' WHERE <which> AND state = 'WAITING'`, one
    statement whose WHERE is evaluated under the write lock on every database: on SQLite
    inside `BEGIN IMMEDIATE` (the database's write lock is taken before any row is read;
    pysqlite would otherwise read first and lock later), on PostgreSQL a second UPDATE of
    the row waits for the first to commit and then re-checks `state = 'WAITING'`. Returns
    the claimed (trial id, number), or None when no row matched."""
    stmt = (sa.update(TrialModel)
            .where(which, TrialModel.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=datetime.now())
            .returning(TrialModel.trial_id, TrialModel.number))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        row = conn.execute(stmt).first()
        conn.commit()
    return None if row is None else (row[0], row[1])


# the private methods Optuna's `_CachedStorage` (which wraps every RDBStorage a study uses)
# calls instead of the public ones
CACHED_STORAGE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_best_trial_id",
                        "_get_trials", "_get_stale_trial_ids")


@retrying_methods(optuna.storages.RDBStorage, also=CACHED_STORAGE_CALLS)
class ClaimingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, every public method retried on a transient error
    (`queue.retry.retrying_methods`: a database restarting under a long search or grid, SQLite
    busy), and whose state moves without values are single conditional UPDATEs,
    so two workers cannot both make the same move on SQLite (where Optuna's read, then write
    counts on a row lock that SQLite does not have):

    - WAITING -> RUNNING (a worker popping a job, or Optuna's `Study.ask` popping an enqueued
      trial) is `claim_trial`; it returns False, rather than raising UpdateFinishedTrialError,
      when the trial is already finished (Optuna's `ask` treats both alike: skips the trial);
    - a move to a finished state without values (two workers failing the same stale trial in
      `fail_stale_trials`, or one failing it as the other ends it) succeeds for one of them;
      the other gets UpdateFinishedTrialError, as from Optuna, and does not enqueue the job
      again.
    """

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        if values is not None or state == TrialState.WAITING:
            return super().set_trial_state_values(trial_id, state, values)
        if state == TrialState.RUNNING:
            return claim_trial(self.engine, trial_id)
        if _end_trial(self.engine, trial_id, state):
            return True
        raise UpdateFinishedTrialError(f"trial {trial_id} is already finished (or absent)")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (RUNNING, last heartbeat older than the grace period), after
        `beat_for_unbeaten` gave each RUNNING trial without a heartbeat one. Optuna never
        counts a trial without a heartbeat as stale: a worker killed (or stopped by a second
        signal) between creating or claiming a trial and its first heartbeat, inside
        `Study.ask` for instance, held that trial RUNNING for ever; it counted towards
        `n_trials` and its job never ran again. It now goes stale one grace period after
        another worker first sees it."""
        beat_for_unbeaten(self.engine, study_id)
        return super()._get_stale_trial_ids(study_id)


def beat_for_unbeaten(engine: sa.engine.Engine, study_id: int) -> int:
    """Record a heartbeat, at the database's time, for every RUNNING trial of the study that
    has none; the number recorded. One `INSERT ... SELECT ... WHERE NOT EXISTS` that skips a
    trial whose own worker records its first beat at the same moment (`ON CONFLICT DO
    NOTHING` on the unique trial id; Optuna's `record_heartbeat` ignores the same conflict
    the other way round and then updates the row)."""
    from optuna.storages._rdb.models import TrialHeartbeatModel

    beat = TrialHeartbeatModel.__table__
    unbeaten = (sa.select(TrialModel.trial_id, sa.func.current_timestamp())
                .where(TrialModel.study_id == study_id, TrialModel.state == TrialState.RUNNING,
                       ~sa.exists().where(beat.c.trial_id == TrialModel.trial_id)))
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # MySQL has no ON CONFLICT: a conflict is retried as transient, or left to Optuna
        insert = sa.insert
    stmt = insert(beat).from_select(["trial_id", "heartbeat"], unbeaten)
    if engine.dialect.name in ("sqlite", "postgresql"):
        stmt = stmt.on_conflict_do_nothing(index_elements=["trial_id"])
    with engine.connect() as conn:
        made = conn.execute(stmt).rowcount
        conn.commit()
    return max(made, 0)


def _end_trial(engine: sa.engine.Engine, trial_id: int, state: TrialState) -> bool:
    """`UPDATE trials SET state = <finished state> WHERE trial_id = ? AND state IN
    ('WAITING', 'RUNNING')`, under the write lock as in `_claim`; True when this call did it."""
    stmt = (sa.update(TrialModel)
            .where(TrialModel.trial_id == trial_id,
                   TrialModel.state.in_([TrialState.WAITING, TrialState.RUNNING]))
            .values(state=state, datetime_complete=datetime.now()))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        done = conn.execute(stmt).rowcount == 1
        conn.commit()
    return done


def make_storage(url: str, heartbeat_interval: int = 10, grace_period: int = 30,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None, *,
                 key: str = "--storage", create_folder: bool = False,
                 ) -> optuna.storages.RDBStorage:
    """The Optuna storage at `url` (an SQLAlchemy URL), created or migrated once under the
    store's start-up lock (`store_lock(url, "optuna")`), transient errors and a start-up race
    with a program outside that lock retried (`retry_startup`); heartbeats
    every `heartbeat_interval` s, trials stale after `grace_period` s without one, and
    `on_stale` called for each trial failed as stale (default: enqueue its job again).
    A SQLite file's folder is made only with `create_folder` (the embedded storage).
    Raises StoreError (one line naming `key`, what chose the URL (`Workspace.storage_key`);
    the URL's password masked) when it cannot be opened."""
    check_userinfo(url, key)
    check_not_in_memory(url, key)
    try:
        with store_lock(url, "optuna", create_folder=create_folder):
            return retry_startup(lambda: _rdb_storage(url, heartbeat_interval, grace_period,
                                                    on_stale or _requeue_stale))
    except StoreError as exc:  # the start-up lock: held too long, or the server unreachable
        raise StoreError(f"{key} {exc}") from None
    except Exception as exc:  # bad URL, unreachable server, missing driver
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise StoreError(f"{key} {masked(url)}: cannot open ({type(exc).__name__}: "
                         f"{scrubbed(text, url)})") from None


def open_storage(workspace: Workspace, url: str | None = None, heartbeat_interval: int = 10,
                 grace_period: int = 30,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 ) -> optuna.storages.RDBStorage:
    """`make_storage` for a command: `url` (from `--storage`; default the workspace's), its
    errors naming what chose it (`Workspace.storage_key`), the folder made only for the
    embedded storage under `mlruns/`."""
    url = url or workspace.storage_url
    check_apart_from_tracking(workspace, url)
    return make_storage(url, heartbeat_interval, grace_period, on_stale,
                        key=workspace.storage_key(url),
                        create_folder=url == workspace.embedded_storage_url)


def _rdb_storage(url: str, heartbeat_interval: int, grace_period: int,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> ClaimingRDBStorage:
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return ClaimingRDBStorage(
            url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            heartbeat_stale_trial_callback=on_stale,
            engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True})


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Called by fail_stale_trials for each trial this process failed: run the job again."""
    attrs = {k: trial.user_attrs[k] for k in JOB_ATTRS if k in trial.user_attrs}
    study.enqueue_trial({}, user_attrs={**attrs, REQUEUED_FROM: trial.number})


@dataclass(frozen=True)
class QueuedJob:
    number: int
    trial_id: int
    config_hash: str
    cell: str
    seed: int
    config: dict[str, Any]
    added: bool = False  # a seed --until-decided added (`ablation.spec.Job.added`)


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


PARENT_ATTR = "mlflow_parent_run_id"


@dataclass(frozen=True)
class StudyAttr:
    """One user attribute of a study, read afresh from the storage each time: the `get`/`set`
    slot through which workers share a value (their parent run id)."""

    study: optuna.Study
    key: str

    def get(self) -> str | None:
        return self.study.user_attrs.get(self.key)

    def set(self, value: str) -> None:
        self.study.set_user_attr(self.key, value)


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

    def enqueue_missing(self, jobs: list[dict[str, Any]], done: set[str],
                        first: set[str] = frozenset()) -> int:
        """Enqueue every job whose hash is neither done nor already waiting or running; the
        jobs in `first` (interrupted ones, which resume) are enqueued before the others."""
        live = {t.user_attrs.get("config_hash") for t in self.trials(LIVE)}
        added = 0
        for job in sorted(jobs, key=lambda j: j["config_hash"] not in first):
            if job["config_hash"] in done or job["config_hash"] in live:
                continue
            self.study.enqueue_trial({}, user_attrs={**job, "config": json.dumps(job["config"])})
            live.add(job["config_hash"])
            added += 1
        return added

    def fail_stale(self) -> None:
        optuna.storages.fail_stale_trials(self.study)

    def pop(self) -> QueuedJob | None:
        """Claim the next waiting job (`claim_next`: a stale job enqueued again first, then
        the lowest number; one claim per job on every
        storage), or None when none is waiting. Reads the claimed trial's attributes, never
        every trial: a pop costs the same in a queue of 10 jobs or 10,000."""
        claimed = retry_setup(lambda: claim_next(self.storage.engine, self.study_id))
        if claimed is None:
            return None
        trial_id, number = claimed
        # At once: a RUNNING trial without a heartbeat never counts as stale, so a worker
        # killed before its first beat would hold the job forever.
        self.storage.record_heartbeat(trial_id)
        a = self._user_attrs(trial_id)
        return QueuedJob(number, trial_id, a["config_hash"], a["cell"], int(a["seed"]),
                         json.loads(a["config"]), bool(a.get("added", False)))

    def _user_attrs(self, trial_id: int) -> dict[str, Any]:
        stmt = sa.select(TrialUserAttributeModel.key, TrialUserAttributeModel.value_json).where(
            TrialUserAttributeModel.trial_id == trial_id)
        def read() -> dict[str, Any]:
            with self.storage.engine.connect() as conn:
                return {k: json.loads(v) for k, v in conn.execute(stmt)}
        return retry_setup(read)

    def is_duplicate(self, job: QueuedJob) -> bool:
        """Another live copy of the same job with a lower trial number runs instead."""
        return any(t.user_attrs.get("config_hash") == job.config_hash and t.number < job.number
                   for t in self.trials(LIVE))

    def finish(self, job: QueuedJob, state: TrialState, value: float | None = None,
               attrs: Mapping[str, Any] | None = None) -> bool:
        """Record the job's end: `attrs` as user attributes, then the state (and `value` for
        COMPLETE). False, and nothing recorded, when another worker has already finished the
        trial (it failed it as stale and enqueued the job again): an outcome, not an error."""
        try:
            if self.storage.get_trial(job.trial_id).state.is_finished():
                return False
            for k, v in (attrs or {}).items():
                self.storage.set_trial_user_attr(job.trial_id, k, v)
            if state == TrialState.COMPLETE:
                self.study.tell(job.number, value if value is not None else float("nan"),
                                skip_if_finished=True)
            else:
                self.study.tell(job.number, state=state, skip_if_finished=True)
        except UpdateFinishedTrialError:
            return False
        return True

    def complete(self, job: QueuedJob, value: float, mlflow_run_id: str,
                 reused_from: str | None = None) -> bool:
        """The job ran to the end in MLflow run `mlflow_run_id` (or was copied from the run
        `reused_from`); `value` is its objective (test accuracy)."""
        attrs = {"mlflow_run_id": mlflow_run_id}
        if reused_from is not None:
            attrs["reused_from"] = reused_from
        return self.finish(job, TrialState.COMPLETE, value, attrs)

    def fail(self, job: QueuedJob, outcome: str, mlflow_run_id: str | None = None) -> bool:
        """The job ran and did not finish (`outcome`: crashed, diverged, ...)."""
        attrs = {"outcome": outcome}
        if mlflow_run_id is not None:
            attrs["mlflow_run_id"] = mlflow_run_id
        return self.finish(job, TrialState.FAIL, None, attrs)

    def skip(self, job: QueuedJob, reason: str) -> bool:
        """The job needs no run (already finished elsewhere, or a duplicate)."""
        return self.finish(job, TrialState.PRUNED, None, {"skipped": reason})

    def release(self, job: QueuedJob) -> bool:
        """Give an interrupted job back to the queue (RUNNING -> WAITING): it keeps its place,
        so the next worker claims it first (`claim_next` takes the lowest number), and it is
        not a failure. False when another worker has already ended the trial."""
        try:
            return self.storage.set_trial_state_values(job.trial_id, TrialState.WAITING)
        except UpdateFinishedTrialError:
            return False

    def parent_slot(self) -> "StudyAttr":
        """Where the workers of this queue share their grid's parent run id."""
        return StudyAttr(self.study, PARENT_ATTR)

    def needed_hashes(self) -> set[str]:
        """The config hash of every job ever enqueued."""
        return {t.user_attrs.get("config_hash") for t in self.trials()}

    def counts(self, hashes: set[str] | None = None) -> dict[str, int]:
        """Trials (of the jobs in `hashes`, default all) by what they mean for the grid:
        `done` (a run finished), `skipped` (needed no run: finished before, or a duplicate),
        `failed` (the run failed: crashed, diverged), `interrupted` (killed or stale: the job
        is enqueued again and resumes), `running` and `waiting`."""
        out = dict.fromkeys(("done", "skipped", "failed", "interrupted", "running", "waiting"), 0)
        for t in self.trials():
            if hashes is None or t.user_attrs.get("config_hash") in hashes:
                out[_meaning(t)] += 1
        return out


INTERRUPTED = ("killed", "stale")


def _meaning(t: FrozenTrial) -> str:
    if t.state == TrialState.FAIL:
        # no outcome: failed by `fail_stale_trials` (its worker vanished) and enqueued again
        outcome = t.user_attrs.get("outcome", "stale")
        return "interrupted" if outcome in INTERRUPTED else "failed"
    return {TrialState.COMPLETE: "done", TrialState.PRUNED: "skipped",
            TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]
