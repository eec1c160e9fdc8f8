"""Named model presets, timm-style: tests and `cifarnet-exp summary --preset` loop over them."""

from __future__ import annotations

from typing import Any

from cifarnet.config.schema import ModelConfig, build_config
from cifarnet.errors import ConfigError, shown

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    "no_residual_add": {"model.residual_add": False},
    "no_dilation": {"model.dilation": 1},
    "no_pointwise_after_stride": {"model.pointwise_after_stride": False},
    "no_depthwise": {"model.depthwise": False},
    "separable_everywhere": {"model.regular_after_depthwise": False},
    "extra_adds": {"model.extra_adds": True},
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def preset_overrides(name: str) -> dict[str, Any]:
    """The dotted overrides of preset `name`."""
    if name not in PRESETS:
        raise ConfigError(f"preset {shown(name)}: unknown; choose from {', '.join(list_presets())}")
    return dict(PRESETS[name])


def preset_model(name: str) -> ModelConfig:
    return build_config(preset_overrides(name)).model
