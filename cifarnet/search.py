"""Optuna searches over the training recipe, tracked in MLflow, resumable and distributed.

Each trial trains on the training split and reports its objective (a validation metric)
every epoch, so the pruner can stop it early. A diverged or crashed trial is recorded as FAIL
and the search goes on. Every worker running the same spec against the same storage joins
the same study; the study stops growing when it holds `n_trials` trials (or this invocation
has added `--n-trials` more). When the study is complete, the best trial's configuration is
retrained on the full training set (validation split folded back in) and evaluated once on
the test set: that figure is reported separately and never fed back into the search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from cifarnet.callbacks import Callback, RunContext, StopTraining
from cifarnet.config import RunConfig
from cifarnet.data import Dataset, load_data
from cifarnet.model import CifarNet, count_params
from cifarnet.retry import retry_setup
from cifarnet.search_spec import SearchSpec
from cifarnet.summary import summarize
from cifarnet.tracking import (TAG_ROLE, TAG_SPEC, MlflowRunCallback, get_or_create_experiment,
                               mlflow_status, setup_mlflow, shared_parent_run)
from cifarnet.train import default_run_dir, train
from cifarnet.workqueue import make_storage, open_study

TAG_OPTUNA_STATE = "optuna.state"
TAG_TRIAL_NUMBER = "optuna.trial_number"
FINAL_ATTR = "final_test_run"


class TrialFailed(Exception):
    """A trial that diverged or crashed: Optuna records it as FAIL and goes on."""


class OptunaPruning(Callback):
    """Reports the objective each epoch; stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(metrics[self.metric], epoch)
        if self.trial.should_prune():
            raise StopTraining("pruned", f"pruned after epoch {epoch}")


def make_sampler(cfg: dict[str, Any]) -> optuna.samplers.BaseSampler:
    args = {k: v for k, v in cfg.items() if k != "type"}
    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "nsgaii": optuna.samplers.NSGAIISampler}[cfg["type"]](**args)


def make_pruner(cfg: dict[str, Any]) -> optuna.pruners.BasePruner:
    args = {k: v for k, v in cfg.items() if k != "type"}
    return {"median": optuna.pruners.MedianPruner,
            "percentile": optuna.pruners.PercentilePruner,
            "hyperband": optuna.pruners.HyperbandPruner,
            "threshold": optuna.pruners.ThresholdPruner,
            "none": optuna.pruners.NopPruner}[cfg["type"]](**args)


def suggest(trial: optuna.Trial, spec: SearchSpec) -> dict[str, Any]:
    """The trial's values for the search space (the only place `suggest_*` is called)."""
    out: dict[str, Any] = {}
    for p in spec.space:
        if p.type == "float":
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[p.key] = trial.suggest_int(p.key, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
    return out


@dataclass
class SearchOutcome:
    study_name: str
    parent_run_id: str
    trials: dict[str, int]
    best: list[dict[str, Any]]
    final: dict[str, Any] | None


def run_search(spec: SearchSpec, *, storage_url: str | None = None,
               n_trials: int | None = None, data: Dataset | None = None,
               pruner: optuna.pruners.BasePruner | None = None,
               callbacks: Callable[[int], list[Callback]] | None = None,
               final: bool = True) -> SearchOutcome:
    """Join (or start) the spec's study and add trials until it is complete."""
    from mlflow import MlflowClient

    from cifarnet.runner import quiet_libraries

    quiet_libraries()
    base = spec.base_config()
    data = data if data is not None else load_data(base.data)
    storage = retry_setup(lambda: make_storage(storage_url))
    setup_mlflow()
    client = retry_setup(MlflowClient)
    experiment_id = retry_setup(lambda: get_or_create_experiment(spec.name))
    directions = [o.direction for o in spec.objectives]
    study, created = open_study(f"search.{spec.name}", storage, directions=directions,
                                sampler=make_sampler(spec.sampler),
                                pruner=pruner or make_pruner(spec.pruner))
    study.set_user_attr("data_label", data.label)
    parent = shared_parent_run(client, experiment_id, study, created, f"{spec.name} (study)",
                               {TAG_ROLE: "study", TAG_SPEC: spec.name,
                                "optuna.study": study.study_name},
                               {"search.yaml": _spec_dict(spec)})
    target = spec.n_trials if n_trials is None else len(study.trials) + n_trials
    objective = _Objective(spec, base, data, client, experiment_id, parent, callbacks)
    stop = optuna.study.MaxTrialsCallback(target, states=None)
    if len(study.trials) < target:
        study.optimize(objective, n_trials=target - len(study.trials), callbacks=[stop],
                       catch=(TrialFailed,), gc_after_trial=False)
    counts = {s.name: 0 for s in TrialState}
    for t in study.trials:
        counts[t.state.name] += 1
    final_run = None
    if final and not spec.multi and counts["RUNNING"] == 0 and counts["COMPLETE"]:
        final_run = _final_test(spec, base, data, study, client, experiment_id, parent)
    if counts["RUNNING"] == 0 and counts["WAITING"] == 0:
        client.set_terminated(parent, "FINISHED")
    best = [{"number": t.number, "values": t.values, "params": t.params}
            for t in (study.best_trials if spec.multi else
                      ([study.best_trial] if counts["COMPLETE"] else []))]
    return SearchOutcome(study.study_name, parent, counts, best, final_run)


def _spec_dict(spec: SearchSpec) -> dict[str, Any]:
    return {"name": spec.name, "description": spec.description, "base": spec.base,
            "space": [p.__dict__ for p in spec.space],
            "objectives": [o.__dict__ for o in spec.objectives], "n_trials": spec.n_trials,
            "sampler": spec.sampler, "pruner": spec.pruner}


class _Objective:
    def __init__(self, spec: SearchSpec, base: RunConfig, data: Dataset, client: Any,
                 experiment_id: str, parent: str,
                 callbacks: Callable[[int], list[Callback]] | None) -> None:
        self.spec, self.base, self.data, self.client = spec, base, data, client
        self.experiment_id, self.parent = experiment_id, parent
        self.callbacks = callbacks or (lambda number: [])

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        params = suggest(trial, self.spec)
        cfg = self.base.replace(params)
        run = self.client.create_run(self.experiment_id, run_name=f"trial {trial.number}", tags={
            MLFLOW_PARENT_RUN_ID: self.parent, TAG_ROLE: "trial", TAG_SPEC: self.spec.name,
            TAG_TRIAL_NUMBER: str(trial.number), "cifarnet.config_hash": cfg.hash()})
        run_id = run.info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        first = self.spec.objectives[0]
        cbs = [MlflowRunCallback(run_id), *self.callbacks(trial.number)]
        if not self.spec.multi:
            cbs.append(OptunaPruning(trial, first.metric))
        try:
            result = train(cfg, cbs, data=self.data, run_dir=default_run_dir(cfg))
        except KeyboardInterrupt:
            self._end(run_id, "KILLED", "FAIL")
            raise
        except Exception as exc:
            self._end(run_id, "FAILED", "FAIL")
            raise TrialFailed(f"trial {trial.number} crashed: {exc}") from exc
        if result.status == "pruned":
            self._end(run_id, "FINISHED", "PRUNED")
            raise optuna.TrialPruned(result.reason)
        if result.status != "finished":
            self._end(run_id, mlflow_status(result.status), "FAIL")
            raise TrialFailed(f"trial {trial.number} {result.status}: {result.reason}")
        self._end(run_id, "FINISHED", "COMPLETE")
        values = [_objective_value(o.metric, result.final, cfg) for o in self.spec.objectives]
        return values[0] if len(values) == 1 else tuple(values)

    def _end(self, run_id: str, status: str, optuna_state: str) -> None:
        self.client.set_tag(run_id, TAG_OPTUNA_STATE, optuna_state)
        self.client.set_terminated(run_id, status)


def _objective_value(metric: str, final: dict[str, float], cfg: RunConfig) -> float:
    if metric == "params":
        return float(count_params(CifarNet(cfg.model)))
    if metric == "macs":
        return float(summarize(cfg.model).total_macs)
    value = final[metric]
    if not math.isfinite(value):
        raise TrialFailed(f"{metric} is not finite")
    return value


def _final_test(spec: SearchSpec, base: RunConfig, data: Dataset, study: optuna.Study,
                client: Any, experiment_id: str, parent: str) -> dict[str, Any]:
    """Retrain the best configuration on train + validation and test it once."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    best = study.best_trial
    done = study.user_attrs.get(FINAL_ATTR)
    if done and done.get("trial") == best.number:
        return done
    cfg = base.replace({**best.params, "data.val_size": 0})
    full = load_data(cfg.data)
    run = client.create_run(experiment_id, run_name=f"final: best trial {best.number}", tags={
        MLFLOW_PARENT_RUN_ID: parent, TAG_ROLE: "final", TAG_SPEC: spec.name,
        TAG_TRIAL_NUMBER: str(best.number)})
    result = train(cfg, [MlflowRunCallback(run.info.run_id)], data=full,
                   run_dir=default_run_dir(cfg))
    client.set_terminated(run.info.run_id, mlflow_status(result.status))
    record = {"trial": best.number, "run_id": run.info.run_id, "status": result.status,
              "test_acc": result.final.get("test_acc"), "params": best.params,
              "val_objective": best.value}
    study.set_user_attr(FINAL_ATTR, record)
    return record

