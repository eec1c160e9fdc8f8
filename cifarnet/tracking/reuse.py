"""Reuse instead of retraining: a FINISHED grid run of the same job in another experiment.

A job is its config hash (every key that can change a result, the seed included) on its
data (the data set's content fingerprint). When another experiment of the store already
holds a FINISHED grid run of exactly that job (the seed network at seed s is the baseline
of every shipped spec), a new grid copies it instead of training it again: a child run of
its own with the source's params, every metric's full history, its tags, its small
artifacts (config, summary, class names) and the tag `cifarnet.reused_from` naming the
source run. The checkpoint is not copied (the source keeps it). `run --no-reuse` trains.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cifarnet.data.keys import CLASS_NAMES_ARTIFACT
from cifarnet.training.evaluation import PREDICTIONS
from cifarnet.tracking.tags import TAG_DATA, TAG_HASH, TAG_ROLE, Role

TAG_REUSED_FROM = "cifarnet.reused_from"  # the FINISHED run of another experiment it copies
COPIED_ARTIFACTS = ("config.yaml", "summary.txt", CLASS_NAMES_ARTIFACT, PREDICTIONS)
_BATCH = 1000  # MLflow's most metrics in one log_batch


def find_source(client: Any, experiment_id: str, config_hash: str,
                data_fingerprint: str) -> Any | None:
    """The newest FINISHED grid run of the job (`config_hash` on `data_fingerprint`) in an
    active experiment other than `experiment_id` (runs that are themselves copies are
    followed to no one: only trained runs are sources); None when there is none."""
    from mlflow.entities import ViewType

    others = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
              if e.experiment_id != experiment_id]
    if not others:
        return None
    flt = (f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_DATA}` = '{data_fingerprint}'"
           f" and tags.`{TAG_ROLE}` = '{Role.CHILD}' and attributes.status = 'FINISHED'")
    for start in range(0, len(others), 100):  # MLflow searches at most 100 experiments at once
        runs = client.search_runs(others[start:start + 100], filter_string=flt,
                                  order_by=["attributes.start_time DESC"], max_results=50)
        runs = [r for r in runs if TAG_REUSED_FROM not in r.data.tags]
        if runs:
            return runs[0]
    return None


def find_trial_source(client: Any, config_hash: str, data_fingerprint: str,
                      other_than_study: str) -> Any | None:
    """The newest FINISHED, COMPLETE arm trial (role `arm_trial`, tag `optuna.state`) of the
    same config (`config_hash`, the sampled values included) on the same data, in any active
    experiment, outside the study run `other_than_study`, and itself trained (not a copy);
    None when there is none. A tuned grid whose budget grew (a new grid, new studies) samples
    its first trials again (`search.study.SlotSeededSampler`) and copies them from here."""
    from mlflow.entities import ViewType

    from cifarnet.tracking.tags import MLFLOW_PARENT, TAG_OPTUNA_STATE

    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    flt = (f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_DATA}` = '{data_fingerprint}'"
           f" and tags.`{TAG_ROLE}` = '{Role.ARM_TRIAL}' and attributes.status = 'FINISHED'"
           f" and tags.`{TAG_OPTUNA_STATE}` = 'COMPLETE'")
    for start in range(0, len(ids), 100):  # MLflow searches at most 100 experiments at once
        runs = client.search_runs(ids[start:start + 100], filter_string=flt,
                                  order_by=["attributes.start_time DESC"], max_results=50)
        runs = [r for r in runs if TAG_REUSED_FROM not in r.data.tags
                and r.data.tags.get(MLFLOW_PARENT) != other_than_study]
        if runs:
            return runs[0]
    return None


def copy_run(client: Any, source: Any, run_id: str) -> None:
    """Copy `source` (an MLflow Run) into the started run `run_id`: params, every metric's
    history (steps and timestamps kept), the source's tags that the run does not set itself
    (cifarnet.* and the MLflow UI's note are the grid's), its small artifacts, and the tag
    naming the source."""
    from mlflow.entities import Metric, Param, RunTag

    src = source.info.run_id
    params = [Param(k, v) for k, v in source.data.params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    metrics = [Metric(m.key, m.value, m.timestamp, m.step)
               for key in source.data.metrics
               for m in client.get_metric_history(src, key)]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH])
    own = client.get_run(run_id).data.tags
    tags = [RunTag(k, v) for k, v in source.data.tags.items()
            if k not in own and not k.startswith("mlflow.")]
    client.log_batch(run_id, tags=[*tags, RunTag(TAG_REUSED_FROM, src)])
    with tempfile.TemporaryDirectory() as tmp:
        for name in COPIED_ARTIFACTS:
            try:
                path = client.download_artifacts(src, name, tmp)
            except Exception:  # an older run without it
                continue
            client.log_artifact(run_id, str(Path(path)))
