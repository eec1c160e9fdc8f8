"""One claim per job on every storage: workers popping one queue at the same moment never
claim a job twice, and a worker whose trial another worker has finished is told so."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from cifarnet.queue.jobs import JobQueue, claim_next, claim_trial, make_storage

N_JOBS = 500
ROUNDS = 5
WORKERS = 3
STUDY = "cifarnet.claims"

# A worker: open the queue; for each round, wait for the round's go file, pop until the queue
# is empty and write the trial numbers it claimed; then wait for the round's fail file, try to
# fail every trial (as workers failing stale trials do) and write the ones it failed.
WORKER = """
import json, random, sys, time
from pathlib import Path
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from cifarnet.queue.jobs import JobQueue, make_storage
url, study, folder, rounds, me = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
queue = JobQueue(make_storage(url), study)
for r in range(rounds):
    while not (folder / f"go.{r}").exists():
        time.sleep(0.005)
    claimed = []
    while (job := queue.pop()) is not None:
        claimed.append(job.number)
    (folder / f"claimed.{r}.{me}.tmp").write_text(json.dumps(claimed))
    (folder / f"claimed.{r}.{me}.tmp").rename(folder / f"claimed.{r}.{me}")
    while not (folder / f"fail.{r}").exists():
        time.sleep(0.005)
    failed, trials = [], queue.trials()
    random.Random(me).shuffle(trials)  # each its own order, so that they meet
    for t in trials:
        try:
            if queue.storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                failed.append(t.number)
        except UpdateFinishedTrialError:
            pass
    (folder / f"failed.{r}.{me}.tmp").write_text(json.dumps(failed))
    (folder / f"failed.{r}.{me}.tmp").rename(folder / f"failed.{r}.{me}")
"""


def fill(url: str, n: int = N_JOBS) -> None:
    """A study of `n` waiting jobs (enqueued in one transaction: Optuna's enqueue_trial takes
    one each, too slow to repeat)."""
    queue = JobQueue(make_storage(url), STUDY)
    queue.enqueue_missing([{"config_hash": "h0", "cell": "c", "seed": 0, "config": {}}], set())
    trial = queue.trials()[0]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        rows = conn.execute(sa.text("select key, value_json from trial_user_attributes "
                                    "where trial_id = :t"), {"t": trial._trial_id}).all()
        for number in range(1, n):
            tid = conn.execute(sa.text(
                "insert into trials (number, study_id, state) values (:n, :s, 'WAITING') "
                "returning trial_id"), {"n": number, "s": queue.study_id}).scalar()
            conn.execute(sa.text("insert into trial_user_attributes (trial_id, key, value_json)"
                                 " values (:t, :k, :v)"),
                         [{"t": tid, "k": k, "v": json.dumps(f"h{number}") if k == "config_hash"
                           else v} for k, v in rows])
    engine.dispose()


def reset(url: str) -> None:
    """Every job waiting again, as if freshly enqueued."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("delete from trial_values"))
        conn.execute(sa.text("delete from trial_heartbeats"))
        conn.execute(sa.text("update trials set state = 'WAITING', datetime_start = null, "
                             "datetime_complete = null"))
    engine.dispose()


def assert_each_claimed_once(url: str, folder: Path) -> None:
    """WORKERS processes pop the N_JOBS-job queue at the same moment, ROUNDS times."""
    fill(url)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, STUDY, str(folder),
                               str(ROUNDS), str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(WORKERS)]
    try:
        for r in range(ROUNDS):
            if r:
                reset(url)
            for step, what in (("go", "claimed"), ("fail", "failed")):
                (folder / f"{step}.{r}").touch()
                files = [folder / f"{what}.{r}.{i}" for i in range(WORKERS)]
                deadline = time.monotonic() + 60
                while not all(f.exists() for f in files):
                    dead = [p for p in procs if p.poll() not in (None, 0)]
                    assert not dead, dead[0].communicate()[1]
                    assert time.monotonic() < deadline, f"round {r} timed out"
                    time.sleep(0.05)
                done = [json.loads(f.read_text()) for f in files]
                every = sorted(n for c in done for n in c)
                twice = len(every) - len(set(every))
                assert twice == 0, f"round {r}: {twice} job(s) {what} twice"
                assert every == list(range(N_JOBS)), f"round {r}: jobs left, not {what}"
                assert sum(bool(c) for c in done) >= 2, "the workers did not overlap"
    finally:
        for p in procs:
            p.kill()
            p.wait()
    study = optuna.load_study(study_name=STUDY, storage=url)
    assert {t.state for t in study.trials} == {TrialState.FAIL}


@pytest.mark.slow
def test_three_workers_claim_each_sqlite_job_once(fast_folder) -> None:
    assert_each_claimed_once(f"sqlite:///{fast_folder / 'queue.db'}", fast_folder)


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_claim_each_postgres_job_once(pg_database, tmp_path) -> None:
    url = pg_database("claims")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:  # a throwaway database: commits need not wait for the disk
        conn.exec_driver_sql(f"alter database {sa.make_url(url).database} "
                             "set synchronous_commit = off")
    engine.dispose()
    assert_each_claimed_once(url, tmp_path)


def test_claim_wins_once_and_never_a_finished_trial(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    storage = make_storage(url)
    queue = JobQueue(storage, STUDY)
    queue.enqueue_missing([{"config_hash": "a", "cell": "c", "seed": 0, "config": {}},
                           {"config_hash": "b", "cell": "c", "seed": 1, "config": {}}], set())
    first, second = (t._trial_id for t in queue.trials())
    assert claim_trial(storage.engine, first) is True
    assert claim_trial(storage.engine, first) is False  # already RUNNING
    storage.set_trial_state_values(second, TrialState.FAIL)
    assert claim_trial(storage.engine, second) is False  # finished: never reopened
    assert [t.state for t in queue.trials()] == [TrialState.RUNNING, TrialState.FAIL]


def test_finish_after_another_worker_failed_the_job_is_an_outcome(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    mine = JobQueue(make_storage(url), STUDY)
    mine.enqueue_missing([{"config_hash": "a", "cell": "c", "seed": 0, "config": {}}], set())
    job = mine.pop()
    assert job is not None
    # another worker declares it stale and fails it while this one still trains
    other = JobQueue(make_storage(url), STUDY)
    other.storage.set_trial_state_values(job.trial_id, TrialState.FAIL)
    assert mine.finish(job, TrialState.COMPLETE, 0.5, {"mlflow_run_id": "r"}) is False
    trial = mine.trials()[0]
    assert trial.state == TrialState.FAIL and "mlflow_run_id" not in trial.user_attrs
    assert mine.pop() is None


def test_optunas_own_ask_pops_through_the_claim(tmp_path) -> None:
    """Study.ask pops enqueued trials with the same claim (searches share it)."""
    storage = make_storage(f"sqlite:///{tmp_path / 'q.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    trial_id = study.trials[0]._trial_id
    assert claim_trial(storage.engine, trial_id) is True  # another worker took it
    trial = study.ask()
    assert trial._trial_id != trial_id and trial.number == 1


def test_a_trial_is_ended_once(tmp_path) -> None:
    """Two workers failing the same stale trial: the second is told it is finished (Optuna's
    fail_stale_trials then does not enqueue the job a second time)."""
    storage = make_storage(f"sqlite:///{tmp_path / 'q.db'}")
    queue = JobQueue(storage, STUDY)
    queue.enqueue_missing([{"config_hash": "a", "cell": "c", "seed": 0, "config": {}}], set())
    job = queue.pop()
    assert storage.set_trial_state_values(job.trial_id, TrialState.FAIL) is True
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(job.trial_id, TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(job.trial_id, TrialState.PRUNED)
    assert queue.trials()[0].state == TrialState.FAIL
    assert queue.trials()[0].datetime_complete is not None


def test_a_released_job_is_waiting_again_and_claimed_first(tmp_path) -> None:
    """An interrupted job goes back in its place: not a failure, and the next pop takes it."""
    from cifarnet.queue.jobs import JobQueue, make_storage

    queue = JobQueue(make_storage(f"sqlite:///{tmp_path / 'q.db'}"), "grid")
    queue.enqueue_missing([{"config_hash": h, "cell": "c", "seed": s, "config": {}}
                           for s, h in enumerate(["h0", "h1", "h2"])], set())
    first = queue.pop()
    assert first.config_hash == "h0" and queue.counts()["running"] == 1
    assert queue.release(first)
    assert queue.counts() == {"done": 0, "skipped": 0, "failed": 0, "interrupted": 0,
                              "running": 0, "waiting": 3}
    assert queue.pop().config_hash == "h0"


@pytest.mark.parametrize("backend",
                         ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_job_whose_worker_died_is_claimed_before_the_rest(backend, tmp_path, request) -> None:
    """kill -9: the job's trial goes stale, is failed and enqueued again (last by number),
    and the next pop takes it first: it resumes from its checkpoint before new jobs start."""
    url = (f"sqlite:///{tmp_path / 'q.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_database")("requeue"))
    storage = make_storage(url, heartbeat_interval=1, grace_period=2)
    queue = JobQueue(storage, "grid")
    queue.enqueue_missing([{"config_hash": h, "cell": "c", "seed": s, "config": {}}
                           for s, h in enumerate(["h0", "h1", "h2"])], set())
    dead = queue.pop()  # its worker is killed: no more heartbeats
    assert dead.config_hash == "h0"
    time.sleep(3)
    queue.fail_stale()
    states = [t.state for t in queue.trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING,
                      TrialState.WAITING]
    again = queue.pop()
    assert (again.config_hash, again.number) == ("h0", 3)
    assert [queue.pop().config_hash for _ in range(2)] == ["h1", "h2"]
    assert queue.pop() is None


@pytest.mark.parametrize("backend",
                         ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_trial_whose_worker_died_before_its_first_heartbeat_goes_stale(backend, tmp_path,
                                                                         request) -> None:
    """A worker killed between creating (or claiming) a trial and its first heartbeat (inside
    Optuna's `Study.ask`, or a second signal there) left the trial RUNNING for ever: Optuna
    counts only trials with a heartbeat as stale, so it held its slot of `n_trials` and its
    job never ran again. Another worker now gives it a heartbeat when it first sees it: it
    goes stale one grace period later, is failed and enqueued again; a trial whose own worker
    is alive, or beats at the same moment, is left RUNNING."""
    from cifarnet.queue.jobs import beat_for_unbeaten

    url = (f"sqlite:///{tmp_path / 'q.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_database")("unbeaten"))
    storage = make_storage(url, heartbeat_interval=1, grace_period=2)
    queue = JobQueue(storage, "grid")
    queue.enqueue_missing([{"config_hash": h, "cell": "c", "seed": s, "config": {}}
                           for s, h in enumerate(["h0", "h1"])], set())
    study_id = queue.study_id
    dead = claim_next(storage.engine, study_id)  # claimed; killed before its heartbeat
    alive = queue.pop()  # claimed and beating
    assert dead is not None and alive.config_hash == "h1"
    queue.fail_stale()  # first seen: given a heartbeat, not failed
    assert [t.state for t in queue.trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    assert beat_for_unbeaten(storage.engine, study_id) == 0  # both have one now
    for _ in range(4):  # past the grace period; the live worker keeps beating
        time.sleep(1)
        storage.record_heartbeat(alive.trial_id)
    queue.fail_stale()
    states = [t.state for t in queue.trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING], states
    again = queue.pop()
    assert (again.config_hash, again.number) == ("h0", 2)
    storage.record_heartbeat(dead[0])  # the dead worker's own first beat, late: no error
