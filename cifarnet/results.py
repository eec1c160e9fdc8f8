"""Reading an ablation's runs back from MLflow as a pandas DataFrame (public API).

    from cifarnet.results import load_runs
    runs = load_runs("dilation_add")      # one row per child run of the latest grid

Columns: run_id, status, cell, seed, config_hash, every logged param as `params.<key>`, every
final metric as `metrics.<name>`, and `history` (test accuracy per epoch) when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from cifarnet.errors import UserError
from cifarnet.spec import AblationSpec, parse_spec, resolve_spec_path
from cifarnet.tracking import TAG_CELL, TAG_HASH, TAG_ROLE, TAG_SEED, setup_mlflow
from cifarnet.yamlio import safe_load


@dataclass(frozen=True)
class Grid:
    """An experiment's grid as it ran: its spec (as logged, overrides included) and parent."""

    spec: AblationSpec
    experiment: str
    experiment_id: str
    parent_run_id: str


def find_grid(spec_or_experiment: str) -> Grid:
    """The latest grid of an experiment, named directly or through its spec file."""
    import mlflow
    from mlflow import MlflowClient

    setup_mlflow()
    name = spec_or_experiment
    try:
        from cifarnet.spec import load_spec

        name = load_spec(resolve_spec_path(spec_or_experiment)).name
    except UserError:
        pass
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"{spec_or_experiment}: no experiment of that name in "
                        f"{mlflow.get_tracking_uri()}")
    parents = client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise UserError(f"{name}: the experiment has no ablation parent run")
    parent = parents[0]
    raw = safe_load(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/spec.yaml"))
    return Grid(parse_spec(raw), name, exp.experiment_id, parent.info.run_id)


def load_runs(spec_or_experiment: str | Grid, with_history: bool = False) -> pd.DataFrame:
    """The child runs of a grid, one row each."""
    import mlflow
    from mlflow import MlflowClient

    grid = spec_or_experiment if isinstance(spec_or_experiment, Grid) else find_grid(
        spec_or_experiment)
    df = mlflow.search_runs(
        experiment_ids=[grid.experiment_id],
        filter_string=(f"tags.`{TAG_ROLE}` = 'child' and "
                       f"tags.`mlflow.parentRunId` = '{grid.parent_run_id}'"),
        max_results=50_000)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "status", "cell", "seed", "config_hash"])
    df = df.rename(columns={f"tags.{TAG_CELL}": "cell", f"tags.{TAG_HASH}": "config_hash"})
    df["seed"] = df[f"tags.{TAG_SEED}"].astype(int)
    if with_history:
        client = MlflowClient()
        df["history"] = [_history(client, rid) for rid in df["run_id"]]
    keep = ["run_id", "status", "cell", "seed", "config_hash", "start_time", "end_time"]
    rest = [c for c in df.columns if c.startswith(("params.", "metrics.", "tags."))]
    extra = ["history"] if with_history else []
    return df[keep + extra + rest].sort_values(["cell", "seed"]).reset_index(drop=True)


def _history(client: Any, run_id: str) -> dict[str, list[float]]:
    out = {}
    for metric in ("test_acc", "val_acc"):
        points = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        if points:
            out[metric] = [m.value for m in points]
    return out
