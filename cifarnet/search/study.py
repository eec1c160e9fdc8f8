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

import hashlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from cifarnet.spec.ablation import SpecError
from cifarnet.config.schema import RunConfig
from cifarnet.data.datasets import Dataset, load_data
from cifarnet.errors import UserError
from cifarnet.model.cifarnet import CifarNet, count_params
from cifarnet.model.summary import summarize
from cifarnet.queue.jobs import (
    PARENT_ATTR,
    Heartbeat,
    StudyAttr,
    open_storage,
    open_study,
)
from cifarnet.queue.retry import retry_setup
from cifarnet.spec.search import SearchSpec
from cifarnet.tracking.reuse import copy_run, find_trial_source
from cifarnet.tracking.runs import all_runs, fail_stale_run, tracked_run
from cifarnet.tracking.startup import check_tracking_store
from cifarnet.tracking.store import (
    SEARCH_ROLES,
    MlflowRunCallback,
    check_experiment_kind,
    get_or_create_experiment,
    setup_mlflow,
    shared_parent_run,
)
from cifarnet.tracking.tags import (
    MLFLOW_PARENT,
    TAG_ARM,
    TAG_DATA,
    TAG_HASH,
    TAG_OPTUNA_STATE,
    TAG_OPTUNA_STUDY,
    TAG_OPTUNA_TRIAL_NUMBER,
    TAG_ROLE,
    TAG_SPEC,
    Role,
)
from cifarnet.training.callbacks import Callback, RunContext, StopTraining
from cifarnet.training.loop import default_run_dir, train
from cifarnet.training.status import RunStatus
from cifarnet.workspace import Workspace

_log = logging.getLogger(__name__)
FINAL_ATTR = "final_test_run"
SPEC_ATTR = "spec_identity"


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
    return not last and trial.should_prune()


def make_sampler(cfg: dict[str, Any], salt: tuple[int, ...] = ()) -> optuna.samplers.BaseSampler:
    """The spec's sampler. A `seed` is combined with `salt` (the trials the study already
    holds, the local worker's index): with the seed alone every process drew the same first
    points, so two workers, or a resumed search, tried the same parameters again."""
    args = {k: v for k, v in cfg.items() if k != "type"}
    if args.get("seed") is not None and salt:
        digest = hashlib.sha256(repr((args["seed"], *salt)).encode()).digest()
        args["seed"] = int.from_bytes(digest[:4], "big")
    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "nsgaii": optuna.samplers.NSGAIISampler}[cfg["type"]](**args)


def trial_slot(study: optuna.Study, number: int) -> int:
    """The place of trial `number` in the study's sequence of trials as an uninterrupted
    run would have made them: the trials before it that were neither a retry (an enqueued
    copy of an interrupted trial, `retry_of`, standing in for it) nor SURPLUS. A retry has
    the slot of the trial it retries, followed through retries of retries.

    Before, a trial's slot was the trials before it less those retried, and a retry had a
    slot of its own: when two trials were killed together and retried in the other order,
    the parameters they had not drawn yet came from other slots' streams, so one slot's
    point was trained twice and another's never (breaker)."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    while number in by_number and RETRY_OF in by_number[number].user_attrs:
        number = by_number[number].user_attrs[RETRY_OF]
    return sum(1 for t in trials if t.number < number and RETRY_OF not in t.user_attrs
               and not t.user_attrs.get(SURPLUS))


class SlotSeededSampler(optuna.samplers.BaseSampler):
    """The spec's sampler, its seed combined with each trial's slot (`trial_slot`) before
    the trial samples: trial k draws from the same stream whichever process asks for it,
    however often the study was interrupted and resumed, and in every arm of a tuned grid
    (same spec seed, same k). A seed alone gave every process the same first points; a seed
    salted with the process's trial count gave a resumed study other points than an
    uninterrupted one (and the arms of a tuned grid, run by several workers, other
    candidates). Without a seed it is the spec's sampler, unseeded."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.inner = make_sampler(cfg)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.cfg.get("seed") is not None:
            self.inner = make_sampler(self.cfg, salt=(trial_slot(study, trial.number),))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: Any) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

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
    (single objective).
    A trial whose worker stopped sending heartbeats (every `heartbeat_interval` s) for
    `grace_period` s is failed, its MLflow run ended FAILED (`stale`), and run again with the
    same parameters; so is a trial interrupted by a signal.

    Trials train on `data` without its test split (`Dataset.without_test`): no test metric is
    computed or logged while tuning. `nest`: the study is one arm of an ablation grid
    (`search.tune`): its study name, its parent run nested under the grid's parent in the
    grid's experiment, its roles; no held-out test.
    """
    base = spec.base_config()
    data = data if data is not None else load_data(base.data)
    check_tracking_store(workspace)  # read-only: before any store is written
    storage = retry_setup(lambda: open_storage(workspace, storage_url, heartbeat_interval,
                                               grace_period, on_stale=_retry_trial))
    directions = [o.direction for o in spec.objectives]
    study_name = nest.study_name if nest else f"search.{spec.name}"
    study, created = open_study(study_name, storage, directions=directions,
                                sampler=make_sampler(spec.sampler),
                                pruner=pruner or make_pruner(spec.pruner))
    check_identity(study, spec)  # before anything is written to MLflow
    study.sampler = SlotSeededSampler(spec.sampler)
    client = retry_setup(lambda: setup_mlflow(workspace))
    if nest is None:
        try:
            check_experiment_kind(client, spec.name, SEARCH_ROLES)
        except UserError:
            if created:  # refused: the study made a moment ago goes too
                optuna.delete_study(study_name=study.study_name, storage=storage)
            raise
        experiment_id = retry_setup(lambda: get_or_create_experiment(
            client, workspace, spec.name, group_by=None))
        parent_name, parent_tags = f"{spec.name} (study)", {TAG_ROLE: Role.STUDY}
    else:
        experiment_id, parent_name = nest.experiment_id, f"tune {nest.cell}"
        parent_tags = {TAG_ROLE: Role.ARM_STUDY, TAG_ARM: nest.cell,
                       MLFLOW_PARENT: nest.parent_run_id}
        final = False  # the arms' verdict runs are the grid's own
    study.set_user_attr("data_label", data.label)
    parent = shared_parent_run(client, experiment_id, StudyAttr(study, PARENT_ATTR), created,
                               parent_name,
                               {**parent_tags, TAG_SPEC: spec.name,
                                TAG_OPTUNA_STUDY: study.study_name},
                               {"search.yaml": _spec_dict(spec)})
    _recover_stale(study, client, experiment_id, parent)
    target = (until if until is not None else spec.n_trials if n_trials is None
              else len(counted_trials(study)) + n_trials)
    objective = _Objective(spec, base, data.without_test(), client, experiment_id, parent,
                           callbacks, nest)

    try:
        while len(counted_trials(study)) < target:
            trial = _run_trial(study, storage, objective,
                               target if nest is not None else None)
            for callback in study_callbacks or []:
                callback(study, trial)
    except KeyboardInterrupt:
        client.set_terminated(parent, "KILLED")  # the next run reopens it
        raise
    counts = {s.name: 0 for s in TrialState}
    for t in study.trials:
        counts[t.state.name] += 1
    final_run = None
    counted = len(counted_trials(study))
    # the held-out test once the study is complete (the spec's n_trials): a look at the test
    # set after `--n-trials 2` of a 40-trial study would be a second look later, with
    # another best configuration
    if (final and not spec.multi and counts["RUNNING"] == 0 and counts["COMPLETE"]
            and counted >= spec.n_trials):
        final_run = _final_test(spec, base, data, study, client, experiment_id, parent,
                                objective.callbacks(-1))
    if counts["RUNNING"] == 0 and counts["WAITING"] == 0:
        client.set_terminated(parent, "FINISHED")
    best = [{"number": t.number, "values": t.values, "params": t.params}
            for t in (study.best_trials if spec.multi else
                      ([study.best_trial] if counts["COMPLETE"] else []))]
    return SearchOutcome(study.study_name, parent, counts, best, final_run, counted,
                         spec.n_trials)


RETRY_OF = "retry_of"
SURPLUS = "surplus"  # user attr: a trial asked for past an arm's budget, never trained
SUPERSEDED = "superseded"  # tag value of TAG_OPTUNA_STATE: another worker ended the trial


def _run_trial(study: optuna.Study, storage: optuna.storages.RDBStorage,
               objective: "_Objective", limit: int | None = None) -> FrozenTrial:
    """Ask for a trial, train it with heartbeats, tell its outcome; the trial as stored.

    Optuna's ask-and-tell interface (its documented alternative to `Study.optimize`), told
    with `skip_if_finished=True`: when another worker has failed this trial as stale while it
    trained here (its heartbeats were late: a suspended machine, a stopped process that was
    resumed), that is an outcome, not a crash (`Study.optimize` raises "Cannot tell a FAIL
    trial"): the other worker has enqueued it again, and this trial's MLflow run is tagged
    `optuna.state = superseded`. A trial interrupted by a signal is told FAIL (the objective
    has enqueued it again) and the KeyboardInterrupt goes on."""
    _recover_stale(study, objective.client, objective.experiment_id, objective.parent)
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with optimize": the
        warnings.simplefilter("ignore", UserWarning)  # heartbeat is sent here, as there
        trial = study.ask()
    if limit is not None and trial_slot(study, trial.number) >= limit:
        # another process asked at the same moment and took the last slot: an arm of a
        # tuned grid gets exactly its budget, so this one is told FAIL untrained (SURPLUS)
        trial.set_user_attr(SURPLUS, True)
        return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    state, value = TrialState.FAIL, None
    try:
        with Heartbeat(storage, trial._trial_id):
            value = objective(trial)
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except TrialFailed as exc:
        _log.warning("%s", exc)
    finally:
        taken = storage.get_trial(trial._trial_id).state.is_finished()
        told = study.tell(trial, value, state=state, skip_if_finished=True)
    if taken:
        objective.superseded(trial.number)
    return told


def _retry_trial(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> None:
    """Enqueue an interrupted trial again with the same parameters: it is run before any new
    trial, and the interrupted one no longer counts towards `n_trials`. A trial stopped while
    drawing its parameters has some of them: the retry fixes those and draws the rest from
    the same slot's stream (`trial_slot`).

    The parameters are read from the database, not from `trial`: Optuna's in-process copy
    (its `_CachedStorage`, and a `Trial`'s own cache, written after the database) may predate
    the last parameter a killed worker stored; a retry enqueued from it had lost them."""
    storage = study._storage  # Optuna's cache around the RDBStorage: read past it
    stored = getattr(storage, "_backend", storage).get_trial(trial._trial_id)
    study.enqueue_trial(stored.params, user_attrs={RETRY_OF: trial.number})


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count towards `n_trials`: not waiting, and not an interrupted trial
    that was enqueued again."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    return [t for t in trials if t.number not in retried and t.state != TrialState.WAITING
            and not t.user_attrs.get(SURPLUS)]


def count_trials(study_name: str, storage: optuna.storages.BaseStorage) -> int:
    """`counted_trials` of the study `study_name`; 0 when there is no such study yet."""
    try:
        return len(counted_trials(optuna.load_study(study_name=study_name, storage=storage)))
    except KeyError:  # no study yet
        return 0


def _recover_stale(study: optuna.Study, client: Any, experiment_id: str, parent: str) -> None:
    """Fail the trials whose worker stopped sending heartbeats (past the grace period; each
    is enqueued again by `_retry_trial`), and end their MLflow runs FAILED (status `stale`):
    those the trials name (`mlflow_run_id`), and the RUNNING trial runs under `parent` whose
    trial has ended, which a worker killed between starting a run and naming it on its trial
    left RUNNING for good."""
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    for t in trials:
        run_id = t.user_attrs.get("mlflow_run_id")
        if t.number in retried and run_id and client.get_run(run_id).info.status == "RUNNING":
            fail_stale_run(client, run_id)
    ended = {str(t.number) for t in trials if t.state.is_finished()}
    running = f"tags.`{MLFLOW_PARENT}` = '{parent}' and attributes.status = 'RUNNING'"
    for run in all_runs(client, experiment_id, running):
        tags = run.data.tags
        if tags.get(TAG_ROLE) in (Role.TRIAL, Role.ARM_TRIAL) \
                and tags.get(TAG_OPTUNA_TRIAL_NUMBER) in ended:
            fail_stale_run(client, run.info.run_id)


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


@dataclass(frozen=True)
class Nest:
    """Where a study runs as one arm of an ablation grid (`search.tune`): its Optuna study
    name, the grid's MLflow experiment and parent run, and the arm's cell label."""

    study_name: str
    experiment_id: str
    parent_run_id: str
    cell: str
    reuse: bool = True  # copy a COMPLETE trial of the same config from another grid


class _Objective:
    def __init__(self, spec: SearchSpec, base: RunConfig, data: Dataset, client: Any,
                 experiment_id: str, parent: str,
                 callbacks: Callable[[int], list[Callback]] | None,
                 nest: Nest | None = None) -> None:
        if data.test is not None:
            raise ValueError("a trial's data must hold no test split (Dataset.without_test)")
        self.spec, self.base, self.data, self.client = spec, base, data, client
        # an arm's trials: their role, the arm as a tag and in the run name
        self.role = Role.ARM_TRIAL if nest else Role.TRIAL
        self.arm = {TAG_ARM: nest.cell} if nest else {}
        self.prefix = f"tune {nest.cell} " if nest else ""
        self.reuse = nest is not None and nest.reuse
        self.experiment_id, self.parent = experiment_id, parent
        self.callbacks = callbacks or (lambda number: [])
        self.run_ids: dict[int, str] = {}  # trial number -> its MLflow run

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        """Train one trial; a KeyboardInterrupt at any moment of it (the first signal's at
        the next batch, a second signal's wherever it lands, drawing the parameters included)
        enqueues its retry (`_retry_trial`) before it propagates."""
        try:
            return self._trial(trial)
        except KeyboardInterrupt:
            _retry_trial(trial.study, trial)  # the next run takes it first
            raise

    def _trial(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        cfg = self.base.replace(suggest(trial, self.spec))
        tags = {TAG_ROLE: self.role, **self.arm, TAG_SPEC: self.spec.name,
                TAG_OPTUNA_TRIAL_NUMBER: str(trial.number), TAG_HASH: cfg.hash(),
                TAG_DATA: self.data.fingerprint}
        if self.reuse:  # an arm's trial another grid already trained: copied, not trained
            source = find_trial_source(self.client, tags[TAG_HASH], self.data.fingerprint,
                                       self.parent)
            if source is not None:
                return self._reuse(trial, tags, source)
        try:
            with tracked_run(self.client, self.experiment_id,
                             f"{self.prefix}trial {trial.number}", tags,
                             parent_run_id=self.parent) as run:
                trial.set_user_attr("mlflow_run_id", run.run_id)
                self.run_ids[trial.number] = run.run_id
                try:
                    result = train(cfg, self._callbacks(trial, run.run_id), data=self.data,
                                   run_dir=default_run_dir(cfg))
                    state = _trial_state(result.status)
                except BaseException:
                    state = "FAIL"
                    raise
                finally:
                    self.client.set_tag(run.run_id, TAG_OPTUNA_STATE, state)
                # a pruned trial trained as far as it should: FINISHED in MLflow
                run.end_as("FINISHED" if state == "PRUNED" else RunStatus(result.status))
        except Exception as exc:
            raise TrialFailed(f"trial {trial.number} crashed: {exc}") from exc
        if state == "PRUNED":
            raise optuna.TrialPruned(result.reason)
        if state == "FAIL":
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
            trial.set_user_attr("mlflow_run_id", run.run_id)
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

    def superseded(self, number: int) -> None:
        """Trial `number` was ended by another worker while it trained here."""
        run_id = self.run_ids.get(number)
        if run_id:
            self.client.set_tag(run_id, TAG_OPTUNA_STATE, SUPERSEDED)

    def _callbacks(self, trial: optuna.Trial, run_id: str) -> list[Callback]:
        cbs = [MlflowRunCallback(run_id), *self.callbacks(trial.number)]
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


def _final_test(spec: SearchSpec, base: RunConfig, data: Dataset, study: optuna.Study,
                client: Any, experiment_id: str, parent: str,
                callbacks: list[Callback]) -> dict[str, Any]:
    """Retrain the best configuration on train + validation and test it once."""
    best = study.best_trial
    done = study.user_attrs.get(FINAL_ATTR)
    if done and done.get("trial") == best.number:
        return done
    cfg = base.replace({**best.params, **final_data(base)})
    full = load_data(cfg.data)
    # a held-out test left RUNNING by a process that died (kill -9) stayed RUNNING for good:
    # this process owns the test now, as a grid's worker owns a job it claimed
    for r in all_runs(client, experiment_id, f"tags.`{TAG_ROLE}` = '{Role.FINAL}' and "
                      f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = "
                      "'RUNNING'"):
        fail_stale_run(client, r.info.run_id)
    tags = {TAG_ROLE: Role.FINAL, TAG_SPEC: spec.name, TAG_OPTUNA_TRIAL_NUMBER: str(best.number)}
    with tracked_run(client, experiment_id, f"final: best trial {best.number}", tags,
                     parent_run_id=parent) as run:
        result = train(cfg, [MlflowRunCallback(run.run_id), *callbacks], data=full,
                       run_dir=default_run_dir(cfg))
        run.end_as(RunStatus(result.status))
    record = {"trial": best.number, "run_id": run.run_id, "status": result.status,
              "test_acc": result.final.get("test_acc"), "params": best.params,
              "val_objective": best.value}
    study.set_user_attr(FINAL_ATTR, record)
    return record
