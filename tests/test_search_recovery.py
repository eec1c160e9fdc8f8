"""A search stopped by a signal or by kill -9 is finished by the next run: the interrupted
trial is run again with the same parameters, nothing stays RUNNING, the final test runs."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from helpers import EXE, make_tree, search_spec, signal_when, study_of, trial_runs, write


def _start(spec: Path, folder: Path) -> subprocess.Popen:
    return subprocess.Popen([EXE, "search", str(spec), "--heartbeat", "1", "--grace", "7"],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _first_trial_epochs(folder: Path) -> int | None:
    """Epochs the study's first trial has reported while training (RUNNING, its parameters
    drawn and its MLflow run started); None otherwise. CI signalled a trial that was still
    drawing its parameters: its retry then drew the rest, unlike the parameters compared."""
    try:
        trials = study_of(folder).trials
    except Exception:  # the study does not exist yet, or its store is busy
        return None
    if not trials or trials[0].state.name != "RUNNING" \
            or "mlflow_run_id" not in trials[0].user_attrs:
        return None
    return len(trials[0].intermediate_values)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_interrupted_search_is_finished_by_the_rerun(tmp_path_factory, tmp_path, sig) -> None:
    tree = make_tree(tmp_path_factory.mktemp("srch") / "data", per_class_train=100,
                     per_class_test=10)
    spec = write(tmp_path, search_spec(tree, tmp_path, n_trials=2,
                                       base={"data": {"path": str(tree), "num_workers": 0,
                                                      "val_size": 40},
                                             "train": {"epochs": 3, "batch_size": 32,
                                                       "device": "cpu",
                                                       "out_dir": str(tmp_path / "runs")}}))
    proc = _start(spec, tmp_path)
    # the first trial is running with an epoch to go (its pruning reports are its epochs)
    signal_when(proc, lambda: _first_trial_epochs(tmp_path) in (0, 1), sig)
    out, _ = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert out.strip().splitlines()[-1].startswith("interrupted:")
    else:
        time.sleep(7.5)  # past the grace period
    interrupted = study_of(tmp_path).trials[0]

    rerun = _start(spec, tmp_path)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    trials = study_of(tmp_path).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == interrupted.number]
    assert len(retry) == 1 and retry[0].params == interrupted.params
    runs, df = trial_runs(tmp_path)
    assert "RUNNING" not in set(df["status"])
    first = runs[runs["tags.optuna.trial_number"] == str(interrupted.number)]
    assert first["status"].item() == ("KILLED" if sig == signal.SIGTERM else "FAILED")
    assert len(df[df["tags.cifarnet.role"] == "final"]) == 1
    assert "held-out test" in out


def test_a_held_out_test_killed_mid_training_does_not_stay_running(tiny_tree, tmp_path,
                                                                    monkeypatch) -> None:
    """kill -9 during the final retraining left its run RUNNING for good: reruns made a new
    final run and never ended the old one. The process that makes the test ends it FAILED
    (stale), as a grid worker ends the runs of a job it claimed."""
    import mlflow
    from click.testing import CliRunner

    from cifarnet.cli.main import main

    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=2))
    r = CliRunner().invoke(main, ["search", str(spec), "--no-final"])
    assert r.exit_code == 0, r.output
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent = study_of(tmp_path).user_attrs["mlflow_parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id
    dead = client.create_run(experiment, tags={"cifarnet.role": "final",
                                               "mlflow.parentRunId": parent}).info.run_id
    r = CliRunner().invoke(main, ["search", str(spec)])  # the study is complete: the test
    assert r.exit_code == 0, r.output
    _, df = trial_runs(tmp_path)
    finals = df[df["tags.cifarnet.role"] == "final"].set_index("run_id")
    assert finals.loc[dead, "status"] == "FAILED"
    assert finals.loc[dead, "tags.cifarnet.status"] == "stale"
    assert sorted(finals["status"]) == ["FAILED", "FINISHED"]


def test_a_trial_run_its_worker_never_named_is_ended_once_its_trial_ended(tiny_tree, tmp_path,
                                                                          monkeypatch) -> None:
    """kill -9 between starting a trial's MLflow run and naming it on the trial
    (`mlflow_run_id`) left the run RUNNING for good: stale recovery ended only the runs its
    trials named. A RUNNING trial run under the study's parent whose trial has ended is now
    ended FAILED (stale); one whose trial is still RUNNING (a live worker) is left alone."""
    import mlflow
    from click.testing import CliRunner

    from cifarnet.cli.main import main
    from cifarnet.queue.jobs import make_storage

    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=4))
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1", "--no-final"])
    assert r.exit_code == 0, r.output
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    study = optuna.load_study(study_name="search.tiny_search", storage=make_storage(
        f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"))
    parent = study.user_attrs["mlflow_parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id

    def unnamed_run(number: int) -> str:
        return client.create_run(experiment, tags={
            "cifarnet.role": "trial", "mlflow.parentRunId": parent,
            "optuna.trial_number": str(number)}).info.run_id

    dead_trial, live_trial = study.ask(), study.ask()
    study.tell(dead_trial, state=optuna.trial.TrialState.FAIL)  # failed as stale
    study._storage.record_heartbeat(live_trial._trial_id)  # its worker beats on
    dead, live = unnamed_run(dead_trial.number), unnamed_run(live_trial.number)
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1", "--no-final"])
    assert r.exit_code == 0, r.output
    assert client.get_run(dead).info.status == "FAILED"
    assert client.get_run(dead).data.tags["cifarnet.status"] == "stale"
    assert client.get_run(live).info.status == "RUNNING"


def test_a_study_ending_with_a_trial_still_running_says_so(tiny_tree, tmp_path,
                                                           monkeypatch) -> None:
    """A rerun whose last trial is RUNNING elsewhere (another worker's, or a killed worker's
    not stale yet) ended with exit 0 and no word on the held-out test (breaker)."""
    from click.testing import CliRunner

    from cifarnet.cli.main import main
    from cifarnet.queue.jobs import make_storage

    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=2))
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1", "--no-final"])
    assert r.exit_code == 0, r.output
    study = optuna.load_study(study_name="search.tiny_search", storage=make_storage(
        f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"))
    elsewhere = study.ask()
    study._storage.record_heartbeat(elsewhere._trial_id)  # its worker beats on
    r = CliRunner().invoke(main, ["search", str(spec), "--grace", "30"])
    assert r.exit_code == 0, r.output
    assert ("held-out test: not yet; 1 trial(s) still RUNNING (another worker's, or a killed "
            "one's: stale 30 s after its last heartbeat); rerun after that to finish the "
            "study") in r.output
