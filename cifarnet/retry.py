"""Retrying the first touch of a shared database, which several workers may race to set up.

Workers that start together against a fresh PostgreSQL database all try to create MLflow's
and Optuna's tables; all but one fail with "already exists" or a unique-key violation. Those
errors are harmless once the winner is done, so the first access is retried after a pause.
"""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

T = TypeVar("T")
RACE_MARKERS = ("already exists", "duplicate key", "uniqueviolation", "integrityerror",
                "database is locked", "deadlock")


def is_setup_race(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(m in text for m in RACE_MARKERS)


def retry_setup(fn: Callable[[], T], attempts: int = 6, pause_s: float = 1.0) -> T:
    """Call `fn`, retrying with a randomised pause while it fails with a setup race."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not is_setup_race(exc):
                raise
            time.sleep(pause_s * (1 + attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
