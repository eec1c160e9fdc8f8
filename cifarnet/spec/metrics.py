"""What the runs measure, in one registry: every metric a hypothesis, a search objective,
`epochs_to`, the spec checks and the displays name is read from `METRICS` (its direction,
unit, split, and whether it is logged per epoch); and the two claims a spec makes of them
(`Expect`, `epochs_to:` targets). Nothing here imports torch, MLflow or pandas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


@dataclass(frozen=True)
class Metric:
    """One metric: `split` (train, val, test, or model for a property of the network),
    `per_epoch` (logged every epoch, so a history exists), `hypothesis` (a hypothesis may
    compare it), `objective` (a search may optimise it)."""

    name: str
    direction: Direction
    unit: str
    split: str
    per_epoch: bool = True
    hypothesis: bool = True
    objective: bool = True


_ACC, _LOSS = "fraction of images", "cross-entropy (nats)"
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("test_acc", Direction.MAXIMIZE, _ACC, "test", objective=False),
    Metric("test_loss", Direction.MINIMIZE, _LOSS, "test", objective=False),
    Metric("val_acc", Direction.MAXIMIZE, _ACC, "val"),
    Metric("val_loss", Direction.MINIMIZE, _LOSS, "val"),
    Metric("train_acc", Direction.MAXIMIZE, _ACC, "train"),
    Metric("train_loss", Direction.MINIMIZE, _LOSS, "train"),
    Metric("params", Direction.MINIMIZE, "parameters", "model", per_epoch=False,
           hypothesis=False),
    Metric("macs", Direction.MINIMIZE, "multiply-adds per image", "model", per_epoch=False,
           hypothesis=False),
]}
HYPOTHESIS_METRICS = frozenset(n for n, m in METRICS.items() if m.hypothesis)
OBJECTIVE_METRICS = frozenset(n for n, m in METRICS.items() if m.objective)
VAL_METRICS = frozenset(n for n, m in METRICS.items() if m.split == "val")


class Expect(StrEnum):
    """What a hypothesis claims about a - b."""

    GREATER = "a > b"
    LESS = "a < b"
    EQUAL = "a == b"


PREFIX = "epochs_to:"
# the per-epoch accuracy histories a report loads (`epochs_to` targets)
HISTORY_METRICS = tuple(n for n, m in METRICS.items() if m.per_epoch
                        and m.split in ("test", "val") and m.direction is Direction.MAXIMIZE)
_PATTERN = re.compile(rf"{PREFIX}({'|'.join(HISTORY_METRICS)})>=([0-9]*\.?[0-9]+)")


@dataclass(frozen=True)
class TimeToTarget:
    """`epochs_to:<metric>>=<threshold>`: metric in HISTORY_METRICS, threshold in (0, 1]."""

    metric: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} >= {self.threshold:g}"


def parse_time_to(metric: str) -> TimeToTarget | None:
    """The target of an `epochs_to:` metric; None for any other metric name. Raises
    ValueError for an `epochs_to:` name that is malformed or whose threshold is outside
    (0, 1]."""
    if not metric.startswith(PREFIX):
        return None
    m = _PATTERN.fullmatch(metric)  # not a trailing newline, ASCII digits only
    if m is None:
        raise ValueError(f"expected {PREFIX}<metric>>=<threshold> with a metric of "
                         f"{', '.join(HISTORY_METRICS)}, e.g. {PREFIX}test_acc>=0.80; "
                         f"got {metric!r}")
    threshold = float(m[2])
    if not 0 < threshold <= 1:
        raise ValueError(f"{metric}: the threshold is an accuracy in (0, 1]")
    return TimeToTarget(m[1], threshold)
