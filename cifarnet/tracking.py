"""MLflow tracking, hung on the trainer's callbacks.

The store is SQLite under mlruns/ (artifacts in mlruns/artifacts) unless MLFLOW_TRACKING_URI
is set, so a team server is one variable away. One parent run per spec; one child run per
(cell, seed) carrying the flattened config as params, the cell, seed and config hash as tags,
per-epoch metrics with step = epoch, the architecture summary, and the resolved config and
summary table as artifacts. System metrics (CPU, memory, GPU) are logged while a run trains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cifarnet.callbacks import Callback, RunContext, RunResult
from cifarnet.summary import Summary, format_table, summarize

LOCAL_ROOT = Path("mlruns")
TAG_ROLE = "cifarnet.role"
TAG_SPEC = "cifarnet.spec"
TAG_HASH = "cifarnet.config_hash"
TAG_CELL = "cifarnet.cell"
TAG_SEED = "cifarnet.seed"
TAG_REASON = "cifarnet.failure_reason"
TAG_STATUS = "cifarnet.status"
TAG_TRIAL = "cifarnet.queue_trial"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the local SQLite store under ./mlruns."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(LOCAL_ROOT / 'mlflow.db').resolve()}"


def is_local_store(uri: str) -> bool:
    return uri == f"sqlite:///{(LOCAL_ROOT / 'mlflow.db').resolve()}"


def setup_mlflow() -> str:
    """Point MLflow at the store (creating mlruns/ for the local default); return the URI."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri()
    if is_local_store(uri):
        (LOCAL_ROOT / "artifacts").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def get_or_create_experiment(name: str) -> str:
    """The experiment's id; local stores keep artifacts under mlruns/artifacts/<name>."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if is_local_store(tracking_uri()):
        location = (LOCAL_ROOT / "artifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another worker created it first
        exp = client.get_experiment_by_name(name)
        assert exp is not None
        return exp.experiment_id


PARENT_ATTR = "mlflow_parent_run_id"


def shared_parent_run(client: Any, experiment_id: str, study: Any, created: bool,
                      run_name: str, tags: dict[str, str], artifacts: dict[str, dict],
                      wait_s: float = 60.0) -> str:
    """One parent run for all workers of an Optuna study: the worker that created the study
    creates the run and records its id on the study; the others read it from there."""
    import time

    if created:
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        for name, content in artifacts.items():
            client.log_dict(run.info.run_id, content, name)
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
        return run.info.run_id
    deadline = time.monotonic() + wait_s
    while (parent := study.user_attrs.get(PARENT_ATTR)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the study has no parent run id; is its creator still starting?")
        time.sleep(0.5)  # study.user_attrs reads the storage afresh
    if client.get_run(parent).info.status != "RUNNING":
        client.update_run(parent, status="RUNNING")
    return parent


def summary_params(s: Summary) -> dict[str, Any]:
    return {"arch.params": s.total_params, "arch.macs": s.total_macs,
            "arch.receptive_field": s.receptive_field}


class MlflowRunCallback(Callback):
    """Logs one training run into an already started MLflow run (`run_id`)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def on_run_start(self, ctx: RunContext) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient()
        cfg = ctx.config
        s = summarize(cfg.model)
        params = {**cfg.flatten(), **summary_params(s), "data.label": ctx.data_label,
                  "data.num_train": ctx.num_train, "data.num_val": ctx.num_val,
                  "data.num_test": ctx.num_test, "device": ctx.device}
        client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        client.log_text(self.run_id, cfg.to_yaml(), "config.yaml")
        client.log_text(self.run_id, format_table(s) + "\n", "summary.txt")

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        MlflowClient().log_batch(self.run_id, metrics=[
            Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"])

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient()
        now = int(time.time() * 1000)
        summary = [Metric(f"test_acc_class.{c}", a, now, result.epochs_completed)
                   for c, a in result.class_acc.items()]
        best = result.best("test_acc")
        if best is not None:
            summary.append(Metric("best_test_acc", best, now, result.epochs_completed))
        if summary:
            client.log_batch(self.run_id, metrics=summary)
        client.set_tag(self.run_id, TAG_STATUS, result.status)
        if result.status not in ("finished",):
            client.set_tag(self.run_id, TAG_REASON, _one_line(result.reason or result.status))
        if result.status == "crashed":
            client.log_text(self.run_id, result.reason, "traceback.txt")


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:500]


def mlflow_status(result_status: str) -> str:
    """Trainer status -> MLflow run status."""
    return {"finished": "FINISHED", "killed": "KILLED"}.get(result_status, "FAILED")
