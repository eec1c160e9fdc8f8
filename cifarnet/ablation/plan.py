"""A grid before it runs: its cells, what it will cost on this machine, and what its seeds
can detect (`run --dry-run`, and the prediction a new grid's parent run records). Read-only:
nothing here writes to a store."""

from __future__ import annotations

import dataclasses
from typing import Any

from cifarnet.data.datasets import Dataset, preload_data
from cifarnet.errors import UserError
from cifarnet.spec.ablation import AblationSpec, Job
from cifarnet.spec.search import arm_search_spec


def trial_jobs(spec: AblationSpec, done: dict[str, int] | None = None) -> list[Job]:
    """The arms' trials still to run as jobs at the space's starting config (for the cost
    estimate: `n_trials` per arm less the `done` ones, `tune.epochs` each, on the trials'
    data)."""
    out = []
    for cell in spec.arms():
        cfg = arm_search_spec(spec.name, spec.untuned_config(cell), spec.tune).base_config()
        left = max(0, spec.tune.n_trials - (done or {}).get(cell.label, 0))
        out += [Job(cell, spec.tune.seed, cfg, cfg.hash())] * left
    return out


def load_trial_data(configs: list[Any]) -> dict[tuple, Dataset]:
    """The trials' data sets (by `data_key`), loaded before anything is written; a split the
    data cannot give is a UserError naming `tune.val_size` (the key the spec sets)."""
    try:
        return preload_data(c.data for c in configs)
    except UserError as exc:
        raise UserError(str(exc).replace("data.val_size", "tune.val_size", 1)) from None


def grid_table(spec: Any, jobs: list[Any]) -> str:
    """The cells with their parameters, MACs and receptive field, and the grid's size."""
    from cifarnet.model.summary import summarize

    cells = spec.cells()
    base = spec.base_config()
    matched = spec.match is not None
    rows = [("cell", "params", "MACs", "RF", *(("width", "unmatched params") if matched else ()))]
    for cell in cells:
        cfg = spec.cell_config(cell)
        s = summarize(cfg.model)
        extra = ((f"{cfg.model.width:g}", f"{summarize(base.replace(cell.levels).model).total_params:,}")
                 if matched else ())
        rows.append((cell.label, f"{s.total_params:,}", f"{s.total_macs:,}",
                     str(s.receptive_field), *extra))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    if matched:
        lines.append(f"match: params: model.width per cell, parameters within 1% of the base "
                     f"config's {summarize(base.model).total_params:,}")
    epochs = sum(j.config.train.epochs for j in jobs)
    lines.append(f"{len(cells)} cell(s) x {len(spec.seeds)} seed(s) = {len(jobs)} run(s), "
                 f"{epochs} epoch(s) in all")
    return "\n".join(lines)


def dry_run_estimate(spec: Any, jobs: list[Any], workers: int, workspace: Any,
                      reuse: bool) -> str:
    """The grid's predicted wall time on this machine at `workers` workers
    (`ablation.estimate`); read-only. An image folder that cannot be read raises its
    DataError (one line, exit 2: the run would fail on it too); CIFAR-10 that cannot be
    downloaded here (offline) gives no prediction, the rest of the dry run still shown."""
    from cifarnet.data.datasets import preload_data, resolve_source

    try:
        data = preload_data(j.config.data for j in jobs)
    except UserError as exc:
        if any(resolve_source(j.config.data)[0] == "imagefolder" for j in jobs):
            raise
        return f"predicted time: none (the data cannot be loaded here: {exc})"
    from cifarnet.ablation.estimate import hms

    if spec.tune is None:
        return verdict_estimate(spec, jobs, data, workers, workspace, reuse).line()
    done, tuned = tuning_progress_here(spec, data, workspace)
    if tuned:  # tuned before: no trial left, the verdict's jobs known, some may be done
        done = {c.label: spec.tune.n_trials for c in spec.arms()}
        spec = spec.with_tuned(tuned)
        jobs = spec.jobs()
        data = preload_data(j.config.data for j in jobs)
    verdict = verdict_estimate(spec, jobs, data, workers, workspace, reuse)
    tuning = tuning_estimate(spec, workers, done)
    pruned = (", an upper bound: pruned trials stop early"
              if spec.tune.pruner.get("type") != "none" else "")
    cells = ("the arms at their tuned values" if tuned else "the arms at values not yet tuned")
    return (f"tuning ({len(spec.arms())} arm(s) x {spec.tune.n_trials} trial(s) x "
            f"{spec.tune.epochs} epoch(s), on {spec.tune.val_size:,} validation images"
            f"{pruned}): {tuning.line()}\n"
            f"verdict (every cell on seeds {', '.join(map(str, spec.seeds))}, {cells}): "
            f"{verdict.line()}\n"
            f"in all: {hms(tuning.wall_s + verdict.wall_s)} (h:mm:ss)")


def tuning_progress_here(spec: Any, data: dict, workspace: Any) -> tuple[dict, dict]:
    """Read-only: the arms' trials this grid already counts and its recorded tuned values
    (`tracking.results.tuning_progress`); nothing when the store does not exist."""
    from cifarnet.ablation.execute import grid_id
    from cifarnet.tracking.client import mlflow_client
    from cifarnet.tracking.results import tuning_progress
    from cifarnet.tracking.store import store_exists

    if not store_exists(workspace):  # opening it would create it (--dry-run writes nothing)
        return {}, {}
    gid = grid_id(spec, {d.fingerprint for d in data.values()})
    return tuning_progress(mlflow_client(workspace.tracking_uri), spec.name, gid)


def tuning_estimate(spec: Any, workers: int, done: dict[str, int] | None = None) -> Any:
    """The predicted cost of the arms' trials still to run (`search.tune.trial_jobs`): each
    to the end (none pruned); `done`: trials already counted, by arm."""
    from cifarnet.ablation.estimate import estimate_grid
    from cifarnet.execute.base import cpu_count
    
    trials = trial_jobs(spec, done)
    data = {k: d.without_test() for k, d in
            load_trial_data([j.config for j in trials]).items()}
    est = estimate_grid(trials, data, workers, cpu_count() // workers, set())
    return dataclasses.replace(est, covered=sum(min(v, spec.tune.n_trials)
                                                for v in (done or {}).values()))


def power_lines(spec: Any, workspace: Any, seeds: int) -> list[str]:
    """One line per hypothesis: what `seeds` seeds (the spec's, or --max-seeds with
    --until-decided) can detect and the seeds its rope
    needs (`analysis.power`), with the spread of the store's earlier grids at this budget
    (`tracking.spread`) or the documented default; read-only."""
    from cifarnet.analysis.power import plan, plan_line, spread_of
    from cifarnet.spec.metrics import parse_time_to
    from cifarnet.data.datasets import data_key, preload_data
    from cifarnet.tracking.spread import budget_rows

    if not spec.hypotheses:
        return []
    base = spec.base_config()
    try:
        fingerprint = preload_data([base.data])[data_key(base.data)].fingerprint
    except UserError:
        fingerprint = None
    lines = ["power (80%, the verdict's 95% interval):"]
    for h in spec.hypotheses:
        if parse_time_to(h.metric):
            lines.append(f"  {h.id} ({h.expect}, {h.metric}): no power figure (the spread of "
                         "epochs to a target is not read from earlier grids)")
            continue
        spread = spread_of(budget_rows(workspace, base, h.metric, fingerprint))
        lines.append("  " + plan_line(h.id, h.expect, h.metric, h.rope,
                                      plan(h.expect, h.rope, seeds, spread)))
    return lines


def verdict_estimate(spec: Any, jobs: list[Any], data: dict, workers: int, workspace: Any,
              reuse: bool) -> Any:
    """`ablation.estimate.estimate_grid` with the threads each of `workers` workers gets."""
    from cifarnet.ablation.estimate import (
        covered_jobs,
        estimate_grid,
        seconds_since_start,
    )
    from cifarnet.execute.base import cpu_count

    covered = covered_jobs(spec, jobs, data, workspace, reuse)
    return estimate_grid(jobs, data, workers, cpu_count() // workers, covered,
                         started_s=seconds_since_start())


def grid_estimate(spec: Any, jobs: list[Any], data: dict, workers: int, workspace: Any,
                   reuse: bool) -> Any:
    """What a new grid's parent run records (`log_estimate`): `verdict_estimate`, plus the tuning
    phase (`tuning_estimate`) for a spec with a `tune:` block."""
    verdict = verdict_estimate(spec, jobs, data, workers, workspace, reuse)
    if spec.tune is None:
        return verdict
    tuning = tuning_estimate(spec, workers)
    return dataclasses.replace(verdict, runs=verdict.runs + tuning.runs,
                               wall_s=verdict.wall_s + tuning.wall_s,
                               epoch_s={**{f"tune {k}": v for k, v in tuning.epoch_s.items()},
                                        **verdict.epoch_s})
