"""Training batches per epoch, on either augmentation backend, from the run's random streams.

Both loaders take the epoch's order from the stream ("order", epoch) and its augmentations
from ("augment", epoch) of the run seed, never from the model, so every variant of an
ablation sees the same batches at the same seed. An epoch is `steps` full batches (the last
incomplete batch is dropped, unless the data is smaller than one batch). Which augmentation
an epoch trains with is the run's `AugmentSchedule`: the seed's transforms at
`data.augment_strength`, ramped up over the first `data.augment_ramp_frac` of the epochs, and
the flip alone over the last `data.flip_only_frac` (see `AugmentParams.flip_only`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from cifarnet.config.schema import RunConfig
from cifarnet.data.augment import AugmentParams, TorchAugment, albumentations_pipeline
from cifarnet.data.datasets import Dataset, Split
from cifarnet.seeding import seed_from, torch_gen

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample indices used in `epoch`, in order (a whole number of batches)."""
    order = torch.randperm(n, generator=torch_gen(seed, "order", epoch))
    return order[: steps_per_epoch(n, batch_size) * min(batch_size, n)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


@dataclass(frozen=True)
class AugmentSchedule:
    """The augmentation of each epoch of a run (epochs count from 1).

    `strength` is data.augment_strength (s). The first `ramp_epochs` (k) epochs train at a
    strength rising linearly, s * e / (k + 1) at epoch e = 1..k, so epoch k + 1 is the first
    at s; from epoch `flip_only_from` on the batches are only flipped. The ramp is the
    progressive-regularisation idea of Tan & Le 2021 (EfficientNetV2, "progressive learning":
    weak augmentation early, stronger later), here at a fixed image size; the flip-only finish
    follows the same reasoning at the other end (a clean finish after strong augmentation).
    """

    strength: float
    ramp_epochs: int = 0
    flip_only_from: int | None = None

    @classmethod
    def of(cls, cfg: RunConfig) -> AugmentSchedule:
        """The schedule of `cfg`: data.augment_strength, round(data.augment_ramp_frac *
        train.epochs) ramp epochs and `flip_only_start` of data.flip_only_frac."""
        d, epochs = cfg.data, cfg.train.epochs
        return cls(d.augment_strength, round(d.augment_ramp_frac * epochs),
                   flip_only_start(epochs, d.flip_only_frac))

    def params(self, epoch: int) -> AugmentParams:
        """The transform limits of `epoch` (1-based)."""
        if self.flip_only_from is not None and epoch >= self.flip_only_from:
            return AugmentParams.flip_only()
        if epoch <= self.ramp_epochs:
            return AugmentParams.at(self.strength * epoch / (self.ramp_epochs + 1))
        return AugmentParams.at(self.strength)


class TorchLoader:
    """The fast path: the split lives on the device as uint8; augmentation is batched."""

    def __init__(self, split: Split, schedule: AugmentSchedule, mean: tuple[float, ...],
                 std: tuple[float, ...], batch_size: int, seed: int,
                 device: torch.device) -> None:
        self.images = torch.from_numpy(split.images).to(device)
        self.labels = torch.from_numpy(split.labels).to(device)
        self.schedule, self.mean, self.std = schedule, mean, std
        self.batch_size, self.seed, self.device = batch_size, seed, device

    def __len__(self) -> int:
        return steps_per_epoch(len(self.labels), self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        order = epoch_order(len(self.labels), self.batch_size, self.seed, epoch).to(self.device)
        gen = torch_gen(self.seed, "augment", epoch)
        augment = TorchAugment(self.schedule.params(epoch), self.mean, self.std, self.device)
        for idx in order.split(min(self.batch_size, len(order))):
            yield augment(self.images[idx], gen), self.labels[idx]


def flip_only_start(epochs: int, frac: float) -> int | None:
    """The first flip-only epoch of a run: the last round(frac * epochs) are; None if none."""
    n = round(frac * epochs)
    return epochs - n + 1 if n else None


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

    def __init__(self, split: Split, schedule: AugmentSchedule, mean: tuple[float, ...],
                 std: tuple[float, ...], batch_size: int, seed: int,
                 device: torch.device, num_workers: int) -> None:
        self.split, self.schedule, self.mean, self.std = split, schedule, mean, std
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.num_workers = num_workers

    def __len__(self) -> int:
        return steps_per_epoch(len(self.split), self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        order = epoch_order(len(self.split), self.batch_size, self.seed, epoch).tolist()
        pairs = [(i, seed_from(self.seed, "augment", epoch, pos) & 0xFFFFFFFF)
                 for pos, i in enumerate(order)]
        dataset = _AlbumentationsDataset(self.split, albumentations_pipeline(
            self.schedule.params(epoch), self.mean, self.std))
        loader = DataLoader(dataset, batch_size=min(self.batch_size, len(order)),
                            sampler=_EpochSampler(pairs), num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", drop_last=False)
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))


def make_loader(data: Dataset, cfg: RunConfig,
                device: torch.device) -> TorchLoader | AlbumentationsLoader:
    """The training batches of `data.train`, normalised by `data.mean` / `data.std`.

    From `cfg.data`: the backend, num_workers (albumentations only) and the augmentation of
    each epoch (`AugmentSchedule.of`: augment_strength, augment_ramp_frac, flip_only_frac);
    from `cfg.train`: batch_size and the run seed. Batches are (images [B, C, H, W] float32
    normalised, labels [B] int64) on `device`.
    """
    d, t = cfg.data, cfg.train
    schedule = AugmentSchedule.of(cfg)
    if d.backend == "torch":
        return TorchLoader(data.train, schedule, data.mean, data.std, t.batch_size, t.seed,
                           device)
    return AlbumentationsLoader(data.train, schedule, data.mean, data.std, t.batch_size,
                                t.seed, device, d.num_workers)


def eval_batches(split: Split, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device, batch_size: int = 1000) -> list[Batch]:
    """The split normalised once, on the device, in fixed batches (no augmentation): a list
    of (images [B, C, H, W] float32, labels [B] int64), in the split's order."""
    norm = TorchAugment(0.0, mean, std, device)
    x = norm.normalize(torch.from_numpy(split.images).to(device))
    y = torch.from_numpy(split.labels).to(device)
    return list(zip(x.split(batch_size), y.split(batch_size)))
