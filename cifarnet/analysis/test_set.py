"""The test set, per seed: McNemar's exact test and the test set's own standard error.

The verdict over seeds asks whether the *training procedure* of a differs from b's on this test
set. Per seed there is a second question: do the two trained networks differ on the test
images at all? McNemar's (1947) exact test answers it from the discordant images only: n01
images that a gets right and b wrong, n10 the reverse; under "no difference" each discordant
image is a fair coin, so the exact p-value is the two-sided binomial test of n01 against
n01 + n10 (statsmodels `mcnemar(..., exact=True)`).

Beside it, the test-set standard error of one seed's accuracy difference d = (n01 - n10) / N,
sqrt((n01 + n10) / N - d^2) / sqrt(N) (McNemar's variance), root-mean-square over seeds: how far
one pair's difference would move on a fresh test set of N images. It is not set against the
spread over seeds to say "what would narrow the answer": when seed noise flips single test
images at random, the two estimate the same quantity, so neither is the larger source.

This module imports neither torch nor MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeedTest:
    """McNemar's exact test of one seed: a right / b wrong (n01), the reverse (n10), of n
    test images; the difference d = (n01 - n10) / n and its test-set standard error."""

    seed: int
    n: int
    n01: int
    n10: int
    p: float

    @property
    def diff(self) -> float:
        return (self.n01 - self.n10) / self.n

    @property
    def se(self) -> float:
        return math.sqrt(max((self.n01 + self.n10) / self.n - self.diff ** 2, 0.0) / self.n)


@dataclass(frozen=True)
class TwoSources:
    """Per hypothesis: the per-seed tests and the root-mean-square test-set standard error of
    a seed's difference."""

    tests: list[SeedTest]
    test_set_se: float

    @property
    def differing(self) -> int:
        """Seeds whose two networks differ on this test set (p < 0.05)."""
        return sum(t.p < 0.05 for t in self.tests)


def mcnemar_seed(seed: int, pred_a: np.ndarray, pred_b: np.ndarray,
                 labels: np.ndarray) -> SeedTest:
    """McNemar's exact test of two networks' predictions (shape [N]) on the same labelled
    test images. Raises ValueError when the shapes differ (not the same test set)."""
    from statsmodels.stats.contingency_tables import mcnemar

    if not (pred_a.shape == pred_b.shape == labels.shape):
        raise ValueError(f"seed {seed}: predictions of different test sets "
                         f"({pred_a.shape}, {pred_b.shape}, labels {labels.shape})")
    ra, rb = pred_a == labels, pred_b == labels
    n01, n10 = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    table = [[int(np.sum(ra & rb)), n01], [n10, int(np.sum(~ra & ~rb))]]
    p = float(mcnemar(table, exact=True).pvalue) if n01 + n10 else 1.0
    return SeedTest(seed, int(labels.size), n01, n10, p)


def two_sources(a: Mapping[int, tuple[np.ndarray, np.ndarray]],
                b: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> TwoSources | None:
    """From {seed: (predicted, labels)} of each arm, over the seeds both have; None when they
    share none."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    tests = [mcnemar_seed(s, a[s][0], b[s][0], a[s][1]) for s in shared]
    return TwoSources(tests, math.sqrt(float(np.mean([t.se ** 2 for t in tests]))))
