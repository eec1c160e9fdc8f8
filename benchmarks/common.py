"""What every benchmark writes beside its figures: the command, the machine and the date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU")
    return (f"{os.cpu_count()} CPU cores ({cpu}){gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; Python {platform.python_version()}")


def command_line() -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                   if k in ("CIFARNET_DATA", "OMP_NUM_THREADS"))
    argv = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    return f"{env} {argv}".strip()


def interval_text(values: list[float], digits: int = 4) -> str:
    """The 95% Student t interval of the mean of `values` as `[+a, +b]` (`digits` decimals),
    by the project's own rule (`cifarnet.analysis.stats.t_interval`); `n/a` without a spread
    estimate (one value, or all equal)."""
    import math

    from cifarnet.analysis.stats import t_interval

    lo, hi = t_interval(values)
    return (f"[{lo:+.{digits}f}, {hi:+.{digits}f}]" if math.isfinite(lo) and math.isfinite(hi)
            else "n/a")


def final_weights(cfg, data):
    """Train `cfg` on `data` on the CPU, or find it finished in its run folder (resumed, not
    trained again); (its RunResult, the final checkpoint's model state dict: the weights and
    BatchNorm statistics as the run evaluated them). Exits with one line unless it finished.
    For the benchmarks that evaluate the same final weights several ways."""
    from cifarnet.training.loop import CHECKPOINT, train

    result = train(cfg, data=data, resume=True)
    if result.status != "finished":
        raise SystemExit(f"seed {cfg.train.seed}: run {result.status}: {result.reason}")
    return result, torch.load(result.run_dir / CHECKPOINT, weights_only=True)["model"]


def append_benchmark(title: str, lines: list[str], path: Path = BENCHMARKS_MD) -> None:
    """Append one section to BENCHMARKS.md (or to `path`, e.g. a scratch copy)."""
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"## {title} ({today})", "", f"Command: `{command_line()}`", "",
               f"Machine: {machine_line()}", "", *lines, ""]
    path = Path(path)
    if not path.exists():
        path.write_text("# Benchmarks\n\nEvery figure below was measured by the "
                        "command written beside it.\n\n")
    with path.open("a") as f:
        f.write("\n".join(section) + "\n")
    print(f"appended to {path}")
