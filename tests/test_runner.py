"""The ablation runner end to end on tiny real runs, checked through mlflow.search_runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import (EXE, children, make_tree, running_epochs, runs_df, signal_when,
                     write_spec)
from pg import free_port

from cifarnet.analysis.stats import Outcome
from cifarnet.spec.ablation import load_spec
from cifarnet.cli.main import main
from cifarnet.config.schema import DataConfig
from cifarnet.data.datasets import load_data
from cifarnet.data.loaders import make_loader
from cifarnet.model.cifarnet import CifarNet, paired_init


@pytest.mark.slow
def test_tiny_grid_is_tracked_and_a_rerun_adds_nothing(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # MLflow's own setting. Our default samples every 5 s, and MLflow drops the sample in
    # progress when a run ends, so these sub-second runs need a short interval.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    spec = write_spec(tmp_path, tiny_tree)
    r = CliRunner().invoke(main, ["run", str(spec)])
    assert r.exit_code == 0, r.output
    df = runs_df(tmp_path)
    kids, parent = children(df), df[df["tags.cifarnet.role"] == "parent"]
    assert len(kids) == 4 and len(parent) == 1
    assert set(kids["status"]) == {"FINISHED"} and parent["status"].item() == "FINISHED"
    assert set(kids["tags.mlflow.parentRunId"]) == {parent["run_id"].item()}
    assert set(kids["tags.cifarnet.cell"]) == {"residual_add=true", "residual_add=false"}
    assert sorted(kids["tags.cifarnet.seed"]) == ["0", "0", "1", "1"]
    assert kids["tags.cifarnet.config_hash"].nunique() == 4
    assert set(kids["params.model.residual_add"]) == {"True", "False"}
    assert set(kids["params.arch.params"]) == {"153104"}
    assert set(kids["params.arch.receptive_field"]) == {"83"}
    assert kids["metrics.test_acc"].between(0, 1).all()
    assert "metrics.system/cpu_utilization_percentage" in df.columns
    # what MLflow's UI shows: the verdict and its interval on the parent run, the spec's
    # description on the experiment, runs grouped by cell within grid and budget
    p = parent.iloc[0]
    assert p["tags.cifarnet.verdict.H"] in set(map(str, Outcome))
    assert p["metrics.H.n"] == 2 and p["metrics.H.ci_low"] <= p["metrics.H.mean_diff"]
    grid = p["tags.cifarnet.grid"][:6]
    assert set(kids["tags.cifarnet.group"]) == {f"residual_add={v} | 1ep g{grid}"
                                                for v in ("true", "false")}

    import mlflow
    client = mlflow.MlflowClient()
    assert client.get_experiment_by_name("tiny").tags["mlflow.note.content"] == (
        "a tiny grid for tests")
    run_id = kids["run_id"].iloc[0]
    history = client.get_metric_history(run_id, "test_acc")
    assert [m.step for m in history] == [1]
    assert {a.path for a in client.list_artifacts(run_id)} >= {"config.yaml", "summary.txt"}

    again = CliRunner().invoke(main, ["run", str(spec)])
    assert again.exit_code == 0, again.output
    assert "0 run(s) finished here, 4 already done" in again.output
    assert len(children(runs_df(tmp_path))) == 4


def test_paired_design_same_batches_and_shared_weights(tiny_tree, tmp_path) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_tree))
    a, b = [j for j in spec.jobs() if j.seed == 0]
    assert a.cell.label != b.cell.label and a.config.train.seed == b.config.train.seed
    data = load_data(DataConfig(path=str(tiny_tree)))

    def first_batch(cfg):
        loader = make_loader(data, cfg, torch.device("cpu"))
        return next(iter(loader.epoch(1)))

    (xa, ya), (xb, yb) = first_batch(a.config), first_batch(b.config)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ma, mb = CifarNet(a.config.model), CifarNet(b.config.model)
    paired_init(ma, a.config.train.seed)
    paired_init(mb, b.config.train.seed)
    assert torch.equal(ma.convblock3b[0].weight, mb.convblock3b[0].weight)
    assert torch.equal(ma.convblockf[0].weight, mb.convblockf[0].weight)


@pytest.mark.slow
def test_diverging_cell_fails_while_others_finish(tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, epochs=2, factors={"train.lr": [0.05, 100.0]},
                      seeds=[0])
    r = CliRunner().invoke(main, ["run", str(spec)])
    assert r.exit_code == 1
    assert "1 run(s) failed: lr=100.0 seed=0 (diverged)" in r.stderr
    kids = children(runs_df(tmp_path)).set_index("tags.cifarnet.cell")
    assert kids.loc["lr=0.05", "status"] == "FINISHED"
    assert kids.loc["lr=100.0", "status"] == "FAILED"
    assert "non-finite or above" in kids.loc["lr=100.0", "tags.cifarnet.failure_reason"]


def _child_statuses(folder: Path) -> list[str]:
    db = folder / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return [s for (s,) in con.execute(
                "select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'cifarnet.role' and t.value = 'child'")]
    except sqlite3.OperationalError:
        return []


def _start(spec: Path, folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, "run", str(spec), "--heartbeat", "1", "--grace", "7", *extra],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for(pred, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.fixture()
def slow_tree(tmp_path_factory) -> Path:
    """More images, so a run lasts long enough to be interrupted."""
    return make_tree(tmp_path_factory.mktemp("slow") / "data", per_class_train=100,
                     per_class_test=10)


@pytest.mark.slow
def test_kill_9_then_rerun_completes_without_duplicates(slow_tree, tmp_path) -> None:
    spec = write_spec(tmp_path, slow_tree, epochs=3)
    proc = _start(spec, tmp_path)
    signal_when(proc, lambda: {"FINISHED", "RUNNING"} <= set(_child_statuses(tmp_path)),
                signal.SIGKILL)
    proc.wait()
    assert "RUNNING" in _child_statuses(tmp_path)
    time.sleep(7.5)  # past the grace period (2 x heartbeat + 5 s): the job is stale
    rerun = _start(spec, tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    kids = children(runs_df(tmp_path))
    finished = kids[kids["status"] == "FINISHED"]
    assert finished["tags.cifarnet.config_hash"].nunique() == 4 and len(finished) == 4
    assert len(kids) == 4  # one MLflow run per job: the killed one resumed in place
    # a resume (the killed run had uploaded a checkpoint) continued that same run
    tags = kids.get("tags.cifarnet.resumed_from", kids["run_id"]).fillna(kids["run_id"])
    assert list(tags) == list(kids["run_id"])
    assert "RUNNING" not in set(kids["status"])


@pytest.mark.slow
def test_sigterm_ends_the_run_killed(slow_tree, tmp_path) -> None:
    spec = write_spec(tmp_path, slow_tree, epochs=3, seeds=[0])
    proc = _start(spec, tmp_path)
    # a child is running with at least one whole epoch to go: the signal meets a batch
    signal_when(proc, lambda: "RUNNING" in _child_statuses(tmp_path)
                and (running_epochs(tmp_path) or 0) < 2, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out  # 143
    assert "KILLED" in _child_statuses(tmp_path)
    parent = runs_df(tmp_path).query("`tags.cifarnet.role` == 'parent'")
    assert parent["status"].item() == "KILLED"


@pytest.mark.slow
@pytest.mark.postgres
def test_two_launchers_on_postgres_run_each_job_once(tiny_tree, tmp_path, pg_database) -> None:
    """Two launchers of one grid at once on a fresh PostgreSQL store: one runs the grid (with
    3 worker processes), the other is refused in one line naming the live launcher; each job
    FINISHED once."""
    mlflow_url = pg_database("mlflow")
    spec = write_spec(tmp_path, tiny_tree, seeds=[0, 1, 2])
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url}
    launchers = [subprocess.Popen([EXE, "run", str(spec), "--workers", "3"], cwd=tmp_path,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in launchers]
    codes = sorted(w.returncode for w in launchers)
    assert codes == [0, 2], outputs
    refused = outputs[[w.returncode for w in launchers].index(2)]
    assert "another launcher is running this grid" in refused
    assert len(refused.strip().splitlines()) == 1, refused

    import mlflow

    mlflow.set_tracking_uri(mlflow_url)
    kids = children(mlflow.search_runs(experiment_names=["tiny"]))
    assert len(kids) == 6 and set(kids["status"]) == {"FINISHED"}
    assert kids["tags.cifarnet.config_hash"].nunique() == 6


@pytest.mark.slow
@pytest.mark.postgres
def test_tracking_server_topology(tiny_tree, tmp_path, pg_database) -> None:
    """The docker-compose topology without Docker: mlflow server on PostgreSQL."""
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg_database("server"),
         "--artifacts-destination", str(tmp_path / "served-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/health").status == 200
            except OSError:
                return False
        _wait_for(healthy, timeout=90)
        uri = f"http://127.0.0.1:{port}"
        spec = write_spec(tmp_path, tiny_tree, seeds=[0], store=False)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        done = subprocess.run([EXE, "run", str(spec)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        import mlflow
        mlflow.set_tracking_uri(uri)
        kids = children(mlflow.search_runs(experiment_names=["tiny"]))
        assert len(kids) == 2 and set(kids["status"]) == {"FINISHED"}
        arts = mlflow.MlflowClient().list_artifacts(kids["run_id"].iloc[0])
        assert {a.path for a in arts} >= {"config.yaml", "summary.txt"}
        assert any((tmp_path / "served-artifacts").rglob("config.yaml"))
        assert not (tmp_path / "mlruns" / "mlflow.db").exists()
    finally:  # the whole group: uvicorn and MLflow's job consumers too
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
