"""Architecture summary: per-layer shapes, parameters, MACs, receptive field and jump.

The model is run once on a dummy input with forward hooks. Every tensor carries its
receptive field `rf` and `jump` (the input-pixel distance between neighbouring outputs):
a convolution with kernel k, dilation d and stride s gives rf + (d(k-1)) * jump and jump * s;
a sum of branches (`Add`) takes the larger receptive field of its inputs. ReLU, BatchNorm and
dropout rows are folded into the convolution before them, so the table reads like the seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cifarnet.config.schema import ModelConfig
from cifarnet.model.cifarnet import Add, CifarNet

PARAM_BUDGET = 200_000  # the original assignment's limit
FOLDED = (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Identity)


@dataclass
class LayerRow:
    name: str
    kind: str
    out_shape: list[int]
    params: int
    macs: int
    rf: int
    jump: int


@dataclass
class Summary:
    layers: list[LayerRow]
    total_params: int
    total_macs: int
    receptive_field: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = "x".join(map(str, m.kernel_size))
        tags = []
        if m.groups > 1 and m.groups == m.in_channels:
            tags.append("depthwise")
        if m.stride[0] > 1:
            tags.append(f"stride {m.stride[0]}")
        if m.dilation[0] > 1:
            tags.append(f"dilation {m.dilation[0]}")
        return f"conv {k}" + (f" ({', '.join(tags)})" if tags else "")
    if isinstance(m, nn.AvgPool2d):
        return "global avg pool"
    if isinstance(m, Add):
        return "add (residual)"
    return type(m).__name__


def summarize(cfg: ModelConfig | None = None, input_size: int = 32) -> Summary:
    """Trace a CifarNet built from `cfg` and return its per-layer summary."""
    model = CifarNet(cfg).eval()
    state: dict[int, tuple[torch.Tensor, int, int]] = {}
    rows: list[LayerRow] = []
    last_conv_rf, seen_gap = 0, False

    def lookup(t: torch.Tensor) -> tuple[int, int]:
        _, rf, jump = state[id(t)]
        return rf, jump

    def hook(name: str):
        def fn(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nonlocal last_conv_rf, seen_gap
            rfs = [lookup(t) for t in inputs]
            rf, jump = max(rfs)
            macs = 0
            if isinstance(m, nn.Conv2d):
                k_eff = m.dilation[0] * (m.kernel_size[0] - 1) + 1
                rf, jump = rf + (k_eff - 1) * jump, jump * m.stride[0]
                k_area = m.kernel_size[0] * m.kernel_size[1]
                macs = out.numel() * (m.in_channels // m.groups) * k_area
                if not seen_gap:
                    last_conv_rf = rf
            elif isinstance(m, nn.AvgPool2d):
                seen_gap = True
                k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
                s = m.stride if isinstance(m.stride, int) else m.stride[0]
                rf, jump = rf + (k - 1) * jump, jump * s
            state[id(out)] = (out, rf, jump)
            params = sum(p.numel() for p in m.parameters(recurse=False))
            if isinstance(m, FOLDED) and rows:
                rows[-1].params += params
                if not isinstance(m, nn.Identity):
                    rows[-1].kind += f" + {type(m).__name__.replace('2d', '')}"
                return
            rows.append(LayerRow(name, _kind(m), list(out.shape[1:]), params, macs, rf, jump))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if not list(m.children())]
    x = torch.zeros(1, 3, input_size, input_size)
    state[id(x)] = (x, 1, 1)
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    total = sum(p.numel() for p in model.parameters())
    warnings = []
    if total > PARAM_BUDGET:
        warnings.append(f"{total:,} parameters exceed the original assignment's "
                        f"{PARAM_BUDGET:,} budget")
    return Summary(rows, total, sum(r.macs for r in rows), last_conv_rf, warnings)


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(s: Summary) -> str:
    """The summary as an aligned text table for people.

    The RF column is each layer's receptive field in input pixels, counting zero padding (so
    it may pass 32). From the global average pool on, every output sees the whole image: those
    rows read `all`, not the padded figure (107 for the seed network), so the column agrees
    with the `receptive field` line (the last convolution before the pool).
    """
    head = ["layer", "kind", "output", "params", "MACs", "RF", "jump"]
    body = []
    pooled = False
    for r in s.layers:
        pooled = pooled or r.kind == "global avg pool"
        body.append([r.name, r.kind, "x".join(map(str, r.out_shape)), f"{r.params:,}",
                     _human(r.macs), "all" if pooled else str(r.rf),
                     "-" if pooled else str(r.jump)])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    right = {3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(head))
    out = [line(head), rule, *(line(r) for r in body), rule,
           f"total parameters     {s.total_params:,}",
           f"total MACs           {s.total_macs:,} ({_human(s.total_macs)})",
           f"receptive field      {s.receptive_field} px (last convolution before GAP; "
           "from GAP on, RF 'all': the whole image)",
           "RF counts zero padding, so it can exceed the 32 px image"]
    out += [f"WARNING: {w}" for w in s.warnings]
    return "\n".join(out)
