"""One training run, top to bottom: build, restore, then per epoch train, evaluate, checkpoint.

Reproducibility: the run seed derives separate streams (see `cifarnet.seeding`):
"init" for the weights (per layer, see `paired_init`), ("order", epoch) for the data order,
("augment", epoch) for the augmentations, ("bn_recal", epoch) for the BatchNorm
recalibration images (`training.bn`) and ("dropout", epoch) for the global RNG. On the CPU a
run is bit-reproducible, and a resumed run ends with the same metrics as an uninterrupted
one (the checkpoint holds every stream with state, see `training.checkpoint`). On CUDA the streams are the same, but cuDNN's convolution algorithms,
atomic adds in backward kernels and bf16 autocast make results differ in the last bits from
run to run; set `CUBLAS_WORKSPACE_CONFIG=:4096:8` and `torch.use_deterministic_algorithms(True)`
yourself if you need bitwise equality there, at a cost in speed.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cifarnet.config.schema import Precision, RunConfig
from cifarnet.data.datasets import Dataset, load_data
from cifarnet.data.loaders import Batch, eval_batches, make_loader
from cifarnet.model.cifarnet import CifarNet, count_params, paired_init
from cifarnet.training.bn import recal_images, recalibrate_bn
from cifarnet.training.callbacks import Callback, RunContext, RunResult, StopTraining
from cifarnet.training.checkpoint import (
    CHECKPOINT,
    METRICS,
    CheckpointError,
    OnBadCheckpoint,
    ResumePoint,
    finished_metrics,
    load_checkpoint,
    resume_point,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cifarnet.hardware import resolve_precision, select_device
from cifarnet.training.device import autocast_for, in_layout, memory_format_for
from cifarnet.training.ema import build_ema
from cifarnet.training.evaluation import PREDICTIONS, evaluate, save_predictions
from cifarnet.training.optim import build_optimizer, build_scheduler
from cifarnet.seeding import seed_from

__all__ = ["CHECKPOINT", "METRICS", "DIVERGED_LOSS", "OnBadCheckpoint", "default_run_dir",
           "evaluate", "train", "build_optimizer", "build_scheduler", "memory_format_for",
           "select_device"]

# A batch loss above this is divergence too: chance is ln(10) = 2.3, and a run whose loss has
# passed 1,000 has blown up (at lr=10 the loss passes it within ~10 steps, then overflows).
DIVERGED_LOSS = 1e3


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.train.out_dir) / cfg.hash()[:16]


@dataclass
class BuiltRun:
    """Everything one run trains with, built once from its config and data.

    `ema`: the moving average of the weights (`train.ema_decay`, see `training.ema`), built
    from `model` when the run is made; None when off. `eval_model` is what evaluation
    recalibrates and evaluates: the average when on, else the model."""

    cfg: RunConfig
    data: Dataset
    device: torch.device
    precision: Precision  # resolved: fp32 or bf16
    memory_format: torch.memory_format
    model: nn.Module
    forward: nn.Module
    loader: object
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    evals: dict[str, list[Batch]]
    history: list[dict[str, float]] = field(default_factory=list)
    start: int = 1
    class_acc: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    test_predictions: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    ema: AveragedModel | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.ema = build_ema(self.model, self.cfg.train)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.device, self.precision)


@dataclass
class _EpochStats:
    """The training half of an epoch: sums over its batches, and the last lr used."""

    loss_sum: torch.Tensor
    worst: torch.Tensor
    correct: torch.Tensor
    started: float = 0.0
    seen: int = 0
    lr: float = 0.0
    seconds: float = 0.0


def build_run(cfg: RunConfig, data: Dataset) -> BuiltRun:
    """Model (paired init at the run seed), loader, optimiser, schedule and eval batches."""
    t = cfg.train
    device = select_device(t.device)
    memory_format = memory_format_for(device, t.channels_last)
    model = CifarNet(cfg.model, num_classes=len(data.classes))
    paired_init(model, t.seed)
    model.to(device, memory_format=memory_format)
    loader = make_loader(data, cfg, device)
    opt = build_optimizer(model, t)
    sched = build_scheduler(opt, t, len(loader))
    evals = ({"test": eval_batches(data.test, data.mean, data.std, device)}
             if data.test is not None else {})  # a tuning trial holds no test split
    if data.val is not None:
        evals["val"] = eval_batches(data.val, data.mean, data.std, device)
    forward = torch.compile(model) if t.compile else model
    precision = resolve_precision(t.precision, device)
    return BuiltRun(cfg, data, device, precision, memory_format, model, forward, loader, opt, sched,
                evals)


def _restore(run: BuiltRun, ckpt_path: Path) -> None:
    """Continue after the epoch that `ckpt_path` (checked by `resume_point`) holds."""
    ckpt = load_checkpoint(ckpt_path, run.cfg.hash(), run.device)
    run.model.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    else:  # written before the checkpoint held every stream
        torch.set_rng_state(ckpt["torch_rng"])
    if run.ema is not None:
        if "ema" not in ckpt:  # the hash holds ema_decay, so a checkpoint of this run has it
            raise CheckpointError(f"{ckpt_path}: incomplete checkpoint (missing ema); delete "
                                  f"it to start over")
        run.ema.load_state_dict(ckpt["ema"])
    run.class_acc = ckpt.get("class_acc", torch.zeros(0)).cpu()
    run.history, run.start = list(ckpt["history"]), int(ckpt["epoch"]) + 1


def _save_checkpoint(run: BuiltRun, epoch: int, ckpt_path: Path) -> None:
    """Everything a resume needs, written atomically (see `training.checkpoint`); with
    `train.ema_decay`, the weights' moving average too (`"ema"`)."""
    payload = {
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(), "torch_rng": torch.get_rng_state(),
        "rng": rng_state(), "epoch": epoch, "history": run.history,
        "class_acc": run.class_acc, "config_hash": run.cfg.hash()}
    if run.ema is not None:
        payload["ema"] = run.ema.state_dict()
    save_checkpoint(ckpt_path, payload)


def _train_epoch(run: BuiltRun, epoch: int, ctx: RunContext,
                 callbacks: Sequence[Callback]) -> _EpochStats:
    """One pass over the epoch's batches; stops early at a diverged batch loss (on CUDA the
    check runs every 10 steps, to avoid a sync per step)."""
    t, device = run.cfg.train, run.device
    on_cuda = device.type == "cuda"
    torch.manual_seed(seed_from(t.seed, "dropout", epoch))
    run.model.train()
    stats = _EpochStats(torch.zeros((), device=device), torch.zeros((), device=device),
                        torch.zeros((), device=device, dtype=torch.long),
                        started=time.perf_counter())
    for step, (x, y) in enumerate(run.loader.epoch(epoch), 1):
        out, loss = train_step(run, x, y)
        stats.lr = run.opt.param_groups[0]["lr"]
        run.sched.step()
        detached = loss.detach()
        stats.loss_sum += detached * len(y)
        stats.worst = torch.maximum(stats.worst, detached)  # NaN propagates
        stats.correct += (out.detach().argmax(1) == y).sum()
        stats.seen += len(y)
        if (not on_cuda or step % 10 == 0) and not stats.worst < DIVERGED_LOSS:
            break
        for cb in callbacks:
            cb.on_batch_end(ctx, epoch, step, detached)
    if on_cuda:
        torch.cuda.synchronize()
    stats.seconds = time.perf_counter() - stats.started
    return stats


def train_step(run: BuiltRun, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
    """Forward (under the run's autocast), loss in fp32, backward, optimiser step, then the
    weights' moving average (if on); the logits and the loss. The scheduler is stepped by
    the caller."""
    x = in_layout(x, run.memory_format)
    with run.autocast():
        out = run.forward(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=run.cfg.train.label_smoothing)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    return out, loss


def _recalibrate(run: BuiltRun, epoch: int) -> None:
    """BatchNorm statistics of the evaluated model (the weights' moving average when on)
    from `train.bn_recal_batches` unaugmented training batches."""
    t, data = run.cfg.train, run.data
    if t.bn_recal_batches:
        batches = recal_images(data.train, t.bn_recal_batches, t.batch_size, t.seed, epoch)
        recalibrate_bn(run.eval_model, data.train, batches, data.mean, data.std, run.device,
                       run.memory_format, run.autocast())


def _evaluate_splits(run: BuiltRun, epoch: int) -> dict[str, float]:
    """Loss and accuracy of every eval split (after BatchNorm recalibration, if on) by the
    evaluated model (`BuiltRun.eval_model`), with the test-time augmentation of
    `train.tta_flip` and `train.tta_translate`; keeps the test split's per-class accuracy."""
    _recalibrate(run, epoch)
    metrics: dict[str, float] = {}
    for name, batches in run.evals.items():
        predicted: list[torch.Tensor] | None = [] if name == "test" else None
        loss_v, acc_v, per_class = evaluate(run.eval_model, batches, len(run.data.classes),
                                            run.autocast(), predicted,
                                            tta_flip=run.cfg.train.tta_flip,
                                            tta_translate=run.cfg.train.tta_translate)
        metrics[f"{name}_loss"], metrics[f"{name}_acc"] = loss_v, acc_v
        if name == "test":
            run.class_acc = per_class
            run.test_predictions = torch.cat(predicted).cpu()
    return metrics


def _context(run: BuiltRun, run_dir: Path, point: ResumePoint) -> RunContext:
    data = run.data
    return RunContext(run.cfg, run_dir, str(run.device), data.label, list(data.classes),
                      count_params(run.model), len(data.train),
                      len(data.val) if data.val is not None else 0,
                      len(data.test) if data.test is not None else 0,
                      len(run.loader), run.start, str(run.precision), point,
                      list(run.history), data.fingerprint)


def _diverged_reason(run: BuiltRun, stats: _EpochStats, epoch: int) -> str:
    return (f"training loss {stats.worst.item():.3g} (non-finite or above "
            f"{DIVERGED_LOSS:g}) in epoch {epoch}, lr={run.cfg.train.lr:g}")


def train(cfg: RunConfig, callbacks: Sequence[Callback] = (), *, data: Dataset | None = None,
          run_dir: Path | None = None, resume: bool = False,
          on_bad_checkpoint: OnBadCheckpoint = OnBadCheckpoint.RAISE) -> RunResult:
    """Train `cfg` and return how it ended; callbacks see every epoch.

    A non-finite loss, or one above DIVERGED_LOSS, ends the run at once with status
    `diverged`. A callback may raise `StopTraining` (e.g. pruning). Ctrl-C ends it as
    `killed` and a crash as `crashed`; both are reported to the callbacks' `on_run_end` and
    then re-raised.

    `resume`: continue after the last epoch in the run folder's checkpoint (see
    `resume_point`; nothing there: from epoch 1). A finished run (checkpoint at the last
    epoch and metrics.json of a finished run) is not trained again: its stored result is
    returned, its files untouched, and no callback is called. A checkpoint that cannot be
    used raises `CheckpointError` (a UserError) with `on_bad_checkpoint=RAISE`, or starts
    the run afresh with FRESH (`RunContext.resume.note` says why).
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    point = (resume_point(run_dir, cfg.hash(), cfg.train.epochs, on_bad_checkpoint)
             if resume else ResumePoint(run_dir, cfg.train.epochs))
    if point.finished:
        return _stored_result(run_dir)
    data = data if data is not None else load_data(cfg.data)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = build_run(cfg, data)
    if point.completed:
        _restore(run, run_dir / CHECKPOINT)
    ctx = _context(run, run_dir, point)
    for cb in callbacks:
        cb.on_run_start(ctx)
    status, reason = "finished", ""
    try:
        for epoch in range(run.start, cfg.train.epochs + 1):
            stats = _train_epoch(run, epoch, ctx, callbacks)
            if not stats.worst < DIVERGED_LOSS:
                status, reason = "diverged", _diverged_reason(run, stats, epoch)
                break
            metrics = _epoch_metrics(run, stats, epoch)
            run.history.append(metrics)
            _save_checkpoint(run, epoch, run_dir / CHECKPOINT)
            for cb in callbacks:
                cb.on_epoch_end(ctx, epoch, metrics)
    except StopTraining as stop:
        status, reason = stop.status, stop.reason
    except BaseException as exc:
        _report_abort(run, ctx, callbacks, run_dir, exc)
        raise
    return _finish(run, ctx, callbacks, run_dir, status, reason)


def _epoch_metrics(run: BuiltRun, stats: _EpochStats, epoch: int) -> dict[str, float]:
    """Training sums of the epoch, then evaluation, lr, timings and the epoch number."""
    metrics = {"train_loss": stats.loss_sum.item() / stats.seen,
               "train_acc": stats.correct.item() / stats.seen, **_evaluate_splits(run, epoch)}
    metrics.update(lr=stats.lr, epoch_time_s=time.perf_counter() - stats.started,
                   images_per_s=stats.seen / stats.seconds, epoch=float(epoch))
    return metrics


def _stored_result(run_dir: Path) -> RunResult:
    """The RunResult that metrics.json of a finished run records."""
    saved = finished_metrics(run_dir)
    assert saved is not None  # resume_point checked it
    return RunResult(saved["status"], saved["config_hash"], run_dir,
                     int(saved["epochs_completed"]), list(saved["history"]),
                     saved.get("reason", ""), dict(saved.get("class_acc", {})))


def _report_abort(run: BuiltRun, ctx: RunContext, callbacks: Sequence[Callback], run_dir: Path,
                  exc: BaseException) -> None:
    """Tell the callbacks that the run was killed (Ctrl-C, SystemExit) or crashed."""
    killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
    result = RunResult("killed" if killed else "crashed", run.cfg.hash(), run_dir,
                       len(run.history), run.history,
                       "interrupted" if killed else traceback.format_exc())
    for cb in callbacks:
        with contextlib.suppress(Exception):
            cb.on_run_end(ctx, result)


def _finish(run: BuiltRun, ctx: RunContext, callbacks: Sequence[Callback], run_dir: Path,
            status: str, reason: str) -> RunResult:
    """Write metrics.json (result, config, data label) and tell the callbacks."""
    classes = run.data.classes
    result = RunResult(status, run.cfg.hash(), run_dir, len(run.history), run.history, reason,
                       {c: float(a) for c, a in zip(classes, run.class_acc.tolist())})
    (run_dir / METRICS).write_text(json.dumps(
        {**result.to_dict(), "config": run.cfg.to_dict(), "data": run.data.label,
         "precision": str(run.precision)}, indent=2,
        default=_json_safe))
    if run.test_predictions.numel():
        labels = torch.cat([y for _, y in run.evals["test"]]).cpu()
        save_predictions(run_dir / PREDICTIONS, run.test_predictions, labels)
    for cb in callbacks:
        cb.on_run_end(ctx, result)
    return result


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
