"""Independent random streams derived from one run seed.

A run seed gives separate streams for initialisation, data order and augmentation, each
derived by hashing (seed, stream name, ...). Streams never depend on the model, so two
variants of an ablation at the same seed see the same batches and the same augmentations.
"""

from __future__ import annotations

import hashlib

import torch


def seed_from(*parts: object) -> int:
    """A 63-bit seed derived from parts, e.g. (run seed, 'order', epoch)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_gen(*parts: object) -> torch.Generator:
    """A CPU torch.Generator seeded from parts."""
    g = torch.Generator()
    g.manual_seed(seed_from(*parts))
    return g
