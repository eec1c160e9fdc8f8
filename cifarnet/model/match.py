"""Iso-parameter comparisons: the `model.width` that gives a cell the base cell's size.

Dropping the depthwise convolutions of CifarNet gives 498,864 parameters against the seed's
153,104: a comparison of the two mixes architecture with size. `matched_width` finds, for a
cell's architecture, the channel multiplier (`model.width`, every stage's channels
round(c x width)) whose parameter count is closest to a target, and accepts it when within
`TOLERANCE` (1%) of it.

Search: the parameter count never decreases as the width grows (every channel count is a
rounded multiple of it), so a bisection finds the smallest width reaching the target; the
closest count lies next to it, among the widths within 3% on either side, which are scanned
in steps of 0.001. Widths are rounded to 4 decimals (they enter the config and its hash).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from cifarnet.config.schema import ModelConfig

TOLERANCE = 0.01
MIN_WIDTH, MAX_WIDTH = 1 / 16, 8.0


@lru_cache(maxsize=4096)
def params_at(cfg: ModelConfig, width: float) -> int:
    """Trainable parameters of CifarNet(`cfg` with `width`)."""
    from cifarnet.model.cifarnet import CifarNet, count_params

    return count_params(CifarNet(dataclasses.replace(cfg, width=width)))


@lru_cache(maxsize=1024)
def matched_width(cfg: ModelConfig, target: int) -> tuple[float, int]:
    """(width, parameter count) of `cfg`'s architecture closest to `target` parameters:
    `cfg.width` itself when it is already within TOLERANCE. Raises ValueError when no width
    in [1/16, 8] comes within TOLERANCE of `target`."""
    def off(n: int) -> float:
        return abs(n - target) / target

    own = params_at(cfg, cfg.width)
    if off(own) <= TOLERANCE:
        return cfg.width, own
    lo, hi = MIN_WIDTH, MAX_WIDTH
    if params_at(cfg, hi) < target or params_at(cfg, lo) > target * (1 + TOLERANCE):
        raise ValueError(f"no width in [{lo:g}, {hi:g}] reaches {target:,} parameters")
    for _ in range(40):
        mid = (lo + hi) / 2
        if params_at(cfg, mid) >= target:
            hi = mid
        else:
            lo = mid
    candidates = {round(hi * (1 + k / 1000), 4) for k in range(-30, 31)}
    best = min(sorted(candidates), key=lambda w: (off(params_at(cfg, w)), abs(w - hi)))
    count = params_at(cfg, best)
    if off(count) > TOLERANCE:
        raise ValueError(f"the closest width, {best:g}, gives {count:,} parameters, "
                         f"{off(count):.1%} from {target:,}")
    return best, count
