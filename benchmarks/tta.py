"""Test-time augmentation: test accuracy of the SAME final weights under each TTA.

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/tta.py --seeds 0 1 \\
        --set train.tta_flip=true
    # a quick check that it works (not a decision): 2 epochs on 2,000 images
    ... benchmarks/tta.py --set train.epochs=2 --set data.train_subset=2000 \\
        --set data.test_subset=500 --set train.lr=0.05 --seeds 0 1 --no-write

TTA changes only how a trained network is evaluated (`train.tta_flip`,
`train.tta_translate`; `cifarnet.training.evaluation.tta`), never its training, so each seed
trains the recipe given by `--set` ONCE (a run folder under `--out` that already holds the
finished run is not trained again, so seeds can train in separate processes, one core each,
with `--no-write`, and be compared in one last call, which only evaluates), and its final
checkpoint (weights and BatchNorm statistics as the run evaluated them) is evaluated under
each TTA: none, flip, and flip plus translation by each of `--translate` pixels. One paired
difference per seed against flip TTA, at the cost of one training run per seed. The row of
the run's own TTA must equal the test accuracy the run recorded (printed beside it: a check
that this script evaluates as the product does). Prints the table and the mean paired
differences with their 95% t intervals (none with one seed); appends them to BENCHMARKS.md
unless --no-write.
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
from cifarnet.hardware import resolve_precision
from cifarnet.training.device import autocast_for, memory_format_for
from cifarnet.training.evaluation import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark, final_weights, interval_text  # noqa: E402


def variants(translate: list[int]) -> list[tuple[str, bool, int]]:
    """(label, flip, translate pixels) of every TTA compared; flip TTA is the reference."""
    return [("none", False, 0), ("flip", True, 0),
            *((f"flip + translate {p} px", True, p) for p in translate)]


def final_accuracies(cfg: RunConfig, data: Dataset, tried: list[tuple[str, bool, int]]
                     ) -> tuple[dict[str, float], float]:
    """Train `cfg` (or find it finished); test accuracy of its final weights under each TTA
    of `tried`, and the test accuracy the run recorded."""
    result, weights = final_weights(cfg, data)
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    fmt = memory_format_for(device, cfg.train.channels_last)
    model = CifarNet(cfg.model, num_classes=len(data.classes))
    model.load_state_dict(weights)
    model.to(device, memory_format=fmt)
    test = eval_batches(data.test, data.mean, data.std, device)
    out = {label: evaluate(model, test, len(data.classes), autocast_for(device, precision),
                           tta_flip=flip, tta_translate=pixels)[1]
           for label, flip, pixels in tried}
    return out, float(result.final["test_acc"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--translate", type=int, nargs="+", default=[1, 2],
                    help="translation TTA pixels to compare (each with flip)")
    ap.add_argument("--out", default="/tmp/cifarnet-tta", help="folder of the run folders")
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    base = load_config(None, [f"train.out_dir={args.out}", "train.device=cpu",
                              *args.assignments])
    t = base.train
    tried = variants(args.translate)
    if (t.tta_flip, t.tta_translate) not in {(flip, pixels) for _, flip, pixels in tried}:
        tried.append((f"{'flip + ' if t.tta_flip else ''}translate {t.tta_translate} px",
                      t.tta_flip, t.tta_translate))
    data = load_data(base.data)
    runs = {s: final_accuracies(base.replace({"train.seed": s}), data, tried)
            for s in args.seeds}
    own = next(label for label, flip, pixels in tried
               if (flip, pixels) == (t.tta_flip, t.tta_translate))
    lines = [f"{data.label}: {len(data.train):,} train / {len(data.test):,} test images, "
             f"{t.epochs} epochs, lr {t.lr:g}, precision "
             f"{resolve_precision(t.precision, torch.device('cpu'))}, the runs' own TTA: "
             f"{own}; seeds {args.seeds}; test accuracy of the same final weights:", "",
             "| TTA | forward passes | " + " | ".join(f"seed {s}" for s in args.seeds)
             + " | mean | minus flip (points) | 95% interval |",
             "|---|---:|" + "---:|" * (len(args.seeds) + 3)]
    for label, flip, pixels in tried:
        accs = [runs[s][0][label] for s in args.seeds]
        diffs = [100 * (runs[s][0][label] - runs[s][0]["flip"]) for s in args.seeds]
        lines.append(f"| {label} | {(2 if flip else 1) * (3 if pixels else 1)} | "
                     + " | ".join(f"{a:.4f}" for a in accs)
                     + f" | {statistics.fmean(accs):.4f} | {statistics.fmean(diffs):+.2f} | "
                       f"{interval_text(diffs, 2)} |")
    lines += ["", "Recorded by the runs (their own TTA, " + own + "): "
              + ", ".join(f"seed {s} {runs[s][1]:.4f}" for s in args.seeds) + "."]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("Test-time augmentation: the same final weights, paired over seeds",
                         lines)


if __name__ == "__main__":
    main()
