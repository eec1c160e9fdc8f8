"""Did a run learn anything? Test accuracy against chance, over the test images.

A run "did not learn" when its test accuracy is not significantly above chance: with k correct
out of N test images and K classes, the one-sided exact binomial test of H0: p <= 1/K
(Clopper & Pearson 1934, Biometrika 26(4):404-413; `scipy.stats.binomtest`) has p >= 0.01.
Equivalently, the one-sided 99% Clopper-Pearson lower bound of its accuracy is at most 1/K:
the test set cannot tell the network from a guess. On 500 test images and 10 classes that is
any accuracy below 13.4% (67 of 500); on 10,000 images, below 10.71% (1,071).

We test against the lower bound, not the upper one: a rule "the 99% upper bound does not exceed
1/K + margin" would call a run at exactly 10.0% on 500 images (upper bound 13.5%) a learner for
any margin under 3.5 points, so it misses the very failure it is for (a BatchNorm that predicts
one class).

Chance is 1/K, which is what a constant prediction scores on a class-balanced test set (our
test subsets are stratified). This module imports neither torch nor MLflow.
"""

from __future__ import annotations

import math

from scipy import stats as st

ALPHA = 0.01


def above_chance_p(accuracy: float, num_images: int, num_classes: int) -> float:
    """One-sided exact binomial p-value of H0 "accuracy <= 1/num_classes", with
    round(accuracy * num_images) correct images. Raises ValueError for num_images < 1,
    num_classes < 2 or an accuracy outside [0, 1] or not finite."""
    if num_images < 1 or num_classes < 2:
        raise ValueError(f"need num_images >= 1 and num_classes >= 2, got {num_images}, "
                         f"{num_classes}")
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    k = round(accuracy * num_images)
    return float(st.binomtest(k, num_images, 1.0 / num_classes, alternative="greater").pvalue)


def did_not_learn(accuracy: float, num_images: int, num_classes: int,
                  alpha: float = ALPHA) -> bool:
    """True when the accuracy is within noise of chance (see the module docstring)."""
    return above_chance_p(accuracy, num_images, num_classes) >= alpha


def chance_threshold(num_images: int, num_classes: int, alpha: float = ALPHA) -> float:
    """The smallest accuracy (a multiple of 1/num_images) that counts as learned."""
    k = int(st.binom.isf(alpha, num_images, 1.0 / num_classes))
    while st.binom.sf(k - 1, num_images, 1.0 / num_classes) >= alpha:
        k += 1
    while k > 0 and st.binom.sf(k - 2, num_images, 1.0 / num_classes) < alpha:
        k -= 1
    return k / num_images
