"""Accuracy of the default recipe on real data: epochs to 85% test accuracy and final accuracy.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/accuracy.py --seeds 0 1

Trains the seed network with the default recipe (plus any --set overrides) once per seed,
prints each run's curve, and appends the figures, the command, the machine and the date to
BENCHMARKS.md. A long job (about 20 s an epoch on two CPU cores): run it in the background.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from cifarnet.callbacks import Callback
from cifarnet.config import load_config
from cifarnet.data import load_data
from cifarnet.train import train

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_benchmark  # noqa: E402

TARGET = 0.85


class PrintEpoch(Callback):
    def on_epoch_end(self, ctx, epoch, metrics):
        print(f"  epoch {epoch:3d}  test_acc {metrics['test_acc']:.4f}  "
              f"train_loss {metrics['train_loss']:.3f}  {metrics['epoch_time_s']:.1f} s",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()

    base = load_config(None, args.assignments)
    data = load_data(base.data)
    rows = []
    for seed in args.seeds:
        cfg = base.replace({"train.seed": seed})
        print(f"seed {seed}: {cfg.train.optimizer} lr={cfg.train.lr} {cfg.train.schedule} "
              f"bs={cfg.train.batch_size} epochs={cfg.train.epochs}", flush=True)
        result = train(cfg, [PrintEpoch()], data=data)
        accs = [h["test_acc"] for h in result.history]
        reach = next((i + 1 for i, a in enumerate(accs) if a >= TARGET), None)
        secs = sum(h["epoch_time_s"] for h in result.history)
        rows.append((seed, reach, accs[-1], max(accs), secs / len(accs)))
        print(f"seed {seed}: epochs to {TARGET:.0%}: {reach}, final {accs[-1]:.4f}, "
              f"best {max(accs):.4f}", flush=True)

    finals = [r[2] for r in rows]
    reached = [r[1] for r in rows if r[1] is not None]
    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    t = base.train
    lines = [
        f"Data: {data.label}, {len(data.train):,} training and {len(data.test):,} test images. "
        f"Recipe: {t.optimizer} (Nesterov) lr={t.lr:g}, {t.schedule}, batch {t.batch_size}, "
        f"weight decay {t.weight_decay:g}, label smoothing {t.label_smoothing:g}, "
        f"{t.epochs} epochs, augment strength {base.data.augment_strength:g} "
        f"({base.data.backend} backend).",
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
        title = ("Accuracy of the default recipe" if not args.assignments
                 else "Accuracy of a candidate recipe (" + ", ".join(args.assignments) + ")")
        append_benchmark(title, lines)


if __name__ == "__main__":
    main()
