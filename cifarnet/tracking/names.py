"""Short MLflow run names that fit the runs table's name column (about 25 characters).

MLflow cuts a long name to `dilation=1,resid...`, hiding the seed and most flag values, so a
child run is named by its differing flags, abbreviated, and its seed (`dil=1 add=off s0`),
and a grid's parent run by its spec, its epoch budget and its grid id
(`dilation_add 30ep g1a2b3c`). The full cell stays in the `cifarnet.cell` tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Model flags (cifarnet.config.schema.ModelConfig) and a few recipe keys people ablate.
ABBREVIATIONS: dict[str, str] = {
    "model.residual_add": "add",
    "model.dilation": "dil",
    "model.pointwise_after_stride": "pw",
    "model.depthwise": "dw",
    "model.regular_after_depthwise": "reg",
    "model.extra_adds": "xadd",
    "model.width": "w",
    "model.dropout": "drop",
    "data.augment_strength": "aug",
    "data.flip_only_frac": "flip",
    "data.augment_ramp_frac": "ramp",
    "train.tta_flip": "tta",
    "train.tta_translate": "tta_shift",
    "train.epochs": "ep",
    "train.lr": "lr",
    "train.weight_decay": "wd",
    "train.label_smoothing": "ls",
    "train.batch_size": "bs",
    "train.optimizer": "opt",
    "train.schedule": "sched",
}


def abbreviate(key: str) -> str:
    """The short form of a dotted config key: a known abbreviation, else its last part."""
    return ABBREVIATIONS.get(key, key.rsplit(".", 1)[-1])


def format_level(value: Any) -> str:
    """A flag's value for a name: booleans as on/off, floats without trailing zeros."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_run_name(levels: Mapping[str, Any], seed: int) -> str:
    """`dil=1 add=off s0` for levels {'model.dilation': 1, 'model.residual_add': False},
    seed 0; the levels in their given order (the spec's factor order); `s0` alone for a grid
    without factors."""
    parts = [f"{abbreviate(k)}={format_level(v)}" for k, v in levels.items()]
    return " ".join([*parts, f"s{seed}"])


def parent_run_name(spec_name: str, epochs: int, grid: str) -> str:
    """`dilation_add 30ep g1a2b3c`: the spec, the epoch budget of its runs and `g` with the
    first 6 hex digits of the grid id, so two grids of one spec (e.g. 2 and 30 epochs, or other
    factors) are told apart."""
    return f"{spec_name} {epochs}ep g{grid[:6]}"
