"""Evaluation of a model on fixed, normalised batches (no augmentation)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cifarnet.data.loaders import Batch


def evaluate(model: nn.Module, batches: list[Batch], num_classes: int,
             autocast: contextlib.AbstractContextManager) -> tuple[float, float, torch.Tensor]:
    """Mean NLL (nats per image), accuracy (0..1) and per-class accuracy (shape
    [num_classes], on the CPU; 0 for a class with no image) of `batches`, each
    (images [B, C, H, W] normalised, labels [B]). Puts the model in eval mode."""
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
