"""One grid on every executor (`cifarnet.execute.EXECUTORS`): the same runs, the same
identities, the same metrics; kills of a launcher or a worker lose nothing and run nothing
twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from helpers import EXE, children, make_tree, runs_df, signal_when, write_spec

from cifarnet.execute.base import ExecutorKind

EIGHT = {"model.residual_add": [True, False], "model.dilation": [1, 2]}
ARGS = {ExecutorKind.LOCAL: [], ExecutorKind.RAY: [],
        ExecutorKind.SLURM: ["--slurm-cluster", "local"]}


def _run(folder: Path, spec: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"}
    return subprocess.Popen([EXE, "run", str(spec), *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finished(folder: Path) -> dict[str, tuple[float, float]]:
    kids = children(runs_df(folder))
    assert set(kids["status"]) == {"FINISHED"}, kids["status"].tolist()
    assert kids["tags.cifarnet.config_hash"].is_unique
    return {h: (round(a, 6), round(loss, 6)) for h, a, loss in
            zip(kids["tags.cifarnet.config_hash"], kids["metrics.test_acc"],
                kids["metrics.train_loss"])}


@pytest.mark.slow
def test_one_grid_gives_the_same_runs_on_every_executor(tiny_tree, tmp_path) -> None:
    found = {}
    for kind in ExecutorKind:
        folder = tmp_path / kind.value
        folder.mkdir()
        spec = write_spec(folder, tiny_tree, factors=EIGHT, seeds=[0, 1])
        proc = _run(folder, spec, "--executor", kind.value, "--workers", "2", *ARGS[kind])
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out
        assert "8 run(s) finished here, 0 already done, 0 failed" in out
        found[kind] = _finished(folder)
    assert len(found[ExecutorKind.LOCAL]) == 8
    assert found[ExecutorKind.RAY] == found[ExecutorKind.LOCAL]
    assert found[ExecutorKind.SLURM] == found[ExecutorKind.LOCAL]


def _statuses(folder: Path) -> list[str]:
    try:
        return list(children(runs_df(folder))["status"])
    except Exception:  # the store is not made yet
        return []


@pytest.mark.slow
def test_a_killed_launcher_leaves_slurm_jobs_that_the_rerun_does_not_submit_again(
        tmp_path) -> None:
    tree = make_tree(tmp_path / "data", per_class_train=100, per_class_test=10)
    spec = write_spec(tmp_path, tree, epochs=3, seeds=[0])
    proc = _run(tmp_path, spec, "--executor", "slurm", "--slurm-cluster", "local",
                "--workers", "2", "--heartbeat", "1", "--grace", "7")
    signal_when(proc, lambda: _statuses(tmp_path).count("RUNNING") == 2, signal.SIGKILL)
    proc.wait()
    rerun = _run(tmp_path, spec, "--executor", "slurm", "--slurm-cluster", "local",
                 "--workers", "2", "--heartbeat", "1", "--grace", "7")
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert "0 run(s) finished here, 2 already done" in out  # the jobs it found alive ended
    submitted = list((tmp_path / "runs" / "submitit").glob("*_submitted.pkl"))
    assert len(submitted) == 2  # the first launch's two; the rerun submitted none
    kids = children(runs_df(tmp_path))
    assert len(kids) == 2 and set(kids["status"]) == {"FINISHED"}


@pytest.mark.slow
def test_a_ray_worker_killed_mid_run_is_retried_and_resumes_in_the_same_run(tmp_path) -> None:
    tree = make_tree(tmp_path / "data", per_class_train=100, per_class_test=10)
    spec = write_spec(tmp_path, tree, epochs=4, seeds=[0], factors={"model.dilation": [2]})
    proc = _run(tmp_path, spec, "--executor", "ray", "--heartbeat", "1", "--grace", "7")

    def epochs_logged() -> int:
        kids = children(runs_df(tmp_path)) if _statuses(tmp_path) else None
        if kids is None or "metrics.train_loss" not in kids:
            return 0
        run_id = kids["run_id"].iloc[0]
        return len(mlflow.MlflowClient(
            f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_metric_history(
            run_id, "train_loss"))

    deadline = time.monotonic() + 240
    while epochs_logged() < 1:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
        time.sleep(0.3)
    import psutil

    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "ray::run_job" in " ".join(p.cmdline()) or "ray::" in p.name()]
    busy = [p for p in workers if "run_job" in " ".join(p.cmdline())]
    assert busy, [p.cmdline() for p in workers]
    busy[0].kill()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    kids = children(runs_df(tmp_path))
    assert len(kids) == 1 and kids["status"].item() == "FINISHED"
    assert kids["tags.cifarnet.resumed_from"].item() == kids["run_id"].item()
    history = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
                                  ).get_metric_history(kids["run_id"].item(), "train_loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_postgres_grid_of_60_runs_survives_5_kills_at_random_moments(tiny_tree, tmp_path,
                                                                       pg_database) -> None:
    """60 tiny runs (2 worker processes) on PostgreSQL; the launcher killed with -9 five
    times at random moments, each time started again at once; then one launch to the end.
    Every job ends FINISHED exactly once and no run is left RUNNING."""
    import random

    url = pg_database("sixty")
    spec = write_spec(tmp_path, tiny_tree, seeds=list(range(6)),
                      factors={"train.lr": [0.01 * (i + 1) for i in range(10)]})
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
    args = [EXE, "run", str(spec), "--workers", "2", "--heartbeat", "1", "--grace", "7"]
    rng, kills = random.Random(60), 0
    for _ in range(5):
        # no pipe: the killed launcher's workers (which end with it) would hold it open
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 12.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(timeout=60)
    last = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert kills >= 3, kills
    mlflow.set_tracking_uri(url)
    kids = children(mlflow.search_runs(experiment_names=["tiny"]))
    assert len(kids) == 60, len(kids)  # one run per job, kept across attempts
    assert set(kids["status"]) == {"FINISHED"}
    assert kids["tags.cifarnet.config_hash"].is_unique


def test_a_job_whose_identity_differs_on_its_worker_is_refused_not_trained(tiny_tree,
                                                                         tmp_path) -> None:
    """The launcher computes a job's config hash on its machine (`train.precision: auto`
    resolves there); a worker that computes another one (its CPU resolves auto otherwise)
    refuses the job instead of training a run under an identity it does not have."""
    from dataclasses import replace

    from helpers import tiny_config

    from cifarnet.ablation.jobs import JobRequest, JobStatus, run_job
    from cifarnet.workspace import Workspace

    cfg = tiny_config(tiny_tree, tmp_path)
    workspace = Workspace.resolve(tmp_path, {})
    req = JobRequest(workspace, "0", "no-such-run", "launch", cfg.to_dict(), cfg.hash(),
                     "fingerprint", "cell seed=0")
    other = replace(req, config_hash="0" * 64)  # what the launcher's machine computed
    result = run_job(other)
    assert result.status is JobStatus.REFUSED
    assert f"config hash {cfg.hash()} on this worker, {'0' * 64} at the launcher" in (
        result.reason)
    assert not (tmp_path / "mlruns").exists()  # refused before the store is opened
