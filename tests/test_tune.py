"""Tune, then compare (`tune:` in an ablation spec): every arm gets the same Optuna budget on
the validation split, the verdict runs train each arm's best configuration on fresh seeds,
the report shows the tuning curves; killed mid-tuning and rerun, no trial is lost or doubled."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from helpers import EXE, make_tree, signal_when

from cifarnet.spec.ablation import parse_spec
from cifarnet.spec.common import SpecError
from cifarnet.analysis.tuning import expected_max
from cifarnet.search.study import SURPLUS, counted_trials, retried_from

N_TRIALS = 4


def tuned_spec(tree: Path, folder: Path, *, name: str = "tuned", tune: dict | None = None,
               epochs: int = 1, seeds: list[int] | None = None) -> dict:
    spec = {
        "name": name,
        "description": "tune, then compare",
        "base": {"data": {"path": str(tree), "num_workers": 0},
                 "train": {"epochs": epochs, "batch_size": 32, "device": "cpu",
                           "out_dir": str(folder / "runs")}},
        "factors": {"model.residual_add": [True, False]},
        "seeds": seeds or [0, 1],
        "hypotheses": [{"id": "H", "claim": "add helps", "a": {"model.residual_add": True},
                        "b": {"model.residual_add": False}, "expect": "a > b",
                        "rope": 0.01}],
    }
    if tune is not False:
        spec["tune"] = tune or {
            "space": {"train.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}},
            "n_trials": N_TRIALS, "epochs": 1, "val_size": 40,
            "sampler": {"type": "random", "seed": 0}}
    return spec


def write_yaml(folder: Path, spec: dict, file: str = "spec.yaml") -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump(spec))
    return path


def all_runs(folder: Path, name: str = "tuned"):
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[name], max_results=10_000)


def studies(folder: Path) -> list[optuna.Study]:
    storage = f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"
    return [optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)
            if s.study_name.startswith("tune.")]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The untuned grid first (same name, same cells), then the tuned one: the tuned
    grid's report must count its own runs only."""
    folder = tmp_path_factory.mktemp("tune")
    tree = make_tree(folder / "data", per_class_train=40, per_class_test=10)
    untuned = write_yaml(folder, tuned_spec(tree, folder, tune=False), "untuned.yaml")
    r = subprocess.run([EXE, "run", str(untuned)], cwd=folder, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    spec = write_yaml(folder, tuned_spec(tree, folder))
    r = subprocess.run([EXE, "run", str(spec)], cwd=folder, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return folder, r


def test_every_arm_gets_the_same_number_of_trials(grid) -> None:
    folder, _ = grid
    found = studies(folder)
    assert len(found) == 2  # one study per arm
    for study in found:
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * N_TRIALS
    # the same sampler seed policy: the arms were offered the same learning rates
    lrs = [[t.params["train.lr"] for t in s.trials] for s in found]
    assert lrs[0] == lrs[1]


def test_no_test_metric_exists_while_tuning(grid) -> None:
    folder, _ = grid
    df = all_runs(folder)
    trials = df[df["tags.cifarnet.role"] == "arm_trial"]
    assert len(trials) == 2 * N_TRIALS
    test_cols = [c for c in df.columns if c.startswith("metrics.test_")]
    assert test_cols, "the verdict runs log test metrics"
    assert trials[test_cols].isna().all().all()  # not one test metric on any trial
    assert trials["metrics.val_acc"].notna().all()
    assert (trials["params.data.num_test"] == "0").all()  # no test split was loaded


def test_verdict_runs_are_fresh_seeds_with_each_arms_best(grid) -> None:
    folder, _ = grid
    df = all_runs(folder)
    parent = df[(df["tags.cifarnet.role"] == "parent")
                & (df["tags.mlflow.runName"].str.contains("tuned"))]
    tuned_parent = [p for p in parent["run_id"]
                    if (df["tags.mlflow.parentRunId"] == p).any()
                    and (df.loc[df["tags.mlflow.parentRunId"] == p, "tags.cifarnet.role"]
                         == "arm_study").any()]
    assert len(tuned_parent) == 1
    pid = tuned_parent[0]
    arm_studies = df[(df["tags.cifarnet.role"] == "arm_study")
                     & (df["tags.mlflow.parentRunId"] == pid)]
    trials = df[df["tags.cifarnet.role"] == "arm_trial"]
    assert set(trials["tags.mlflow.parentRunId"]) == set(arm_studies["run_id"])  # nested
    assert set(trials["params.train.seed"]) == {"1000"}
    verdict = df[(df["tags.cifarnet.role"] == "child") & (df["tags.mlflow.parentRunId"] == pid)]
    assert sorted(verdict["params.train.seed"].astype(int)) == [0, 0, 1, 1]
    assert (verdict["params.data.val_size"] == "0").all()  # the full training set
    for _, study in arm_studies.iterrows():
        cell = study["tags.cifarnet.arm"]
        best = trials[(trials["tags.mlflow.parentRunId"] == study["run_id"])]
        top = best[best["metrics.val_acc"] == best["metrics.val_acc"].max()]
        assert study["metrics.best_val_acc"] == pytest.approx(top["metrics.val_acc"].max())
        mine = verdict[verdict["tags.cifarnet.cell"] == cell]
        assert len(mine) == 2
        assert set(mine["params.train.lr"]) == {study["params.tuned.train.lr"]}
        assert study["params.tuned.train.lr"] in set(top["params.train.lr"])  # a best one


def test_report_shows_tuning_curves_and_counts_only_this_grids_runs(grid) -> None:
    folder, run = grid
    assert "tuned residual_add=true: best trial" in run.stdout + run.stderr
    r = subprocess.run([EXE, "report", "tuned", "--out", str(folder / "rep")], cwd=folder,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    md = (folder / "rep" / "report.md").read_text()
    assert "## Tuning, then comparing" in md and "tuning_curves.png" in md
    assert (folder / "rep" / "tuning_curves.png").stat().st_size > 1000
    rows = [line for line in md.splitlines() if line.startswith("| residual_add=")]
    assert any(f"{N_TRIALS} / 0 / 0" in line for line in rows)
    hyp = [line for line in md.splitlines() if line.startswith("| H |")][0]
    assert hyp.split("|")[3].strip() == "2"  # n = 2 seeds: the untuned grid's runs left out


def test_dry_run_prints_tuning_and_verdict_costs_apart(tmp_path) -> None:
    tree = make_tree(tmp_path / "data", per_class_train=20, per_class_test=5)
    spec = write_yaml(tmp_path, tuned_spec(tree, tmp_path))
    r = subprocess.run([EXE, "run", str(spec), "--dry-run"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"tuning (2 arm(s) x {N_TRIALS} trial(s) x 1 epoch(s)" in r.stdout
    assert f"predicted: {2 * N_TRIALS} run(s) to train" in r.stdout
    assert ("verdict (every cell on seeds 0, 1, the arms at values not yet tuned): "
            "predicted: 4 run(s)") in r.stdout
    assert "in all:" in r.stdout
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_killed_mid_tuning_the_rerun_loses_and_doubles_no_trial(tmp_path, sig) -> None:
    tree = make_tree(tmp_path / "data", per_class_train=60, per_class_test=10)
    spec = write_yaml(tmp_path, tuned_spec(tree, tmp_path, tune={
        "space": {"train.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}},
        "n_trials": 3, "epochs": 3, "val_size": 40, "sampler": {"type": "random", "seed": 0}}))
    cmd = [EXE, "run", str(spec), "--heartbeat", "1", "--grace", "7"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # trial 1 of an arm is training (its parameters drawn, its MLflow run started) with an
    # epoch to go (its pruning reports are its epochs)
    signal_when(proc, lambda: any(t.state.name == "RUNNING" and t.number == 1
                                  and "mlflow_run_id" in t.user_attrs
                                  and len(t.intermediate_values) < 2
                                  for s in _studies_or_none(tmp_path) for t in s.trials), sig)
    out, _ = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, out
    else:
        time.sleep(7.5)  # past the grace period: the trial is stale
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    found = studies(tmp_path)
    assert len(found) == 2
    retried_in_all = 0
    for study in found:
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert len(done) == 3  # every arm at exactly n_trials: none lost, none doubled
        retried = [t for t in study.trials if retried_from(t) is not None]
        failed = [t for t in study.trials if t.state.name == "FAIL"]
        assert len(retried) == len(failed)
        retried_in_all += len(retried)
        for r in retried:
            assert r.params == study.trials[retried_from(r)].params
    assert retried_in_all == 1  # the one trial the kill interrupted, run again once
    # trials are seeded by their slot: the arms, one interrupted and resumed, were offered
    # the same learning rates, as in an uninterrupted run
    offered = [sorted(t.params["train.lr"] for t in s.trials if t.state.name == "COMPLETE")
               for s in found]
    assert offered[0] == offered[1]
    df = all_runs(tmp_path)
    assert "RUNNING" not in set(df["status"])
    verdict = df[df["tags.cifarnet.role"] == "child"]
    assert sorted(verdict["params.train.seed"].astype(int)) == [0, 0, 1, 1]


def _studies_or_none(folder: Path) -> list[optuna.Study]:
    try:
        return studies(folder)
    except Exception:  # the storage does not exist yet
        return []


@pytest.mark.slow
def test_two_workers_share_the_arms_studies(tmp_path) -> None:
    tree = make_tree(tmp_path / "data", per_class_train=30, per_class_test=5)
    spec = write_yaml(tmp_path, tuned_spec(tree, tmp_path))
    r = subprocess.run([EXE, "run", str(spec), "--workers", "2"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    df = all_runs(tmp_path)
    for study in studies(tmp_path):
        counted = counted_trials(study)
        assert [t.state.name for t in counted] == ["COMPLETE"] * N_TRIALS
        # two workers drew their own parameters (each trial is seeded by its slot)
        assert len({t.params["train.lr"] for t in counted}) == N_TRIALS
        # two workers asking for an arm's last slot at the same moment leave one surplus
        # trial (CI saw it): told FAIL, never trained, so no MLflow run of its own
        numbers = {t.number for t in counted}
        for t in study.trials:
            if t.number not in numbers and t.user_attrs.get(SURPLUS):
                assert t.state.name == "FAIL" and "mlflow_run_id" not in t.user_attrs
    # and both arms were offered the same candidates, whichever worker ran which trial
    offered = [sorted(t.params["train.lr"] for t in counted_trials(s))
               for s in studies(tmp_path)]
    assert offered[0] == offered[1]
    assert len(df[df["tags.cifarnet.role"] == "arm_trial"]) == sum(
        1 for s in studies(tmp_path) for t in s.trials if not t.user_attrs.get(SURPLUS))
    assert len(df[df["tags.cifarnet.role"] == "child"]) == 4
    assert len(df[df["tags.cifarnet.role"] == "arm_study"]) == 2
    assert "H " in r.stdout or "hypotheses" in r.stdout


# ---- the spec's `tune:` block: each mistake is one error naming its key ---------------------

def _raw(**tune_changes) -> dict:
    spec = tuned_spec(Path("/nonexistent"), Path("/tmp"))
    spec["tune"].update(tune_changes)
    return spec


@pytest.mark.parametrize("changes,key", [
    ({"epochz": 1}, "tune.epochz"),
    ({"n_trials": 0}, "tune.n_trials"),
    ({"n_trials": True}, "tune.n_trials"),
    ({"epochs": 1.5}, "tune.epochs"),
    ({"val_size": 0}, "tune.val_size"),
    ({"seed": 1}, "tune.seed"),
    ({"seed": -1}, "tune.seed"),
    ({"space": {"model.residual_add": {"type": "categorical", "choices": [True, False]}}},
     "tune.space.model.residual_add"),
    ({"space": {"train.lrr": {"type": "float", "low": 0.01, "high": 0.2}}}, "tune.space.train.lrr"),
    ({"space": {"train.lr": {"type": "float", "low": 0.2, "high": 0.01}}}, "tune.space.train.lr"),
    ({"sampler": {"type": "nsgaii"}}, "tune.sampler.type"),
    ({"pruner": {"type": "median", "n_startup_trials": -1}}, "tune.pruner.n_startup_trials"),
    ({"space": {"data.val_size": {"type": "int", "low": 10, "high": 80}}},
     "tune.space.data.val_size: selects the images"),
    ({"space": {"data.train_subset": {"type": "int", "low": 100, "high": 200}}},
     "tune.space.data.train_subset: selects the images"),
    ({"space": {"train.epochs": {"type": "int", "low": 1, "high": 2}}},
     "tune.space.train.epochs: the trials' epochs are tune.epochs"),
    ({"space": {"train.batch_size": {"type": "int", "low": 16, "high": 64}}},
     "tune.space.train.batch_size: is also set in base"),
    ({"seed": True}, "tune.seed: expected an integer"),
])
def test_a_bad_tune_block_names_its_key(changes, key) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_raw(**changes))
    assert str(err.value).startswith(key), str(err.value)


def test_a_matched_width_cannot_be_tuned_nor_a_val_metric_judged() -> None:
    spec = _raw(space={"model.width": {"type": "float", "low": 0.5, "high": 2.0}})
    spec["match"] = "params"
    with pytest.raises(SpecError, match="^tune.space.model.width: match: params"):
        parse_spec(spec)
    spec = _raw()
    spec["base"]["data"]["val_size"] = 40
    spec["hypotheses"][0]["metric"] = "val_acc"
    with pytest.raises(SpecError, match=r"^hypotheses\[0\].metric: val_acc in a tuned grid"):
        parse_spec(spec)


def test_an_arm_not_tuned_yet_has_no_verdict() -> None:
    import pandas as pd

    from cifarnet.analysis.verdicts import analyze

    spec = parse_spec(_raw())
    rows = [{"run_id": f"r{c}{s}", "status": "FINISHED", "cell": cell.label, "seed": s,
             "config_hash": "x", "metrics.test_acc": 0.5 + 0.1 * c + 0.01 * s}
            for c, cell in enumerate(spec.cells()) for s in (0, 1, 2)]
    v = analyze(spec, pd.DataFrame(rows)).verdicts[0]
    assert v.comparison.verdict == "no verdict" and v.why_no_verdict.startswith(
        "tuning incomplete")
    tuned = spec.with_tuned({c.label: {"train.lr": 0.1} for c in spec.cells()})
    assert analyze(tuned, pd.DataFrame(rows)).verdicts[0].comparison.verdict != "no verdict"


def test_a_trial_past_the_arms_budget_is_surplus_and_never_trains(tmp_path) -> None:
    """Two processes asking at the same moment gave one arm n_trials + 1 trials: the
    objective's first check (`check_budget`) tells the extra one FAIL, untrained."""
    from cifarnet.search.study import TrialFailed, check_budget

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="arm")
    for x in (1.0, 2.0):
        study.add_trial(optuna.trial.create_trial(params={"x": x}, value=x, distributions={
            "x": optuna.distributions.FloatDistribution(0, 3)}))

    def objective(trial):
        check_budget(trial, 2)
        raise AssertionError("a surplus trial must not train")

    study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    told = study.trials[-1]
    assert told.state.name == "FAIL" and told.user_attrs[SURPLUS] is True
    assert len(counted_trials(study)) == 2


def test_a_tune_block_needs_a_hypothesis_and_a_mapping() -> None:
    spec = _raw()
    spec["hypotheses"] = []
    with pytest.raises(SpecError, match="^tune: no hypothesis"):
        parse_spec(spec)
    spec = _raw()
    spec["tune"] = [1]
    with pytest.raises(SpecError, match="^tune: expected a mapping"):
        parse_spec(spec)


def test_set_cannot_fix_a_tuned_key_and_the_cli_writes_nothing(tmp_path) -> None:
    spec = parse_spec(_raw())
    with pytest.raises(SpecError, match=r"^--set train.lr: is tuned per arm"):
        spec.with_base({"train.lr": 0.1})
    path = write_yaml(tmp_path, _raw(seed=0))
    r = subprocess.run([EXE, "run", str(path)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: tune.seed: 0 is also a verdict seed (seeds); the verdict runs must be fresh "
        "seeds, not used while tuning"]
    assert not (tmp_path / "mlruns").exists()


def test_adaptive_seeds_skip_the_tuning_seed() -> None:
    spec = parse_spec({**_raw(seed=2)})
    assert spec.reserved_seeds() == {2}
    import pandas as pd

    from cifarnet.ablation.adaptive import next_jobs
    from cifarnet.analysis.verdicts import analyze

    rows = [{"run_id": f"r{c}{s}", "status": "FINISHED", "cell": cell.label, "seed": s,
             "config_hash": "x", "metrics.test_acc": 0.5 + 0.01 * ((s * 7 + c) % 3)}
            for c, cell in enumerate(spec.cells()) for s in (0, 1)]
    analysis = analyze(spec, pd.DataFrame(rows))
    jobs = next_jobs(spec, analysis, max_seeds=5)
    assert jobs and {j.seed for j in jobs} == {3}  # 2 is the trials' seed


# ---- the tuning curve's estimator --------------------------------------------------------

def test_expected_max_matches_the_closed_form() -> None:
    values = [0.3, 0.1, 0.4, 0.2]
    assert expected_max(values, 1)[0] == pytest.approx(0.25)  # the mean of one draw
    # Dodge et al. 2019: weights (i/N)^n - ((i-1)/N)^n = 1/16, 3/16, 5/16, 7/16 for n = 2
    mean, sd = expected_max(values, 2)
    assert mean == pytest.approx((0.1 * 1 + 0.2 * 3 + 0.3 * 5 + 0.4 * 7) / 16)
    second = (0.01 * 1 + 0.04 * 3 + 0.09 * 5 + 0.16 * 7) / 16
    assert sd == pytest.approx((second - mean**2) ** 0.5)
    # Tang et al. 2020 without replacement: the best of all N is the observed maximum
    assert expected_max(values, 4, unbiased=True) == pytest.approx((0.4, 0.0))
    assert expected_max(values, 2, unbiased=True)[0] == pytest.approx(
        (0.2 * 1 + 0.3 * 2 + 0.4 * 3) / 6)  # C(i-1, 1) / C(4, 2)
    curve = [expected_max(values, n)[0] for n in range(1, 9)]
    assert curve == sorted(curve) and curve[-1] < 0.4
    with pytest.raises(ValueError):
        expected_max([], 1)


def test_a_rerun_reopens_no_study_and_the_dry_run_counts_what_is_done(grid) -> None:
    folder, _ = grid
    before = all_runs(folder)
    studies_before = before[before["tags.cifarnet.role"] == "arm_study"].set_index("run_id")
    r = subprocess.run([EXE, "run", "spec.yaml"], cwd=folder, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every arm was tuned before" in r.stdout + r.stderr
    assert "0 run(s) finished here, 4 already done" in r.stdout
    after = all_runs(folder)
    studies_after = after[after["tags.cifarnet.role"] == "arm_study"].set_index("run_id")
    assert (studies_after["end_time"] == studies_before["end_time"]).all()  # not reopened
    trials = after[after["tags.cifarnet.role"] == "arm_trial"]
    assert set(trials["tags.cifarnet.arm"]) == set(studies_after["tags.cifarnet.arm"])
    assert trials["tags.mlflow.runName"].str.match(r"tune residual_add=(true|false) trial \d").all()
    dry = subprocess.run([EXE, "run", "spec.yaml", "--dry-run"], cwd=folder,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert f"predicted: 0 run(s) to train ({2 * N_TRIALS} already done" in dry.stdout
    assert "the arms at their tuned values): predicted: 0 run(s) to train (4 already" in dry.stdout


def test_set_shrinks_the_tuning_budget_and_names_the_key() -> None:
    spec = parse_spec(_raw())
    small = spec.with_sets(["tune.n_trials=2", "tune.epochs=3", "train.epochs=2"])
    assert (small.tune.n_trials, small.tune.epochs, small.base["train.epochs"]) == (2, 3, 2)
    from cifarnet.ablation.execute import grid_id

    assert grid_id(small) != grid_id(spec.with_sets(["train.epochs=2"]))  # a new grid
    for bad, key in (("tune.space=1", "--set tune.space: only tune.n_trials"),
                     ("tune.n_trials=0", "--set tune.n_trials: expected an integer"),
                     ("tune.seed=1", "--set tune.seed: 1 is also a verdict seed")):
        with pytest.raises(SpecError) as err:
            spec.with_sets([bad])
        assert str(err.value).startswith(key), str(err.value)
    untuned = parse_spec({k: v for k, v in _raw().items() if k != "tune"})
    with pytest.raises(SpecError, match="^--set tune.epochs=1: the spec has no tune block"):
        untuned.with_sets(["tune.epochs=1"])


@pytest.mark.slow
def test_a_grown_budget_copies_the_trials_another_grid_trained(tmp_path) -> None:
    """`--set tune.n_trials=3` after a complete 2-trial grid is a new grid with new studies;
    its first two trials sample what the old ones did and are copied, not trained."""
    tree = make_tree(tmp_path / "data", per_class_train=30, per_class_test=5)
    spec = write_yaml(tmp_path, tuned_spec(tree, tmp_path))
    for n in (2, 3):
        r = subprocess.run([EXE, "run", str(spec), "--set", f"tune.n_trials={n}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    df = all_runs(tmp_path)
    trials = df[df["tags.cifarnet.role"] == "arm_trial"]
    copied = trials[trials["tags.cifarnet.reused_from"].notna()]
    assert len(trials) == 2 * 2 + 2 * 3 and len(copied) == 2 * 2
    by_id = trials.set_index("run_id")
    for _, t in copied.iterrows():
        src = by_id.loc[t["tags.cifarnet.reused_from"]]
        assert t["tags.cifarnet.config_hash"] == src["tags.cifarnet.config_hash"]
        assert t["metrics.val_acc"] == src["metrics.val_acc"]
    for study in studies(tmp_path):
        assert sum(t.state.name == "COMPLETE" for t in study.trials) == len(study.trials)
