"""The optimiser and the learning-rate schedule of a run, from its `TrainConfig`.

Parameter groups: with the default recipe one group holds every parameter. With
`train.no_decay_bn_bias` or `train.bn_lr_mult` != 1 the parameters are split into up to
three named groups, in this order (the first is the one whose lr a run logs):

    "decay"    every other parameter (convolution weights): lr, weight decay
    "no_decay" convolution biases (only with no_decay_bn_bias): lr, no weight decay
    "bn"       BatchNorm weights and biases: lr * bn_lr_mult, weight decay unless
               no_decay_bn_bias

Each group records its `lr_mult`; `build_scheduler` gives OneCycleLR a peak of
`train.lr * lr_mult` per group, and the other schedules scale each group's own initial lr.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cifarnet.config.schema import TrainConfig


def param_groups(model: nn.Module, t: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups for `t` (see the module docstring); each group has
    `name`, `params`, `lr`, `lr_mult` and `weight_decay`; empty groups are left out."""
    bn_params = {id(p) for m in model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    groups: dict[str, dict[str, Any]] = {
        "decay": {"name": "decay", "params": [], "lr_mult": 1.0,
                  "weight_decay": t.weight_decay},
        "no_decay": {"name": "no_decay", "params": [], "lr_mult": 1.0, "weight_decay": 0.0},
        "bn": {"name": "bn", "params": [], "lr_mult": t.bn_lr_mult,
               "weight_decay": 0.0 if t.no_decay_bn_bias else t.weight_decay},
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in bn_params:
            groups["bn"]["params"].append(p)
        elif t.no_decay_bn_bias and name.rsplit(".", 1)[-1] == "bias":
            groups["no_decay"]["params"].append(p)
        else:
            groups["decay"]["params"].append(p)
    out = [g for g in groups.values() if g["params"]]
    for g in out:
        g["lr"] = t.lr * g["lr_mult"]
    return out


def build_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """Nesterov SGD, Adam or AdamW; `t.momentum` is Adam's beta1. One group of all the
    parameters (the default), or the groups of `param_groups` when `t` asks for them."""
    params: Any = model.parameters()
    if t.no_decay_bn_bias or t.bn_lr_mult != 1.0:
        params = param_groups(model, t)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=True,
                               weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, betas=(t.momentum, 0.999), weight_decay=t.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, t: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. A one-cycle run of under 4 steps has no room for its two
    phases and keeps the peak lr constant. With several parameter groups OneCycleLR peaks at
    `t.lr * lr_mult` in each (it sets every group's lr itself); cosine, step and constant
    scale each group's own initial lr, so the ratios between the groups hold throughout."""
    total = t.epochs * steps_per_epoch
    if t.schedule == "onecycle" and total >= 4:
        # Each phase needs at least one step, or OneCycleLR divides by zero on short runs.
        pct = min(max(t.warmup_frac, 2.0 / total), (total - 2.0) / total)
        mults = [g.get("lr_mult", 1.0) for g in opt.param_groups]
        max_lr = t.lr if all(m == 1.0 for m in mults) else [t.lr * m for m in mults]
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=total, pct_start=pct,
            anneal_strategy="linear", cycle_momentum=False, div_factor=10.0,
            final_div_factor=100.0)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_epochs * steps_per_epoch,
                                               gamma=t.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
