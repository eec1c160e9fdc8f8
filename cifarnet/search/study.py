"""Optuna searches over the training recipe, tracked in MLflow, resumable and distributed.

Each trial trains on the training split and reports its objective (a validation metric)
every epoch, so the pruner can stop it early. A diverged or crashed trial is recorded as FAIL
and the search goes on. Every worker running the same spec against the same storage joins
the same study (`Study.optimize`, Optuna's own loop, heartbeats and stale-trial retries:
`search.storage`); the study stops growing when it holds `n_trials` trials (or this
invocation has added `--n-trials` more). An interrupted trial (a signal, a worker killed, a
transient database error) is enqueued again with its parameters and resumes from the last
epoch its MLflow run holds. When the study is complete, the best trial's configuration is
retrained on the full training set (validation split folded back in) and evaluated once on
the test set: that figure is reported separately and never fed back into the search.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
from optuna.trial import FrozenTrial, TrialState

from cifarnet.spec.common import SpecError
from cifarnet.config.schema import RunConfig
from cifarnet.data.datasets import Dataset, load_data
from cifarnet.errors import StoreError, UserError
from cifarnet.model.cifarnet import CifarNet, count_params
from cifarnet.model.summary import summarize
from cifarnet.spec.search import SearchSpec
from cifarnet.search.storage import open_storage, retry_callback
from cifarnet.tracking.checkpoints import CheckpointArtifact, fetch_checkpoint
from cifarnet.tracking import retry
from cifarnet.tracking.retry import is_transient, retry_setup
from cifarnet.tracking.reuse import copy_run, find_trial_source
from cifarnet.tracking.runs import all_runs, fail_stale_run, tracked_run
from cifarnet.tracking.startup import check_tracking_store
from cifarnet.tracking.store import (
    SEARCH_ROLES,
    MlflowRunCallback,
    check_experiment_kind,
    get_or_create_experiment,
    setup_mlflow,
)
from cifarnet.tracking.tags import (
    MLFLOW_PARENT,
    TAG_ARM,
    TAG_DATA,
    TAG_HASH,
    TAG_OPTUNA_STATE,
    TAG_OPTUNA_STUDY,
    TAG_OPTUNA_TRIAL_NUMBER,
    TAG_RESUMED_FROM,
    TAG_ROLE,
    TAG_SPEC,
    Role,
)
from cifarnet.training.callbacks import Callback, RunContext, StopTraining
from cifarnet.training.loop import OnBadCheckpoint, default_run_dir, train
from cifarnet.training.status import RunStatus
from cifarnet.workspace import Workspace

_log = logging.getLogger(__name__)
FINAL_ATTR = "final_test_run"
SPEC_ATTR = "spec_identity"
MAX_CUT_OFFS = 12  # transient errors in a row, pauses doubling to 30 s: about 5 minutes
MLFLOW_RUN = "mlflow_run_id"  # trial user attr: its MLflow run (a retry inherits it)
BEATING = "beating"  # trial user attr: its number, set once its first heartbeat is stored
SURPLUS = "surplus"  # user attr: a trial asked for past an arm's budget, never trained
SUPERSEDED = "superseded"  # tag value of TAG_OPTUNA_STATE: another worker ended the trial


class TrialFailed(Exception):
    """A trial that diverged or crashed: Optuna records it as FAIL and goes on."""


class OptunaPruning(Callback):
    """Reports the objective each epoch; stops the run when the pruner says so, except after
    its last epoch (`report_epoch`)."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        try:
            prune = report_epoch(self.trial, metrics[self.metric], epoch,
                                 last=epoch >= ctx.config.train.epochs)
        except UpdateFinishedTrialError:  # another worker failed it as stale, and retries it
            raise StopTraining(RunStatus.STALE, f"trial {self.trial.number} was ended by "
                               "another worker (late heartbeats); it runs again as a retry")
        if prune:
            raise StopTraining("pruned", f"pruned after epoch {epoch}")


def report_epoch(trial: optuna.Trial, value: float, epoch: int, *, last: bool) -> bool:
    """Report `value` (the objective after `epoch`, 1-based) to the trial; return whether the
    pruner stops it there. Never after the `last` epoch: stopping then saves nothing and
    would throw away a finished trial's value (before: a median pruner pruned 8-epoch
    trials at epoch 8 on real data). Raises UpdateFinishedTrialError when another worker
    already ended the trial."""
    trial.report(value, epoch)
    return not last and retry_setup(trial.should_prune)


def make_sampler(cfg: dict[str, Any], salt: tuple[int, ...] = ()) -> optuna.samplers.BaseSampler:
    """The spec's sampler; a `seed` is combined with `salt` (`SlotSeededSampler`)."""
    args = {k: v for k, v in cfg.items() if k != "type"}
    if args.get("seed") is not None and salt:
        digest = hashlib.sha256(repr((args["seed"], *salt)).encode()).digest()
        args["seed"] = int.from_bytes(digest[:4], "big")
    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "nsgaii": optuna.samplers.NSGAIISampler}[cfg["type"]](**args)


def retried_from(trial: FrozenTrial) -> int | None:
    """The trial that `trial` retries (the first of a series of retries), or None."""
    with warnings.catch_warnings():  # "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return Retry.retried_trial_number(trial)


def trial_slot(study: optuna.Study, number: int) -> int:
    """The place of trial `number` in the study's sequence of trials as an uninterrupted
    run would have made them: the trials before it that are neither a retry nor SURPLUS. A
    retry has the slot of the trial it retries (Optuna's `retried_trial_number`), so
    trials killed together and retried in another order keep their parameter streams."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    if number in by_number and (first := retried_from(by_number[number])) is not None:
        number = first
    return sum(1 for t in trials if t.number < number and retried_from(t) is None
               and not t.user_attrs.get(SURPLUS))


class SlotSeededSampler(optuna.samplers.BaseSampler):
    """The spec's sampler, its seed combined with each trial's slot (`trial_slot`) before
    the trial samples: trial k draws from the same stream whichever process asks for it,
    however often the study was interrupted and resumed, and in every arm of a tuned grid
    (same spec seed, same k). Without a seed it is the spec's sampler, unseeded. Each call
    is retried on a transient database error (the inner sampler reads the study's trials)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.inner = make_sampler(cfg)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.cfg.get("seed") is not None:
            slot = retry_setup(lambda: trial_slot(study, trial.number))
            self.inner = make_sampler(self.cfg, salt=(slot,))
        retry_setup(lambda: self.inner.before_trial(study, trial))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return retry_setup(lambda: self.inner.infer_relative_search_space(study, trial))

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: Any) -> dict[str, Any]:
        return retry_setup(lambda: self.inner.sample_relative(study, trial, search_space))

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return retry_setup(lambda: self.inner.sample_independent(
            study, trial, param_name, param_distribution))

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        retry_setup(lambda: self.inner.after_trial(study, trial, state, values))

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


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
    counted: int = 0  # trials that count towards the spec's n_trials (`counted_trials`)
    n_trials: int = 0  # the spec's: the study is complete, and tested once, at this many


@dataclass(frozen=True)
class Nest:
    """Where a study runs as one arm of an ablation grid (`search.tune`): its Optuna study
    name, the grid's MLflow experiment and parent run, and the arm's cell label."""

    study_name: str
    experiment_id: str
    parent_run_id: str
    cell: str
    reuse: bool = True  # copy a COMPLETE trial of the same config from another grid


@dataclass
class Search:
    """An opened study: its storage, the MLflow experiment and the study's parent run."""

    spec: SearchSpec
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    client: Any
    experiment_id: str
    parent: str
    grace_period: int
    nest: Nest | None = None

    def trial_id(self, number: int) -> int:
        sid = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(sid, number)


def open_search(spec: SearchSpec, workspace: Workspace, *, storage_url: str | None = None,
                data_label: str = "", heartbeat_interval: int = 10, grace_period: int = 30,
                pruner: optuna.pruners.BasePruner | None = None,
                nest: Nest | None = None) -> Search:
    """Join (or start) the spec's study and find (or make) its MLflow parent run. A spec
    whose identity differs from the study's, or an experiment that holds a grid, is refused
    before anything is written to MLflow (and a study made a moment ago goes again)."""
    check_tracking_store(workspace)  # read-only: before any store is written
    storage = open_storage(workspace, storage_url, heartbeat_interval, grace_period)
    name = nest.study_name if nest else f"search.{spec.name}"
    sampler, pruner = SlotSeededSampler(spec.sampler), pruner or make_pruner(spec.pruner)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    pruner=pruner,
                                    directions=[o.direction for o in spec.objectives])
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                           pruner=pruner), False
    try:
        check_identity(study, spec)
        client = retry_setup(lambda: setup_mlflow(workspace))
        if nest is None:
            check_experiment_kind(client, spec.name, SEARCH_ROLES)
    except UserError:
        if created:  # refused: the study made a moment ago goes too
            optuna.delete_study(study_name=name, storage=storage)
        raise
    if nest is None:
        experiment_id = retry_setup(lambda: get_or_create_experiment(
            client, workspace, spec.name, group_by=None))
        run_name, tags = f"{spec.name} (study)", {TAG_ROLE: Role.STUDY}
    else:
        experiment_id, run_name = nest.experiment_id, f"tune {nest.cell}"
        tags = {TAG_ROLE: Role.ARM_STUDY, TAG_ARM: nest.cell, MLFLOW_PARENT: nest.parent_run_id}
    if data_label:
        study.set_user_attr("data_label", data_label)
    parent = study_parent_run(client, experiment_id, run_name,
                              {**tags, TAG_SPEC: spec.name, TAG_OPTUNA_STUDY: name},
                              {"search.yaml": _spec_dict(spec)})
    return Search(spec, storage, study, client, experiment_id, parent, grace_period, nest)


def study_parent_run(client: Any, experiment_id: str, run_name: str, tags: dict[str, str],
                     artifacts: dict[str, dict]) -> str:
    """The study's parent run, found by its tags (role and study name) or made. Two workers
    that make it at the same moment both look again: the run with the earliest start (then
    the smaller id) is the parent, and the other worker deletes the one it made. A parent
    that is not RUNNING is reopened; the spec as this worker read it is logged again."""
    flt = (f"tags.`{TAG_ROLE}` = '{tags[TAG_ROLE]}' and "
           f"tags.`{TAG_OPTUNA_STUDY}` = '{tags[TAG_OPTUNA_STUDY]}'")
    runs, mine = all_runs(client, experiment_id, flt), None
    if not runs:
        mine = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        runs = all_runs(client, experiment_id, flt)
    first = min(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    parent = first.info.run_id
    if mine is not None and mine != parent:
        client.delete_run(mine)
    if first.info.status != "RUNNING":
        client.update_run(parent, status="RUNNING")
    for key, value in tags.items():
        if first.data.tags.get(key) != value:
            client.set_tag(parent, key, value)
    for name, content in artifacts.items():
        client.log_dict(parent, content, name)
    return parent


def run_search(spec: SearchSpec, workspace: Workspace, *, storage_url: str | None = None,
               n_trials: int | None = None, until: int | None = None,
               data: Dataset | None = None,
               pruner: optuna.pruners.BasePruner | None = None,
               callbacks: Callable[[int], list[Callback]] | None = None,
               final: bool = True, heartbeat_interval: int = 10,
               grace_period: int = 30,
               study_callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
               nest: Nest | None = None) -> SearchOutcome:
    """Join (or start) the spec's study and add trials until it is complete.

    `callbacks(number)`: training callbacks for trial `number` (-1: the final retraining);
    `study_callbacks`: Optuna callbacks called after every trial (a progress display).

    `storage_url` defaults to the workspace's; `n_trials` adds that many trials now instead
    of filling the study up to the spec's `n_trials`, `until` fills it up to that many
    counted trials (`counted_trials`; one of the two, or neither); `final` retrains the best
    configuration on train + validation and tests it once when the study is complete
    (single objective). Heartbeats every `heartbeat_interval` s; a trial without one for
    `grace_period` s is failed and run again with the same parameters.

    Trials train on `data` without its test split (`Dataset.without_test`): no test metric is
    computed or logged while tuning. `nest`: the study is one arm of an ablation grid
    (`search.tune`): its study name, its parent run nested under the grid's parent in the
    grid's experiment, its roles; no held-out test.
    """
    base = spec.base_config()
    data = data if data is not None else load_data(base.data)
    s = open_search(spec, workspace, storage_url=storage_url, data_label=data.label,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    pruner=pruner, nest=nest)
    target = (until if until is not None else spec.n_trials if n_trials is None
              else retry_setup(lambda: len(counted_trials(s.study))) + n_trials)
    objective = _Objective(s, base, data.without_test(), callbacks,
                           limit=target if nest is not None else None)
    try:
        fill_study(s, objective, target, study_callbacks or [])
    except KeyboardInterrupt:
        s.client.set_terminated(s.parent, "KILLED")  # the next run reopens it
        raise
    return finish_search(s, data, final=final and nest is None,
                         callbacks=objective.callbacks(-1))


def fill_study(s: Search, objective: "_Objective", target: int,
               after_trial: list[Callable[[optuna.Study, FrozenTrial], None]]) -> None:
    """Run `Study.optimize` until the study counts `target` trials (`counted_trials`).

    The trial an interruption cut off (KeyboardInterrupt, or a transient database error
    that reached Optuna's loop) is told FAIL by Optuna and enqueued again here, with the
    callback that retries stale trials; after a transient error the loop goes on. A trial
    that another worker failed as stale while it trained here (late heartbeats: a
    suspended machine) is an outcome: Optuna cannot tell it, and the loop goes on."""
    progress = []  # one entry per trial ended since the last cut-off

    def guard(study: optuna.Study, trial: FrozenTrial) -> None:
        objective.current = None
        progress.append(trial.number)
        for callback in after_trial:
            callback(study, trial)
        if retry_setup(lambda: tidy(s)) >= target:
            study.stop()

    if retry_setup(lambda: tidy(s)) >= target:
        return
    cut_offs = 0  # transient errors in a row, each cutting a trial off
    while True:
        try:
            s.study.optimize(objective, catch=(TrialFailed,), callbacks=[guard])
            if retry_setup(lambda: len(counted_trials(s.study))) >= target:
                return
        except KeyboardInterrupt:
            objective.retry_cut_off()
            raise
        except Exception as exc:
            if objective.superseded():
                continue
            if not is_transient(exc):
                raise
            objective.retry_cut_off()
            cut_offs = 1 if progress else cut_offs + 1
            progress.clear()
            if cut_offs > MAX_CUT_OFFS:  # back-off past minutes: the database is gone
                raise StoreError(f"{s.study.study_name}: the Optuna storage failed {cut_offs} "
                                 f"times in a row ({type(exc).__name__}); rerun once it is "
                                 "back: the cut-off trials run again") from None
            time.sleep(min(retry.PAUSE_S * 2 ** cut_offs, 30.0))


def tidy(s: Search) -> int:
    """Fail the stale trials (Optuna's `fail_stale_trials`, which enqueues each again) and
    those whose worker died before their first heartbeat, end FAILED the
    MLflow runs that dead workers left RUNNING, and return `counted_trials`.

    Optuna never counts a RUNNING trial without a heartbeat as stale: a worker killed
    between `Study.ask` and the first heartbeat held its trial RUNNING for ever. Each trial
    records its number as the user attribute `beating` right after its first heartbeat; a
    RUNNING trial without it that started more than the grace period ago is failed here
    (`set_trial_state_values`) and enqueued again, as Optuna does with a stale one. A trial
    run (role trial, under the study's parent) still RUNNING whose trial has ended lost its
    worker (killed, or failed as stale): it is ended FAILED, status `stale`."""
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(s.study)  # Optuna's own, and its retry callback
    start = datetime.now() - timedelta(seconds=s.grace_period)
    for t in s.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(BEATING) != t.number and t.datetime_start is not None \
                and t.datetime_start < start:
            _fail_and_retry(s, t.number, TrialState.RUNNING)
    trials = s.study.get_trials(deepcopy=False)
    ended = {str(t.number) for t in trials if t.state.is_finished()}
    running = f"tags.`{MLFLOW_PARENT}` = '{s.parent}' and attributes.status = 'RUNNING'"
    for run in all_runs(s.client, s.experiment_id, running):
        tags = run.data.tags
        if tags.get(TAG_ROLE) in (Role.TRIAL, Role.ARM_TRIAL) \
                and tags.get(TAG_OPTUNA_TRIAL_NUMBER) in ended:
            fail_stale_run(s.client, run.info.run_id)
    return len(counted_trials(s.study))


def _fail_and_retry(s: Search, number: int, state: TrialState) -> None:
    """Enqueue trial `number` again (Optuna's retry callback) if it is in `state`, failing
    it first when that is RUNNING; nothing when another worker ended it first."""
    trial_id = s.trial_id(number)
    try:
        if state == TrialState.RUNNING and not s.storage.set_trial_state_values(
                trial_id, TrialState.FAIL):
            return
    except UpdateFinishedTrialError:
        return
    trial = s.storage.get_trial(trial_id)
    if trial.state == TrialState.FAIL:
        retry_callback()(s.study, trial)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count towards `n_trials`: not waiting, not SURPLUS, and not an
    interrupted trial that was enqueued again (in a retry's history)."""
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():  # "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {n for t in trials for n in Retry.retry_history(t)}
    return [t for t in trials if t.number not in retried and t.state != TrialState.WAITING
            and not t.user_attrs.get(SURPLUS)]


def finish_search(s: Search, data: Dataset, *, final: bool,
                  callbacks: list[Callback]) -> SearchOutcome:
    """The study's outcome; the held-out test once the study is complete (the spec's
    n_trials: a look at the test set after `--n-trials 2` of a 40-trial study would be a
    second look later, with another best configuration); the parent run FINISHED when no
    trial is running or waiting."""
    spec, study = s.spec, s.study
    counts = {st.name: 0 for st in TrialState}
    for t in retry_setup(lambda: study.get_trials(deepcopy=False)):
        counts[t.state.name] += 1
    counted = retry_setup(lambda: len(counted_trials(study)))
    final_run = None
    if (final and not spec.multi and counts["RUNNING"] == 0 and counts["COMPLETE"]
            and counted >= spec.n_trials):
        final_run = _final_test(s, spec.base_config(), data, callbacks)
    if counts["RUNNING"] == 0 and counts["WAITING"] == 0:
        s.client.set_terminated(s.parent, "FINISHED")
    best = [{"number": t.number, "values": t.values, "params": t.params}
            for t in retry_setup(lambda: study.best_trials if spec.multi else
                                 ([study.best_trial] if counts["COMPLETE"] else []))]
    return SearchOutcome(study.study_name, s.parent, counts, best, final_run, counted,
                         spec.n_trials)


def check_identity(study: optuna.Study, spec: SearchSpec) -> None:
    """Join the study only if it was started from the same spec (`SearchSpec.identity`):
    the first worker records the identity on the study; a rerun whose spec differs (space,
    base config, objectives, sampler or pruner) is refused before it adds a trial. A study
    from before identities were recorded is adopted as it is."""
    ident = spec.identity()
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, ident)
    elif stored != ident:
        raise SpecError(f"name: study {study.study_name} was started from a different spec "
                        f"(identity {stored[:10]}, this spec {ident[:10]}: its base, space, "
                        "objectives, sampler or pruner changed); give the spec a new name, or "
                        "delete the study with `optuna delete-study --study-name "
                        f"{study.study_name} --storage URL`")


def _spec_dict(spec: SearchSpec) -> dict[str, Any]:
    return {"name": spec.name, "description": spec.description, "base": spec.base,
            "space": [p.__dict__ for p in spec.space],
            "objectives": [o.__dict__ for o in spec.objectives], "n_trials": spec.n_trials,
            "sampler": spec.sampler, "pruner": spec.pruner}


def check_budget(trial: optuna.Trial, limit: int | None) -> None:
    """Raise TrialFailed, the trial marked SURPLUS, when its slot is past `limit`: another
    process asked at the same moment and took the last slot, and an arm of a tuned grid
    gets exactly its budget, so this one is told FAIL untrained."""
    if limit is not None and retry_setup(lambda: trial_slot(trial.study, trial.number)) >= limit:
        trial.set_user_attr(SURPLUS, True)
        raise TrialFailed(f"trial {trial.number}: past the arm's {limit} trials")


class _Objective:
    """One trial: its parameters, its MLflow run (resumed from the run its retried trial
    left, `mlflow_run_id`), its training, its value."""

    def __init__(self, s: Search, base: RunConfig, data: Dataset,
                 callbacks: Callable[[int], list[Callback]] | None,
                 limit: int | None = None) -> None:
        if data.test is not None:
            raise ValueError("a trial's data must hold no test split (Dataset.without_test)")
        self.s, self.spec, self.base, self.data, self.client = s, s.spec, base, data, s.client
        nest = s.nest
        # an arm's trials: their role, the arm as a tag and in the run name
        self.role = Role.ARM_TRIAL if nest else Role.TRIAL
        self.arm = {TAG_ARM: nest.cell} if nest else {}
        self.prefix = f"tune {nest.cell} " if nest else ""
        self.reuse = nest is not None and nest.reuse
        self.experiment_id, self.parent, self.limit = s.experiment_id, s.parent, limit
        self.callbacks = callbacks or (lambda number: [])
        self.current: int | None = None  # the trial this worker runs now
        self.run_ids: dict[int, str] = {}  # trial number -> its MLflow run

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self.current = trial.number
        # its first heartbeat, then the mark that it has one (`tidy`)
        self.s.storage.record_heartbeat(self.s.trial_id(trial.number))
        trial.set_user_attr(BEATING, trial.number)
        check_budget(trial, self.limit)
        cfg = self.base.replace(retry_setup(lambda: suggest(trial, self.spec)))
        tags = {TAG_ROLE: self.role, **self.arm, TAG_SPEC: self.spec.name,
                TAG_OPTUNA_TRIAL_NUMBER: str(trial.number), TAG_HASH: cfg.hash(),
                TAG_DATA: self.data.fingerprint}
        if self.reuse:  # an arm's trial another grid already trained: copied, not trained
            source = find_trial_source(self.client, tags[TAG_HASH], self.data.fingerprint,
                                       self.parent)
            if source is not None:
                return self._reuse(trial, tags, source)
        run_dir = default_run_dir(cfg)
        resume_from = trial.user_attrs.get(MLFLOW_RUN)  # a retry: its trial's last run
        resume = resume_from is not None and fetch_checkpoint(self.client, resume_from, run_dir)
        if resume:
            tags[TAG_RESUMED_FROM] = resume_from
        try:
            with tracked_run(self.client, self.experiment_id,
                             f"{self.prefix}trial {trial.number}", tags,
                             parent_run_id=self.parent) as run:
                trial.set_user_attr(MLFLOW_RUN, run.run_id)
                self.run_ids[trial.number] = run.run_id
                state = "FAIL"
                try:
                    result = train(cfg, self._callbacks(trial, run.run_id), data=self.data,
                                   run_dir=run_dir, resume=resume,
                                   on_bad_checkpoint=OnBadCheckpoint.FRESH)
                    state = _trial_state(result.status)
                finally:
                    self.client.set_tag(run.run_id, TAG_OPTUNA_STATE, state)
                # a pruned trial trained as far as it should: FINISHED in MLflow
                run.end_as("FINISHED" if state == "PRUNED" else RunStatus(result.status))
        except Exception as exc:
            if is_transient(exc):  # the trial is enqueued again (`fill_study`)
                raise
            raise TrialFailed(f"trial {trial.number} crashed: {exc}") from exc
        if state == "PRUNED":
            raise optuna.TrialPruned(result.reason)
        if state == "FAIL":
            _log.warning("trial %d %s: %s", trial.number, result.status, result.reason)
            raise TrialFailed(f"trial {trial.number} {result.status}: {result.reason}")
        values = [_objective_value(o.metric, result.final, cfg) for o in self.spec.objectives]
        return values[0] if len(values) == 1 else tuple(values)

    def _reuse(self, trial: optuna.Trial, tags: dict[str, str], source: Any) -> float:
        """Copy `source`, a COMPLETE trial of the same config on the same data, as this
        trial's run (`tracking.reuse.copy_run`) and replay its per-epoch objective to this
        study's pruner, which may prune it where it would have pruned the training."""
        metric = self.spec.objectives[0].metric
        with tracked_run(self.client, self.experiment_id,
                         f"{self.prefix}trial {trial.number}", tags,
                         parent_run_id=self.parent) as run:
            trial.set_user_attr(MLFLOW_RUN, run.run_id)
            self.run_ids[trial.number] = run.run_id
            copy_run(self.client, source, run.run_id)
            history = sorted(self.client.get_metric_history(source.info.run_id, metric),
                             key=lambda m: m.step)
            state, value = "COMPLETE", history[-1].value if history else math.nan
            for i, m in enumerate(history):
                if report_epoch(trial, m.value, m.step, last=i == len(history) - 1):
                    state, value = "PRUNED", m.value
                    break
            self.client.set_tag(run.run_id, TAG_OPTUNA_STATE, state)
            run.end_as(RunStatus.FINISHED)
        if state == "PRUNED":
            raise optuna.TrialPruned(f"pruned on the history of reused run {source.info.run_id}")
        if not math.isfinite(value):
            raise TrialFailed(f"trial {trial.number}: reused run has no finite {metric}")
        return value

    def retry_cut_off(self) -> None:
        """Enqueue again the trial an interruption cut off, once Optuna told it FAIL."""
        if self.current is not None:
            retry_setup(lambda: _fail_and_retry(self.s, self.current, TrialState.FAIL))
            self.current = None

    def superseded(self) -> bool:
        """Whether the current trial was ended by another worker (failed as stale, and
        enqueued again there) while it trained here; its run is tagged so."""
        number = self.current
        if number is None or not self.s.storage.get_trial(
                self.s.trial_id(number)).state.is_finished():
            return False
        if number in self.run_ids:
            self.client.set_tag(self.run_ids[number], TAG_OPTUNA_STATE, SUPERSEDED)
        self.current = None
        return True

    def _callbacks(self, trial: optuna.Trial, run_id: str) -> list[Callback]:
        cbs = [CheckpointArtifact(self.client, run_id), MlflowRunCallback(run_id),
               *self.callbacks(trial.number)]
        if not self.spec.multi:
            cbs.append(OptunaPruning(trial, self.spec.objectives[0].metric))
        return cbs


def _trial_state(status: str) -> str:
    """The Optuna state a trainer status is recorded as (tag `optuna.state`)."""
    return {RunStatus.FINISHED: "COMPLETE", RunStatus.PRUNED: "PRUNED"}.get(status, "FAIL")


def _objective_value(metric: str, final: dict[str, float], cfg: RunConfig) -> float:
    if metric == "params":
        return float(count_params(CifarNet(cfg.model)))
    if metric == "macs":
        return float(summarize(cfg.model).total_macs)
    value = final[metric]
    if not math.isfinite(value):
        raise TrialFailed(f"{metric} is not finite")
    return value


def final_data(base: RunConfig) -> dict[str, Any]:
    """The data overrides of the held-out test's retraining: the validation split folded
    back in, as many images as the trials trained and validated on together. The trials'
    `data.train_subset` counts the images left after the validation split; with the split
    gone, the same subset size alone retrained on the trials' training images only (1,000
    of 6,000 with `train_subset` 1,000 and `val_size` 5,000), under the label "retrained on
    train + validation"."""
    d = base.data
    out: dict[str, Any] = {"data.val_size": 0}
    if d.train_subset is not None:
        out["data.train_subset"] = d.train_subset + d.val_size
    return out


def _final_test(s: Search, base: RunConfig, data: Dataset,
                callbacks: list[Callback]) -> dict[str, Any]:
    """Retrain the best configuration on train + validation and test it once."""
    best = retry_setup(lambda: s.study.best_trial)
    done = s.study.user_attrs.get(FINAL_ATTR)
    if done and done.get("trial") == best.number:
        return done
    cfg = base.replace({**best.params, **final_data(base)})
    full = load_data(cfg.data)
    # a held-out test left RUNNING by a process that died (kill -9) stayed RUNNING for good:
    # this process owns the test now, as a grid's worker owns a job it claimed
    for r in all_runs(s.client, s.experiment_id, f"tags.`{TAG_ROLE}` = '{Role.FINAL}' and "
                      f"tags.`{MLFLOW_PARENT}` = '{s.parent}' and attributes.status = "
                      "'RUNNING'"):
        fail_stale_run(s.client, r.info.run_id)
    tags = {TAG_ROLE: Role.FINAL, TAG_SPEC: s.spec.name,
            TAG_OPTUNA_TRIAL_NUMBER: str(best.number)}
    with tracked_run(s.client, s.experiment_id, f"final: best trial {best.number}", tags,
                     parent_run_id=s.parent) as run:
        result = train(cfg, [MlflowRunCallback(run.run_id), *callbacks], data=full,
                       run_dir=default_run_dir(cfg))
        run.end_as(RunStatus(result.status))
    record = {"trial": best.number, "run_id": run.run_id, "status": result.status,
              "test_acc": result.final.get("test_acc"), "params": best.params,
              "val_objective": best.value}
    s.study.set_user_attr(FINAL_ATTR, record)
    return record
