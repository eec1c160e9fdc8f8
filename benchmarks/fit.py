"""How well finished runs fit: final-checkpoint accuracy on the clean training and test images.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/fit.py runs/<hash> ...

A network that underfits its augmentation scores low on the clean training images too; one
that overfits scores far higher there than on the test images. Each run folder holds the
checkpoint and metrics.json (with the run's config) that `train` writes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from cifarnet.config.schema import RunConfig, build_config
from cifarnet.data.datasets import DATA_KEYS, Dataset, data_key, preload_data
from cifarnet.data.loaders import eval_batches
from cifarnet.model.cifarnet import CifarNet
from cifarnet.training.evaluation import evaluate
from cifarnet.training.loop import CHECKPOINT, METRICS


def run_config(run_dir: Path) -> RunConfig:
    """The run's network and splits from its metrics.json.

    Only those: runs written before a recipe field was added or renamed still load.
    """
    raw = json.loads((run_dir / METRICS).read_text())["config"]
    return build_config({"model": raw["model"],
                         "data": {k: raw["data"][k] for k in DATA_KEYS if k in raw["data"]}})


def clean_accuracy(run_dir: Path, cfg: RunConfig, data: Dataset) -> tuple[float, float]:
    """(clean training accuracy, test accuracy) of the run's last checkpoint, on the CPU."""
    model = CifarNet(cfg.model, num_classes=len(data.classes))
    model.load_state_dict(torch.load(run_dir / CHECKPOINT, weights_only=True)["model"])
    cpu = torch.device("cpu")
    accs = []
    for split in (data.train, data.test):
        _, acc, _ = evaluate(model, eval_batches(split, data.mean, data.std, cpu),
                             len(data.classes), contextlib.nullcontext())
        accs.append(acc)
    return accs[0], accs[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    args = ap.parse_args()
    print("| run | clean train acc | test acc | gap |")
    print("|---|---:|---:|---:|")
    configs = {run_dir: run_config(run_dir) for run_dir in args.run_dirs}
    datasets = preload_data(cfg.data for cfg in configs.values())
    for run_dir, cfg in configs.items():
        train_acc, test_acc = clean_accuracy(run_dir, cfg, datasets[data_key(cfg.data)])
        print(f"| {run_dir} | {train_acc:.4f} | {test_acc:.4f} | {train_acc - test_acc:+.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
