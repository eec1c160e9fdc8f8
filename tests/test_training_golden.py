"""A forced-fp32 CPU run is bit-identical to the trainer before the refactor and the
precision policy: the metrics in data/training_golden_fp32.json were recorded from the code
at commit 38407f4 (tiny tree, 2 epochs, dropout 0.1, a validation split, both augmentation
backends)."""

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from cifarnet.training.loop import train

GOLDEN = json.loads((Path(__file__).parent / "data" / "training_golden_fp32.json").read_text())
# The recording machine's CPU kernels; elsewhere oneDNN may pick other kernels and round
# differently in the last bits, so the comparison there is close, not exact.
RECORDED_ON = "AVX512"
# Execution settings that reproduce the recorded code's behaviour on the CPU.
THEN = {"train.precision": "fp32", "train.bn_recal_batches": 0}


@pytest.mark.parametrize("backend", ["torch", "albumentations"])
def test_fp32_run_matches_the_recorded_metrics(tiny_tree, tmp_path, backend: str) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.epochs": 2, "model.dropout": 0.1,
                                            "data.backend": backend, "data.val_size": 40,
                                            **THEN})
    result = train(cfg)
    got = {"history": [{k: v for k, v in h.items() if k not in ("epoch_time_s", "images_per_s")}
                       for h in result.history], "class_acc": result.class_acc}
    want = GOLDEN[backend]
    if torch.backends.cpu.get_cpu_capability() == RECORDED_ON:
        assert got == want
    else:
        assert got["history"] == [pytest.approx(h, rel=1e-4) for h in want["history"]]
