"""fp32 vs bf16 autocast: training-step throughput of the default CifarNet, alternating.

One process, `--threads` threads, random batches prepared in advance (no data work), the
trainer's own step (channels_last, Nesterov SGD, label-smoothed loss on fp32 logits). The two
precisions alternate step by step so that machine load hits both alike; the median step time
of each is reported. Usage:

    .venv/bin/python benchmarks/precision_step.py --threads 1 --steps 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cifarnet.config.schema import Precision, RunConfig
from cifarnet.model.cifarnet import CifarNet
from cifarnet.hardware import bf16_native
from cifarnet.training.device import autocast_for, memory_format_for
from cifarnet.training.optim import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per precision")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, device = RunConfig(), torch.device("cpu")
    fmt = memory_format_for(device, True)
    models = {p: CifarNet(cfg.model).to(device, memory_format=fmt)
              for p in (Precision.FP32, Precision.BF16)}
    opts = {p: build_optimizer(m, cfg.train) for p, m in models.items()}
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch_size,))
    times: dict[Precision, list[float]] = {p: [] for p in models}
    for i in range(args.steps + 1):  # step 0 warms up
        for p, model in models.items():
            t0 = time.perf_counter()
            with autocast_for(device, p):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            opts[p].zero_grad(set_to_none=True)
            loss.backward()
            opts[p].step()
            if i:
                times[p].append(time.perf_counter() - t0)
    rate = {p: args.batch_size / statistics.median(t) for p, t in times.items()}
    print(f"cpu native bf16: {bf16_native(device)}; {args.threads} thread(s), batch "
          f"{args.batch_size}, {args.steps} steps each")
    for p, r in rate.items():
        print(f"{p}: {r:,.0f} images/s")
    print(f"bf16 / fp32: {rate[Precision.BF16] / rate[Precision.FP32]:.2f}x")


if __name__ == "__main__":
    main()
