"""BatchNorm recalibration: test accuracy of the SAME final weights without and with it.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/bn_recal.py --seeds 0 1
    # a quick check that it works (not a decision): 2 epochs on 2,000 images
    ... benchmarks/bn_recal.py --set train.epochs=2 --set data.train_subset=2000 \\
        --set data.test_subset=500 --set train.lr=0.05 --seeds 0 1 --batches 0 4 16 --no-write

Training never depends on recalibration (a training-mode forward normalises with batch
statistics), so each seed trains the default recipe ONCE with `train.bn_recal_batches=0`,
and its final checkpoint is evaluated as trained and after recalibration on N unaugmented
training batches for each N in `--batches`: a paired comparison, one difference per seed,
at the cost of one training run per seed. A seed already trained in its run folder (under
/tmp/cifarnet-bn-recal) is not trained again, so seeds can train in separate processes (one
core each: `--seeds 0 --no-write`, `--seeds 1 --no-write`) and be compared in one last
call (`--seeds 0 1`), which only evaluates. Prints the per-seed accuracies and the mean paired
difference (recalibrated minus as trained) with its 95% t interval (none with one seed);
appends them to BENCHMARKS.md unless --no-write. The decision on `train.bn_recal_batches`'s
default needs the 30-epoch recipe (the default budget): 30-epoch accuracy must not drop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from cifarnet.config.schema import RunConfig, load_config
from cifarnet.data.datasets import Dataset, load_data
from cifarnet.data.loaders import eval_batches
from cifarnet.model.cifarnet import CifarNet
from cifarnet.training.bn import recal_images, recalibrate_bn
from cifarnet.hardware import resolve_precision
from cifarnet.training.device import autocast_for, memory_format_for
from cifarnet.training.evaluation import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark, final_weights, interval_text  # noqa: E402


def final_accuracies(cfg: RunConfig, data: Dataset, batches: list[int]) -> dict[int, float]:
    """Train `cfg` without recalibration; test accuracy of its final weights per N."""
    _, weights = final_weights(cfg.replace({"train.bn_recal_batches": 0}), data)
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    fmt = memory_format_for(device, cfg.train.channels_last)
    test = eval_batches(data.test, data.mean, data.std, device)
    t = cfg.train
    out = {}
    for n in batches:
        model = CifarNet(cfg.model, num_classes=len(data.classes))
        model.load_state_dict(weights)
        model.to(device, memory_format=fmt)
        recalibrate_bn(model, data.train, recal_images(data.train, n, t.batch_size, t.seed,
                                                       t.epochs),
                       data.mean, data.std, device, fmt, autocast_for(device, precision))
        out[n] = evaluate(model, test, len(data.classes), autocast_for(device, precision))[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--batches", type=int, nargs="+", default=[0, 4, 16, 32],
                    help="recalibration batches to compare (0 = as trained)")
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    batches = sorted(set([0, *args.batches]))
    base = load_config(None, ["train.out_dir=/tmp/cifarnet-bn-recal", "train.device=cpu",
                              *args.assignments])
    data = load_data(base.data)
    accs = {s: final_accuracies(base.replace({"train.seed": s}), data, batches)
            for s in args.seeds}
    lines = [f"{data.label}: {len(data.train):,} train / {len(data.test):,} test images, "
             f"{base.train.epochs} epochs, lr {base.train.lr:g}, seeds {args.seeds}", "",
             "| recal batches | " + " | ".join(f"seed {s}" for s in args.seeds)
             + " | mean paired diff | 95% interval |",
             "|---:|" + "---:|" * (len(args.seeds) + 2)]
    for n in batches:
        diffs = [accs[s][n] - accs[s][0] for s in args.seeds]
        mean = statistics.fmean(diffs)
        interval = interval_text(diffs)
        lines.append(f"| {n} | " + " | ".join(f"{accs[s][n]:.4f}" for s in args.seeds)
                     + f" | {mean:+.4f} | {interval} |")
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("BatchNorm recalibration: same final weights, paired over seeds",
                         lines)


if __name__ == "__main__":
    main()
