"""A search stopped by a signal or by kill -9 is finished by the next run: the interrupted
trial is run again with the same parameters, nothing stays RUNNING, the final test runs."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from helpers import EXE, make_tree, search_spec, signal_when, study_of, trial_runs, write


def _parent(client, experiment: str = "tiny_search") -> str:
    """The study's parent run (role study), found by its tags as the workers find it."""
    exp = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([exp], "tags.`cifarnet.role` = 'study'")[0].info.run_id


def _storage(folder: Path):
    from cifarnet.search.storage import RetryingRDBStorage

    return RetryingRDBStorage(f"sqlite:///{folder / 'mlruns' / 'optuna.db'}",
                              heartbeat_interval=1, grace_period=30)


def _beat(storage, study: optuna.Study, number: int) -> None:
    """A heartbeat for trial `number`, as its live worker sends one."""
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number))


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
    from cifarnet.search.study import retried_from

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
    retry = [t for t in trials if retried_from(t) == interrupted.number]
    assert len(retry) == 1 and retry[0].params == interrupted.params
    runs, df = trial_runs(tmp_path)
    assert "RUNNING" not in set(df["status"])
    first = runs[runs["tags.optuna.trial_number"] == str(interrupted.number)]
    assert first["status"].item() == ("KILLED" if sig == signal.SIGTERM else "FAILED")
    # at most the epoch in progress is lost: a retry of a trial with an epoch done resumes
    # from that epoch's checkpoint, and its run holds every epoch once
    again = runs[runs["tags.optuna.trial_number"] == str(retry[0].number)]
    if interrupted.intermediate_values:
        assert again["tags.cifarnet.resumed_from"].item() == first["run_id"].item()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(again["run_id"].item(), "val_acc")] \
        == [1, 2, 3]
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
    parent = _parent(client)
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

    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=4))
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1", "--no-final"])
    assert r.exit_code == 0, r.output
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    storage = _storage(tmp_path)
    study = optuna.load_study(study_name="search.tiny_search", storage=storage)
    parent = _parent(client)
    experiment = client.get_run(parent).info.experiment_id

    def unnamed_run(number: int) -> str:
        return client.create_run(experiment, tags={
            "cifarnet.role": "trial", "mlflow.parentRunId": parent,
            "optuna.trial_number": str(number)}).info.run_id

    dead_trial, live_trial = study.ask(), study.ask()
    study.tell(dead_trial, state=optuna.trial.TrialState.FAIL)  # failed as stale
    live_trial.set_user_attr("beating", live_trial.number)
    _beat(storage, study, live_trial.number)  # its worker beats on
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

    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=2))
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1", "--no-final"])
    assert r.exit_code == 0, r.output
    storage = _storage(tmp_path)
    study = optuna.load_study(study_name="search.tiny_search", storage=storage)
    elsewhere = study.ask()
    elsewhere.set_user_attr("beating", elsewhere.number)
    _beat(storage, study, elsewhere.number)  # its worker beats on
    r = CliRunner().invoke(main, ["search", str(spec), "--grace", "30"])
    assert r.exit_code == 0, r.output
    assert ("held-out test: not yet; 1 trial(s) still RUNNING (another worker's, or a killed "
            "one's: stale 30 s after its last heartbeat); rerun after that to finish the "
            "study") in r.output


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_run_again(tiny_tree, tmp_path,
                                                                          monkeypatch) -> None:
    """Optuna's gap: a worker killed between `Study.ask` and the trial's first heartbeat
    left the trial RUNNING for ever (Optuna counts only a trial with a heartbeat as stale),
    and the study one trial short. A RUNNING trial that never marked its first heartbeat
    (user attribute `beating`) and started more than --grace s ago is failed by the next
    worker and enqueued again with its parameters; one that did is Optuna's to judge."""
    from click.testing import CliRunner

    from cifarnet.cli.main import main
    from cifarnet.spec.search import load_search_spec
    from cifarnet.search.study import counted_trials, retried_from, run_search
    from cifarnet.workspace import Workspace

    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=3))
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1", "--no-final"])
    assert r.exit_code == 0, r.output
    storage = _storage(tmp_path)
    study = optuna.load_study(study_name="search.tiny_search", storage=storage)
    dead = study.ask()  # its worker killed at once: no heartbeat, ever
    dead.suggest_float("train.lr", 0.01, 0.3, log=True)
    time.sleep(2.5)  # past the grace period
    run_search(load_search_spec(spec), Workspace.resolve(tmp_path), final=False,
               heartbeat_interval=1, grace_period=2)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[dead.number].state.name == "FAIL"
    retry = [t for t in trials.values() if retried_from(t) == dead.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params["train.lr"] == trials[dead.number].params["train.lr"]
    assert len(counted_trials(study)) == 3
    assert "RUNNING" not in {t.state.name for t in trials.values()}
