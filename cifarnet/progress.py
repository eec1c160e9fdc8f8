"""Terminal progress for a training run (a callback): epoch, batch, loss, accuracy, img/s, ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table

from cifarnet.callbacks import Callback, RunContext, RunResult

METRIC_ORDER = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "lr", "epoch_time_s", "images_per_s"]


class RichProgress(Callback):
    """A live bar over all training steps of the run; refreshes at most ~8 times a second."""

    def __init__(self, console: Console | None = None, label: str = "") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self.progress: Progress | None = None
        self.task = None
        self.last_update = 0.0
        self.epoch_start = 0.0
        self.last_metrics: dict[str, float] = {}

    def on_run_start(self, ctx: RunContext) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
            console=self.console, transient=False)
        total = ctx.config.train.epochs * ctx.steps_per_epoch
        done = (ctx.start_epoch - 1) * ctx.steps_per_epoch
        self.task = self.progress.add_task(self.label or "train", total=total, completed=done,
                                           status="")
        self.progress.start()
        self.epoch_start = time.perf_counter()

    def on_batch_end(self, ctx: RunContext, epoch: int, step: int, loss) -> None:
        assert self.progress is not None
        self.progress.advance(self.task)
        now = time.perf_counter()
        if step == 1:
            self.epoch_start = now
        if now - self.last_update < 0.125 and step != ctx.steps_per_epoch:
            return
        self.last_update = now
        rate = step * ctx.config.train.batch_size / max(now - self.epoch_start, 1e-9)
        acc = self.last_metrics.get("test_acc")
        status = (f"epoch {epoch}/{ctx.config.train.epochs}  batch {step}/{ctx.steps_per_epoch}"
                  f"  loss {loss.item():.3f}"
                  + (f"  test_acc {acc:.4f}" if acc is not None else "")
                  + f"  {rate:,.0f} img/s")
        self.progress.update(self.task, status=status)

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.last_metrics = metrics

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        if self.progress is not None:
            self.progress.stop()


def metrics_table(result: RunResult) -> Table:
    """The final epoch's metrics as a two-column table."""
    table = Table(title=f"run {result.status} after {result.epochs_completed} epoch(s)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in METRIC_ORDER:
        if key in result.final:
            v = result.final[key]
            table.add_row(key, f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}")
    return table


class GridProgress:
    """The runner's display: the whole grid (done, running, left, ETA) and the current run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
            console=self.console)
        self.grid_task = self.progress.add_task("grid", total=None, status="")
        self.progress.start()

    def grid(self, counts: dict[str, int], total: int) -> None:
        done = counts["complete"] + counts["fail"]
        self.progress.update(self.grid_task, total=max(total, done + counts["waiting"]
                                                       + counts["running"]),
                             completed=done,
                             status=f"running {counts['running']}  waiting {counts['waiting']}"
                                    f"  failed {counts['fail']}")

    def run_callbacks(self, label: str) -> list[Callback]:
        return [_RunBar(self.progress, label)]

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def close(self) -> None:
        self.progress.stop()


class _RunBar(Callback):
    """One run's bar inside the grid display; removed when the run ends."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label, self.task = progress, label, None
        self.last = 0.0

    def on_run_start(self, ctx: RunContext) -> None:
        total = ctx.config.train.epochs * ctx.steps_per_epoch
        self.task = self.progress.add_task(self.label, total=total, status="",
                                           completed=(ctx.start_epoch - 1) * ctx.steps_per_epoch)

    def on_batch_end(self, ctx: RunContext, epoch: int, step: int, loss) -> None:
        self.progress.advance(self.task)
        now = time.perf_counter()
        if now - self.last > 0.25:
            self.last = now
            self.progress.update(self.task, status=f"epoch {epoch}/{ctx.config.train.epochs}"
                                                   f"  loss {loss.item():.3f}")

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.progress.update(self.task, status=f"epoch {epoch}  test_acc "
                                               f"{metrics['test_acc']:.4f}")

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        acc = result.final.get("test_acc")
        self.progress.console.print(
            f"{self.label}: {result.status}" + (f", test_acc {acc:.4f}" if acc is not None
                                                else ""))
