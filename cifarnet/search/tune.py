"""Tune, then compare: every arm of a hypothesis gets the same tuning budget before the verdict.

A comparison at one fixed recipe can credit or blame an architecture for what is a recipe
mismatch (Melis, Dyer & Blunsom 2018, ICLR; Dodge et al. 2019, EMNLP). With a `tune:` block
(`cifarnet.spec.search.TuneBlock`), `cifarnet-exp run` first gives every cell a hypothesis
names (an arm) its own Optuna study with exactly the same budget: the same space, trials,
epochs per trial, validation split, trial seed, sampler and pruner. The trials train on the
training split minus the validation split and hold no test split at all
(`Dataset.without_test`), so no test metric exists while tuning. Then the best configuration
of each arm trains on the grid's seeds (never the trials' seed) on the spec's own data, and
the verdict is given on those runs, as for any grid.

MLflow: the grid's parent run, under it one nested parent per arm's study (role `arm_study`,
the best trial and its validation accuracy recorded once the study is complete), the trials
as its children (role `arm_trial`), and the verdict runs as the grid's children. The studies
live in the Optuna storage (their trials run one at a time in the launcher's process;
`--workers` and `--executor` apply to the verdict runs); an interrupted trial runs again with the same parameters (`search.study`), so a killed and rerun grid ends
with every arm at exactly `n_trials` trials.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from cifarnet.ablation.execute import GridListener, launcher_lock, log_estimate, open_grid
from cifarnet.ablation.plan import load_trial_data
from cifarnet.spec.ablation import AblationSpec, Cell
from cifarnet.data.datasets import Dataset, data_key
from cifarnet.errors import UserError
from cifarnet.spec.search import arm_search_spec
from cifarnet.search.study import Nest, run_search
from cifarnet.tracking.results import TUNED_ARTIFACT, tuned_values
from cifarnet.tracking.store import setup_mlflow
from cifarnet.tracking.tags import METRIC_BEST_VAL, PARAM_TUNED, TAG_BEST_TRIAL
from cifarnet.training.callbacks import StopEvent, StopOnEvent
from cifarnet.workspace import Workspace


@dataclass(frozen=True)
class ArmResult:
    """One arm's complete study: its cell, best trial number, that trial's validation
    accuracy (a fraction) and parameters, and its trials by state."""

    cell: str
    best_trial: int
    best_value: float
    params: dict[str, Any]
    trials: dict[str, int] = field(default_factory=dict)


def arm_study_name(spec: AblationSpec, grid: str, cell: Cell) -> str:
    """The Optuna study of `cell`'s arm in grid `grid` (`ablation.execute.grid_id`)."""
    return f"tune.{spec.name}.{grid}.{hashlib.sha256(cell.label.encode()).hexdigest()[:8]}"


def tune_grid(spec: AblationSpec, workspace: Workspace, *, data: dict[tuple, Dataset],
              storage_url: str | None = None, listener: GridListener | None = None,
              stop: StopEvent, heartbeat_interval: int = 10, grace_period: int = 30,
              poll_interval: float = 5.0, reuse: bool = True,
              estimate: Callable[[], Any] | None = None) -> tuple[AblationSpec,
                                                                  list[ArmResult]]:
    """Tune every arm of `spec` (which has a `tune` block) to its complete study and return
    the spec with the tuned values (`AblationSpec.with_tuned`) and each arm's result.

    `data`: the verdict runs' data sets (by `data_key`; they name the grid). Joins (or
    starts) the grid's parent run; while another worker's trial still runs, waits
    `poll_interval` s and looks again (and takes over its trial when it goes stale). A stop
    request ends the current trial KILLED (it runs again on the next invocation) and raises
    KeyboardInterrupt. With `reuse`, a trial whose config another grid's arm already trained
    to the end on the same data is copied, not trained (`tracking.reuse.find_trial_source`).
    Raises UserError when an arm's study ends with no completed trial.
    """
    listener = listener or GridListener()
    searches = {c.label: arm_search_spec(spec.name, spec.untuned_config(c), spec.tune)
                for c in spec.arms()}
    trial_data = load_trial_data([s.base_config() for s in searches.values()])  # before writes
    client = setup_mlflow(workspace)
    with launcher_lock(spec, workspace, data):
        grid = open_grid(spec, workspace, client, data)
    if estimate is not None and grid.created:
        log_estimate(grid, estimate())
    recorded = spec.with_tuned(tuned_values(grid.client, grid.parent_run_id))
    if recorded.tuned and all(c.label in recorded.tuned for c in spec.arms()):
        # tuned before: the studies are complete (their budget is the grid's identity), so
        # none is reopened (a reopened study's run would get a new end time)
        listener.message("every arm was tuned before (tuned.yaml on the grid's parent run)")
        return recorded, []
    arm = _ArmTuner(spec, workspace, grid, searches, trial_data, listener, stop,
                    storage_url, heartbeat_interval, grace_period, reuse)
    try:
        results = arm.all_until_done(poll_interval)
    except KeyboardInterrupt:
        grid.client.set_terminated(grid.parent_run_id, "KILLED")  # the next run reopens it
        raise
    grid.client.log_dict(grid.parent_run_id, {r.cell: r.params for r in results},
                         TUNED_ARTIFACT)  # what the reports read back (`find_parent_run`)
    for r in results:
        listener.message(f"tuned {r.cell}: best trial {r.best_trial}, val_acc "
                         f"{r.best_value:.4f}, "
                         + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in r.params.items()))
    return spec.with_tuned({r.cell: r.params for r in results}), results


@dataclass
class _ArmTuner:
    """Runs the arms' studies of one grid (`tune_grid`), one object passed down."""

    spec: AblationSpec
    workspace: Workspace
    grid: Any
    searches: dict[str, Any]
    trial_data: dict[tuple, Dataset]
    listener: GridListener
    stop: StopEvent
    storage_url: str | None
    heartbeat_interval: int
    grace_period: int
    reuse: bool

    def all_until_done(self, poll_interval: float) -> list[ArmResult]:
        """Every arm's result; while another worker's trial still runs, waits
        `poll_interval` s and looks again. KeyboardInterrupt on a stop."""
        waited = False
        while True:
            results = [self.one(cell) for cell in self.spec.arms()]
            if all(r is not None for r in results):
                return results
            if not waited:  # said once, not every poll
                self.listener.message("waiting for other workers' trials to finish")
                waited = True
            if self.stop.wait(poll_interval) or self.stop.is_set():
                raise KeyboardInterrupt

    def one(self, cell: Cell) -> ArmResult | None:
        """The arm's study brought to its budget; None while another worker's trial runs
        (its value may be the best). UserError when no trial completed."""
        search = self.searches[cell.label]

        def callbacks(number: int) -> list[Any]:
            return [*self.listener.run_callbacks(f"tune {cell.label} trial {number}"),
                    StopOnEvent(self.stop)]

        out = run_search(search, self.workspace, storage_url=self.storage_url,
                         data=self.trial_data[data_key(search.base_config().data)],
                         callbacks=callbacks, heartbeat_interval=self.heartbeat_interval,
                         grace_period=self.grace_period,
                         nest=Nest(arm_study_name(self.spec, self.grid.grid_id, cell),
                                   self.grid.experiment_id, self.grid.parent_run_id,
                                   cell.label, self.reuse))
        if out.trials.get("RUNNING") or out.trials.get("WAITING"):
            return None
        if not out.best:
            raise UserError(f"tune: arm {cell.label} ended its {out.counted} trial(s) with "
                            "none completed (all failed or pruned); see its study's runs in "
                            "MLflow")
        best = out.best[0]
        result = ArmResult(cell.label, best["number"], float(best["values"][0]),
                           dict(best["params"]), dict(out.trials))
        _record_best(self.grid.client, out.parent_run_id, result)
        return result


def _record_best(client: Any, study_run_id: str, result: ArmResult) -> None:
    """The arm's best trial, its validation accuracy and its values on the study's parent
    run (written once; a later worker finds them there)."""
    run = client.get_run(study_run_id)
    if run.data.tags.get(TAG_BEST_TRIAL) == str(result.best_trial):
        return
    client.set_tag(study_run_id, TAG_BEST_TRIAL, str(result.best_trial))
    client.log_metric(study_run_id, METRIC_BEST_VAL, result.best_value)
    for key, value in result.params.items():
        if PARAM_TUNED + key not in run.data.params:
            client.log_param(study_run_id, PARAM_TUNED + key, value)
