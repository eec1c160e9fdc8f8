"""The recipe's continuous knobs chosen by the product's own search on the validation split,
the best configuration tested once, then confirmed against the default recipe, paired over
seeds at the same budget.

    cd <a folder of its own> && CIFARNET_DATA=/work/shared/datasets/cifar10-jpeg \\
        python /path/to/benchmarks/recipe_search.py --workers 2 --seeds 0 1

1. `cifarnet-exp search SPEC --workers N` in the working folder (default SPEC:
   `benchmarks/specs/search/recipe_short.yaml`, the shipped `recipe` search at 8 epochs and
   10 trials). A study already there is resumed and filled up to its n_trials; a complete one
   is read as it is. Its trials see no test image; when the study is complete, the product
   retrains the best trial on train + validation and tests it once (the "final" run).
2. For every seed of `--seeds`, the best configuration and the default recipe at the search's
   budget (the spec's base: its epochs, flip TTA; no validation split, the full training set)
   are trained side by side (`--parallel` processes) and tested; prints each pair, the paired
   difference (best - default, points) with its 95% Student t interval, and appends the
   trials, the final run and the pairs to BENCHMARKS.md unless --no-write. `--epochs N`
   confirms at another budget instead (do the short search's gains hold at 30 epochs?).

A long job (two 8-epoch trials at a time on two CPU cores: about 10 minutes a round): run it in
the background.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy import run_seed  # noqa: E402
from common import append_benchmark, interval_text  # noqa: E402

SPEC = HERE / "specs" / "search" / "recipe_short.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--workers", type=int, default=1, help="search workers")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--parallel", type=int, default=2, metavar="N",
                    help="confirmation runs trained at once, each on cores/N threads")
    ap.add_argument("--epochs", type=int, default=None,
                    help="the confirmation's epochs (default: the search's budget)")
    ap.add_argument("--set", dest="assignments", action="append", default=[],
                    metavar="KEY=VALUE", help="passed to the search (its base config)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from cifarnet.search.report import load_study
    from cifarnet.spec.search import load_search_spec
    from cifarnet.search.storage import open_storage
    from cifarnet.search.study import FINAL_ATTR, final_data
    from cifarnet.workspace import Workspace

    sets = [a for kv in args.assignments for a in ("--set", kv)]
    done = subprocess.run([sys.executable, "-m", "cifarnet", "search", str(args.spec), *sets,
                           "--workers", str(args.workers)], env=dict(os.environ))
    if done.returncode != 0:
        sys.exit(f"the search failed ({done.returncode})")

    spec = load_search_spec(args.spec)
    if args.assignments:
        from cifarnet.config.schema import parse_assignments

        spec = spec.with_base(parse_assignments(args.assignments))
    study = load_study(spec.name, open_storage(Workspace.resolve()))
    final = study.user_attrs.get(FINAL_ATTR)
    if final is None:
        sys.exit("the study is not complete: no held-out test of its best trial yet")
    base = spec.base_config()
    full = base.replace(final_data(base))  # the budget of the final run: no validation split
    if args.epochs is not None:  # a longer confirmation: do the short budget's gains hold?
        full = full.replace({"train.epochs": args.epochs})
    best = study.best_trial
    keys = [p.key for p in spec.space]
    default_values = {k: full.flatten()[k] for k in keys}

    trial_rows = [
        f"| {t.number} | {t.state.name} | "
        + " | ".join(f"{t.params[k]:.4g}" for k in keys)
        + f" | {len(t.intermediate_values)} | "
        + (f"{t.value:.4f}" if t.value is not None else
           f"{list(t.intermediate_values.values())[-1]:.4f} (last)"
           if t.intermediate_values else "-") + " |"
        for t in study.trials]

    cfgs = [(arm, seed, full.replace({**(best.params if arm == "best" else {}),
                                      "train.seed": seed}))
            for seed in args.seeds for arm in ("default", "best")]
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(run_seed, [c for _, _, c in cfgs], [threads] * len(cfgs)))
    acc = {(arm, seed): row[2] for (arm, seed, _), row in zip(cfgs, rows)}
    diffs = [100 * (acc["best", s] - acc["default", s]) for s in args.seeds]
    mean_diff = sum(diffs) / len(diffs)

    t = full.train
    lines = [
        f"Search: `{spec.name}` ({spec.n_trials} trials of {base.train.epochs} epochs on "
        f"{base.data.val_size:,} validation images carved from training; {spec.sampler['type']} "
        f"sampler, {spec.pruner['type']} pruner); objective {spec.objectives[0].metric}.",
        "",
        "| trial | state | " + " | ".join(keys) + " | epochs | val_acc |",
        "|---:|---|" + "---:|" * len(keys) + "---:|---:|",
        *trial_rows,
        "",
        f"Best trial {best.number}: val_acc {best.value:.4f}, "
        + ", ".join(f"{k}={best.params[k]:.4g}" for k in keys)
        + " (default: " + ", ".join(f"{k}={v:g}" for k, v in default_values.items()) + ").",
        f"Held-out test of the best configuration, retrained on train + validation once by the "
        f"product (MLflow run {final['run_id']}, train.seed {full.train.seed}): test_acc "
        f"{final['test_acc']:.4f}.",
        "",
        f"Confirmation at {'the same budget' if args.epochs is None else 'another budget'} "
        f"({t.epochs} epochs, full training set, flip TTA "
        f"{'on' if t.tta_flip else 'off'}), paired by train.seed:",
        "",
        "| seed | default test acc | best test acc | best - default (points) |",
        "|---:|---:|---:|---:|",
        *[f"| {s} | {acc['default', s]:.4f} | {acc['best', s]:.4f} | {d:+.2f} |"
          for s, d in zip(args.seeds, diffs)],
        *(["", f"The final run and the best arm of seed {full.train.seed} are the same config "
            f"(test_acc {final['test_acc']:.4f} and {acc['best', full.train.seed]:.4f}: "
            f"{'equal' if final['test_acc'] == acc['best', full.train.seed] else 'not equal'})."]
          if full.train.seed in args.seeds and args.epochs is None else []),
        "",
        f"Mean paired difference {mean_diff:+.2f} points, 95% t interval "
        f"{interval_text(diffs, digits=2)} over {len(diffs)} seed(s).",
    ]
    print("\n".join(lines))
    if not args.no_write:
        append_benchmark("The recipe's continuous knobs: search on validation, test once, "
                         "confirm against the default"
                         + (f" ({args.epochs} epochs)" if args.epochs is not None else ""),
                         lines)


if __name__ == "__main__":
    main()
