"""CifarNet built from feature flags; the default `ModelConfig` is the seed network exactly.

Module names follow the seed (`convblock1a`, `convpool1`, ...), so a layer that exists in two
variants has the same name in both: that is what paired initialisation keys on (see
`paired_init`). The model never picks a device or a dtype; the trainer does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarnet.config.schema import ModelConfig
from cifarnet.seeding import seed_from


class Add(nn.Module):
    """`torch.add` as a module, so the architecture summary sees the residual join."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.add(a, b)


def _conv(cin: int, cout: int, k: int = 3, *, stride: int = 1, dilation: int = 1,
          groups: int = 1, bias: bool = True) -> nn.Conv2d:
    pad = dilation * (k - 1) // 2
    return nn.Conv2d(cin, cout, kernel_size=(k, k), stride=stride, padding=pad,
                     dilation=dilation, groups=groups, bias=bias)


def _block(cin: int, cout: int, *, separable: bool, dilation: int = 1) -> nn.Sequential:
    """3x3 conv (or depthwise 3x3 + pointwise 1x1) -> ReLU -> BatchNorm, the seed's order."""
    if separable:
        convs = [_conv(cin, cin, dilation=dilation, groups=cin), _conv(cin, cout, k=1)]
    else:
        convs = [_conv(cin, cout, dilation=dilation)]
    return nn.Sequential(*convs, nn.ReLU(), nn.BatchNorm2d(cout))


def _pool(c: int, pointwise: bool) -> nn.Sequential:
    """The seed's max-pool substitute: a stride-2 3x3 conv, optionally followed by a 1x1."""
    layers: list[nn.Module] = [_conv(c, c, stride=2)]
    if pointwise:
        layers.append(_conv(c, c, k=1))
    return nn.Sequential(*layers)


class CifarNet(nn.Module):
    """The seed's CIFAR-10 network; returns log-probabilities of shape (N, 10)."""

    def __init__(self, cfg: ModelConfig | None = None, num_classes: int = 10) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        c1, c2, c3, c4, c5 = (max(1, round(c * cfg.width)) for c in (16, 32, 64, 128, 256))
        dw, reg = cfg.depthwise, cfg.regular_after_depthwise
        self.convblock1a = _block(3, c1, separable=False)
        self.convblock1b = _block(c1, c1, separable=False)
        self.convpool1 = _pool(c1, cfg.pointwise_after_stride)
        self.convblock2a = _block(c1, c2, separable=dw)
        self.convblock2b = _block(c2, c2, separable=not reg)
        self.convpool2 = _pool(c2, cfg.pointwise_after_stride)
        self.convblock3a = _block(c2, c3, separable=dw)
        self.convblock3b = _block(c3, c3, separable=not reg, dilation=cfg.dilation)
        self.convpool3 = _pool(c3, cfg.pointwise_after_stride)
        self.convblock4a = _block(c3, c4, separable=dw)
        self.convblock4b = _block(c4, c5, separable=dw)
        self.gap = nn.AvgPool2d(4)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.convblockf = nn.Sequential(_conv(c5, num_classes, k=1, bias=False))
        self.add1 = Add() if cfg.extra_adds else None
        self.add2 = Add() if cfg.extra_adds else None
        self.add3 = Add() if cfg.residual_add else None
        self.num_classes = num_classes

    @staticmethod
    def _pair(x: torch.Tensor, first: nn.Module, second: nn.Module,
              add: Add | None) -> torch.Tensor:
        x = first(x)
        y = second(x)
        return add(x, y) if add is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pair(x, self.convblock1a, self.convblock1b, self.add1)
        x = self.convpool1(x)
        x = self._pair(x, self.convblock2a, self.convblock2b, self.add2)
        x = self.convpool2(x)
        x = self._pair(x, self.convblock3a, self.convblock3b, self.add3)
        x = self.convpool3(x)
        x = self.convblock4a(x)
        x = self.convblock4b(x)
        x = self.gap(x)
        x = self.dropout(x)
        x = self.convblockf(x)
        x = x.view(-1, self.num_classes)
        return F.log_softmax(x, dim=-1)


def count_params(model: nn.Module) -> int:
    """Trainable parameters, biases and BatchNorm affine included (the seed's 153,104)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def paired_init(model: nn.Module, seed: int) -> None:
    """Initialise every layer from a generator keyed by (seed, layer name, weight shape).

    PyTorch's default initialisers are used, but each layer draws from its own stream, so a
    layer that two variants share (same name, same shape) starts from identical weights in
    both, whatever other layers either variant adds or drops.
    """
    for name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if reset is None or not list(module.parameters(recurse=False)):
            continue
        shape = tuple(next(module.parameters(recurse=False)).shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_from(seed, "init", name, shape))
            reset()
