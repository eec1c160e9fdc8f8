"""The cost of a run before it starts: a few real training steps and evaluation batches of
the run's own pieces (model, augmented loader, optimiser, precision, threads), timed on
this machine.

    cost = probe(cfg, data)              # about 2-10 s
    cost.run_s(cfg.train.epochs)         # predicted wall time of the whole run, in seconds

An epoch is predicted as steps_per_epoch x (seconds per training step, augmentation and data
loading included) + the evaluated images (test, validation, BatchNorm recalibration) x
(seconds per evaluated image). Warm-up steps are run first and not timed (allocator, one-time
kernel selection). The prediction does not include the start of the process (imports, data
loading: seconds) nor the tracking store's writes (milliseconds per epoch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cifarnet.config.schema import RunConfig
from cifarnet.data.datasets import Dataset
from cifarnet.data.loaders import steps_per_epoch
from cifarnet.training.evaluation import evaluate


@dataclass(frozen=True)
class RunCost:
    """Measured costs of one run's configuration (seconds)."""

    step_s: float  # one training step of `batch_size` images, data loading included
    eval_image_s: float  # one evaluated image (forward pass only)
    steps_per_epoch: int
    eval_images_per_epoch: int  # test + validation + BatchNorm recalibration images

    def epoch_s(self) -> float:
        return self.steps_per_epoch * self.step_s + self.eval_images_per_epoch * self.eval_image_s

    def run_s(self, epochs: int) -> float:
        return epochs * self.epoch_s()


def probe(cfg: RunConfig, data: Dataset, steps: int = 5, warmup: int = 2,
          eval_batches: int = 2) -> RunCost:
    """Time `steps` training steps after `warmup` untimed ones, and `eval_batches` test
    batches, of `cfg` on `data` with the threads torch has now (set them first, as a worker
    would). Trains a throwaway model: nothing is written."""
    from cifarnet.training.loop import build_run, train_step

    run = build_run(cfg, data)
    batches = iter(run.loader.epoch(1))
    run.model.train()
    timed, done = 0.0, 0
    for i in range(warmup + steps):
        start = time.perf_counter()  # the batch's loading and augmentation are timed too
        try:
            x, y = next(batches)
        except StopIteration:  # an epoch shorter than the probe
            break
        train_step(run, x, y)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            timed += time.perf_counter() - start
            done += 1
    test = next(iter(run.evals.values()), [])[:eval_batches]  # test, or a trial's val
    start = time.perf_counter()
    evaluate(run.model, test, len(data.classes), run.autocast())
    images = sum(len(b[1]) for b in test)
    eval_image_s = (time.perf_counter() - start) / max(1, images)
    t = cfg.train
    eval_images = ((len(data.test) if data.test is not None else 0)
                   + (len(data.val) if data.val is not None else 0)
                   + t.bn_recal_batches * t.batch_size)
    return RunCost(timed / max(1, done), eval_image_s, steps_per_epoch(len(data.train), t.batch_size),
                   eval_images)
