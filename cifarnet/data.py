"""Datasets held in memory as uint8 arrays: CIFAR-10 through torchvision, or an ImageFolder tree.

Images are decoded once and cached on disk as .npy files keyed by the source and its files'
count, total size and newest mtime, so a second run starts in about a second. Subsets and the
validation split are class-stratified and seeded by `data.split_seed` (not the run seed), so
every run of an experiment sees the same images. Normalisation statistics come from the
training images actually used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarnet.config import DataConfig
from cifarnet.errors import DataError

IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CACHE_VERSION = 1
JPEG_MIRROR_LABEL = "CIFAR-10 (JPEG q75 mirror)"
# The DataConfig fields that pick the images and the splits (augmentation fields do not).
DATA_KEYS = ("source", "path", "train_subset", "test_subset", "val_size", "split_seed")


@dataclass(frozen=True)
class Split:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split | None
    test: Split
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label: str


def data_key(cfg: DataConfig) -> tuple:
    """Configs with equal keys load the same Dataset: load it once for all of them."""
    return tuple(getattr(cfg, k) for k in DATA_KEYS)


def preload_data(configs: Iterable[DataConfig]) -> dict[tuple, Dataset]:
    """Each distinct dataset of `configs`, loaded once, by `data_key`."""
    cache: dict[tuple, Dataset] = {}
    for cfg in configs:
        key = data_key(cfg)
        if key not in cache:
            cache[key] = load_data(cfg)
    return cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("CIFARNET_CACHE", Path.home() / ".cache" / "cifarnet"))


def resolve_source(cfg: DataConfig) -> tuple[str, Path | None]:
    """('imagefolder', path) or ('cifar10', None), from data.source, data.path, CIFARNET_DATA."""
    path = cfg.path or os.environ.get("CIFARNET_DATA") or None
    source = cfg.source
    if source == "auto":
        source = "imagefolder" if path else "cifar10"
    if source == "imagefolder":
        if not path:
            raise DataError("data.source=imagefolder needs data.path (or CIFARNET_DATA)")
        return source, Path(path).expanduser()
    return source, None


def load_data(cfg: DataConfig) -> Dataset:
    """The train, validation and test splits of the configured source, ready for training."""
    source, path = resolve_source(cfg)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    if source == "imagefolder":
        assert path is not None
        train, test, classes = _load_imagefolder_cached(path, cache)
        label = _imagefolder_label(path)
    else:
        train, test, classes = _load_cifar10(cache)
        label = "CIFAR-10"
    rng = np.random.default_rng(cfg.split_seed)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise DataError(f"data.val_size: {cfg.val_size} is not below the "
                            f"{len(train)} training images")
        val_idx = stratified_indices(train.labels, cfg.val_size, rng)
        rest = np.setdiff1d(np.arange(len(train)), val_idx)
        val, train = _take(train, val_idx), _take(train, rest)
    if cfg.train_subset is not None:
        train = _take(train, _subset(train, cfg.train_subset, rng, "data.train_subset"))
    if cfg.test_subset is not None:
        test = _take(test, _subset(test, cfg.test_subset, rng, "data.test_subset"))
    mean, std = channel_stats(train.images)
    return Dataset(train, val, test, classes, mean, std, label)


def _subset(split: Split, n: int, rng: np.random.Generator, key: str) -> np.ndarray:
    if n > len(split):
        raise DataError(f"{key}: {n} is more than the {len(split)} images available")
    return stratified_indices(split.labels, n, rng)


def _take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx])


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` indices with each class represented in proportion (largest remainder), sorted."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]:
        quota[i] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, as fractions of 255."""
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return tuple(x.mean(0).tolist()), tuple(x.std(0).tolist())  # type: ignore[return-value]


def _imagefolder_label(path: Path) -> str:
    readme = path / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        if "CIFAR-10" in text and "quality 75" in text:
            return JPEG_MIRROR_LABEL
    return f"ImageFolder {path.name}"


def _list_tree(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing folder (expected <data>/train/<class>/ and "
                        "<data>/test/<class>/)")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{split_dir}: no class folders")
    files: dict[str, list[Path]] = {}
    for c in classes:
        found = sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{split_dir / c}: empty class folder (no images)")
        files[c] = found
    return files


def _tree_fingerprint(trees: dict[str, dict[str, list[Path]]]) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for split, tree in sorted(trees.items()):
        for c, paths in tree.items():
            stats = [p.stat() for p in paths]
            size = sum(s.st_size for s in stats)
            mtime = max(s.st_mtime_ns for s in stats)
            h.update(f"{split}/{c}:{len(paths)}:{size}:{mtime}".encode())
    return h.hexdigest()[:20]


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    if arr.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} after decoding, "
                        f"expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return arr


def _decode_tree(tree: dict[str, list[Path]], classes: list[str]) -> Split:
    paths = [p for c in classes for p in tree[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in tree[c]], dtype=np.int64)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        images = np.stack(list(pool.map(_decode, paths, chunksize=256)))
    return Split(images, labels)


def _load_imagefolder_cached(root: Path, cache: Path) -> tuple[Split, Split, list[str]]:
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist (data.path / CIFARNET_DATA)")
    trees = {s: _list_tree(root / s) for s in ("train", "test")}
    train_cls, test_cls = list(trees["train"]), list(trees["test"])
    if train_cls != test_cls:
        only = sorted(set(train_cls) ^ set(test_cls))
        raise DataError(f"{root}: train and test have different classes ({', '.join(only)} "
                        "in one split only)")
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    folder = cache / f"imagefolder-{key}-{_tree_fingerprint(trees)}"
    if (folder / "meta.json").is_file():
        return _read_cache(folder)
    train = _decode_tree(trees["train"], train_cls)
    test = _decode_tree(trees["test"], train_cls)
    _write_cache(folder, train, test, train_cls)
    return train, test, train_cls


def _write_cache(folder: Path, train: Split, test: Split, classes: list[str]) -> None:
    """Write atomically (temp folder, then rename) so concurrent workers never read half."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("test", test)):
        np.save(tmp / f"{name}_images.npy", split.images)
        np.save(tmp / f"{name}_labels.npy", split.labels)
    (tmp / "meta.json").write_text(json.dumps({"classes": classes, "version": CACHE_VERSION}))
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race; its copy is identical
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def _read_cache(folder: Path) -> tuple[Split, Split, list[str]]:
    meta = json.loads((folder / "meta.json").read_text())
    splits = [Split(np.load(folder / f"{n}_images.npy"), np.load(folder / f"{n}_labels.npy"))
              for n in ("train", "test")]
    return splits[0], splits[1], meta["classes"]


def _load_cifar10(cache: Path) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import CIFAR10

    root = cache / "cifar10"
    try:
        train = CIFAR10(str(root), train=True, download=True)
        test = CIFAR10(str(root), train=False, download=True)
    except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "no download"
        raise DataError(
            f"could not download CIFAR-10 into {root} ({type(exc).__name__}: {exc}). "
            "Offline? Point data.path or the CIFARNET_DATA environment variable at an "
            "ImageFolder tree (train/<class>/*.jpg, test/<class>/*.jpg)") from None
    return (Split(np.asarray(train.data), np.asarray(train.targets, dtype=np.int64)),
            Split(np.asarray(test.data), np.asarray(test.targets, dtype=np.int64)),
            list(train.classes))
