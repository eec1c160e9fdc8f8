"""A grid job interrupted mid-run resumes from its last completed epoch, in its own MLflow
run, and ends with the metrics of an uninterrupted run (CPU: bit-reproducible)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (EXE, children, make_tree, running_epochs, runs_df, signal_when,
                     write_spec)


def _start(spec: Path, folder: Path) -> subprocess.Popen:
    return subprocess.Popen([EXE, "run", str(spec), "--heartbeat", "1", "--grace", "7"],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _final(folder: Path):
    kids = children(runs_df(folder))
    return kids[kids["status"] == "FINISHED"].set_index("tags.cifarnet.config_hash")


@pytest.fixture(scope="module")
def resume_tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("resume") / "data", per_class_train=100,
                     per_class_test=10)


@pytest.fixture(scope="module")
def uninterrupted(resume_tree, tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    spec = write_spec(folder, resume_tree, epochs=3, seeds=[0, 1],
                      factors={"model.residual_add": [True]})
    proc = _start(spec, folder)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return _final(folder)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_interrupted_job_resumes_with_identical_metrics(resume_tree, uninterrupted, tmp_path,
                                                        sig) -> None:
    spec = write_spec(tmp_path, resume_tree, epochs=3, seeds=[0],
                      factors={"model.residual_add": [True]})
    proc = _start(spec, tmp_path)
    # epoch 1 is done and its checkpoint uploaded, and an epoch is left for the signal to meet
    signal_when(proc, lambda: (running_epochs(tmp_path) or 0) in (1, 2), sig)
    proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        time.sleep(7.5)  # past the grace period: the dead worker's job is stale
    rerun = _start(spec, tmp_path)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    kids = children(runs_df(tmp_path))
    assert "RUNNING" not in set(kids["status"])
    final = _final(tmp_path)
    assert len(final) == 1 and len(kids) == 1  # one MLflow run for the job, FINISHED once
    resumed = final.iloc[0]
    assert resumed["tags.cifarnet.resumed_from"] == resumed["run_id"]  # resumed in place
    # the run continued after its last uploaded epoch, not from epoch 1: every epoch is
    # logged once (a redone epoch would log its step twice)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(resumed["run_id"], "epoch_time_s")]
    assert sorted(steps) == [1, 2, 3]
    assert "1 run(s) finished here" in out
    for metric in ("metrics.test_acc", "metrics.train_loss", "metrics.test_loss"):
        assert resumed[metric] == uninterrupted.loc[resumed.name, metric], metric


@pytest.mark.slow
def test_kills_at_random_moments_lose_nothing(resume_tree, uninterrupted, tmp_path) -> None:
    """Ten SIGTERMs and kill -9s at random moments of a 2-job grid (start-up, training,
    checkpoint upload, the end of a run), each followed at once by a new worker; then one
    worker runs to the end. Every job ends FINISHED exactly once, no run is left RUNNING,
    and the final metrics are those of an uninterrupted grid (CPU: bit-reproducible)."""
    spec = write_spec(tmp_path, resume_tree, epochs=3, seeds=[0, 1],
                      factors={"model.residual_add": [True]})
    rng = random.Random(20261129)
    kills = []
    for _ in range(10):
        proc = _start(spec, tmp_path)
        time.sleep(rng.uniform(1.0, 9.0))
        if proc.poll() is not None:  # the grid ended before this kill
            break
        sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
        kills.append(sig.name)
        assert proc.returncode in (0, 128 + sig, -sig), out
    assert len(kills) >= 5, kills
    last = _start(spec, tmp_path)
    out, _ = last.communicate(timeout=600)
    assert last.returncode == 0, out
    kids = children(runs_df(tmp_path))
    assert "RUNNING" not in set(kids["status"]), kids[["run_id", "status"]]
    finished = kids[kids["status"] == "FINISHED"]
    assert sorted(finished["tags.cifarnet.config_hash"].value_counts()) == [1, 1]
    final = _final(tmp_path)
    assert sorted(final.index) == sorted(uninterrupted.index)
    for metric in ("metrics.test_acc", "metrics.train_loss", "metrics.test_loss"):
        for h in final.index:
            assert final.loc[h, metric] == uninterrupted.loc[h, metric], (metric, h, kills)
