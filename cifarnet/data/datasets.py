"""Datasets held in memory as uint8 arrays: CIFAR-10 through torchvision, or an ImageFolder tree.

An ImageFolder tree is read by the rules of `cifarnet.data.tree` (what counts as a class and
an image; clutter such as .DS_Store or __MACOSX is ignored, other non-image files are skipped
with a warning, unreadable images are an error naming the file), and each image is decoded by
the rules of `cifarnet.data.decode` (every Pillow mode to 8-bit RGB, or refused). Decoded
arrays are cached on disk keyed by the data's fingerprint, a hash of the class list and every
file's relative path and content (`cifarnet.data.cache`), so the cache never serves images or
labels that differ from the tree, and a second run starts in about a second.

`Dataset.fingerprint` is that identity (16 hex digits), for other layers to put into what
decides "already done": equal fingerprints mean the same classes, files and bytes. It covers
the source data only; which subset of it a run uses is in the config (data.train_subset,
data.test_subset, data.val_size, data.split_seed).

Subsets and the validation split are class-stratified and seeded by `data.split_seed` (not the
run seed), so every run of an experiment sees the same images. Normalisation statistics come
from the training images actually used; training images with no spread in a channel (std below
one intensity level, e.g. blank images) are refused, as is a data set with fewer than 2
classes, before any training.
"""

from __future__ import annotations

import dataclasses

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarnet.config.schema import DataConfig
from cifarnet.data.cache import (
    CACHE_VERSION,
    ArrayCache,
    array_fingerprint,
    file_digest,
    fingerprint,
)
from cifarnet.data.decode import IMAGE_SIZE, decode_bytes
from cifarnet.data.tree import IMAGE_SUFFIXES, SPLITS, TreeListing, list_tree
from cifarnet.errors import DataError
from cifarnet.data.keys import MetricKeyError, class_metric_keys

__all__ = ["CACHE_VERSION", "DATA_KEYS", "IMAGE_SIZE", "IMAGE_SUFFIXES", "Dataset", "Split",
           "channel_stats", "data_key", "load_data", "preload_data", "stratified_indices"]

JPEG_MIRROR_LABEL = "CIFAR-10 (JPEG q75 mirror)"
# The DataConfig fields that pick the images and the splits (augmentation fields do not).
DATA_KEYS = ("source", "path", "train_subset", "test_subset", "val_size", "split_seed")
MIN_STD = 1 / 255  # per channel, as a fraction of full scale: one intensity level
CHANNELS = ("R", "G", "B")


@dataclass(frozen=True)
class Split:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """The splits of one data source, ready for training.

    `fingerprint` (16 hex digits) identifies the source data: the class list and every file's
    relative path and content for a tree (see `cifarnet.data.cache.fingerprint`), the arrays
    for torchvision's CIFAR-10. Timestamps and the tree's location do not enter it.
    """

    train: Split
    val: Split | None
    test: Split | None  # None: held out of this run entirely (`without_test`)
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label: str
    fingerprint: str

    def without_test(self) -> "Dataset":
        """The same data with the test split removed: what a tuning trial trains on, so no
        test metric can be computed, logged or read while tuning (a trial's objective is a
        validation metric; the test set is looked at once, after the search)."""
        return dataclasses.replace(self, test=None)


def data_key(cfg: DataConfig) -> tuple:
    """Configs with equal keys load the same Dataset: load it once for all of them."""
    return tuple(getattr(cfg, k) for k in DATA_KEYS)


# on_decode(done, total): images decoded so far, of all to decode (first load of a tree only)
DecodeCallback = Callable[[int, int], None]


def preload_data(configs: Iterable[DataConfig],
                 on_decode: DecodeCallback | None = None) -> dict[tuple, Dataset]:
    """Each distinct dataset of `configs`, loaded once, by `data_key`."""
    cache: dict[tuple, Dataset] = {}
    for cfg in configs:
        key = data_key(cfg)
        if key not in cache:
            cache[key] = load_data(cfg, on_decode)
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


def load_data(cfg: DataConfig, on_decode: DecodeCallback | None = None) -> Dataset:
    """The train, validation and test splits of the configured source, ready for training.

    Source: `cfg.path` (an ImageFolder tree, see the module docstring for what counts) or,
    without one, CIFAR-10 through torchvision (Krizhevsky 2009). Images are uint8 arrays
    [N, 32, 32, 3] (RGB, 0..255) and labels int64 [N]; `train_subset`, `test_subset` and
    `val_size` take class-stratified seeded subsets (the validation split carved from the
    training set); `mean` and `std` (per channel, 0..1 scale) come from the training images
    used. Raises DataError (one line naming the file, folder or key) for a missing tree, an
    unreadable or refused image, classes that differ between splits, a single class, or
    training images with no spread.

    `on_decode(done, total)` is called while an image tree is decoded into the cache (its
    first load only), every 256 images and at the end.
    """
    source, path = resolve_source(cfg)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    if source == "imagefolder":
        assert path is not None
        train, test, classes, fp = _load_imagefolder_cached(path, cache, on_decode)
        label = _imagefolder_label(path)
        where = str(path)
    else:
        train, test, classes, fp = _load_cifar10(cache)
        label = where = "CIFAR-10"
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
    _check_trainable(where, train, mean, std)
    return Dataset(train, val, test, classes, mean, std, label, fp)


def _check_trainable(where: str, train: Split, mean: tuple[float, ...],
                  std: tuple[float, ...]) -> None:
    """Refuse training images that normalisation cannot use, or that hold one class."""
    for channel, m, s in zip(CHANNELS, mean, std):
        if not s >= MIN_STD:
            raise DataError(
                f"{where}: the {len(train):,} training images have no spread in channel "
                f"{channel} (std {s * 255:.3g} of 255, mean {m * 255:.1f}): blank or constant "
                "images cannot be normalised; check how they were written")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise DataError(f"{where}: the training images hold only one class; a classifier "
                        "needs at least 2")


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
    """Per-channel mean and (population) std of (N, H, W, 3) uint8 images, as fractions of
    255. Computed exactly from per-channel histograms, in chunks (no float copy of the data)."""
    hist = np.zeros((3, 256), np.int64)
    for i in range(0, len(images), 4096):
        chunk = images[i:i + 4096]
        for c in range(3):
            hist[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
    levels = np.arange(256) / 255.0
    n = hist.sum(1)
    mean = hist @ levels / n
    var = np.maximum(hist @ (levels * levels) / n - mean ** 2, 0.0)
    return tuple(mean.tolist()), tuple(np.sqrt(var).tolist())  # type: ignore[return-value]


def _imagefolder_label(path: Path) -> str:
    readme = path / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        if "CIFAR-10" in text and "quality 75" in text:
            return JPEG_MIRROR_LABEL
    return f"ImageFolder {path.name}"


def _load_imagefolder_cached(root: Path, cache_dir: Path, on_decode: DecodeCallback | None = None
                             ) -> tuple[Split, Split, list[str], str]:
    """Train and test splits, classes and fingerprint of the tree at `root`, from the cache
    when an entry for exactly these files (by content) is whole, else decoded (and cached)."""
    listing = list_tree(root)
    classes = listing.classes
    _check_metric_keys(root, classes)
    paths = [p for s in SPLITS for p in listing.splits[s].paths]
    digests = [file_digest(p) for p in paths]
    names = [n for s in SPLITS for n in listing.splits[s].names]
    fp = fingerprint(classes, zip(names, digests))
    labels = {s: np.array(listing.splits[s].labels, dtype=np.int64) for s in SPLITS}
    key = f"imagefolder-{fp}-v{CACHE_VERSION}"
    cache = ArrayCache(cache_dir)
    cache.sweep()
    arrays = cache.read(key, fp, classes, labels)
    if arrays is None:
        with cache.writing(key) as writable:
            arrays = cache.read(key, fp, classes, labels) if writable else None
            if arrays is None:
                arrays = _decode_tree(listing, classes, dict(zip(paths, digests)), fp, labels,
                                      on_decode)
                if writable:
                    cache.write(key, arrays)
    train, test = (Split(arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS)
    return train, test, classes, fp


def _decode_tree(listing: TreeListing, classes: list[str], digests: dict[str, bytes],
                 fp: str, labels: dict[str, np.ndarray],
                 on_decode: DecodeCallback | None = None) -> dict[str, np.ndarray]:
    """Decode every file from the same bytes that are hashed, and check that they are the
    bytes the fingerprint was computed from (else the tree changed while it was read).
    `on_decode(done, total)` is told the progress every 256 images."""
    out: dict[str, np.ndarray] = {"fingerprint": np.array(fp), "classes": np.array(classes)}
    total = sum(len(listing.splits[s].paths) for s in SPLITS)
    done = 0
    if on_decode is not None:
        on_decode(0, total)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        for s in SPLITS:
            paths = listing.splits[s].paths
            images = []
            for path, (digest, image) in zip(paths, pool.map(_read_decode, paths,
                                                              chunksize=256)):
                if digest != digests[path]:
                    raise DataError(f"{path}: changed while the data was being read; "
                                    "run again once the tree is stable")
                images.append(image)
                done += 1
                if on_decode is not None and (done % 256 == 0 or done == total):
                    on_decode(done, total)
            out[f"{s}_images"] = np.stack(images)
            out[f"{s}_labels"] = labels[s]
    return out


def _read_decode(path: str) -> tuple[bytes, np.ndarray]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return hashlib.sha256(data).digest(), decode_bytes(data, path)


def _check_metric_keys(root: Path, classes: list[str]) -> None:
    """Class names become MLflow metric keys: refuse names that would share one."""
    try:
        class_metric_keys(classes)
    except MetricKeyError as exc:
        raise DataError(f"{root}: {exc}") from None


def _load_cifar10(cache: Path) -> tuple[Split, Split, list[str], str]:
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
    splits = (Split(np.asarray(train.data), np.asarray(train.targets, dtype=np.int64)),
              Split(np.asarray(test.data), np.asarray(test.targets, dtype=np.int64)))
    classes = list(train.classes)
    fp = array_fingerprint(classes, [a for sp in splits for a in (sp.images, sp.labels)])
    return splits[0], splits[1], classes, fp
