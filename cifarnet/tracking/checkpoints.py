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

from cifarnet.training.callbacks import Callback, RunContext
from cifarnet.training.loop import CHECKPOINT, METRICS

ARTIFACT_DIR = "checkpoint"


class CheckpointArtifact(Callback):
    """Copies the run folder's checkpoint to the MLflow run after every epoch."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.client.log_artifact(self.run_id, str(ctx.run_dir / CHECKPOINT), ARTIFACT_DIR)


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
