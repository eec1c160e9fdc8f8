"""Start-up that cannot race: processes starting at the same moment against new stores (SQLite
or PostgreSQL, MLflow and Optuna) all start, each store and study is created once, each job
runs once; only transient errors are retried."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import EXE, children, runs_df, write_spec

from cifarnet.spec.ablation import load_spec
from cifarnet.data.datasets import preload_data
from cifarnet.errors import StoreError
from cifarnet.search.storage import open_storage
from cifarnet.tracking.retry import is_startup_race, is_transient, retry_setup, retry_startup
from cifarnet.tracking.startup import init_tracking_store, store_lock
from cifarnet.workspace import Workspace

ROUNDS = 5
WORKERS = 3

# A worker: for each round, wait for its go file, then open both stores (MLflow tracking
# store and the Optuna storage with a study) as `run` and `search` do, and report.
WORKER = """
import json, sys, time, traceback
from pathlib import Path
import optuna
from cifarnet.search.storage import open_storage
from cifarnet.tracking.startup import init_tracking_store
from cifarnet.workspace import Workspace
folder, rounds = Path(sys.argv[1]), json.loads(sys.argv[2])
for r, (mlflow_url, optuna_url) in enumerate(rounds):
    while not (folder / f"go.{r}").exists():
        time.sleep(0.005)
    try:
        init_tracking_store(mlflow_url)
        from mlflow import MlflowClient
        MlflowClient(mlflow_url).get_experiment_by_name("Default")
        storage = open_storage(Workspace.resolve(folder), optuna_url)
        optuna.create_study(study_name="cifarnet.start", storage=storage, load_if_exists=True)
        result = {"ok": True, "studies": len(optuna.get_all_study_names(storage))}
    except BaseException as exc:
        result = {"ok": False, "error": traceback.format_exc()}
    (folder / f"done.{r}.{sys.argv[3]}").write_text(json.dumps(result))
"""


def clean_env() -> dict[str, str]:
    """This process's environment without MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri
    (in runs_df) exports: each round's workers use their own folder's store."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def start_together(folder: Path, rounds: list[tuple[str, str]]) -> list[list[dict]]:
    """WORKERS processes open the stores of each round at the same moment."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), json.dumps(rounds),
                               str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(WORKERS)]
    results = []
    try:
        for r in range(len(rounds)):
            (folder / f"go.{r}").touch()
            files = [folder / f"done.{r}.{i}" for i in range(WORKERS)]
            deadline = time.monotonic() + 120
            while not all(f.exists() for f in files):
                dead = [p for p in procs if p.poll() not in (None, 0)]
                assert not dead, dead[0].communicate()[1]
                assert time.monotonic() < deadline, f"round {r} timed out"
                time.sleep(0.05)
            results.append([json.loads(f.read_text()) for f in files])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return results


def assert_all_started(results: list[list[dict]]) -> None:
    for r, workers in enumerate(results):
        errors = [w["error"] for w in workers if not w["ok"]]
        assert not errors, f"round {r}: {errors[0]}"
        assert {w["studies"] for w in workers} == {1}, f"round {r}: study created twice"


@pytest.mark.slow
def test_workers_start_together_on_fresh_sqlite_stores(fast_folder) -> None:
    for r in range(ROUNDS):  # the folder, as `run` makes mlruns/; the stores are new
        (fast_folder / f"r{r}").mkdir()
    rounds = [(f"sqlite:///{fast_folder / f'r{r}' / 'mlflow.db'}",
               f"sqlite:///{fast_folder / f'r{r}' / 'optuna.db'}") for r in range(ROUNDS)]
    assert_all_started(start_together(fast_folder, rounds))
    with sqlite3.connect(fast_folder / "r0" / "mlflow.db") as con:
        assert con.execute("select name from experiments").fetchall() == [("Default",)]


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_start_together_on_fresh_postgres_stores(tmp_path, pg_database) -> None:
    # (MLflow and Optuna cannot share one database: both keep their schema version in a
    # table named alembic_version)
    rounds = [(pg_database(f"mlflow{r}"), pg_database(f"optuna{r}")) for r in range(ROUNDS)]
    assert_all_started(start_together(tmp_path, rounds))


@pytest.mark.slow
def test_three_launchers_of_one_grid_on_a_fresh_mlflow_store(tiny_tree, tmp_path) -> None:
    """Three `run`s of one grid started at the same moment on a fresh SQLite MLflow store,
    five times: the store is made once, one launcher runs the grid, the others are refused
    in one line (exit 2) or find it done (exit 0); each job runs once."""
    spec_folder = tmp_path / "spec"
    spec_folder.mkdir()
    spec = write_spec(spec_folder, tiny_tree, factors={"model.residual_add": [True]},
                      seeds=[0, 1], store=False)
    preload_data(j.config.data for j in load_spec(spec).jobs())  # decoded once, cached
    for r in range(ROUNDS):
        folder = tmp_path / f"round{r}"
        folder.mkdir()
        workers = [subprocess.Popen([EXE, "run", str(spec)],
                                    cwd=folder, env=clean_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
                   for _ in range(WORKERS)]
        outputs = [w.communicate(timeout=300)[0] for w in workers]
        assert_one_launcher(workers, outputs)
        kids = children(runs_df(folder))
        assert len(kids) == 2 and set(kids["status"]) == {"FINISHED"}, f"round {r}"
        assert kids["tags.cifarnet.config_hash"].nunique() == 2


def assert_one_launcher(procs: list, outputs: list[str]) -> None:
    """Each ended 0, or 2 with the one line of a grid another launcher holds."""
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 2} and 0 in codes, outputs
    for code, out in zip(codes, outputs):
        if code == 2:
            assert "another launcher is running this grid" in out, out
            assert len(out.strip().splitlines()) == 1, out


@pytest.mark.slow
def test_two_runs_0_2_s_apart_in_an_empty_folder(tiny_tree, tmp_path) -> None:
    spec_folder = tmp_path / "spec"
    spec_folder.mkdir()
    spec = write_spec(spec_folder, tiny_tree, factors={"model.residual_add": [True]},
                      seeds=[0, 1], store=False)
    preload_data(j.config.data for j in load_spec(spec).jobs())
    for r in range(3):
        folder = tmp_path / f"try{r}"
        folder.mkdir()
        first = subprocess.Popen([EXE, "run", str(spec)], cwd=folder, env=clean_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.2)
        second = subprocess.Popen([EXE, "run", str(spec)], cwd=folder, env=clean_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
        assert_one_launcher([first, second], outputs)
        kids = children(runs_df(folder))
        assert len(kids) == 2 and set(kids["status"]) == {"FINISHED"}, f"try {r}"


def test_init_tracking_store_creates_the_store_once(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    (tmp_path / "new").mkdir()  # the folder of a store the user names is not made for it
    init_tracking_store(uri)
    with sqlite3.connect(tmp_path / "new" / "mlflow.db") as con:
        tables = {n for (n,) in con.execute("select name from sqlite_master")}
        assert {"experiments", "runs", "metrics", "alembic_version"} <= tables
        assert con.execute("select name from experiments").fetchall() == [("Default",)]
    init_tracking_store(uri)  # an existing store: checked, left as it is
    # a server creates its own tables; one that does not answer its health check is refused
    # at once (MLflow's client retried it for minutes)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"MLflow tracking store http://127\.0\.0\.1:1: "
                                         r"cannot open \(URLError"):
        init_tracking_store("http://127.0.0.1:1")
    assert time.monotonic() - started < 15


def test_sqlite_lock_is_held_beside_the_file_and_times_out_naming_the_store(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'optuna.db'}"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # the embedded store's folder is made; a named one's is not
        with store_lock(url, "optuna", create_folder=True):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    assert (tmp_path / "a" / "optuna.db.lock").exists()
    with pytest.raises(StoreError, match=r"optuna\.db\.lock was held for more than 0 s"):
        with store_lock(url, "optuna", timeout_s=0.2):
            pass
    release.set()
    t.join()
    with store_lock(url, "optuna", timeout_s=1):
        pass


def test_a_store_shared_by_one_group_has_a_group_writable_lock(tmp_path) -> None:
    """Two users of one group share a store: the lock file the first one made must open for
    the second (umask 022 would make it 0644)."""
    old = os.umask(0o022)
    try:
        with store_lock(f"sqlite:///{tmp_path / 'optuna.db'}", "optuna"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "optuna.db.lock").stat().st_mode & 0o777 == 0o664


def test_a_lock_that_cannot_be_made_is_one_line_naming_the_store(tmp_path) -> None:
    """Another user's folder or a read-only disk (here: a folder where the lock file goes,
    which fails the same way for root): one line naming the lock and the fix, exit 2."""
    (tmp_path / "mlruns" / "mlflow.db.lock").mkdir(parents=True)
    r = subprocess.run([EXE, "ui"], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"error: MLflow tracking store sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}: cannot "
        f"take the start-up lock {tmp_path / 'mlruns' / 'mlflow.db.lock'} (Is a directory); "
        "users who share a store need write access to its folder and files (one group: "
        "chmod -R g+w)\n")


@pytest.mark.postgres
def test_postgres_advisory_lock_excludes_a_second_holder(pg_database) -> None:
    url = pg_database("lock")
    with store_lock(url, "mlflow"):
        with pytest.raises(StoreError, match="advisory lock"):
            with store_lock(url, "mlflow", timeout_s=0.3):
                pass
        with store_lock(url, "optuna", timeout_s=1):  # another store's lock is free
            pass
    with store_lock(url, "mlflow", timeout_s=1):  # released
        pass


def test_only_transient_errors_are_retried() -> None:
    import sqlalchemy.exc

    class Busy(Exception):
        sqlite_errorname = "SQLITE_BUSY"

    class Deadlock(Exception):
        sqlstate = "40P01"

    class Unique(Exception):
        sqlstate = "23505"

    assert is_transient(sqlalchemy.exc.OperationalError("stmt", {}, Busy("database is locked")))
    assert is_transient(Deadlock("deadlock detected"))
    assert is_transient(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert not is_transient(sqlalchemy.exc.IntegrityError("stmt", {}, Unique("duplicate key")))
    assert not is_transient(RuntimeError("table alembic_version already exists"))
    assert not is_transient(ConnectionRefusedError("connection refused"))

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("database is locked")
        return "ok"

    assert retry_setup(flaky, pause_s=0.01) == "ok" and len(calls) == 3
    calls.clear()

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("duplicate column name: step")

    with pytest.raises(RuntimeError, match="duplicate column"):
        retry_setup(broken, pause_s=0.01)
    assert len(calls) == 1


def test_a_start_up_race_is_retried_only_at_start_up() -> None:
    import sqlalchemy.exc

    class Unique(Exception):
        sqlite_errorname = "SQLITE_CONSTRAINT_PRIMARYKEY"

    race = sqlalchemy.exc.IntegrityError(
        "INSERT INTO alembic_version", {},
        Unique("UNIQUE constraint failed: alembic_version.version_num"))
    assert is_startup_race(race) and not is_transient(race)
    assert is_startup_race(RuntimeError("(sqlite3.OperationalError) table studies already "
                                        "exists"))
    assert not is_startup_race(sqlalchemy.exc.IntegrityError("INSERT INTO trials", {},
                                                             Unique("UNIQUE constraint failed: "
                                                                    "trials.number")))
    calls = []

    def loses_the_race_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise race
        return "ok"

    assert retry_startup(loses_the_race_once, pause_s=0.01) == "ok" and len(calls) == 2
    calls.clear()
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # outside start-up: raised at once
        retry_setup(loses_the_race_once, pause_s=0.01)
    assert len(calls) == 1


# An outside program (optuna-dashboard, a notebook's optuna.load_study) that creates the
# Optuna storage at the same moment as our workers.
OUTSIDER = """
import sys, time
from pathlib import Path
import optuna
folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
for r in range(rounds):
    while not (folder / f"go.{r}").exists():
        time.sleep(0.002)
    try:
        optuna.storages.RDBStorage(f"sqlite:///{folder / f'optuna{r}.db'}")
    except Exception:
        pass  # the outsider may lose the race; ours must not
"""
OURS = """
import sys, time
from pathlib import Path
from cifarnet.search.storage import open_storage
from cifarnet.workspace import Workspace
folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
for r in range(rounds):
    while not (folder / f"go.{r}").exists():
        time.sleep(0.002)
    open_storage(Workspace.resolve(folder), f"sqlite:///{folder / f'optuna{r}.db'}")
    print("opened", r, flush=True)
"""


@pytest.mark.slow
def test_a_storage_created_at_once_by_a_program_outside_our_lock_opens(tmp_path) -> None:
    rounds = 8
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for code in (OUTSIDER, OUTSIDER, OURS, OURS)]
    time.sleep(8)  # all four have imported optuna and wait for round 0
    for r in range(rounds):
        (tmp_path / f"go.{r}").touch()
        time.sleep(1.5)
    for p in procs[2:]:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        assert out.split("\n").count("") == 1 and out.count("opened") == rounds
    for p in procs[:2]:
        p.communicate(timeout=60)


def test_a_named_sqlite_stores_missing_folder_is_refused_not_made(tmp_path) -> None:
    """`--storage sqlite:////typo/dir/o.db` made /typo/dir and ran on a new, empty store."""
    url = f"sqlite:///{tmp_path / 'typo' / 'o.db'}"
    with pytest.raises(StoreError, match=f"^{url}: the folder {tmp_path / 'typo'} does not "):
        with store_lock(url, "optuna"):
            pass
    with pytest.raises(StoreError, match="^--storage sqlite:.*: the folder .* does not exist"):
        open_storage(Workspace.resolve(tmp_path), url)
    assert not (tmp_path / "typo").exists()
