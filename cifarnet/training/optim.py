"""The optimiser and the learning-rate schedule of a run, from its `TrainConfig`."""

from __future__ import annotations

import torch
from torch import nn

from cifarnet.config.schema import TrainConfig


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """Nesterov SGD, Adam or AdamW over all parameters; `t.momentum` is Adam's beta1."""
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
