"""Shared fixtures: a tiny generated ImageFolder tree and shrunken real configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarnet.config import RunConfig, build_config
from pg import pg_database  # noqa: F401  (a fixture for every test module)

SHARED_TREE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg"
# The real tree is decoded once per machine into the user's cache (about 35 s the first time).
SHARED_CACHE = Path.home() / ".cache" / "cifarnet"
CLASSES = ["ant", "bee", "cat", "dog"]


def make_tree(root: Path, per_class_train: int = 60, per_class_test: int = 15,
              classes: list[str] = CLASSES, size: int = 32) -> Path:
    """Class-coloured noisy squares as PNGs: learnable, and decoded losslessly."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3))
                img[:, :, k % 3] += 120 + 60 * (k // 3)
                x0 = rng.integers(0, size // 2)
                img[x0:x0 + 8, :, (k + 1) % 3] = 250
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Decoded-array caches go to a temp folder, never the user's home."""
    monkeypatch.setenv("CIFARNET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CIFARNET_DATA", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny_config(tree: Path, tmp_path: Path, overrides: dict | None = None) -> RunConfig:
    """The real default config, shrunk: 1 epoch, tiny data, CPU (lightning-hydra style)."""
    base = {"data.path": str(tree), "data.num_workers": 0, "train.epochs": 1,
            "train.batch_size": 32, "train.device": "cpu", "train.out_dir": str(tmp_path / "runs")}
    base.update(overrides or {})
    return build_config(base)


def shared_tree_or_skip() -> Path:
    if not (SHARED_TREE / "train").is_dir():
        pytest.skip(f"{SHARED_TREE} not present")
    return SHARED_TREE


os.environ.setdefault("MPLBACKEND", "Agg")
