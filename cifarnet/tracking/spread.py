"""The seed spread of earlier grids at a budget, read back from the store (`run --dry-run`).

A budget is the values of `BUDGET_KEYS` and the data set (its content fingerprint): the
spread of paired differences over seeds depends on how long and on how much data a network
trains and on how many test images score it, not on which flags differ. Every FINISHED grid
run at the same budget, in any active experiment of the store, counts (copies of reused runs
are left out: they repeat their source); `analysis.power.spread_of` pools them.
"""

from __future__ import annotations

from typing import Any

from cifarnet.config.schema import RunConfig
from cifarnet.tracking.reuse import TAG_REUSED_FROM
from cifarnet.tracking.store import store_exists
from cifarnet.tracking.tags import (
    MLFLOW_PARENT,
    TAG_CELL,
    TAG_DATA,
    TAG_ROLE,
    TAG_SEED,
    Role,
)

BUDGET_KEYS = ("train.epochs", "train.batch_size", "data.train_subset", "data.test_subset",
               "data.val_size")
_PAGE = 10_000


def budget_filter(base: RunConfig, data_fingerprint: str | None) -> str:
    """An MLflow filter string for FINISHED grid runs at `base`'s budget on the data set."""
    flat = base.flatten()
    parts = [f"tags.`{TAG_ROLE}` = '{Role.CHILD}'", "attributes.status = 'FINISHED'"]
    parts += [f"params.`{k}` = '{flat[k]}'" for k in BUDGET_KEYS]
    if data_fingerprint:
        parts.append(f"tags.`{TAG_DATA}` = '{data_fingerprint}'")
    return " and ".join(parts)


def budget_rows(workspace: Any, base: RunConfig, metric: str,
                data_fingerprint: str | None) -> list[tuple[str, str, int, float]]:
    """(grid, cell, seed, value of `metric`) of every FINISHED grid run of the store at
    `base`'s budget on the data set `data_fingerprint` (grid: the parent run's id); [] when
    the store does not exist (it is not created). Read-only."""
    from mlflow.entities import ViewType

    from cifarnet.tracking.client import mlflow_client

    if not store_exists(workspace):
        return []
    client = mlflow_client(workspace.tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    flt = budget_filter(base, data_fingerprint)
    rows = []
    for start in range(0, len(exps), 100):  # MLflow searches at most 100 experiments at once
        token = None
        while True:
            page = client.search_runs(exps[start:start + 100], filter_string=flt,
                                      max_results=_PAGE, page_token=token)
            for r in page:
                tags = r.data.tags
                if TAG_REUSED_FROM in tags or metric not in r.data.metrics:
                    continue
                rows.append((tags.get(MLFLOW_PARENT, ""), tags.get(TAG_CELL, ""),
                             int(tags.get(TAG_SEED, -1)), r.data.metrics[metric]))
            token = page.token
            if not token:
                break
    return rows
