"""The run's checkpoint: what it holds, how it is written (atomically) and read back.

A checkpoint is written after every completed epoch, to a temporary file in the run folder
that `os.replace` then moves over `checkpoint.pt`: a kill at any moment leaves either the
previous checkpoint or the new one, never a torn file (POSIX rename is atomic within a
filesystem). It holds the model, the optimiser and the scheduler, the run's history and
test per-class accuracy, and every random stream that can carry state across epochs: torch's
global generator (and CUDA's, where used), Python's `random` and NumPy's global generator.
The loaders and the BatchNorm recalibration keep no state: each epoch derives its streams
("order", epoch), ("augment", epoch), ("bn_recal", epoch) from the run seed afresh. So on the
CPU a resumed run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import enum
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarnet.errors import UserError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
REQUIRED = frozenset({"model", "optimizer", "scheduler", "torch_rng", "epoch", "history",
                      "config_hash"})


class CheckpointError(UserError):
    """A checkpoint that cannot be read, is incomplete, or belongs to another config."""


class OnBadCheckpoint(enum.StrEnum):
    """What `train(resume=True)` does with a checkpoint it cannot use."""

    RAISE = "raise"  # raise CheckpointError (`train --resume`: one line, exit 2)
    FRESH = "fresh"  # start the run from epoch 1 (a grid re-running an interrupted job)


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: after `completed` of `epochs` epochs (0: from the start).

    `finished`: the checkpoint is at the last epoch and metrics.json records the finished
    run; training it again would change nothing, so it is left untouched. `note`: why a
    checkpoint was not used (only with OnBadCheckpoint.FRESH), else empty.
    """

    run_dir: Path
    epochs: int
    completed: int = 0
    finished: bool = False
    note: str = ""

    def message(self) -> str:
        """One line for the user, e.g. 'resuming from epoch 1 of 3 (...): next epoch 2'."""
        if self.finished:
            return (f"run in {self.run_dir} is finished ({self.epochs} of {self.epochs} "
                    f"epochs): left untouched")
        if self.completed:
            return (f"resuming from epoch {self.completed} of {self.epochs} "
                    f"({self.run_dir / CHECKPOINT}): next epoch {self.completed + 1}")
        if self.note:
            return f"{self.note}: starting from epoch 1"
        return f"no checkpoint in {self.run_dir}: starting from epoch 1"


def rng_state() -> dict[str, Any]:
    """Every global random stream, in types that `torch.load(weights_only=True)` reads."""
    np_state = np.random.get_state(legacy=False)
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"state": np_state["state"]["key"].tolist(),
                       "pos": int(np_state["state"]["pos"]),
                       "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np.asarray(n["state"], dtype=np.uint32),
                                   "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically: a temporary file in the same folder, flushed to
    disk, then `os.replace`. The temporary file is removed if anything fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, config_hash: str,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at `path`, checked to be complete and of this config.

    Raises CheckpointError (one line) when it cannot be read (truncated, empty, not a torch
    file), lacks a field, or was written for another config hash.
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(
            exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({reason}); delete it to "
                              f"start over") from None
    if not isinstance(ckpt, dict) or not REQUIRED <= set(ckpt):
        missing = sorted(REQUIRED - set(ckpt)) if isinstance(ckpt, dict) else ["everything"]
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing)}); "
                              f"delete it to start over")
    if ckpt["config_hash"] != config_hash:
        raise CheckpointError(f"{path}: checkpoint of another config ({ckpt['config_hash'][:12]}"
                              f", this run {config_hash[:12]}); use another --run-dir or "
                              f"delete it")
    return ckpt


def finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of a run that finished, or None (absent, unreadable, not finished)."""
    try:
        saved = json.loads((run_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("status") == "finished" else None


def resume_point(run_dir: Path, config_hash: str, epochs: int,
                 on_bad: OnBadCheckpoint = OnBadCheckpoint.RAISE) -> ResumePoint:
    """Where a run in `run_dir` would continue; raises CheckpointError for a checkpoint it
    cannot use unless `on_bad` is FRESH (then a fresh start, with the reason in `note`)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return ResumePoint(Path(run_dir), epochs)
    try:
        done = int(load_checkpoint(path, config_hash)["epoch"])
    except CheckpointError as exc:
        if on_bad == OnBadCheckpoint.RAISE:
            raise
        return ResumePoint(Path(run_dir), epochs, note=str(exc))
    finished = done >= epochs and finished_metrics(Path(run_dir)) is not None
    return ResumePoint(Path(run_dir), epochs, done, finished)
