"""The machine's compute facts, read at run time: which device `auto` means, and whether it
computes bf16 natively (the precision `auto` resolves to). Below the config (a run's identity
holds the precision it resolves to here); torch is imported only when a function asks.
"""

from __future__ import annotations

import enum
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from cifarnet.errors import ConfigError

if TYPE_CHECKING:
    import torch

# /proc/cpuinfo flags of the x86 instructions oneDNN uses for bf16 convolutions and matmuls.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


class Precision(enum.StrEnum):
    """The arithmetic of the forward and backward passes (`train.precision`).

    `auto` resolves per run to bf16 where the device computes bf16 natively (CUDA with bf16
    support; CPUs with AVX512-BF16 or AMX), else fp32; see `resolve_precision`.
    """

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


def select_device(name: str) -> "torch.device":
    """`auto`: CUDA, then Apple MPS, then the CPU; anything else is a torch device string.

    Raises ConfigError naming `train.device` for a string torch does not parse.
    """
    import torch

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


def check_device_present(name: str) -> None:
    """Refuse (ConfigError naming `train.device`) a device this machine does not have: a
    CUDA, XPU or MPS device with no such device here (a run would fail at its first step,
    after the stores were written). `auto` and `cpu` are always here."""
    import torch

    device = select_device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    elif device.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        count = xpu.device_count() if xpu is not None and xpu.is_available() else 0
    elif device.type == "mps":
        count = int(torch.backends.mps.is_available())
    else:
        return
    if count == 0 or (device.index is not None and device.index >= count):
        raise ConfigError(f"train.device: {name} is not on this machine ({count} {device.type} "
                          "device(s) here); use cpu or auto here, or --executor ray/slurm to "
                          "run on machines that have it")


def cpuinfo_field(name: str) -> str | None:
    """The first `name : value` line's value in /proc/cpuinfo (Linux); None where absent or
    unreadable."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name) and ":" in line:
            return line.split(":", 1)[1].strip()
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    return frozenset((cpuinfo_field("flags") or "").split())


@functools.cache
def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    import platform

    return cpuinfo_field("model name") or platform.processor()


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX-BF16 (read from /proc/cpuinfo at run time)."""
    return bool(cpu_flags() & CPU_BF16_FLAGS)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True where the CUDA device computes bf16 in hardware (Ampere and later)."""
    import torch

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
