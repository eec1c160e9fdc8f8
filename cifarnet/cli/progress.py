"""Terminal progress: one training run (epoch, batch, loss, accuracy, img/s, ETA), a grid of
runs, a search's trials, and the first decode of a data set. All are rich displays on stderr.

Rates and ETAs come from `RunClock`: no rate before a batch has been timed, and the ETA is the
batches left at the mean batch time of the run so far plus the evaluations left at their mean
time, so it does not jump when an epoch starts.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
)
from rich.table import Column, Table
from rich.text import Text

from cifarnet.training.callbacks import Callback, RunContext, RunResult

METRIC_ORDER = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "lr", "epoch_time_s", "images_per_s"]


def format_eta(seconds: float | None) -> str:
    """`ETA 1:02:03`, or `ETA --:--` while nothing has been timed."""
    if seconds is None or not math.isfinite(seconds):
        return "ETA --:--"
    s = max(0, int(round(seconds)))
    return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class RunClock:
    """Batch timing of one run. Times are `time.perf_counter()` seconds.

    The first batch of the run (compilation, cache warm-up) starts the clock and is not
    counted. The time between the last batch of an epoch and the first of the next is that
    batch plus the evaluation; the rest are batch times. The rate uses this epoch's batches
    after its first; the ETA is the batches left at the mean batch time so far plus the
    evaluations left at their mean time so far (none is known before the first epoch ends),
    so it does not jump when an epoch starts.
    """

    started: bool = False
    prev: float = 0.0
    batch_s: float = 0.0
    batches: int = 0
    gap_s: float = 0.0
    gaps: int = 0
    epoch_start: float | None = None
    epoch_timed: int = 0

    def tick(self, now: float, step: int) -> None:
        """Record the end of batch `step` (1-based within its epoch) at `now`."""
        if not self.started:
            self.started = True
        elif step == 1:
            self.gap_s += now - self.prev
            self.gaps += 1
        else:
            self.batch_s += now - self.prev
            self.batches += 1
        if step == 1 or self.epoch_start is None:
            self.epoch_start, self.epoch_timed = now, 0
        else:
            self.epoch_timed += 1
        self.prev = now

    def images_per_s(self, batch_size: int) -> float | None:
        """Images per second over this epoch's timed batches; None before the first."""
        if not self.epoch_timed or self.epoch_start is None or self.prev <= self.epoch_start:
            return None
        return self.epoch_timed * batch_size / (self.prev - self.epoch_start)

    def seconds_per_batch(self) -> float | None:
        """Mean seconds per batch over the run so far; None before a batch is timed."""
        return self.batch_s / self.batches if self.batches else None

    def seconds_per_eval(self) -> float:
        """Mean seconds of an end-of-epoch evaluation so far (0 before the first is timed)."""
        per = self.seconds_per_batch()
        if not self.gaps or per is None:
            return 0.0
        return max(0.0, self.gap_s / self.gaps - per)

    def eta_s(self, batches_left: int, evals_left: int = 0) -> float | None:
        """Seconds left: `batches_left` batches and `evals_left` evaluations."""
        per = self.seconds_per_batch()
        if per is None:
            return None
        return per * batches_left + self.seconds_per_eval() * evals_left

    def run_s(self, batches: int, evals: int) -> float | None:
        """Estimated length of a whole run of `batches` batches and `evals` evaluations."""
        return self.eta_s(batches, evals)


def evals_left(ctx: RunContext, epoch: int) -> int:
    """Evaluations still to come during epoch `epoch` (its own included)."""
    return ctx.config.train.epochs - epoch + 1


class EtaColumn(ProgressColumn):
    """The task's own `eta` field (seconds or None), computed by us rather than rich's
    30-second speed window."""

    def render(self, task: Any) -> Text:
        return Text(format_eta(task.fields.get("eta")), style="progress.remaining")


def label_width(console: Console) -> int | None:
    """The width of the label column on a terminal (None: a log, nothing is cut)."""
    return max(12, console.width // 4) if console.is_terminal else None


def _initials(match: re.Match) -> str:
    words = re.split(r"[_\-]", match.group(1).rsplit(".", 1)[-1])
    return "".join(w[:1] for w in words if w) + "="


def fit_label(label: str, width: int | None) -> str:
    """`label` fitted to `width` characters, keeping what tells runs apart: first each
    factor's key is shortened to its initials (`dilation=2,residual_add=true seed=1` ->
    `d=2,ra=true seed=1`; the values stay whole), then, if still too long, the middle is cut
    and the end kept, the seed (`seed=N`) or trial number whole when it fits. Rich's own
    ellipsis cut the end, and on an 80-column terminal the runs of a grid looked alike (their
    seeds, then their values, cut away). The full label is in each run's finished line and
    its MLflow run name."""
    if width is None or len(label) <= width:
        return label
    label = re.sub(r"(?<![\w.])((?!seed=)[A-Za-z_][\w.\-]*)=", _initials, label)
    if len(label) <= width:
        return label
    cut = max(label.rfind(" seed="), label.rfind(" trial "))
    tail = label[cut:] if 0 < cut and len(label) - cut <= width - 4 else label[
        len(label) - (width - 1) // 2:]
    return label[:width - 1 - len(tail)] + "\u2026" + tail


def _new_progress(console: Console, transient: bool = False) -> Progress:
    """One line a task on a terminal: on a narrow one the label and the status are cut short
    (with an ellipsis), never the count nor the ETA (at 80 columns both were lost, the ETA
    wrapped onto a line of its own). Written to a file or a pipe (a log), nothing is cut:
    long lines wrap."""
    if not console.is_terminal:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[status]}"), EtaColumn(),
                        console=console, transient=transient)
    return Progress(
        TextColumn("[bold]{task.description}",
                   table_column=Column(no_wrap=True, overflow="ellipsis",
                                       max_width=label_width(console))),
        BarColumn(bar_width=40 if console.width >= 140 else 10),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[status]}",
                   table_column=Column(no_wrap=True, overflow="ellipsis",
                                       max_width=max(12, console.width
                                                     - (label_width(console) or 0) - 36))),
        EtaColumn(table_column=Column(no_wrap=True, min_width=len("ETA 0:00:00"))),
        console=console, transient=transient)


def run_status(ctx: RunContext, epoch: int, step: int, loss: float, clock: RunClock,
               last_metrics: dict[str, float]) -> str:
    """The status text of a run's bar: epoch, batch, loss, last test accuracy, img/s."""
    acc = last_metrics.get("test_acc")
    rate = clock.images_per_s(ctx.config.train.batch_size)
    return (f"epoch {epoch}/{ctx.config.train.epochs}  batch {step}/{ctx.steps_per_epoch}"
            f"  loss {loss:.3f}"
            + (f"  test_acc {acc:.4f}" if acc is not None else "")
            + (f"  {rate:,.0f} img/s" if rate is not None else ""))


class RichProgress(Callback):
    """A live bar over all training steps of the run; refreshes at most ~8 times a second."""

    def __init__(self, console: Console | None = None, label: str = "") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self.progress: Progress | None = None
        self.task = None
        self.last_update = 0.0
        self.clock = RunClock()
        self.last_metrics: dict[str, float] = {}

    def on_run_start(self, ctx: RunContext) -> None:
        self.progress = _new_progress(self.console)
        total = ctx.config.train.epochs * ctx.steps_per_epoch
        done = (ctx.start_epoch - 1) * ctx.steps_per_epoch
        self.task = self.progress.add_task(
            escape(fit_label(self.label or "train", label_width(self.console))), total=total,
            completed=done, status="starting", eta=None)
        self.progress.start()
        self.clock = RunClock()

    def on_batch_end(self, ctx: RunContext, epoch: int, step: int, loss) -> None:
        assert self.progress is not None
        self.progress.advance(self.task)
        now = time.perf_counter()
        self.clock.tick(now, step)
        if now - self.last_update < 0.125 and step != ctx.steps_per_epoch:
            return
        self.last_update = now
        task = self.progress.tasks[0]
        self.progress.update(
            self.task, status=run_status(ctx, epoch, step, loss.item(), self.clock,
                                         self.last_metrics),
            eta=self.clock.eta_s(int(task.total - task.completed), evals_left(ctx, epoch)))

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.last_metrics = metrics

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        if self.progress is not None:
            self.progress.update(self.task, eta=0.0 if result.status == "finished" else None)
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


class DecodeProgress:
    """The first decode of an image tree into the cache: `decoding N images into the cache`
    with a bar. Pass `update` as the data loader's `on_decode(done, total)`; shows nothing
    when the cache already holds the images (the callback is never called), and nothing
    when standard error is not a terminal (a transient bar left a blank line there, before a
    command's one-line error)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.start = 0.0

    def update(self, done: int, total: int) -> None:
        if not self.console.is_terminal:
            return
        now = time.perf_counter()
        if self.progress is None:
            self.progress = _new_progress(self.console, transient=True)
            self.task = self.progress.add_task(
                f"decoding {total:,} images into the cache (once per data folder)",
                total=total, status="", eta=None)
            self.progress.start()
            self.start = now
        eta = (now - self.start) / done * (total - done) if done else None
        self.progress.update(self.task, completed=done, eta=eta)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def print_markup(console: Console, text: str) -> None:
    """Print a line of rich markup; text whose markup does not parse (a user value with `[/]`
    in it) is printed as written."""
    try:
        console.print(text)
    except MarkupError:
        console.print(text, markup=False)


class GridProgress:
    """The runner's display: the whole grid (done, running, left, ETA) and the current run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = _new_progress(self.console)
        self.grid_task = self.progress.add_task("grid", total=None, status="preparing",
                                                eta=None)
        self.run_seconds: list[float] = []  # wall time of each run finished here
        self.current: _RunBar | None = None
        self.waiting = 0
        self.progress.start()

    def grid(self, counts: dict[str, int], total: int) -> None:
        """`total`: the grid's jobs; `counts`: `JobQueue.counts()` (an interrupted job is
        enqueued again, so it is neither done nor a failure)."""
        ended = counts["done"] + counts["skipped"] + counts["failed"]
        self.waiting = counts["waiting"]
        self.progress.update(self.grid_task, total=total, completed=min(ended, total),
                             status=f"running {counts['running']}  waiting {counts['waiting']}"
                                    f"  failed {counts['failed']}",
                             eta=self.grid_eta())

    def grid_eta(self) -> float | None:
        """The current run's ETA plus the waiting runs at the mean run time so far (or the
        current run's estimated length before one has finished)."""
        current = self.current.eta_s() if self.current else None
        per_run = (sum(self.run_seconds) / len(self.run_seconds) if self.run_seconds
                   else self.current.estimated_total_s() if self.current else None)
        if per_run is None:
            return None if self.waiting else (current or 0.0)
        return (current or 0.0) + per_run * self.waiting

    def run_callbacks(self, label: str) -> list[Callback]:
        self.current = _RunBar(self, label)
        return [self.current]

    def run_ended(self, seconds: float) -> None:
        self.run_seconds.append(seconds)
        self.progress.update(self.grid_task, eta=self.grid_eta())

    def message(self, text: str) -> None:
        print_markup(self.progress.console, text)

    def close(self) -> None:
        self.progress.stop()


class _RunBar(Callback):
    """One run's bar inside the grid display; removed when the run ends."""

    def __init__(self, grid: GridProgress, label: str) -> None:
        self.grid, self.progress, self.label, self.task = grid, grid.progress, label, None
        self.last = 0.0
        self.started = 0.0
        self.clock = RunClock()
        self.total = 0
        self.left = 0
        self.epochs = 0
        self.epoch = 1

    def eta_s(self) -> float | None:
        return self.clock.eta_s(self.left, self.epochs - self.epoch + 1)

    def estimated_total_s(self) -> float | None:
        return self.clock.run_s(self.total, self.epochs)

    def on_run_start(self, ctx: RunContext) -> None:
        self.total = ctx.config.train.epochs * ctx.steps_per_epoch
        self.epochs, self.epoch = ctx.config.train.epochs, ctx.start_epoch
        done = (ctx.start_epoch - 1) * ctx.steps_per_epoch
        self.left = self.total - done
        self.started = time.perf_counter()
        self.task = self.progress.add_task(
            escape(fit_label(self.label, label_width(self.progress.console))),
            total=self.total, status="starting", completed=done, eta=None)

    def on_batch_end(self, ctx: RunContext, epoch: int, step: int, loss) -> None:
        self.progress.advance(self.task)
        now = time.perf_counter()
        self.clock.tick(now, step)
        self.left -= 1
        self.epoch = epoch
        if now - self.last > 0.25:
            self.last = now
            self.progress.update(self.task, status=f"epoch {epoch}/{ctx.config.train.epochs}"
                                                   f"  loss {loss.item():.3f}{self._extra()}",
                                 eta=self.eta_s())
            self._refresh_owner()

    def _extra(self) -> str:
        """More status after the loss (a trial's objective)."""
        return ""

    def _refresh_owner(self) -> None:
        """Update the display this bar belongs to (the grid's ETA)."""
        self.progress.update(self.grid.grid_task, eta=self.grid.grid_eta())

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        name = "test_acc" if "test_acc" in metrics else "val_acc"  # a tuning trial: no test
        acc = metrics.get(name)
        self.progress.update(self.task, status=f"epoch {epoch}"
                             + (f"  {name} {acc:.4f}" if acc is not None else ""))

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.grid.current = None
        if result.status == "finished" and ctx.start_epoch == 1:  # a whole run's wall time:
            self.grid.run_ended(time.perf_counter() - self.started)  # not a killed or resumed one
        acc = result.final.get("test_acc")
        self.progress.console.print(
            f"{escape(self.label)}: {result.status}" + (f", test_acc {acc:.4f}" if acc is not None
                                                else ""))


@dataclass
class SearchState:
    """What the search display shows; `after_trial` fills it from the study (read through
    duck typing: `study.trials[i].state.name`, `study.directions`, `study.best_trial(s)`)."""

    metric: str
    total: int | None = None
    first_number: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    best: str = ""
    trial_seconds: list[float] = field(default_factory=list)

    def finished(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))

    def status(self) -> str:
        c = self.counts
        return (f"done {c.get('COMPLETE', 0)}  pruned {c.get('PRUNED', 0)}  "
                f"failed {c.get('FAIL', 0)}" + (f"  best {self.best}" if self.best else ""))


def best_text(study: Any, metric: str) -> str:
    """`val_acc 0.8123 (trial 7)`, `Pareto front of 3 trial(s)`, or '' before any trial
    completes."""
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        return ""
    if len(study.directions) > 1:
        return f"Pareto front of {len(study.best_trials)} trial(s)"
    best = study.best_trial
    return f"{metric} {best.value:.4f} (trial {best.number})"


class SearchProgress:
    """A search's display: trials done / pruned / failed, the best value so far and an ETA on
    one bar; the current trial's epoch, loss and objective on another.

    `trial_callbacks` is run_search's `callbacks` (training callbacks per trial number; -1 is
    the final retraining); `after_trial` is an Optuna study callback `(study, trial)`.
    `n_trials`: the trials this invocation adds (None: fill the study up to `target`).
    """

    def __init__(self, metric: str, target: int, n_trials: int | None = None,
                 console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.state = SearchState(metric)
        self.target, self.n_trials = target, n_trials
        self.progress = _new_progress(self.console)
        self.task = self.progress.add_task("search", total=None, status="starting", eta=None)
        self.current: _TrialBar | None = None
        self.started = False  # shown from the first trial on: a refusal before it is one line

    def _show(self) -> None:
        if not self.started:
            self.started = True
            self.progress.start()

    def trial_callbacks(self, number: int) -> list[Callback]:
        self._show()
        if number >= 0 and self.state.first_number is None:
            # trials are numbered in the order they start: this one's number is how many the
            # study already held
            self.state.first_number = number
            self.state.total = number + self.n_trials if self.n_trials else self.target
            self.progress.update(self.task, total=self.state.total, completed=number)
        label = f"trial {number}" if number >= 0 else "final: best configuration, train + val"
        self.current = _TrialBar(self, label, self.state.metric, number)
        return [self.current]

    def after_trial(self, study: Any, trial: Any) -> None:
        self._show()
        counts: dict[str, int] = {}
        for t in study.trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        self.state.counts = counts
        self.state.best = best_text(study, self.state.metric)
        self.refresh()

    def trial_ended(self, seconds: float) -> None:
        self.state.trial_seconds.append(seconds)
        self.refresh()

    def eta_s(self) -> float | None:
        """Trials left at the mean trial time so far (pruned ones included), plus what the
        current trial still needs; before a trial has ended, the current trial's own
        estimate stands in for the mean."""
        if self.state.total is None:
            return None
        left = max(0, self.state.total - self.state.finished())
        current = self.current.eta_s() if self.current else None
        sec = self.state.trial_seconds
        per = (sum(sec) / len(sec) if sec else
               self.current.estimated_total_s() if self.current else None)
        if per is None:
            return None
        running = 1 if self.current is not None else 0
        return (current or 0.0) + per * max(0, left - running)

    def refresh(self) -> None:
        kw: dict[str, Any] = {"status": self.state.status(), "eta": self.eta_s()}
        if self.state.total is not None:
            kw["completed"] = self.state.finished()
            kw["total"] = max(self.state.total, self.state.finished())
        self.progress.update(self.task, **kw)

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def close(self) -> None:
        if self.started:  # once: a second stop printed a blank line after the last message
            self.progress.stop()
            self.started = False


class _TrialBar(_RunBar):
    """One trial's bar: epoch, loss and the objective metric of its last epoch."""

    def __init__(self, search: SearchProgress, label: str, metric: str, number: int) -> None:
        self.search, self.number = search, number
        self.progress, self.label, self.task, self.metric = search.progress, label, None, metric
        self.last = 0.0
        self.started = 0.0
        self.clock = RunClock()
        self.total = self.left = 0
        self.epochs, self.epoch = 0, 1
        self.last_value: float | None = None

    def _extra(self) -> str:
        return f"  {self.metric} {self.last_value:.4f}" if self.last_value is not None else ""

    def _refresh_owner(self) -> None:
        self.search.refresh()

    def on_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.last_value = metrics.get(self.metric)
        value = f"  {self.metric} {self.last_value:.4f}" if self.last_value is not None else ""
        self.progress.update(self.task, status=f"epoch {epoch}/{ctx.config.train.epochs}"
                                               f"{value}")

    def on_run_end(self, ctx: RunContext, result: RunResult) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.search.current = None
        if self.number >= 0:  # the final retraining is no trial
            self.search.trial_ended(time.perf_counter() - self.started)
        value = result.final.get(self.metric)
        self.progress.console.print(
            f"{self.label}: {result.status} after {result.epochs_completed} epoch(s)"
            + (f", {self.metric} {value:.4f}" if value is not None else ""))


PIPED_WIDTH = 160  # columns of a table written to a file or a pipe


def table_console() -> Console:
    """The console of a command's result tables: the terminal's width on a terminal;
    PIPED_WIDTH columns in a file or a pipe, where rich's default of 80 folded verdicts and
    ids mid-word ("inconclu/sive")."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)

