"""Every store call of a grid and a search survives a transient database error (a
connection dropped under it: PostgreSQL restarting; SQLite busy), and two workers writing the
same MLflow row at once (a tag, the shared dataset row) both succeed.

For the first, a fault is injected into every 40th SQL statement of every engine in the
process (MLflow's, Optuna's, ours; DDL and the schema version table spared: start-up has its
own retries), so any call that is not retried ends a run CRASHED or a command with exit 1."""

from __future__ import annotations

import itertools
import threading
import traceback
import uuid

import optuna
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from helpers import (
    children,
    runs_df,
    search_spec,
    study_of,
    trial_runs,
    write,
    write_spec,
)

from cifarnet.cli.main import main
from cifarnet.tracking import retry

TERMINATED = "terminating connection due to administrator command"  # PostgreSQL's words


class _Dropped(Exception):
    """What psycopg raises for a connection the server terminated (its message)."""


class Faults:
    """Once armed, every `period`-th data statement in this process fails as a dropped
    connection does; `failed` lists the statements failed."""

    def __init__(self, period: int = 40) -> None:
        self.period, self.armed, self.failed = period, False, []
        self._count, self._lock = itertools.count(1), threading.Lock()

    def arm(self, folder) -> None:
        """Create the stores of the workspace at `folder` first: the fault is one met by a
        long-running command, not its start-up (which has retries of its own)."""
        from cifarnet.search.storage import open_storage
        from cifarnet.tracking.store import setup_mlflow
        from cifarnet.workspace import Workspace

        workspace = Workspace.resolve(folder)
        setup_mlflow(workspace)
        open_storage(workspace).engine.dispose()
        self.armed = True

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if not self.armed or statement.lstrip().upper().startswith(("CREATE", "PRAGMA")):
            return
        with self._lock:
            n = next(self._count)
        if n % self.period == 0:
            self.failed.append(statement)
            raise sa.exc.OperationalError(statement, parameters, _Dropped(TERMINATED))


@pytest.fixture(params=[23, 31, 40, 47])
def flaky_database(request, monkeypatch):
    """Faults injected into every n-th statement, for four n (each fails other calls)."""
    monkeypatch.setattr(retry, "PAUSE_S", 0.01)
    faults = Faults(request.param)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", faults)
    try:
        yield faults
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", faults)


def _failure(result) -> str:
    return result.output[-2000:] + "".join(traceback.format_exception(*result.exc_info))[-3000:]


@pytest.mark.slow
def test_a_grid_loses_nothing_to_dropped_connections(tiny_tree, tmp_path, monkeypatch,
                                                       flaky_database) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, epochs=2)
    flaky_database.arm(tmp_path)
    r = CliRunner().invoke(main, ["run", str(spec)])
    flaky_database.armed = False  # the checks below read the store as it is
    assert r.exit_code == 0, _failure(r)
    assert len(flaky_database.failed) > 5  # the fault was met, many times
    df = runs_df(tmp_path)
    kids, parent = children(df), df[df["tags.cifarnet.role"] == "parent"]
    assert sorted(kids["status"]) == ["FINISHED"] * 4 and parent["status"].item() == "FINISHED"
    assert kids["tags.cifarnet.config_hash"].nunique() == 4

    import mlflow
    client = mlflow.MlflowClient()
    for run_id in kids["run_id"]:  # every epoch logged, once
        assert [m.step for m in client.get_metric_history(run_id, "test_acc")] == [1, 2]


@pytest.mark.slow
def test_a_search_loses_nothing_to_dropped_connections(tiny_tree, tmp_path, monkeypatch,
                                                         flaky_database) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=3))
    flaky_database.arm(tmp_path)
    r = CliRunner().invoke(main, ["search", str(spec), "--no-final"])
    flaky_database.armed = False
    assert r.exit_code == 0, _failure(r)
    assert len(flaky_database.failed) > 5
    study = study_of(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    trials, df = trial_runs(tmp_path)
    assert sorted(trials["status"]) == ["FINISHED"] * 3
    assert set(trials["tags.optuna.state"]) == {"COMPLETE"}
    for t in study.trials:  # MLflow and Optuna agree trial by trial
        row = trials[trials["run_id"] == t.user_attrs["mlflow_run_id"]]
        assert row["metrics.val_acc"].item() == pytest.approx(t.value)


def test_every_public_storage_method_and_sampler_call_is_retried() -> None:
    """The Optuna storage's public methods, and the calls through which Optuna reads
    trials on a search's behalf (its sampler's hooks), are retried on a transient error;
    what else Optuna's loop meets ends the current `optimize`, and the search retries the
    trial it cut off and goes on (`search.study.fill_study`)."""
    import inspect

    from cifarnet.search.storage import RetryingRDBStorage
    from cifarnet.search.study import SlotSeededSampler

    public = {n for n, _ in inspect.getmembers(optuna.storages.RDBStorage, inspect.isfunction)
              if not n.startswith("_")}
    assert "record_heartbeat" in public and "set_trial_state_values" in public
    for name in public:
        assert hasattr(getattr(RetryingRDBStorage, name), "__wrapped__"), name
    calls = []
    sampler = SlotSeededSampler({"type": "random"})

    class Flaky:
        def sample_independent(self, *args):
            calls.append(args)
            if len(calls) == 1:
                raise sa.exc.OperationalError("SELECT", {}, _Dropped(TERMINATED))
            return 0.5

    sampler.inner = Flaky()
    retry.PAUSE_S, pause = 0.01, retry.PAUSE_S
    try:
        assert sampler.sample_independent(None, None, "x", None) == 0.5
    finally:
        retry.PAUSE_S = pause
    assert len(calls) == 2


@pytest.mark.postgres
def test_two_workers_writing_one_mlflow_row_at_once_both_succeed(pg_database) -> None:
    """MLflow's SQL store writes a tag, an experiment tag and a dataset row by reading,
    then inserting; six threads writing the same one at once (as workers joining one grid's
    parent run, or starting their first runs, do) made all but one fail with
    "duplicate key value violates unique constraint" (measured: 33 of 60 tag writes, 41 of
    60 dataset rows). Through our client every write succeeds, and each row is there once."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from cifarnet.tracking.client import mlflow_client

    uri = pg_database("mlflow")
    client = mlflow_client(uri)
    exp = client.create_experiment("race")
    errors: list[str] = []
    for round_ in range(5):
        runs = [client.create_run(exp).info.run_id for _ in range(6)]
        shared = runs[0]
        data = Dataset(name="d", digest=uuid.uuid4().hex[:12], source_type="local", source="/x")
        start = threading.Barrier(6)

        def write(run_id: str) -> None:
            mine = mlflow_client(uri)
            start.wait()
            for call in (lambda: mine.set_tag(shared, f"k{round_}", "v"),
                         lambda: mine.set_experiment_tag(exp, f"k{round_}", "v"),
                         lambda: mine.log_inputs(run_id, datasets=[
                             DatasetInput(data, [InputTag("mlflow.data.context", "train")])])):
                try:
                    call()
                except Exception as exc:
                    errors.append(str(exc).splitlines()[0][:120])

        threads = [threading.Thread(target=write, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.get_run(shared).data.tags[f"k{round_}"] == "v"
        for run_id in runs:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert [i.dataset.digest for i in inputs] == [data.digest]
    assert errors == []
    assert {f"k{i}" for i in range(5)} <= set(client.get_experiment(exp).tags)
