"""A tracking server that restarts while a grid trains: the grid goes on (MLflow's client
retries its requests with back-off over the outage), every job ends FINISHED exactly once,
nothing stays RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import EXE, write_spec
from pg import free_port


def _serve(folder: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            assert server.poll() is None, "the MLflow server exited"
            assert time.monotonic() < deadline, "the MLflow server did not start in 120 s"
            time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # a crash, not a clean shutdown
    server.wait(timeout=30)


def _epochs_logged(uri: str) -> int:
    import mlflow

    client = mlflow.MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name("tiny")
        if exp is None:
            return 0
        runs = client.search_runs([exp.experiment_id], "tags.`cifarnet.role` = 'child'")
    except Exception:  # the server is busy starting
        return 0
    return max([len(client.get_metric_history(r.info.run_id, "test_acc")) for r in runs]
               or [0])


@pytest.mark.slow
def test_a_tracking_server_restart_mid_grid_loses_nothing(tiny_tree, tmp_path) -> None:
    import mlflow

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _serve(tmp_path, port)
    spec = write_spec(tmp_path, tiny_tree, epochs=4, seeds=[0],
                      factors={"model.residual_add": [True, False]})
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    grid = subprocess.Popen([EXE, "run", str(spec)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while _epochs_logged(uri) < 1:
            assert grid.poll() is None and time.monotonic() < deadline, grid.stdout.read()
            time.sleep(0.3)
        _stop(server)
        time.sleep(4)  # the grid trains on while the server is down
        server = _serve(tmp_path, port)
        out, _ = grid.communicate(timeout=600)
        assert grid.returncode == 0, out
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        assert {r.info.status for r in runs} == {"FINISHED"}
        kids = [r for r in runs if r.data.tags.get("cifarnet.role") == "child"]
        assert sorted(r.data.tags["cifarnet.config_hash"] for r in kids) == sorted(
            {r.data.tags["cifarnet.config_hash"] for r in kids}) and len(kids) == 2
        for r in kids:  # every epoch's metric arrived, the outage's included
            assert [m.step for m in client.get_metric_history(r.info.run_id, "test_acc")] == [
                1, 2, 3, 4]
    finally:
        if grid.poll() is None:
            grid.kill()
        _stop(server)


@pytest.mark.slow
@pytest.mark.postgres
def test_database_connections_dropped_mid_grid_lose_nothing(tiny_tree, tmp_path,
                                                            pg_database) -> None:
    """What a PostgreSQL restart does to connected clients ("terminating connection due to
    administrator command"), done to every connection of the grid's MLflow database five
    times, 1.5 s apart, once the grid trains: it goes on, and each job ends FINISHED once."""
    import mlflow
    import psycopg
    from pg import PG_ADMIN

    tracking = pg_database("mlflow")
    names = [tracking.rsplit("/", 1)[1]]
    spec = write_spec(tmp_path, tiny_tree, epochs=4, seeds=[0],
                      factors={"model.residual_add": [True, False]})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    grid = subprocess.Popen([EXE, "run", str(spec)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dropped = []
    try:
        with psycopg.connect(tracking, autocommit=True) as db:
            deadline = time.monotonic() + 300
            while True:  # the first epoch's metrics are in: the grid trains
                try:
                    if db.execute("SELECT count(*) FROM metrics WHERE key = 'test_acc'"
                                  ).fetchone()[0]:
                        break
                except psycopg.errors.UndefinedTable:
                    pass
                assert grid.poll() is None and time.monotonic() < deadline, grid.stdout.read()
                time.sleep(0.3)
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            for _ in range(5):
                dropped.append(admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = ANY(%s)", (names,)).fetchone()[0])
                time.sleep(1.5)
        out, _ = grid.communicate(timeout=600)
    finally:
        if grid.poll() is None:
            grid.kill()
    assert sum(dropped) > 0
    assert grid.returncode == 0, out
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    kids = [r for r in runs if r.data.tags.get("cifarnet.role") == "child"]
    assert len({r.data.tags["cifarnet.config_hash"] for r in kids}) == len(kids) == 2
