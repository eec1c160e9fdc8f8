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

`remembered_probe` keeps each measurement in the data cache folder, keyed by what sets a
step's cost (the configuration less its seed, epochs, optimiser values and paths; the data;
threads; device; CPU; torch), so a rerun, a resumed grid or cells that differ only in a
learning rate predict in milliseconds. A kept figure is this machine's at the time it was
measured, load included: it is used for `KEEP_S` (an hour) and then measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cifarnet.hardware import cpu_name

from cifarnet.config.schema import RunConfig
from cifarnet.data.datasets import Dataset, default_cache_dir
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
    return RunCost(timed / max(1, done), eval_image_s, *sizes(cfg, data))


def sizes(cfg: RunConfig, data: Dataset) -> tuple[int, int]:
    """(training steps per epoch, evaluated images per epoch: test + validation + BatchNorm
    recalibration)."""
    t = cfg.train
    eval_images = ((len(data.test) if data.test is not None else 0)
                   + (len(data.val) if data.val is not None else 0)
                   + t.bn_recal_batches * t.batch_size)
    return steps_per_epoch(len(data.train), t.batch_size), eval_images


KEEP_S = 3600.0  # a kept probe's life, seconds: a figure taken on a busy machine passes

# keys whose value does not change what a training step or an evaluated image costs
COST_FREE = frozenset({"train.seed", "train.epochs", "train.out_dir", "train.lr",
                       "train.momentum", "train.weight_decay", "train.warmup_frac",
                       "train.step_epochs", "train.step_gamma", "train.label_smoothing",
                       "data.path", "data.cache_dir"})


def probe_key(cfg: RunConfig, data: Dataset) -> str:
    """16 hex digits naming what sets the cost of `cfg`'s steps on this machine now."""
    parts = {"config": {k: v for k, v in cfg.flatten().items() if k not in COST_FREE},
             "data": data.fingerprint, "threads": torch.get_num_threads(),
             "torch": torch.__version__, "cpu": cpu_name()}
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def remembered_probe(cfg: RunConfig, data: Dataset) -> RunCost:
    """`probe`, or its figure kept from an earlier probe of the same key (module docstring).
    The folder is the data cache's (`data.cache_dir`, CIFARNET_CACHE); a kept file that
    cannot be read is measured again, one that cannot be written is not kept."""
    folder = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
    path = folder / f"probe-{probe_key(cfg, data)}.json"
    try:
        if time.time() - path.stat().st_mtime > KEEP_S:
            raise ValueError("kept too long")
        kept = json.loads(path.read_text())
        return RunCost(float(kept["step_s"]), float(kept["eval_image_s"]), *sizes(cfg, data))
    except (OSError, ValueError, KeyError, TypeError):  # none kept, too old, or damaged
        pass
    cost = probe(cfg, data)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(asdict(cost)))
        os.replace(tmp, path)
    except OSError:  # a full or read-only cache: the figure is used, not kept
        tmp.unlink(missing_ok=True)
    return cost
