"""Training batches per epoch, on either augmentation backend, from the run's random streams.

Both loaders take the epoch's order from the stream ("order", epoch) and its augmentations
from ("augment", epoch) of the run seed, never from the model, so every variant of an
ablation sees the same batches at the same seed. An epoch is `steps` full batches (the last
incomplete batch is dropped, unless the data is smaller than one batch). From epoch
`flip_only_from` on, the batches are only flipped (see `AugmentParams.flip_only`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from cifarnet.config.schema import RunConfig
from cifarnet.data.augment import AugmentParams, TorchAugment, albumentations_pipeline
from cifarnet.data.datasets import Dataset, Split
from cifarnet.training.seeding import seed_from, torch_gen

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample indices used in `epoch`, in order (a whole number of batches)."""
    order = torch.randperm(n, generator=torch_gen(seed, "order", epoch))
    return order[: steps_per_epoch(n, batch_size) * min(batch_size, n)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


class TorchLoader:
    """The fast path: the split lives on the device as uint8; augmentation is batched."""

    def __init__(self, split: Split, strength: float, mean: tuple[float, ...],
                 std: tuple[float, ...], batch_size: int, seed: int,
                 device: torch.device, flip_only_from: int | None = None) -> None:
        self.images = torch.from_numpy(split.images).to(device)
        self.labels = torch.from_numpy(split.labels).to(device)
        self.augment = TorchAugment(strength, mean, std, device)
        self.flip_only = TorchAugment(AugmentParams.flip_only(), mean, std, device)
        self.flip_only_from = flip_only_from
        self.batch_size, self.seed, self.device = batch_size, seed, device

    def __len__(self) -> int:
        return steps_per_epoch(len(self.labels), self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        order = epoch_order(len(self.labels), self.batch_size, self.seed, epoch).to(self.device)
        gen = torch_gen(self.seed, "augment", epoch)
        augment = self.flip_only if _flip_only(epoch, self.flip_only_from) else self.augment
        for idx in order.split(min(self.batch_size, len(order))):
            yield augment(self.images[idx], gen), self.labels[idx]


def flip_only_start(epochs: int, frac: float) -> int | None:
    """The first flip-only epoch of a run: the last round(frac * epochs) are; None if none."""
    n = round(frac * epochs)
    return epochs - n + 1 if n else None


def _flip_only(epoch: int, flip_only_from: int | None) -> bool:
    return flip_only_from is not None and epoch >= flip_only_from


class _AlbumentationsDataset(TorchDataset):
    """Indexed by (sample index, augmentation seed) pairs from `_EpochSampler`."""

    def __init__(self, split: Split, pipeline) -> None:
        self.split, self.pipeline = split, pipeline

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key
        self.pipeline.set_random_seed(seed)
        out = self.pipeline(image=self.split.images[i])["image"]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), int(
            self.split.labels[i])


class _EpochSampler(Sampler):
    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        self.pairs = pairs

    def __iter__(self):
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


class AlbumentationsLoader:
    """The reference path: albumentations per image in DataLoader workers.

    Each sample's augmentation seed is derived from (run seed, 'augment', epoch, position),
    so the batches do not depend on the number of workers.
    """

    def __init__(self, split: Split, strength: float, mean: tuple[float, ...],
                 std: tuple[float, ...], batch_size: int, seed: int,
                 device: torch.device, num_workers: int,
                 flip_only_from: int | None = None) -> None:
        self.datasets = (
            _AlbumentationsDataset(split, albumentations_pipeline(strength, mean, std)),
            _AlbumentationsDataset(split, albumentations_pipeline(AugmentParams.flip_only(),
                                                                  mean, std)))
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.num_workers, self.flip_only_from = num_workers, flip_only_from

    def __len__(self) -> int:
        return steps_per_epoch(len(self.datasets[0]), self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        order = epoch_order(len(self.datasets[0]), self.batch_size, self.seed, epoch).tolist()
        pairs = [(i, seed_from(self.seed, "augment", epoch, pos) & 0xFFFFFFFF)
                 for pos, i in enumerate(order)]
        dataset = self.datasets[_flip_only(epoch, self.flip_only_from)]
        loader = DataLoader(dataset, batch_size=min(self.batch_size, len(order)),
                            sampler=_EpochSampler(pairs), num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", drop_last=False)
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))


def make_loader(data: Dataset, cfg: RunConfig,
                device: torch.device) -> TorchLoader | AlbumentationsLoader:
    """The training batches of `data.train`, normalised by `data.mean` / `data.std`.

    From `cfg.data`: the backend, augment_strength, num_workers (albumentations only) and
    flip_only_frac (the last round(frac * cfg.train.epochs) epochs are flipped only); from
    `cfg.train`: batch_size and the run seed. Batches are (images [B, C, H, W] float32
    normalised, labels [B] int64) on `device`.
    """
    d, t = cfg.data, cfg.train
    flip_from = flip_only_start(t.epochs, d.flip_only_frac)
    if d.backend == "torch":
        return TorchLoader(data.train, d.augment_strength, data.mean, data.std, t.batch_size,
                           t.seed, device, flip_from)
    return AlbumentationsLoader(data.train, d.augment_strength, data.mean, data.std,
                                t.batch_size, t.seed, device, d.num_workers, flip_from)


def eval_batches(split: Split, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device, batch_size: int = 1000) -> list[Batch]:
    """The split normalised once, on the device, in fixed batches (no augmentation): a list
    of (images [B, C, H, W] float32, labels [B] int64), in the split's order."""
    norm = TorchAugment(0.0, mean, std, device)
    x = norm.normalize(torch.from_numpy(split.images).to(device))
    y = torch.from_numpy(split.labels).to(device)
    return list(zip(x.split(batch_size), y.split(batch_size)))
