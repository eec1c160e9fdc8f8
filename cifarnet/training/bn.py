"""Recalibrate BatchNorm running statistics on training images before evaluation.

Why: a BatchNorm layer evaluates with running averages that its momentum (0.1) gathers
during training while the weights move. In a short run (the README's quick look: 2 epochs on
2,000 images, ~14 steps) those averages describe early weights, not the final ones, and the
model in eval mode predicts one class (10.0% test accuracy while training accuracy is 24%).
Recomputing the statistics with the final weights fixes that at the cost of a few forward
passes.

Method: the standard one, as `torch.optim.swa_utils.update_bn` (reset the running
statistics, set `momentum=None` so that BatchNorm keeps a cumulative average, forward the
batches in training mode without gradients) and "precise BN" (Wu & Johnson, "Rethinking
'Batch' in BatchNorm", 2021, arXiv:2105.07576; fvcore's `fvcore.nn.precise_bn.update_bn_stats`,
pycls `TRAIN.PRECISE_BN` / `compute_precise_bn_stats`).

Data: training images WITHOUT augmentation, normalised exactly as the evaluation images.
The statistics serve evaluation, whose inputs are unaugmented; the warps and Cutout holes of
the training augmentation shift activation statistics away from what the model sees at test
time (Wu & Johnson, section 5, "train-test inconsistency"). The images are a random subset
drawn from the run's own stream ("bn_recal", epoch), so a run stays bit-reproducible and a
resumed run recalibrates exactly as an uninterrupted one. Only BatchNorm layers run in
training mode: dropout stays off and draws nothing from the global RNG.

Training is not affected: a training-mode forward normalises with batch statistics, so the
weights of a run do not depend on recalibration; only evaluation (and the running
statistics saved in the checkpoint) do.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cifarnet.data.augment import TorchAugment
from cifarnet.data.datasets import Split
from cifarnet.training.device import in_layout
from cifarnet.seeding import torch_gen


def recal_images(split: Split, num_batches: int, batch_size: int, seed: int,
                 epoch: int) -> list[torch.Tensor]:
    """Indices of the recalibration images of `epoch`: `num_batches` batches of
    `batch_size` (fewer if the split is smaller), a random subset drawn from the stream
    ("bn_recal", epoch) of the run seed; returned as index tensors, one per batch (none for
    `num_batches` 0: splitting an empty tensor gives one empty batch, which made
    `recalibrate_bn` reset every statistic and the model predict one class)."""
    n = min(num_batches * batch_size, len(split))
    if n == 0:
        return []
    order = torch.randperm(len(split), generator=torch_gen(seed, "bn_recal", epoch))[:n]
    return list(order.split(batch_size))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Split, index_batches: list[torch.Tensor],
                   mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                   memory_format: torch.memory_format,
                   autocast: contextlib.AbstractContextManager) -> int:
    """Replace every BatchNorm layer's running mean and variance by their average over the
    given batches of `split` (uint8 images normalised by `mean`/`std`, unaugmented).

    Returns the number of BatchNorm layers updated (0: nothing to do, model untouched).
    Leaves the model in eval mode. Source: `torch.optim.swa_utils.update_bn`.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not any(len(idx) for idx in index_batches):
        return 0
    momenta = {bn: bn.momentum for bn in bns}
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: the plain mean over the batches
        bn.train()
    norm = TorchAugment(0.0, mean, std, device)
    images = torch.from_numpy(split.images)
    try:
        with autocast:
            for idx in index_batches:
                x = norm.normalize(images[idx].to(device))
                model(in_layout(x, memory_format))
    finally:
        for bn in bns:
            bn.momentum = momenta[bn]
        model.eval()
    return len(bns)
