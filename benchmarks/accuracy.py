"""Accuracy of the default recipe on real data: epochs to 85% test accuracy and final accuracy.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/accuracy.py --seeds 1 2 \
        --parallel 2

Trains the seed network with the default recipe (plus any --set overrides) once per seed,
prints each run's curve, and appends the figures, the command, the machine and the date to
BENCHMARKS.md. A long job (30-65 s an epoch on two CPU cores): run it in the background.
`--parallel N` trains N seeds at once, each on cores/N threads: on a small CPU two one-thread
runs finish in about the time of one two-thread run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from cifarnet.config.schema import RunConfig, load_config
from cifarnet.data.datasets import Dataset, load_data
from cifarnet.training.callbacks import Callback
from cifarnet.hardware import resolve_precision, select_device
from cifarnet.training.loop import train

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_benchmark  # noqa: E402

TARGET = 0.85


class PrintEpoch(Callback):
    def on_epoch_end(self, ctx, epoch, metrics):
        print(f"  seed {ctx.config.train.seed} epoch {epoch:3d}  "
              f"test_acc {metrics['test_acc']:.4f}  train_acc {metrics['train_acc']:.4f}  "
              f"{metrics['epoch_time_s']:.1f} s", flush=True)


Row = tuple[int, int | None, float, float, float]


def run_seed(cfg: RunConfig, threads: int | None = None, data: Dataset | None = None) -> Row:
    """One seed's run: (seed, epochs to TARGET, final, best, seconds per epoch).

    A worker process passes no `data` and loads it from the decoded-array cache.
    """
    if threads:
        torch.set_num_threads(threads)
    t = cfg.train
    print(f"seed {t.seed}: {t.optimizer} lr={t.lr} {t.schedule} bs={t.batch_size} "
          f"epochs={t.epochs} flip-only fraction {cfg.data.flip_only_frac:g}", flush=True)
    result = train(cfg, [PrintEpoch()], data=data if data is not None else load_data(cfg.data))
    accs = [h["test_acc"] for h in result.history]
    reach = next((i + 1 for i, a in enumerate(accs) if a >= TARGET), None)
    secs = sum(h["epoch_time_s"] for h in result.history)
    print(f"seed {t.seed}: epochs to {TARGET:.0%}: {reach}, final {accs[-1]:.4f}, "
          f"best {max(accs):.4f}", flush=True)
    return t.seed, reach, accs[-1], max(accs), secs / len(accs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="seeds trained at once, each on cores/N threads")
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()
    if args.parallel < 1:
        ap.error("--parallel: must be at least 1")

    base = load_config(None, args.assignments)
    data = load_data(base.data)  # decodes (or finds) the cache once, before any worker starts
    cfgs = [base.replace({"train.seed": seed}) for seed in args.seeds]
    if args.parallel == 1:
        rows = [run_seed(cfg, data=data) for cfg in cfgs]
    else:
        threads = max(1, (os.cpu_count() or 1) // args.parallel)
        torch.set_num_threads(threads)  # what the machine line reports
        with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(run_seed, cfgs, [threads] * len(cfgs)))

    finals = [r[2] for r in rows]
    reached = [r[1] for r in rows if r[1] is not None]
    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    t = base.train
    lines = [
        f"Data: {data.label}, {len(data.train):,} training and {len(data.test):,} test images. "
        f"Recipe: {'Nesterov SGD' if t.optimizer == 'sgd' else t.optimizer} lr={t.lr:g}, "
        f"{t.schedule}, batch {t.batch_size}, weight decay {t.weight_decay:g}, "
        f"label smoothing {t.label_smoothing:g}, {t.epochs} epochs, augment strength "
        f"{base.data.augment_strength:g} with the last {base.data.flip_only_frac:g} of the "
        f"epochs flip-only ({base.data.backend} backend); flip test-time augmentation "
        f"{'on' if t.tta_flip else 'off'}; precision "
        f"{resolve_precision(t.precision, select_device(t.device))}.",
        "",
        "| seed | epochs to 85% | final test acc | best test acc | s/epoch |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {s} | {r if r is not None else 'not reached'} | {f:.4f} | {b:.4f} | {e:.1f} |"
          for s, r, f, b, e in rows],
        "",
        f"Final test accuracy {statistics.mean(finals):.4f} +/- {spread:.4f} "
        f"(mean +/- std over {len(rows)} seed(s)); reached 85% in {len(reached)} of "
        f"{len(rows)} run(s)"
        + (f", after {statistics.mean(reached):.1f} epochs on average." if reached else "."),
    ]
    print("\n".join(lines))
    if not args.no_write:
        default = base.hash() == RunConfig().hash()  # execution-only --set keeps the default
        title = ("Accuracy of the default recipe" if default
                 else "Accuracy of a candidate recipe (" + ", ".join(args.assignments) + ")")
        append_benchmark(title, lines)


if __name__ == "__main__":
    main()
