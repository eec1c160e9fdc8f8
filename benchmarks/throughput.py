"""Training throughput, side by side in one process on the same data, as ratios.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/throughput.py

(a) the seed's way: a torch Dataset applying albumentations per image, a DataLoader, a plain
    loop; (b) our trainer, albumentations backend; (c) our trainer, torch backend; (d) the
    ceiling: forward + backward + step alone on ready-made batches. Each figure is images per
    second over whole training epochs (evaluation excluded), after one warm-up epoch.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from cifarnet.config.schema import load_config
from cifarnet.data.augment import albumentations_pipeline
from cifarnet.data.datasets import load_data
from cifarnet.model.cifarnet import CifarNet
from cifarnet.training.callbacks import Callback
from cifarnet.hardware import resolve_precision, select_device
from cifarnet.training.device import autocast_for, in_layout, memory_format_for
from cifarnet.training.loop import train
from cifarnet.training.optim import build_optimizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_benchmark  # noqa: E402


class SeedDataset(TorchDataset):
    """How the seed write-up fed its model: albumentations inside __getitem__."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, pipeline) -> None:
        self.images, self.labels, self.pipeline = images, labels, pipeline

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.pipeline(image=self.images[i])["image"]
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), int(self.labels[i])


def seed_way(cfg, data, device: torch.device, epochs: int) -> float:
    model = CifarNet(cfg.model).to(device)
    opt = build_optimizer(model, cfg.train)
    ds = SeedDataset(data.train.images, data.train.labels,
                     albumentations_pipeline(1.0, data.mean, data.std))
    loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    rates = []
    for _ in range(epochs + 1):
        model.train()
        seen, t0 = 0, time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.nll_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return float(np.mean(rates[1:]))


class Rates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_epoch_end(self, ctx, epoch, metrics):
        self.rates.append(metrics["images_per_s"])


def trainer_way(cfg, data, backend: str, epochs: int) -> float:
    rates = Rates()
    train(cfg.replace({"data.backend": backend, "train.epochs": epochs + 1}), [rates],
          data=data)
    return float(np.mean(rates.rates[1:]))


def ceiling(cfg, data, device: torch.device, epochs: int) -> float:
    """Forward + backward + step on batches prepared in advance (no data work at all)."""
    model = CifarNet(cfg.model)
    fmt = memory_format_for(device, cfg.train.channels_last)
    model = model.to(device, memory_format=fmt)
    opt = build_optimizer(model, cfg.train)
    bs = cfg.train.batch_size
    steps = len(data.train) // bs
    x = in_layout(torch.randn(bs, 3, 32, 32, device=device), fmt)
    y = torch.randint(0, 10, (bs,), device=device)
    autocast = autocast_for(device, resolve_precision(cfg.train.precision, device))
    rates = []
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        for _ in range(steps):
            with autocast:
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * bs / (time.perf_counter() - t0))
    return float(np.mean(rates[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-subset", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs after one warm-up")
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    cfg = load_config(None, [f"data.train_subset={args.train_subset}", "data.test_subset=1000",
                             "train.out_dir=/tmp/cifarnet-throughput", *args.assignments])
    device = select_device(cfg.train.device)
    data = load_data(cfg.data)
    print(f"{data.label}: {len(data.train):,} training images, batch {cfg.train.batch_size}, "
          f"device {device}, {cfg.data.num_workers} DataLoader workers", flush=True)
    results = {}
    for key, fn in (("(a) seed's way: albumentations Dataset + DataLoader",
                     lambda: seed_way(cfg, data, device, args.epochs)),
                    ("(b) trainer, albumentations backend",
                     lambda: trainer_way(cfg, data, "albumentations", args.epochs)),
                    ("(c) trainer, torch backend",
                     lambda: trainer_way(cfg, data, "torch", args.epochs)),
                    ("(d) ceiling: forward + backward + step only",
                     lambda: ceiling(cfg, data, device, args.epochs))):
        results[key] = fn()
        print(f"{key}: {results[key]:,.0f} images/s", flush=True)
    a, b, c, d = results.values()
    lines = [f"{len(data.train):,} training images of {data.label}, batch "
             f"{cfg.train.batch_size}, device {device}, {cfg.data.num_workers} DataLoader "
             f"workers; mean of {args.epochs} timed epoch(s) after a warm-up epoch.", "",
             "| path | images/s | vs (a) | vs (d) |", "|---|---:|---:|---:|",
             *[f"| {k} | {v:,.0f} | {v / a:.2f}x | {v / d:.2f}x |" for k, v in results.items()],
             "", f"(c)/(a) = {c / a:.2f}x; (c) is {100 * (1 - c / d):.1f}% below the "
             f"ceiling (d)."]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("Training throughput", lines)


if __name__ == "__main__":
    main()
