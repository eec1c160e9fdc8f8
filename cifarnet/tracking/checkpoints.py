"""Checkpoints that live with their MLflow run, so any worker can resume an interrupted job.

Each epoch's checkpoint (written atomically by the trainer) is copied to the run's artifacts
(`checkpoint/checkpoint.pt`, about 2 MB for the seed network). A worker that takes a job whose
last attempt was killed or went stale downloads that checkpoint and continues from the last
completed epoch; on the CPU the final metrics equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from cifarnet.tracking.runs import all_runs
from cifarnet.tracking.tags import TAG_DATA, TAG_HASH, TAG_ROLE, TAG_STATUS, Role
from cifarnet.training.callbacks import Callback, RunContext
from cifarnet.training.loop import CHECKPOINT, METRICS
from cifarnet.training.status import RunStatus

ARTIFACT_DIR = "checkpoint"


class CheckpointArtifact(Callback):
    """Copies the run folder's checkpoint to the MLflow run after every epoch."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.client.log_artifact(self.run_id, str(ctx.run_dir / CHECKPOINT), ARTIFACT_DIR)


def interrupted_runs(client: Any, experiment_id: str,
                     fingerprints: set[str] | None = None) -> dict[str, str]:
    """config hash -> the latest grid run of that job that was killed or went stale (its
    worker vanished); only jobs with no FINISHED run, and (given `fingerprints`) only runs
    trained on one of those data sets."""
    flt = (f"tags.`{TAG_ROLE}` = '{Role.CHILD}' and attributes.status != 'RUNNING'")
    runs = sorted(all_runs(client, experiment_id, flt), key=lambda r: r.info.start_time)
    out: dict[str, str] = {}
    finished = set()
    for r in runs:
        if fingerprints is not None and r.data.tags.get(TAG_DATA) not in fingerprints:
            continue
        h = r.data.tags.get(TAG_HASH)
        if r.info.status == "FINISHED":
            finished.add(h)
        elif r.data.tags.get(TAG_STATUS) in (RunStatus.KILLED, RunStatus.STALE) or (
                r.info.status == "KILLED"):
            out[h] = r.info.run_id
    return {h: rid for h, rid in out.items() if h not in finished}


def fetch_checkpoint(client: Any, run_id: str, run_dir: Path) -> bool:
    """Put run `run_id`'s last checkpoint at `run_dir/checkpoint.pt` (atomically); False, and
    no checkpoint left there, when the run has none. The store is the truth: a metrics file
    left in the folder by an earlier run of the same config is removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS).unlink(missing_ok=True)
    target = run_dir / CHECKPOINT
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        try:
            local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{CHECKPOINT}", tmp)
        except Exception:  # no checkpoint was uploaded (killed in its first epoch)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            return False
        os.replace(local, target)
    return True
