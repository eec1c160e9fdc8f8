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
import functools
from pathlib import Path

import torch

from cifarnet.config.schema import Precision
from cifarnet.errors import ConfigError

# /proc/cpuinfo flags of the x86 instructions oneDNN uses for bf16 convolutions and matmuls.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def select_device(name: str) -> torch.device:
    """`auto`: CUDA, then Apple MPS, then the CPU; anything else is a torch device string.

    Raises ConfigError naming `train.device` for a string torch does not parse.
    """
    if name != "auto":
        try:
            return torch.device(name)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"train.device: {name!r} is not a device (auto, cpu, cuda, "
                              f"cuda:N, mps): {str(exc).splitlines()[0][:120]}") from None
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


def in_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """`x` in `memory_format`; `torch.preserve_format` (MPS, or channels_last off) leaves it
    as it is (`Tensor.contiguous` refuses preserve_format)."""
    if memory_format == torch.preserve_format:
        return x
    return x.contiguous(memory_format=memory_format)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX-BF16 (read from /proc/cpuinfo at run time)."""
    return bool(cpu_flags() & CPU_BF16_FLAGS)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True where the CUDA device computes bf16 in hardware (Ampere and later)."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation argument
            return torch.cuda.is_bf16_supported()


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (see the module docstring)."""
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: Precision | str, device: torch.device) -> Precision:
    """`auto` -> bf16 where `device` computes it natively, else fp32; others unchanged."""
    precision = Precision(precision)
    if precision != Precision.AUTO:
        return precision
    return Precision.BF16 if bf16_native(device) else Precision.FP32


def autocast_for(device: torch.device,
                 precision: Precision) -> contextlib.AbstractContextManager:
    """A fresh context for one forward pass: bf16 autocast for `bf16`, else nothing.
    `precision` must be resolved (not `auto`)."""
    if precision == Precision.AUTO:
        raise ValueError("resolve the precision first (resolve_precision)")
    if precision == Precision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
