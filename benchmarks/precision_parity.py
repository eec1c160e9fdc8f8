"""Accuracy parity of the precision policy: the default recipe in fp32 and in bf16 autocast,
paired by seed (same data order, augmentations and initial weights).

    CIFARNET_DATA=../shared/datasets/cifar10-jpeg python benchmarks/precision_parity.py \\
        --seeds 0 1

Each (seed, precision) trains the default recipe once with `train.bn_recal_batches=0` in its
run folder under /tmp/cifarnet-bn-recal (the folder `bn_recal.py` uses: its bf16 runs are the
same runs and are not trained again). Runs can train in separate processes, one core each
(`--seeds 0 --precisions fp32 --no-write`, ...), and be compared in a last call, which only
reads them. Prints each final test accuracy, the mean paired difference bf16 - fp32 with its
95% t interval, and the mean seconds per epoch of each precision; appends them to
BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from cifarnet.config.schema import load_config
from cifarnet.data.datasets import load_data
from cifarnet.training.loop import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_benchmark, interval_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                    choices=["fp32", "bf16"])
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    base = load_config(None, ["train.out_dir=/tmp/cifarnet-bn-recal", "train.device=cpu",
                              "train.bn_recal_batches=0", *args.assignments])
    data = load_data(base.data)
    acc: dict[str, dict[int, float]] = {p: {} for p in args.precisions}
    epoch_s: dict[str, list[float]] = {p: [] for p in args.precisions}
    for s in args.seeds:
        for p in args.precisions:
            r = train(base.replace({"train.seed": s, "train.precision": p}), data=data,
                      resume=True)
            if r.status != "finished":
                raise SystemExit(f"seed {s} {p}: run {r.status}: {r.reason}")
            acc[p][s] = r.final["test_acc"]
            epoch_s[p] += [h["epoch_time_s"] for h in r.history if "epoch_time_s" in h]
            print(f"seed {s} {p}: test_acc {acc[p][s]:.4f}")
    if set(args.precisions) != {"fp32", "bf16"}:  # one side only: trained, nothing to compare
        return
    diffs = [acc["bf16"][s] - acc["fp32"][s] for s in args.seeds]
    mean = statistics.fmean(diffs)
    interval = interval_text(diffs)
    speed = {p: (f"{statistics.fmean(v):.0f} s" if v else "not recorded")
             for p, v in epoch_s.items()}
    lines = [f"{data.label}: {len(data.train):,} train / {len(data.test):,} test images, "
             f"{base.train.epochs} epochs, default recipe (`train.bn_recal_batches=0`), one "
             "thread per run", "",
             "| seed | fp32 | bf16 | bf16 - fp32 |", "|---:|---:|---:|---:|",
             *(f"| {s} | {acc['fp32'][s]:.4f} | {acc['bf16'][s]:.4f} | "
               f"{acc['bf16'][s] - acc['fp32'][s]:+.4f} |" for s in args.seeds),
             "", f"Mean paired difference bf16 - fp32: {mean:+.4f}, 95% t interval "
             f"{interval} (n = {len(diffs)}). Mean seconds per epoch: fp32 {speed['fp32']}, "
             f"bf16 {speed['bf16']}."]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("Precision parity: fp32 against bf16 autocast, paired over seeds",
                         lines)


if __name__ == "__main__":
    main()
