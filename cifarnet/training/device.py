"""Where and in which arithmetic a run computes: the device, the memory format, the precision.

The model never picks a device or a dtype; the trainer asks this module once per run.

Precision policy (`train.precision`): bf16 autocast (`torch.autocast`) runs convolutions and
matrix products in bf16 where the device computes bf16 natively: CUDA devices that report
bf16 support, and CPUs with AVX512-BF16 or AMX (oneDNN then uses them; measured 1.9x fp32's
training throughput per thread on a Zen 4 core). Autocast keeps the parameters, so the
optimiser state, in fp32; BatchNorm keeps its running statistics in fp32 buffers; the trainer
computes the loss on `logits.float()`. `auto` picks bf16 where native, fp32 elsewhere (also on
MPS); `bf16` forces it (emulated, slow, on CPUs without it); `fp32` never autocasts.
"""

from __future__ import annotations

import contextlib

import torch

from cifarnet.hardware import Precision


def memory_format_for(device: torch.device, channels_last: bool) -> torch.memory_format:
    """channels_last where it is faster (CUDA and the CPU), else the tensors' own layout."""
    if channels_last and device.type in ("cuda", "cpu"):
        return torch.channels_last
    return torch.preserve_format


def in_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """`x` in `memory_format`; `torch.preserve_format` (MPS, or channels_last off) leaves it
    as it is (`Tensor.contiguous` refuses preserve_format)."""
    if memory_format == torch.preserve_format:
        return x
    return x.contiguous(memory_format=memory_format)


def autocast_for(device: torch.device,
                 precision: Precision) -> contextlib.AbstractContextManager:
    """A fresh context for one forward pass: bf16 autocast for `bf16`, else nothing.
    `precision` must be resolved (not `auto`)."""
    if precision == Precision.AUTO:
        raise ValueError("resolve the precision first (resolve_precision)")
    if precision == Precision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
