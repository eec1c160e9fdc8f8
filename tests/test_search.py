"""Optuna searches: validation, a tiny real search in Optuna and MLflow, pruning, resume,
failures, and two workers sharing one PostgreSQL study."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import optuna
import pytest
from click.testing import CliRunner
from helpers import EXE, REPO, search_spec, study_of, trial_runs, write

from cifarnet.spec.common import SpecError
from cifarnet.cli.main import main
from cifarnet.spec.search import load_search_spec, parse_search_spec
from cifarnet.search.study import report_epoch


@pytest.mark.parametrize(("change", "key"), [
    ({"colour": 1}, "colour"),
    ({"space": {"train.lrate": {"type": "float", "low": 0.1, "high": 1}}}, "space.train.lrate"),
    ({"space": {"train.lr": {"type": "float", "low": 0.5, "high": 0.1}}}, "space.train.lr"),
    ({"space": {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
     "space.train.lr.low"),
    ({"space": {"train.lr": {"type": "gaussian"}}}, "space.train.lr.type"),
    ({"space": {"model.depthwise": {"type": "categorical", "choices": [True, "no"]}}},
     "space.model.depthwise.choices"),
    ({"objective": {"metric": "test_acc", "direction": "maximize"}}, "objective.metric"),
    ({"objective": {"metric": "val_acc", "direction": "up"}}, "objective.direction"),
    ({"n_trials": 0}, "n_trials"),
    ({"pruner": {"type": "median", "patience": 3}}, "pruner.patience"),
])
def test_validation_names_the_key(tiny_tree, tmp_path, change, key) -> None:
    with pytest.raises(SpecError) as err:
        parse_search_spec(search_spec(tiny_tree, tmp_path, **change))
    assert str(err.value).startswith(key), str(err.value)


def test_validation_split_is_required(tiny_tree, tmp_path) -> None:
    spec = search_spec(tiny_tree, tmp_path)
    spec["base"]["data"]["val_size"] = 0
    with pytest.raises(SpecError, match="^base.data.val_size"):
        parse_search_spec(spec)


def test_multi_objective_cannot_prune(tiny_tree, tmp_path) -> None:
    spec = search_spec(tiny_tree, tmp_path, objectives=[
        {"metric": "val_acc", "direction": "maximize"},
        {"metric": "params", "direction": "minimize"}], pruner={"type": "median"})
    del spec["objective"]
    with pytest.raises(SpecError, match="^pruner"):
        parse_search_spec(spec)


def test_cli_bad_spec_exits_2_and_writes_nothing(tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = search_spec(tiny_tree, tmp_path, objective={"metric": "test_acc",
                                                      "direction": "maximize"})
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, bad))])
    assert r.exit_code == 2 and r.stderr.startswith("error: objective.metric")
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, search_spec(tiny_tree, tmp_path))),
                                  "--set", "train.lr=0.1"])
    assert r.exit_code == 2 and "train.lr" in r.stderr
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "searches").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_search_specs_are_valid(path: Path) -> None:
    spec = load_search_spec(path)
    assert spec.base_config().data.val_size > 0


@pytest.mark.slow
def test_tiny_search_is_in_optuna_and_mlflow_and_resumes(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path))
    r = CliRunner().invoke(main, ["search", str(spec)])
    assert r.exit_code == 0, r.output
    study = study_of(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    trials, df = trial_runs(tmp_path)
    assert sorted(trials["tags.optuna.trial_number"].astype(int)) == [0, 1, 2]
    assert set(trials["tags.optuna.state"]) == {"COMPLETE"}
    by_number = trials.set_index(trials["tags.optuna.trial_number"].astype(int))
    for t in study.trials:
        assert float(by_number.loc[t.number, "params.train.lr"]) == pytest.approx(
            t.params["train.lr"])
        assert by_number.loc[t.number, "metrics.val_acc"] == pytest.approx(t.value)
    final = df[df["tags.cifarnet.role"] == "final"]
    assert len(final) == 1 and final["params.data.val_size"].item() == "0"
    assert "held-out test" in r.output

    again = CliRunner().invoke(main, ["search", str(spec)])
    assert again.exit_code == 0 and len(study_of(tmp_path).trials) == 3  # study is full
    more = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "2"])
    assert more.exit_code == 0 and len(study_of(tmp_path).trials) == 5
    assert len(trial_runs(tmp_path)[0]) == 5

    rep = CliRunner().invoke(main, ["search-report", "tiny_search", "--out", "rep"])
    assert rep.exit_code == 0, rep.output
    for name in ("history.png", "parallel_coordinate.png", "search.md"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert "optuna-dashboard sqlite:///" in rep.output


@pytest.mark.slow
def test_pruner_stops_trials(tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = search_spec(tiny_tree, tmp_path, n_trials=2,
                       pruner={"type": "threshold", "lower": 1.1})  # val_acc < 1.1: prune
    spec["base"]["train"]["epochs"] = 3
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, spec)), "--no-final"])
    assert r.exit_code == 0, r.output
    study = study_of(tmp_path)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [1] for t in study.trials)
    trials, _ = trial_runs(tmp_path)
    assert set(trials["tags.optuna.state"]) == {"PRUNED"}
    assert set(trials["tags.cifarnet.status"]) == {"pruned"}


def test_a_trial_that_trained_all_its_epochs_is_not_pruned(tiny_tree, tmp_path,
                                                           monkeypatch) -> None:
    """Stopping after the last epoch saves nothing and threw a finished trial's value away
    (a median pruner pruned 8-epoch trials at epoch 8 on real data): with 1 epoch, a pruner
    that prunes every report leaves both trials COMPLETE, their epoch reported."""
    monkeypatch.chdir(tmp_path)
    spec = search_spec(tiny_tree, tmp_path, n_trials=2,
                       pruner={"type": "threshold", "lower": 1.1})
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, spec)), "--no-final"])
    assert r.exit_code == 0, r.output
    study = study_of(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(list(t.intermediate_values) == [1] and t.value == t.intermediate_values[1]
               for t in study.trials)


def test_a_replayed_history_is_pruned_as_the_training_would_be() -> None:
    """The reuse path replays a copied trial's epochs through the same rule
    (`report_epoch`): pruned at an earlier epoch, never after the last."""
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1.1))
    trial = study.ask()
    assert report_epoch(trial, 0.5, 1, last=False) is True
    assert report_epoch(trial, 0.6, 2, last=True) is False
    assert study.trials[0].intermediate_values == {1: 0.5, 2: 0.6}


def test_diverging_trials_fail_and_the_search_goes_on(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = search_spec(tiny_tree, tmp_path, n_trials=2, space={
        "train.lr": {"type": "float", "low": 50.0, "high": 100.0}})
    spec["base"]["train"].update(epochs=3, batch_size=16)
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, spec))])
    assert r.exit_code == 0, r.output
    assert [t.state.name for t in study_of(tmp_path).trials] == ["FAIL", "FAIL"]
    trials, _ = trial_runs(tmp_path)
    assert set(trials["status"]) == {"FAILED"} and set(trials["tags.optuna.state"]) == {"FAIL"}


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_postgres_study(tiny_tree, tmp_path, pg_database) -> None:
    queue, tracking = pg_database("study"), pg_database("mlflow")
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=4))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    workers = [subprocess.Popen([EXE, "search", str(spec), "--storage", queue, "--no-final"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="search.tiny_search", storage=queue)
    # Each worker checks the count before starting a trial, so two may overshoot by one.
    assert 4 <= len(study.trials) <= 5
    assert {t.state.name for t in study.trials} == {"COMPLETE"}, outputs
    mlflow.set_tracking_uri(tracking)
    df = mlflow.search_runs(experiment_names=["tiny_search"])
    numbers = sorted(df[df["tags.cifarnet.role"] == "trial"]["tags.optuna.trial_number"]
                     .astype(int))
    assert numbers == [t.number for t in study.trials]
    assert len(df[df["tags.cifarnet.role"] == "study"]) == 1


@pytest.mark.slow
def test_multi_objective_search_reports_a_pareto_front(tiny_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = search_spec(tiny_tree, tmp_path, n_trials=3, sampler={"type": "nsgaii", "seed": 0},
                       space={"model.width": {"type": "float", "low": 0.5, "high": 1.0},
                              "model.depthwise": {"type": "categorical",
                                                  "choices": [True, False]}},
                       objectives=[{"metric": "val_acc", "direction": "maximize"},
                                   {"metric": "params", "direction": "minimize"}])
    del spec["objective"]
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, spec))])
    assert r.exit_code == 0, r.output
    study = study_of(tmp_path)
    assert len(study.directions) == 2 and len(study.trials) == 3
    from cifarnet.config.schema import build_config
    from cifarnet.model.cifarnet import CifarNet, count_params
    for t in study.trials:
        assert t.values[1] == count_params(CifarNet(build_config(t.params).model))
    assert study.best_trials and "best trial" in r.output
    rep = CliRunner().invoke(main, ["search-report", "tiny_search", "--out", "rep"])
    assert rep.exit_code == 0, rep.output
    assert (tmp_path / "rep" / "pareto_front.png").stat().st_size > 0


def test_a_trial_failed_by_another_worker_while_it_trained_is_an_outcome(tiny_tree, tmp_path):
    """Another worker declares this worker's trial stale (its heartbeats were late) and fails
    it while it still trains: the search goes on (Optuna's optimize raises "Cannot tell a
    FAIL trial"), the retry runs the same parameters, the superseded run says so."""
    from cifarnet.spec.search import load_search_spec
    from cifarnet.search.storage import open_storage, retry_callback
    from cifarnet.search.study import retried_from, run_search
    from cifarnet.training.callbacks import Callback
    from cifarnet.workspace import Workspace

    spec = load_search_spec(write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=2)))
    workspace = Workspace.resolve(tmp_path)

    class OtherWorkerFailsIt(Callback):  # as Optuna's fail_stale_trials does, elsewhere
        def on_epoch_end(self, ctx, epoch, metrics) -> None:
            storage = open_storage(workspace)
            other = optuna.load_study(study_name="search.tiny_search", storage=storage)
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name("search.tiny_search"), 0)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            retry_callback()(other, storage.get_trial(trial_id))

    outcome = run_search(spec, workspace, final=False,
                         callbacks=lambda n: [OtherWorkerFailsIt()] if n == 0 else [])
    trials = study_of(tmp_path).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert retried_from(trials[1]) == 0 and trials[1].params == trials[0].params
    assert outcome.trials["COMPLETE"] == 2
    runs, _ = trial_runs(tmp_path)
    by_number = runs.set_index(runs["tags.optuna.trial_number"].astype(int))
    assert by_number.loc[0, "tags.optuna.state"] == "superseded"
    assert by_number.loc[0, "tags.cifarnet.status"] == "stale"  # stopped at once, not trained on
    assert by_number.loc[0, "status"] == "FAILED"
    assert set(by_number.loc[[1, 2], "tags.optuna.state"]) == {"COMPLETE"}


def test_a_stop_while_a_trial_draws_its_parameters_loses_no_trial(tiny_tree, tmp_path,
                                                                  monkeypatch):
    """A KeyboardInterrupt between a trial's `suggest_*` calls (a second signal stops at
    once, wherever the process is; before the trial's MLflow run) enqueued no retry:
    the FAIL trial counted towards `n_trials` and the rerun ended one trial short. The retry
    now fixes the parameters drawn so far and draws the rest; the search ends with `n_trials`
    COMPLETE trials."""
    import cifarnet.search.study as study_module
    from cifarnet.spec.search import load_search_spec
    from cifarnet.search.study import counted_trials, retried_from, run_search
    from cifarnet.workspace import Workspace

    spec = load_search_spec(write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=2)))
    workspace = Workspace.resolve(tmp_path)
    real = study_module.suggest

    def stopped_after_one(trial, spec):
        first = spec.space[0]
        trial.suggest_float(first.key, first.low, first.high, log=first.log)
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "suggest", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, workspace, final=False)
    monkeypatch.setattr(study_module, "suggest", real)
    run_search(spec, workspace, final=False)
    study = study_of(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    cut, retry = study.trials[0], study.trials[1]
    assert retried_from(retry) == 0 and len(cut.params) == 1
    assert retry.params.items() >= cut.params.items() and len(retry.params) == 2
    assert [t.number for t in counted_trials(study)] == [1, 2]


def _killed(study: optuna.Study, storage, number: int) -> None:
    """Trial `number` failed and enqueued again, as a stale trial is."""
    from cifarnet.search.storage import retry_callback

    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    retry_callback()(study, storage.get_trial(trial_id))


def test_a_retry_draws_from_the_slot_of_the_trial_it_retries(tmp_path) -> None:
    """Trials 0 and 1 killed, retried as 2 and 3, trial 2 killed again and retried as 4:
    a retry has its trial's slot (Optuna's `retried_trial_number`), so the parameters
    the killed trials had not drawn come from their own slot's stream, and the slots of
    the others do not move."""
    from cifarnet.search.storage import RetryingRDBStorage
    from cifarnet.search.study import trial_slot

    storage = RetryingRDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    study.ask(), study.ask()  # trials 0 and 1, killed
    _killed(study, storage, 0)  # trial 2
    _killed(study, storage, 1)  # trial 3
    study.ask()  # trial 2, killed too
    _killed(study, storage, 2)  # trial 4: a retry of a retry
    study.tell(study.ask(), 1.0)  # trial 3
    study.tell(study.ask(), 1.0)  # trial 4
    study.tell(study.ask(), 1.0)  # trial 5, a new one
    assert [trial_slot(study, n) for n in range(6)] == [0, 1, 0, 1, 0, 2]


def test_a_retry_has_the_parameters_the_database_holds(tmp_path) -> None:
    """A killed worker's trial had stored a parameter after this process cached the trial
    (Optuna's cache of the storage): the retry, enqueued from the cached copy, had lost it.
    It is read from the storage itself."""
    from cifarnet.search.storage import RetryingRDBStorage
    from cifarnet.search.study import Search, _fail_and_retry

    storage = RetryingRDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()
    study.get_trials(deepcopy=False)  # cached: RUNNING, no parameter yet
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), 0)
    storage.set_trial_param(trial_id, "x", 0.25,
                            optuna.distributions.FloatDistribution(0.0, 1.0))  # the dead worker
    _fail_and_retry(Search(None, storage, study, None, "", "", 30), 0,
                    optuna.trial.TrialState.RUNNING)
    assert study.get_trials(deepcopy=False)[-1].params == {"x": 0.25}


def test_a_resumed_search_does_not_repeat_its_first_points(tiny_tree, tmp_path, monkeypatch):
    """`search --n-trials 1` twice gave two trials with the same parameters: each process
    seeded its sampler with the spec's seed alone. The seed is now salted with the trials the
    study already holds (and the local worker's index): distinct, and still reproducible."""
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=10))
    for _ in range(2):
        r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1", "--no-final"])
        assert r.exit_code == 0, r.output
    first, second = study_of(tmp_path).trials
    assert first.params != second.params


def test_the_held_out_test_waits_for_the_complete_study(tiny_tree, tmp_path, monkeypatch):
    """`search --n-trials 1` on a new 2-trial study ran the held-out test after one trial
    (and the next invocation, with another best trial, a second look at the test set)."""
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=2))
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1"])
    assert r.exit_code == 0, r.output
    assert "held-out test: not yet; it runs once, when the study holds its n_trials " \
           "(1 of 2 so far)" in r.output
    _, df = trial_runs(tmp_path)
    assert (df["tags.cifarnet.role"] == "final").sum() == 0
    assert "final_test_run" not in study_of(tmp_path).user_attrs
    r = CliRunner().invoke(main, ["search", str(spec), "--n-trials", "1"])
    assert "held-out test of the best configuration" in r.output
    _, df = trial_runs(tmp_path)
    assert (df["tags.cifarnet.role"] == "final").sum() == 1


def test_the_final_retraining_folds_the_validation_images_back_in(tiny_tree, tmp_path) -> None:
    """With `train_subset` 100 and `val_size` 40 the trials train on 100 and validate on 40:
    the held-out test's retraining, "on train + validation", trains on 140 (it trained on
    100, the validation images left out)."""
    from cifarnet.data.datasets import load_data
    from cifarnet.spec.search import parse_search_spec
    from cifarnet.search.study import final_data

    raw = search_spec(tiny_tree, tmp_path)
    raw["base"]["data"]["train_subset"] = 100
    base = parse_search_spec(raw).base_config()
    trial = load_data(base.data)
    assert (len(trial.train), len(trial.val)) == (100, 40)
    final = load_data(base.replace(final_data(base)).data)
    assert final.val is None and len(final.train) == 140
    whole = parse_search_spec(search_spec(tiny_tree, tmp_path)).base_config()
    assert final_data(whole) == {"data.val_size": 0}  # no subset: every training image
