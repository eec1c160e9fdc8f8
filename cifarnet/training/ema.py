"""An exponential moving average of the weights (`train.ema_decay`), the model a run
evaluates when it is on.

After every optimiser step, ema = decay * ema + (1 - decay) * w for every parameter; the
first step copies w (torch's `AveragedModel` with `get_ema_multi_avg_fn`). Only parameters
are averaged (`use_buffers=False`): the averaged weights get BatchNorm statistics of their
own, recomputed before every evaluation on unaugmented training batches by
`training.bn.recalibrate_bn` (which is why the config refuses `train.ema_decay` with
`train.bn_recal_batches=0`). Training is not affected: the optimiser steps the live model,
the average only follows it. The run's checkpoint holds the average's state (`"ema"`), so a
resumed run evaluates exactly the average an uninterrupted one does.

Sources: Polyak & Juditsky 1992 (averaging of iterates); Tan & Le 2019, EfficientNet
(weight EMA 0.9999); Keller Jordan's cifar10-airbench.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cifarnet.config.schema import TrainConfig


def build_ema(model: nn.Module, t: TrainConfig) -> AveragedModel | None:
    """The moving average of `model`'s weights for `t.ema_decay` (None when 0: off). A copy
    of the model, on its device and in its memory format; `update_parameters(model)` after
    every optimiser step."""
    if t.ema_decay == 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay),
                         use_buffers=False)
