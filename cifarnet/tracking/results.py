"""Reading an ablation's runs back from MLflow as a pandas DataFrame (public API).

    from cifarnet.tracking.results import load_runs
    runs = load_runs("dilation_add")      # one row per child run of the latest grid

Both functions read the store of a `Workspace` (default: the working directory's, as the CLI
resolves it).

Columns: run_id, status, cell (the canonical label of the cell its `cifarnet.cell` tag names,
`AblationSpec.canonical_label`), seed, seed_added (True for a seed `--until-decided` added
beyond the spec's list: tag `cifarnet.seed_added`), config_hash, every logged param as
`params.<key>`, every final metric as `metrics.<name>`, and `history` (test accuracy per epoch)
when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from cifarnet.spec.ablation import AblationSpec, parse_spec
from cifarnet.spec.common import resolve_spec_path
from cifarnet.config.yamlio import safe_load, yaml_problem
from cifarnet.errors import UserError
from cifarnet.tracking.retry import retry_setup
from cifarnet.tracking.store import setup_mlflow, store_exists
from cifarnet.tracking.tags import (
    METRIC_BEST_VAL,
    MLFLOW_PARENT,
    PARAM_TUNED,
    TAG_ARM,
    TAG_BEST_TRIAL,
    TAG_OPTUNA_STATE,
    TAG_OPTUNA_TRIAL_NUMBER,
    TAG_CELL,
    TAG_DATA,
    TAG_GRID,
    TAG_HASH,
    TAG_ROLE,
    TAG_SEED,
    TAG_SEED_ADDED,
    Role,
)
from cifarnet.workspace import Workspace

from cifarnet.tracking.urls import masked



@dataclass(frozen=True)
class ParentRun:
    """An experiment's latest grid parent run, with the spec it ran (as logged, overrides
    included)."""

    spec: AblationSpec
    experiment: str
    experiment_id: str
    parent_run_id: str
    workspace: Workspace
    # what the grid trained on (tag cifarnet.data_fingerprint); empty for older grids
    data_fingerprints: frozenset[str] = frozenset()
    grid_id: str = ""  # tag cifarnet.grid: base config, factors and data
    grids: int = 1  # grids (parent runs) the experiment holds
    start_time: int = 0  # ms since the epoch

    def identity_line(self) -> str:
        """What a report reports, in one line: grid id, parent run, start (UTC), and how
        to pick another grid of the experiment when it holds several."""
        import datetime as dt

        start = dt.datetime.fromtimestamp(self.start_time / 1000, dt.timezone.utc)
        line = (f"{self.experiment}: grid {self.grid_id[:12] or '(untagged)'}, parent run "
                f"{self.parent_run_id}, started {start:%Y-%m-%d %H:%M} UTC")
        if self.grids > 1:
            line += (f"; the experiment holds {self.grids} grids (the newest is shown unless "
                     "--grid ID names another)")
        return line


def find_parent_run(spec_or_experiment: str, workspace: Workspace | None = None,
                    run_id: str | None = None, grid: str | None = None) -> ParentRun:
    """The latest grid parent run of an experiment (or the one with id `run_id`, or the
    latest of the grid whose id starts with `grid`), the experiment named directly or
    through its spec file.

    Raises UserError when the store has no such experiment, it has no grid parent run, or
    no grid matches `grid`."""
    import mlflow

    workspace = workspace or Workspace.resolve()
    if grid is not None and not grid.strip():  # '' is a prefix of every id: it chose the newest
        raise UserError("--grid: empty; give the first characters of a grid id (`report` "
                        "lists them when the experiment holds several)")
    client = _existing_store(workspace, spec_or_experiment)
    name = spec_or_experiment
    try:
        from cifarnet.spec.ablation import load_spec

        name = load_spec(resolve_spec_path(spec_or_experiment)).name
    except UserError:
        pass
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"{spec_or_experiment}: no experiment of that name in "
                        f"{masked(workspace.tracking_uri)}")
    flt = f"tags.`{TAG_ROLE}` = '{Role.PARENT}'"
    parents = client.search_runs([exp.experiment_id], flt,
                                 order_by=["attributes.start_time DESC"], max_results=1000)
    if not parents:
        raise UserError(f"{name}: the experiment has no ablation parent run")
    grids = {p.data.tags.get(TAG_GRID, p.info.run_id) for p in parents}
    if run_id:
        parents = [p for p in parents if p.info.run_id == run_id]
    if grid:
        parents = [p for p in parents if p.data.tags.get(TAG_GRID, "").startswith(grid)]
        if not parents:
            raise UserError(f"--grid: no grid of experiment {name} has an id starting with "
                            f"{grid!r} (its grids: "
                            f"{', '.join(sorted(g[:12] for g in grids))})")
    if not parents:
        raise UserError(f"{name}: the experiment has no parent run {run_id}")
    parent = parents[0]
    raw = read_artifact_yaml(parent.info.run_id, "spec.yaml", lambda: retry_setup(
        lambda: mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/spec.yaml")))
    fps = frozenset(filter(None, parent.data.tags.get(TAG_DATA, "").split(",")))
    try:
        spec = parse_spec(raw)
    except UserError as exc:
        raise UserError(f"{name}: parent run {parent.info.run_id}: its spec.yaml artifact: "
                        f"{exc}") from None
    if spec.tune is not None:  # the arms' tuned values, once tuning is complete
        spec = spec.with_tuned(tuned_values(client, parent.info.run_id))
    return ParentRun(spec, name, exp.experiment_id, parent.info.run_id, workspace,
                     fps, parent.data.tags.get(TAG_GRID, ""), len(grids),
                     parent.info.start_time)


def _existing_store(workspace: Workspace, name: str) -> Any:
    """A client of the workspace's MLflow store; UserError naming `name` when there is no
    store yet (opening it would create one)."""
    from cifarnet.tracking.startup import check_sqlite_shape

    if workspace.local_tracking:
        check_sqlite_shape(workspace.tracking_uri, workspace.local_root / "mlflow.db")
    if not store_exists(workspace):
        where, advice = ((workspace.local_root, "run a grid first, or set MLFLOW_TRACKING_URI")
                         if workspace.local_tracking else
                         (f"{masked(workspace.tracking_uri)}, MLFLOW_TRACKING_URI",
                          "run a grid there first"))
        raise UserError(f"{name}: no experiment of that name (no store at {where}; {advice})")
    return setup_mlflow(workspace)


def load_runs(spec_or_experiment: str | ParentRun, with_history: bool = False,
              workspace: Workspace | None = None) -> pd.DataFrame:
    """The runs of a grid, one row each (columns: see the module docstring); an empty frame
    with the key columns when the grid has none. `with_history` adds the per-epoch test (and
    validation) accuracy, one MLflow query per run.

    A grid's runs are its parent's children, and, for each of its jobs that another grid of
    the experiment already finished (the runner skips those as "already done"), that
    FINISHED run: the report covers exactly the jobs the grid counted as done."""
    import mlflow

    grid = spec_or_experiment if isinstance(spec_or_experiment, ParentRun) else (
        find_parent_run(spec_or_experiment, workspace))
    df = retry_setup(lambda: mlflow.search_runs(  # the fluent API: not our retrying client
        experiment_ids=[grid.experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{Role.CHILD}'",
        max_results=50_000))
    if not df.empty:
        jobs = {j.config_hash for j in grid.spec.settled_jobs()}
        mine = df[f"tags.{MLFLOW_PARENT}"] == grid.parent_run_id
        reused = (df["status"] == "FINISHED") & df[f"tags.{TAG_HASH}"].isin(jobs) & ~mine
        if f"tags.{TAG_DATA}" in df.columns:  # only runs trained on this grid's data
            reused &= df[f"tags.{TAG_DATA}"].isin(grid.data_fingerprints)
        reused &= ~df[f"tags.{TAG_HASH}"].isin(
            set(df.loc[mine & (df["status"] == "FINISHED"), f"tags.{TAG_HASH}"]))
        df = df[mine | reused].sort_values("start_time")
        done = df["status"] == "FINISHED"
        latest = ~df[done].duplicated(subset=[f"tags.{TAG_HASH}"], keep="last")
        df = pd.concat([df[~done], df[done][latest]])  # one FINISHED run per job
    if df.empty:
        return pd.DataFrame(columns=["run_id", "status", "cell", "seed", "seed_added",
                                     "config_hash"])
    df = df.rename(columns={f"tags.{TAG_CELL}": "cell", f"tags.{TAG_HASH}": "config_hash"})
    # the cell's canonical label, whatever order the tag lists its levels in
    df["cell"] = [grid.spec.canonical_label(c) if isinstance(c, str) else c for c in df["cell"]]
    df["seed"] = df[f"tags.{TAG_SEED}"].astype(int)
    df["seed_added"] = (df[f"tags.{TAG_SEED_ADDED}"] == "true" if f"tags.{TAG_SEED_ADDED}"
                        in df.columns else False)
    if with_history:
        from cifarnet.tracking.client import mlflow_client

        client = mlflow_client(grid.workspace.tracking_uri)
        df["history"] = [_history(client, rid) for rid in df["run_id"]]
    keep = ["run_id", "status", "cell", "seed", "seed_added", "config_hash", "start_time",
            "end_time"]
    rest = [c for c in df.columns if c.startswith(("params.", "metrics.", "tags."))]
    extra = ["history"] if with_history else []
    return df[keep + extra + rest].sort_values(["cell", "seed"]).reset_index(drop=True)


TUNED_ARTIFACT = "tuned.yaml"  # on a tuned grid's parent: cell label -> its arm's best values


def tuned_values(client: Any, parent_run_id: str) -> dict[str, dict[str, Any]]:
    """The arms' tuned values a grid's parent records (`search.tune.tune_grid`); {} before
    its tuning is complete."""
    import tempfile

    if not any(f.path == TUNED_ARTIFACT for f in client.list_artifacts(parent_run_id)):
        return {}
    with tempfile.TemporaryDirectory(prefix="cifarnet-tuned-") as tmp:
        path = client.download_artifacts(parent_run_id, TUNED_ARTIFACT, tmp)
        return read_artifact_yaml(parent_run_id, TUNED_ARTIFACT,
                                  lambda: Path(path).read_text()) or {}


def read_artifact_yaml(run_id: str, name: str, read: Callable[[], str]) -> Any:
    """A YAML artifact of a run, parsed; a damaged one (edited by hand, cut by a full disk)
    is a UserError naming the run and the artifact, not a parser traceback."""
    try:
        return safe_load(read())
    except yaml.YAMLError as exc:
        raise UserError(f"run {run_id}: its artifact {name} is not valid YAML "
                        f"({yaml_problem(exc)}); the store was damaged") from None


def tuning_progress(client: Any, experiment: str, grid: str) -> tuple[dict[str, int],
                                                                   dict[str, dict[str, Any]]]:
    """Read-only, for `--dry-run`: the newest parent run of grid `grid` (tag cifarnet.grid)
    in `experiment`, its arms' trials that count (COMPLETE or PRUNED, by arm) and its recorded
    tuned values (`tuned_values`); ({}, {}) when the store has no such grid."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}, {}
    parents = client.search_runs([exp.experiment_id],
                                 f"tags.`{TAG_ROLE}` = '{Role.PARENT}' and "
                                 f"tags.`{TAG_GRID}` = '{grid}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        return {}, {}
    parent = parents[0].info.run_id
    studies = client.search_runs([exp.experiment_id],
                                 f"tags.`{TAG_ROLE}` = '{Role.ARM_STUDY}' and "
                                 f"tags.`{MLFLOW_PARENT}` = '{parent}'", max_results=1000)
    done: dict[str, int] = {}
    for study in studies:
        trials = client.search_runs([exp.experiment_id],
                                    f"tags.`{MLFLOW_PARENT}` = '{study.info.run_id}'",
                                    max_results=50_000)
        done[study.data.tags.get(TAG_ARM, "")] = sum(
            t.data.tags.get(TAG_OPTUNA_STATE) in ("COMPLETE", "PRUNED") for t in trials)
    return done, tuned_values(client, parent)


def load_tuning(grid: ParentRun) -> pd.DataFrame:
    """The trials of a tuned grid's arms, one row each: cell, trial (its Optuna number),
    state (COMPLETE, PRUNED, FAIL, superseded: tag `optuna.state`), val_acc (the last
    validation accuracy it logged, a fraction), run_id, study_run_id; the study's
    `best_trial` and `best_val_acc` and the tuned values as `tuned.<key>` on every row of
    its arm. Empty (those columns) for a grid without a `tune:` block. Two MLflow queries."""
    import mlflow

    cols = ["cell", "trial", "state", "val_acc", "run_id", "study_run_id", "best_trial",
            "best_val_acc"]
    if grid.spec.tune is None:
        return pd.DataFrame(columns=cols)
    runs = retry_setup(lambda: mlflow.search_runs(
        experiment_ids=[grid.experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` LIKE 'arm_%'",  # arm_study, arm_trial
        max_results=50_000))
    if runs.empty:
        return pd.DataFrame(columns=cols)
    studies = runs[(runs[f"tags.{TAG_ROLE}"] == Role.ARM_STUDY)
                   & (runs[f"tags.{MLFLOW_PARENT}"] == grid.parent_run_id)]
    rows = []
    for _, study in studies.iterrows():
        trials = runs[(runs[f"tags.{TAG_ROLE}"] == Role.ARM_TRIAL)
                      & (runs[f"tags.{MLFLOW_PARENT}"] == study["run_id"])]
        tuned = {c[len("params."):]: v for c, v in study.items()
                 if str(c).startswith(f"params.{PARAM_TUNED}") and isinstance(v, str)}
        best = study.get(f"tags.{TAG_BEST_TRIAL}")
        for _, t in trials.iterrows():
            arm = study.get(f"tags.{TAG_ARM}") or study.get(f"tags.{TAG_CELL}")
            rows.append({"cell": grid.spec.canonical_label(arm) if isinstance(arm, str) else arm,
                         "trial": int(t[f"tags.{TAG_OPTUNA_TRIAL_NUMBER}"]),
                         "state": t.get(f"tags.{TAG_OPTUNA_STATE}"),
                         "val_acc": t.get("metrics.val_acc"), "run_id": t["run_id"],
                         "study_run_id": study["run_id"],
                         "best_trial": int(best) if isinstance(best, str) else None,
                         "best_val_acc": study.get(f"metrics.{METRIC_BEST_VAL}"), **tuned})
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows).sort_values(["cell", "trial"]).reset_index(drop=True)


def _history(client: Any, run_id: str) -> dict[str, list[float]]:
    out = {}
    for metric in ("test_acc", "val_acc"):
        points = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        if points:
            out[metric] = [m.value for m in points]
    return out


def load_predictions(workspace: Workspace, run_ids: list[str]) -> dict[str, tuple[Any, Any]]:
    """{run id: (predicted, labels)} from each run's `test_predictions.npz` artifact (numpy
    arrays of shape [N], the test set's order); runs without it (older runs, unfinished
    ones) are left out. One artifact download per run."""
    import tempfile

    import numpy as np

    from cifarnet.tracking.client import mlflow_client
    from cifarnet.training.evaluation import PREDICTIONS

    client = mlflow_client(workspace.tracking_uri)
    out: dict[str, tuple[Any, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cifarnet-predictions-") as tmp:
        for i, run_id in enumerate(run_ids):
            try:
                path = client.download_artifacts(run_id, PREDICTIONS, f"{tmp}/{i}")
            except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing file
                continue
            with np.load(path) as npz:
                out[run_id] = (npz["predicted"], npz["label"])
    return out
