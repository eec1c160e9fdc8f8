"""Hooks into a training run. Tracking (MLflow), pruning (Optuna) and progress bars are
callbacks; the trainer imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cifarnet.config.schema import RunConfig

if TYPE_CHECKING:
    import torch

    from cifarnet.training.checkpoint import ResumePoint


class StopTraining(Exception):
    """Raised by a callback to end the run early with `status` (e.g. 'pruned')."""

    def __init__(self, status: str, reason: str = "") -> None:
        super().__init__(reason or status)
        self.status, self.reason = status, reason


@dataclass
class RunContext:
    """What a callback may want to know about the run in progress."""

    config: RunConfig
    run_dir: Path
    device: str
    data_label: str
    classes: list[str]
    num_params: int
    num_train: int
    num_val: int
    num_test: int
    steps_per_epoch: int
    start_epoch: int = 1
    precision: str = "fp32"  # resolved train.precision: fp32 or bf16 (never auto)
    resume: "ResumePoint | None" = None  # where the run continues (and why, if afresh)
    # the metrics of the epochs before `start_epoch`, restored from a checkpoint
    restored_history: list[dict[str, float]] = field(default_factory=list)
    data_fingerprint: str = ""  # `Dataset.fingerprint`: the content of the data it trains on


@dataclass
class RunResult:
    """How a run ended. `status`: finished, diverged, pruned (or another StopTraining status),
    crashed or killed. `history` holds one metrics dict per completed epoch."""

    status: str
    config_hash: str
    run_dir: Path
    epochs_completed: int
    history: list[dict[str, float]] = field(default_factory=list)
    reason: str = ""
    class_acc: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    def best(self, metric: str) -> float | None:
        values = [h[metric] for h in self.history if metric in h]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "config_hash": self.config_hash,
                "run_dir": str(self.run_dir), "epochs_completed": self.epochs_completed,
                "reason": self.reason, "final": self.final, "history": self.history,
                "class_acc": self.class_acc}


class Callback:
    """Override what you need; every hook is optional."""

    def on_run_start(self, ctx: RunContext) -> None: ...

    def on_batch_end(self, ctx: RunContext, epoch: int, step: int,
                     loss: "torch.Tensor") -> None:
        """`loss` is a detached 0-d tensor; call .item() only when needed (it syncs a GPU)."""

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None: ...


class StopEvent(Protocol):
    """What the work reads of a stop request: `threading.Event`'s `is_set` and `wait`
    (the CLI passes `cifarnet.signals.StopFlag`, which a signal handler may set)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class StopOnEvent(Callback):
    """Turns a stop request (an event set from a signal handler) into KeyboardInterrupt at a
    batch boundary, where the trainer can end the run cleanly as `killed`."""

    def __init__(self, stop: StopEvent) -> None:
        self.stop = stop

    def on_batch_end(self, ctx: RunContext, epoch: int, step: int, loss: "torch.Tensor") -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
