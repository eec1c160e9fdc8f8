"""Evaluation of a model on fixed, normalised batches (no augmentation)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarnet.data.loaders import Batch

PREDICTIONS = "test_predictions.npz"  # in a run's folder and among its MLflow artifacts


def flip_tta(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [B, classes] (fp32) of horizontal-flip test-time augmentation: the
    log_softmax of the mean of the model's outputs for `x` and for `x` mirrored left-right
    (`x.flip(-1)`, the width axis of [B, C, H, W]). The model returns log-probabilities,
    which differ from its logits by a per-image constant; log_softmax removes it, so this is
    the softmax of the averaged logits (as in KellerJordan/cifar10-airbench), a proper
    distribution for the loss."""
    out = model(x).float() + model(x.flip(-1)).float()
    return F.log_softmax(out / 2, dim=1)


def shifted(x: torch.Tensor, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` [B, C, H, W] shifted by `pixels` down-right and up-left (same shape): crops of
    `x` reflect-padded by `pixels` on every side, as cifar10-airbench's
    `infer_mirror_translate` does for 1 pixel."""
    p = pixels
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., :h, :w], padded[..., 2 * p:2 * p + h, 2 * p:2 * p + w]


def tta(model: nn.Module, x: torch.Tensor, flip: bool, translate: int) -> torch.Tensor:
    """Log-probabilities [B, classes] (fp32) of test-time augmentation: without either, the
    model's own output; `flip`: `flip_tta`; `translate` > 0 pixels: the log_softmax of
    1/2 x the logits of the image plus 1/4 x those of each of its two `shifted` copies, each
    view flip-averaged when `flip` (Keller Jordan's cifar10-airbench, tta_level=2; the
    model's log-probabilities stand for its logits up to a per-image constant that the
    final log_softmax removes)."""
    view = (lambda v: flip_tta(model, v)) if flip else (lambda v: model(v).float())
    if not translate:
        return view(x)
    down_right, up_left = shifted(x, translate)
    return F.log_softmax(view(x) / 2 + (view(down_right) + view(up_left)) / 4, dim=1)


def evaluate(model: nn.Module, batches: list[Batch], num_classes: int,
             autocast: contextlib.AbstractContextManager,
             predictions: list[torch.Tensor] | None = None,
             tta_flip: bool = False, tta_translate: int = 0) -> tuple[float, float, torch.Tensor]:
    """Mean NLL (nats per image), accuracy (0..1) and per-class accuracy (shape
    [num_classes], on the CPU; 0 for a class with no image) of `batches`, each
    (images [B, C, H, W] normalised, labels [B]). Puts the model in eval mode. With
    `predictions`, appends each batch's predicted classes (shape [B], int64, on the device).
    `tta_flip`, `tta_translate` (pixels): classify by `tta` (the image and its mirror, and
    its shifted copies) instead of the image alone."""
    model.eval()
    loss = torch.zeros((), device=batches[0][0].device)
    hits = torch.zeros(num_classes, device=loss.device)
    counts = torch.zeros(num_classes, device=loss.device)
    with torch.no_grad(), autocast:
        for x, y in batches:
            out = tta(model, x, tta_flip, tta_translate)
            loss += F.nll_loss(out, y, reduction="sum")
            predicted = out.argmax(1)
            hits += torch.bincount(y[predicted == y], minlength=num_classes)
            if predictions is not None:
                predictions.append(predicted)
            counts += torch.bincount(y, minlength=num_classes)
    n = counts.sum().item()
    per_class = hits / counts.clamp(min=1)
    return loss.item() / n, hits.sum().item() / n, per_class.cpu()


def save_predictions(path: Path, predicted: torch.Tensor, labels: torch.Tensor) -> None:
    """Write the test set's predicted classes and labels (both shape [N], in the test set's
    fixed order) as a compressed .npz (`predicted`, `label`; uint8 when the classes fit,
    about 10 KB for 10,000 images), atomically."""
    dtype = np.uint8 if int(max(predicted.max(), labels.max())) < 256 else np.int32
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, predicted=predicted.numpy().astype(dtype),
                        label=labels.numpy().astype(dtype))
    tmp.replace(path)
