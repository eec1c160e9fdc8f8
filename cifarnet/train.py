"""One training run, top to bottom: data, model, optimiser, epochs, checkpoints, result.

Reproducibility: the run seed derives separate streams (see `cifarnet.seeding`): "init" for
the weights (per layer, see `paired_init`), ("order", epoch) for the data order, ("augment",
epoch) for the augmentations and ("dropout", epoch) for the global RNG. On the CPU a run is
bit-reproducible, and a resumed run ends with the same metrics as an uninterrupted one. On
CUDA the streams are the same, but cuDNN's convolution algorithms, atomic adds in backward
kernels and bf16 autocast make results differ in the last bits from run to run; set
`CUBLAS_WORKSPACE_CONFIG=:4096:8` and `torch.use_deterministic_algorithms(True)` yourself if
you need bitwise equality there, at a cost in speed.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cifarnet.callbacks import Callback, RunContext, RunResult, StopTraining
from cifarnet.config import RunConfig, TrainConfig
from cifarnet.data import Dataset, load_data
from cifarnet.loaders import Batch, eval_batches, flip_only_start, make_loader
from cifarnet.model import CifarNet, count_params, paired_init
from cifarnet.seeding import seed_from

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
# A batch loss above this is divergence too: chance is ln(10) = 2.3, and a run whose loss has
# passed 1,000 has blown up (at lr=10 the loss passes it within ~10 steps, then overflows).
DIVERGED_LOSS = 1e3


def select_device(name: str) -> torch.device:
    """`auto`: CUDA, then Apple MPS, then the CPU; anything else is a torch device string."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def memory_format_for(device: torch.device, channels_last: bool) -> torch.memory_format:
    """channels_last where it is faster (CUDA and the CPU), else the tensors' own layout."""
    if channels_last and device.type in ("cuda", "cpu"):
        return torch.channels_last
    return torch.preserve_format


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.train.out_dir) / cfg.hash()[:16]


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=True,
                               weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=t.lr, betas=(t.momentum, 0.999),
               weight_decay=t.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, t: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. A one-cycle run of under 4 steps has no room for its two
    phases and keeps the peak lr constant."""
    total = t.epochs * steps_per_epoch
    if t.schedule == "onecycle" and total >= 4:
        # Each phase needs at least one step, or OneCycleLR divides by zero on short runs.
        pct = min(max(t.warmup_frac, 2.0 / total), (total - 2.0) / total)
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=t.lr, total_steps=total, pct_start=pct,
            anneal_strategy="linear", cycle_momentum=False, div_factor=10.0,
            final_div_factor=100.0)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_epochs * steps_per_epoch,
                                               gamma=t.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def evaluate(model: nn.Module, batches: list[Batch], num_classes: int,
             autocast: contextlib.AbstractContextManager) -> tuple[float, float, torch.Tensor]:
    """Mean NLL, accuracy and per-class accuracy of `batches`."""
    model.eval()
    loss = torch.zeros((), device=batches[0][0].device)
    hits = torch.zeros(num_classes, device=loss.device)
    counts = torch.zeros(num_classes, device=loss.device)
    with torch.no_grad(), autocast:
        for x, y in batches:
            out = model(x).float()
            loss += F.nll_loss(out, y, reduction="sum")
            hits += torch.bincount(y[out.argmax(1) == y], minlength=num_classes)
            counts += torch.bincount(y, minlength=num_classes)
    n = counts.sum().item()
    per_class = hits / counts.clamp(min=1)
    return loss.item() / n, hits.sum().item() / n, per_class.cpu()


def train(cfg: RunConfig, callbacks: Sequence[Callback] = (), *, data: Dataset | None = None,
          run_dir: Path | None = None, resume: bool = False) -> RunResult:
    """Train `cfg` and return how it ended; callbacks see every epoch.

    A non-finite loss, or one above DIVERGED_LOSS, ends the run at once with status
    `diverged`. A callback may raise
    `StopTraining` (e.g. pruning). Ctrl-C ends it as `killed` and a crash as `crashed`;
    both are reported to the callbacks' `on_run_end` and then re-raised.
    """
    t = cfg.train
    device = select_device(t.device)
    data = data if data is not None else load_data(cfg.data)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    on_cuda = device.type == "cuda"
    memory_format = memory_format_for(device, t.channels_last)

    model = CifarNet(cfg.model, num_classes=len(data.classes))
    paired_init(model, t.seed)
    model.to(device, memory_format=memory_format)
    loader = make_loader(data.train, cfg.data.backend, cfg.data.augment_strength, data.mean,
                         data.std, t.batch_size, t.seed, device, cfg.data.num_workers,
                         flip_only_start(t.epochs, cfg.data.flip_only_frac))
    opt = build_optimizer(model, t)
    sched = build_scheduler(opt, t, len(loader))
    evals = {"test": eval_batches(data.test, data.mean, data.std, device)}
    if data.val is not None:
        evals["val"] = eval_batches(data.val, data.mean, data.std, device)
    forward = torch.compile(model) if t.compile else model

    def autocast() -> contextlib.AbstractContextManager:
        if on_cuda and t.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    history: list[dict[str, float]] = []
    start = 1
    ckpt_path = run_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt["config_hash"] == cfg.hash():
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["torch_rng"])
            history, start = list(ckpt["history"]), int(ckpt["epoch"]) + 1

    ctx = RunContext(cfg, run_dir, str(device), data.label, list(data.classes),
                     count_params(model), len(data.train),
                     len(data.val) if data.val is not None else 0, len(data.test),
                     len(loader), start)
    for cb in callbacks:
        cb.on_run_start(ctx)

    status, reason, class_acc = "finished", "", torch.zeros(0)
    try:
        for epoch in range(start, t.epochs + 1):
            torch.manual_seed(seed_from(t.seed, "dropout", epoch))
            model.train()
            loss_sum = torch.zeros((), device=device)
            worst = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            t0 = time.perf_counter()
            for step, (x, y) in enumerate(loader.epoch(epoch), 1):
                x = x.contiguous(memory_format=memory_format)
                with autocast():
                    out = forward(x)
                    loss = F.cross_entropy(out.float(), y, label_smoothing=t.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lr = opt.param_groups[0]["lr"]
                sched.step()
                detached = loss.detach()
                loss_sum += detached * len(y)
                worst = torch.maximum(worst, detached)  # NaN propagates
                correct += (out.detach().argmax(1) == y).sum()
                seen += len(y)
                if (not on_cuda or step % 10 == 0) and not worst < DIVERGED_LOSS:
                    break
                for cb in callbacks:
                    cb.on_batch_end(ctx, epoch, step, detached)
            if not worst < DIVERGED_LOSS:
                status = "diverged"
                reason = (f"training loss {worst.item():.3g} (non-finite or above "
                          f"{DIVERGED_LOSS:g}) in epoch {epoch}, lr={t.lr:g}")
                break
            if on_cuda:
                torch.cuda.synchronize()
            train_time = time.perf_counter() - t0
            metrics = {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}
            for name, batches in evals.items():
                loss_v, acc_v, per_class = evaluate(model, batches, len(data.classes), autocast())
                metrics[f"{name}_loss"], metrics[f"{name}_acc"] = loss_v, acc_v
                if name == "test":
                    class_acc = per_class
            metrics.update(lr=lr, epoch_time_s=time.perf_counter() - t0,
                           images_per_s=seen / train_time, epoch=float(epoch))
            history.append(metrics)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                        "epoch": epoch, "history": history, "config_hash": cfg.hash()},
                       ckpt_path)
            for cb in callbacks:
                cb.on_epoch_end(ctx, epoch, metrics)
    except StopTraining as stop:
        status, reason = stop.status, stop.reason
    except BaseException as exc:
        killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
        result = RunResult("killed" if killed else "crashed", cfg.hash(), run_dir,
                           len(history), history,
                           "interrupted" if killed else traceback.format_exc())
        for cb in callbacks:
            with contextlib.suppress(Exception):
                cb.on_run_end(ctx, result)
        raise

    result = RunResult(status, cfg.hash(), run_dir, len(history), history, reason,
                       {c: float(a) for c, a in zip(data.classes, class_acc.tolist())})
    (run_dir / METRICS).write_text(json.dumps(
        {**result.to_dict(), "config": cfg.to_dict(), "data": data.label}, indent=2,
        default=_json_safe))
    for cb in callbacks:
        cb.on_run_end(ctx, result)
    return result


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
