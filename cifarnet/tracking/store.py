"""MLflow tracking, hung on the trainer's callbacks.

The store is SQLite under mlruns/ (artifacts in mlruns/artifacts) unless MLFLOW_TRACKING_URI
is set, so a team server is one variable away. One parent run per spec; one child run per
(cell, seed) carrying the flattened config as params, the cell, seed and config hash as tags,
per-epoch metrics with step = epoch, the architecture summary, and the resolved config and
summary table as artifacts. System metrics (CPU, memory, GPU) are logged while a run trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarnet.errors import UserError
from cifarnet.model.summary import Summary, format_table, summarize
from cifarnet.data.keys import CLASS_NAMES_ARTIFACT, class_metric_keys
from cifarnet.tracking.location import check_location
from cifarnet.tracking.urls import sqlite_path
from cifarnet.tracking.tags import TAG_GROUP, TAG_PRECISION, TAG_REASON, TAG_ROLE, TAG_STATUS, Role
from cifarnet.training.callbacks import Callback, RunContext, RunResult
from cifarnet.training.evaluation import PREDICTIONS
from cifarnet.training.status import RunStatus
from cifarnet.workspace import Workspace


def setup_mlflow(workspace: Workspace) -> Any:
    """Point MLflow at the workspace's store (creating `mlruns/` for the embedded one, and the
    store's tables once under its start-up lock) and return a client of it. Raises StoreError
    (the URL masked) when the store cannot be opened, UserError when the embedded store was
    copied or moved (`tracking.location.check_location`). MLflow's tracking URI is
    process-wide state (its system-metrics monitor and `runs:/` URIs read it); nothing else is
    changed."""
    import mlflow

    from cifarnet.tracking.client import mlflow_client
    from cifarnet.tracking.startup import check_tracking_store, init_tracking_store

    check_tracking_store(workspace)  # one line for a bad URI; a SQLite file's shape checked
    if workspace.local_tracking:
        (workspace.local_root / "artifacts").mkdir(parents=True, exist_ok=True)
    init_tracking_store(workspace.tracking_uri)  # created or migrated once, under a lock
    client = mlflow_client(workspace.tracking_uri)
    check_location(client, workspace)  # a copied or moved store: refused before any write
    mlflow.set_tracking_uri(workspace.tracking_uri)
    return client


def store_exists(workspace: Workspace) -> bool:
    """Whether the workspace's MLflow store has been created (an embedded SQLite file, or a
    database URL whose `experiments` table exists); a server (http) is taken as existing.
    Creates nothing: opening a SQLite URL whose file is missing created an empty one."""
    if workspace.local_tracking:
        return (workspace.local_root / "mlflow.db").exists()
    uri = workspace.tracking_uri
    if uri.startswith(("http://", "https://", "databricks")):
        return True
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        return False
    from cifarnet.tracking.startup import database_has_table

    return bool(database_has_table(uri, "experiments"))  # unreachable: the real run says so


def get_or_create_experiment(client: Any, workspace: Workspace, name: str,
                             group_by: str | None = TAG_GROUP) -> str:
    """The experiment's id, created if missing (embedded stores keep its artifacts under
    `mlruns/artifacts/<name>`). Raises nothing when another worker creates it first;
    UserError (naming the command that restores it) when it was deleted in MLflow.

    The experiment carries the tags of `experiment_tags(group_by)` (model training, so MLflow's
    UI opens it on the runs table; the `cifarnet` shared view, its runs grouped by the tag
    `group_by`: the cell within its grid and budget for a grid, none for a search); an existing experiment that lacks one
    gets it.
    """
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise UserError(f"name: the MLflow experiment {name!r} was deleted; restore it with "
                        f"`mlflow experiments restore --experiment-id {exp.experiment_id}` "
                        f"(same MLFLOW_TRACKING_URI), or rename the spec")
    if exp is None:
        try:
            return client.create_experiment(name,
                                            artifact_location=workspace.artifact_location(name),
                                            tags=experiment_tags(group_by))
        except MlflowException:  # another worker created it first
            exp = client.get_experiment_by_name(name)
            assert exp is not None
    for key, value in experiment_tags(group_by).items():
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


ABLATION_ROLES = (Role.PARENT, Role.CHILD, Role.ARM_STUDY, Role.ARM_TRIAL)
SEARCH_ROLES = (Role.STUDY, Role.TRIAL, Role.FINAL)


def check_experiment_kind(client: Any, name: str, roles: tuple[Role, ...]) -> None:
    """Refuse (UserError, key `name`) an experiment that already holds runs of the other
    kind: an ablation grid (`ABLATION_ROLES`) and an Optuna search (`SEARCH_ROLES`) of one
    name would share an experiment, and each one's reports would read the other's runs as
    its own. Reads only; call it before anything is written."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return
    other = SEARCH_ROLES if roles == ABLATION_ROLES else ABLATION_ROLES
    for role in other:  # MLflow's search syntax has no OR
        if client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = '{role}'",
                              max_results=1):
            kind = "an Optuna search" if other == SEARCH_ROLES else "an ablation grid"
            raise UserError(f"name: the MLflow experiment {name!r} already holds {kind} of "
                            "the same name; give this spec another name")


# Marks a model-training experiment (the experiment-kind selector of MLflow 3.x's UI reads
# it). MLflow 3.17's UI opens the page by its "GenAI / Model training" switch instead (kept in
# the browser), so `shared_view_url` also says `workflowType=machine_learning`.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A shared view of the runs table, opened by `#/experiments/<id>/runs?viewStateShareKey=cifarnet`:
# MLflow's UI reads the view (columns, grouping) from the experiment tag
# `mlflow.sharedViewState.<key>` (the "Share" button writes such tags).
VIEW_KEY = "cifarnet"
TAG_SHARED_VIEW = f"mlflow.sharedViewState.{VIEW_KEY}"


def shared_view_state(group_by: str | None = TAG_GROUP) -> dict[str, Any]:
    """The runs table with the dataset, test_acc and val_acc as columns, grouped by the tag
    `group_by` (the mean of each cell over its seeds) when given: the keys of MLflow's UI
    state (`selectedColumns`, `groupBy`) that its "Share" button stores."""
    state: dict[str, Any] = {
        "selectedColumns": ["attributes.`Dataset`", "metrics.`test_acc`", "metrics.`val_acc`"],
        "groupBy": None, "groupsExpanded": {}, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True}
    if group_by:
        state["groupBy"] = {"aggregateFunction": "average",
                            "groupByKeys": [{"mode": "tag", "groupByData": group_by}]}
    return state


def experiment_tags(group_by: str | None = TAG_GROUP) -> dict[str, str]:
    """Tags every cifarnet experiment carries: the model-training kind and the shared view."""
    import json

    return {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND,
            TAG_SHARED_VIEW: json.dumps(shared_view_state(group_by))}


def shared_view_url(base_url: str, experiment_id: str) -> str:
    """The address of the experiment's runs table with the `cifarnet` view applied.

    `workflowType=machine_learning` selects the UI's "Model training" mode: MLflow 3.17's UI
    takes the experiment kind from that switch (kept in the browser) rather than from the
    `mlflow.experimentKind` tag, so a first visit would otherwise land on the GenAI overview.
    """
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def experiment_links(base_url: str) -> list[tuple[str, str]]:
    """(name, runs-table address) of every experiment of the current store carrying the
    cifarnet view tag, newest first; reads only."""
    from cifarnet.tracking.client import mlflow_client

    exps = mlflow_client().search_experiments(filter_string=f"tags.`{TAG_SHARED_VIEW}` != ''",
                                             order_by=["creation_time DESC"])
    return [(e.name, shared_view_url(base_url, e.experiment_id)) for e in exps]


def summary_params(s: Summary) -> dict[str, Any]:
    return {"arch.params": s.total_params, "arch.macs": s.total_macs,
            "arch.receptive_field": s.receptive_field}


class MlflowRunCallback(Callback):
    """Logs one training run into an already started MLflow run (`run_id`). A resumed run
    logs the restored epochs its MLflow run does not hold yet (a kill between an epoch's
    checkpoint upload and its metrics leaves one out), so every epoch is logged once."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def on_run_start(self, ctx: RunContext) -> None:
        from mlflow.entities import Param

        from cifarnet.tracking.client import mlflow_client

        client = mlflow_client()
        cfg = ctx.config
        s = summarize(cfg.model)
        params = {**cfg.flatten(), **summary_params(s), "data.label": ctx.data_label,
                  "data.num_train": ctx.num_train, "data.num_val": ctx.num_val,
                  "data.num_test": ctx.num_test, "device": ctx.device, "precision": ctx.precision}
        # a job resumed in its own run keeps the params its first attempt logged: MLflow
        # refuses a changed value, and what may change (a folder, the device) is no result
        logged = client.get_run(self.run_id).data.params
        client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()
                                              if k not in logged])
        client.set_tag(self.run_id, TAG_PRECISION, ctx.precision)  # a column in the UI
        client.log_text(self.run_id, cfg.to_yaml(), "config.yaml")
        client.log_text(self.run_id, format_table(s) + "\n", "summary.txt")
        logged = ({m.step for m in client.get_metric_history(self.run_id, "train_loss")}
                  if ctx.restored_history else set())
        for epoch, metrics in enumerate(ctx.restored_history, 1):
            if epoch not in logged:
                self.on_epoch_end(ctx, epoch, metrics)
        client.log_inputs(self.run_id, datasets=[dataset_input(ctx)])

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        from cifarnet.tracking.client import mlflow_client

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"]
        mlflow_client().log_batch(self.run_id, metrics=batch)

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        import time

        from mlflow.entities import Metric

        from cifarnet.tracking.client import mlflow_client

        client = mlflow_client()
        now = int(time.time() * 1000)
        keys = class_metric_keys(list(result.class_acc))
        summary = [Metric(keys[c], a, now, result.epochs_completed)
                   for c, a in result.class_acc.items()]
        if keys:
            client.log_dict(self.run_id, {k: c for c, k in keys.items()}, CLASS_NAMES_ARTIFACT)
        best = result.best("test_acc")
        if best is not None:
            summary.append(Metric("best_test_acc", best, now, result.epochs_completed))
        if summary:
            client.log_batch(self.run_id, metrics=summary)
        client.set_tag(self.run_id, TAG_STATUS, result.status)
        if result.status != RunStatus.FINISHED:
            client.set_tag(self.run_id, TAG_REASON, _one_line(result.reason or result.status))
        if result.status == RunStatus.CRASHED:
            client.log_text(self.run_id, result.reason, "traceback.txt")
        predictions = Path(result.run_dir) / PREDICTIONS
        if result.status == RunStatus.FINISHED and predictions.is_file():
            client.log_artifact(self.run_id, str(predictions))  # for McNemar's test per seed


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def dataset_input(ctx: RunContext) -> Any:
    """The run's data as an MLflow dataset input (the runs table's Dataset column).

    name: the data label (`CIFAR-10 (JPEG q75 mirror)` for the shared JPEG tree); digest: 12
    hex digits of sha256 over the label, the data's content fingerprint
    (`Dataset.fingerprint`), the selection keys (`cifarnet.data.datasets.DATA_KEYS`) and the
    split sizes, so two runs on the same images and splits share it, wherever the folder is; source: the ImageFolder folder (or torchvision's CIFAR-10 URL);
    schema: uint8 images (N, 32, 32, 3) and int64 labels; profile: the split sizes and classes.
    Context tag `train` (the data a run trains and is tested on).
    """
    import hashlib
    import json

    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types.schema import Schema, TensorSpec
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from cifarnet.data.datasets import DATA_KEYS, resolve_source

    kind, path = resolve_source(ctx.config.data)
    if path is not None:
        source_type, source = "local", str(path.resolve())
    else:
        source_type, source = "http", CIFAR10_URL
    profile = {"num_train": ctx.num_train, "num_val": ctx.num_val, "num_test": ctx.num_test,
               "num_classes": len(ctx.classes), "classes": ctx.classes}
    identity = {"label": ctx.data_label, "content": ctx.data_fingerprint,
                **{k: getattr(ctx.config.data, k) for k in DATA_KEYS if k != "path"},
                "sizes": [ctx.num_train, ctx.num_val, ctx.num_test]}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str)
                            .encode()).hexdigest()[:12]
    schema = TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype(np.uint8), (-1, 32, 32, 3), "image")]),
        targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")]))
    ds = Dataset(name=ctx.data_label, digest=digest, source_type=source_type,
                 source=json.dumps({"uri": source}), schema=json.dumps(schema.to_dict()),
                 profile=json.dumps(profile))
    return DatasetInput(ds, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "train")])


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:500]
