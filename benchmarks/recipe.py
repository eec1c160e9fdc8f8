"""Recipe techniques against the default recipe on real data, paired over seeds.

    CIFARNET_DATA=/work/shared/datasets/cifar10-jpeg python benchmarks/recipe.py \\
        --seeds 0 1 2 --threads 1

For every seed it trains the default recipe (plus any --set) once, and the default plus each
technique once, at the same `train.seed` (same initial weights, data order and
augmentations), then prints, per seed, every arm's final test accuracy and, per technique,
the mean paired difference (technique - default) with its 95% Student t interval
(scipy.stats), the mean epochs the technique took to reach its seed's default final
accuracy (the issue: "reaches the seed's accuracy sooner") and the seconds per epoch.
Appends the figures, the command, the machine and the date to BENCHMARKS.md (`--out` for
another file, `--no-write` for none).

The techniques (`--techniques`, default all; NAME=VALUE sets a numeric one's value):

    tta_flip            train.tta_flip=true (evaluation only: training is the default's)
    ema_decay[=0.999]   train.ema_decay
    no_decay_bn_bias    train.no_decay_bn_bias=true
    bn_lr_mult[=4]      train.bn_lr_mult, with train.no_decay_bn_bias=true; also compared
                        with the no_decay_bn_bias arm when both run

Runs live in `--runs` (default /tmp/cifarnet-recipe), one folder per config hash, and are
resumed or reused: a finished run is read, not trained again. So seeds can train in separate
processes, one core each (`--seeds 0 --no-write`, `--seeds 1 --no-write`, ...), and a last
call with every seed only reads them and writes the table. A long job: one 30-epoch run on
the full training set takes 10-20 minutes a core; five arms a seed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy import stats

from cifarnet.config.schema import RunConfig, load_config
from cifarnet.data.datasets import load_data
from cifarnet.errors import ConfigError
from cifarnet.training.callbacks import Callback
from cifarnet.training.device import resolve_precision, select_device
from cifarnet.training.loop import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHMARKS_MD, append_benchmark  # noqa: E402

DEFAULT = "default"
# name -> (config key of its value, default value, further overrides of the arm)
TECHNIQUES: dict[str, tuple[str, object, dict[str, object]]] = {
    "tta_flip": ("train.tta_flip", True, {}),
    "ema_decay": ("train.ema_decay", 0.999, {}),
    "no_decay_bn_bias": ("train.no_decay_bn_bias", True, {}),
    "bn_lr_mult": ("train.bn_lr_mult", 4.0, {"train.no_decay_bn_bias": True}),
}
# extra comparisons (technique, reference arm) when both arms ran
EXTRA = [("bn_lr_mult", "no_decay_bn_bias")]


@dataclass
class Arm:
    name: str
    overrides: dict[str, object]

    def label(self) -> str:
        return ", ".join(f"{k.split('.', 1)[1]}={_text(v)}" for k, v in self.overrides.items())


def _text(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def parse_technique(text: str) -> Arm:
    name, _, value = text.partition("=")
    if name not in TECHNIQUES:
        raise SystemExit(f"--techniques: unknown {name!r}; one of {', '.join(TECHNIQUES)}")
    key, default, extra = TECHNIQUES[name]
    if value and isinstance(default, bool):
        raise SystemExit(f"--techniques: {name} takes no value")
    try:
        v = float(value) if value else default
    except ValueError:
        raise SystemExit(f"--techniques: {text!r}: expected {name}=NUMBER") from None
    return Arm(name, {**extra, key: v})


class PrintEpoch(Callback):
    def __init__(self, arm: str) -> None:
        self.arm = arm

    def on_epoch_end(self, ctx, epoch, metrics):
        print(f"  seed {ctx.config.train.seed} {self.arm:<16} epoch {epoch:3d}  "
              f"test_acc {metrics['test_acc']:.4f}  train_acc {metrics['train_acc']:.4f}  "
              f"{metrics['epoch_time_s']:.1f} s", flush=True)


@dataclass
class Outcome:
    final: float
    curve: list[float]
    epoch_s: float


def run_arm(cfg: RunConfig, arm: str, data) -> Outcome:
    result = train(cfg, [PrintEpoch(arm)], data=data, resume=True)
    if result.status != "finished":
        raise SystemExit(f"seed {cfg.train.seed} {arm}: run {result.status}: {result.reason}")
    curve = [h["test_acc"] for h in result.history]
    times = [h["epoch_time_s"] for h in result.history if "epoch_time_s" in h]
    print(f"seed {cfg.train.seed} {arm}: test_acc {curve[-1]:.4f} ({result.run_dir})",
          flush=True)
    return Outcome(curve[-1], curve, statistics.fmean(times) if times else math.nan)


def t_interval(diffs: list[float]) -> str:
    """95% Student t interval of the mean; n/a with fewer than 2 values or no spread."""
    n = len(diffs)
    if n < 2 or statistics.stdev(diffs) == 0:
        return "n/a"
    lo, hi = stats.t.interval(0.95, n - 1, loc=statistics.fmean(diffs),
                              scale=statistics.stdev(diffs) / math.sqrt(n))
    return f"[{lo:+.4f}, {hi:+.4f}]"


def epochs_to(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(curve) if a >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="train.epochs (default: the config's, 30)")
    ap.add_argument("--train-subset", type=int, metavar="N",
                    help="data.train_subset: class-stratified training images")
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE", help="applies to every arm, the default included")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--techniques", nargs="+", default=list(TECHNIQUES),
                    metavar="NAME[=VALUE]", help=f"of {', '.join(TECHNIQUES)} (default all)")
    ap.add_argument("--runs", default="/tmp/cifarnet-recipe",
                    help="folder of the run folders (train.out_dir)")
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD,
                    help="markdown file the section is appended to (default BENCHMARKS.md)")
    ap.add_argument("--no-write", action="store_true", help="append nothing")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads: must be at least 1")
    torch.set_num_threads(args.threads)  # before anything runs; the machine line reports it

    arms = [Arm(DEFAULT, {})] + [parse_technique(t) for t in args.techniques]
    if len({a.name for a in arms}) != len(arms):
        ap.error("--techniques: a technique named twice")
    flags = [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    flags += [f"data.train_subset={args.train_subset}"] if args.train_subset is not None else []
    try:
        base = load_config(None, [f"train.out_dir={args.runs}", *args.assignments, *flags])
        # every config is built (and checked) before anything trains
        cfgs = {(a.name, s): base.replace({**a.overrides, "train.seed": s})
                for a in arms for s in args.seeds}
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    data = load_data(base.data)

    out: dict[str, dict[int, Outcome]] = {a.name: {} for a in arms}
    for s in args.seeds:  # seed by seed: the default run of a seed serves every technique
        for a in arms:
            out[a.name][s] = run_arm(cfgs[(a.name, s)], a.name, data)

    t = base.train
    precision = resolve_precision(t.precision, select_device(t.device))
    names = [a.name for a in arms]
    lines = [
        f"Data: {data.label}, {len(data.train):,} training and {len(data.test):,} test images. "
        f"Default recipe{' with ' + ', '.join(args.assignments) if args.assignments else ''}: "
        f"{'Nesterov SGD' if t.optimizer == 'sgd' else t.optimizer} lr={t.lr:g}, {t.schedule}, "
        f"batch {t.batch_size}, weight decay {t.weight_decay:g}, {t.epochs} epochs, "
        f"BatchNorm recalibration {t.bn_recal_batches} batches, precision {precision}; "
        f"{args.threads} thread(s) per run. Arms: "
        + "; ".join(f"{a.name}: {a.label() or 'the default'}" for a in arms) + ".",
        "",
        "Final test accuracy per seed:",
        "",
        "| seed | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
        *(f"| {s} | " + " | ".join(f"{out[n][s].final:.4f}" for n in names) + " |"
          for s in args.seeds),
        "",
        "Paired over seeds (technique - reference); epochs to the same seed's default final "
        "accuracy (mean over the seeds that reached it); seconds per epoch:",
        "",
        "| technique | reference | mean difference | 95% t interval | n | epochs to default's "
        "final (default: " + f"{t.epochs})" + " | s/epoch (reference) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    pairs = [(a.name, DEFAULT) for a in arms[1:]]
    pairs += [(x, r) for x, r in EXTRA if x in out and r in out]
    for name, ref in pairs:
        diffs = [out[name][s].final - out[ref][s].final for s in args.seeds]
        reach = [epochs_to(out[name][s].curve, out[DEFAULT][s].final) for s in args.seeds]
        got = [r for r in reach if r is not None]
        reach_text = (f"{statistics.fmean(got):.1f}" if got else "not reached") + (
            f" ({len(got)} of {len(reach)} reached)" if len(got) < len(reach) else "")
        lines.append(
            f"| {name} | {ref} | {statistics.fmean(diffs):+.4f} | {t_interval(diffs)} | "
            f"{len(diffs)} | {reach_text} | "
            f"{statistics.fmean(out[name][s].epoch_s for s in args.seeds):.1f} "
            f"({statistics.fmean(out[ref][s].epoch_s for s in args.seeds):.1f}) |")
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("Recipe techniques against the default recipe, paired over seeds",
                         lines, args.out)


if __name__ == "__main__":
    main()
