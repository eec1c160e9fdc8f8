"""BatchNorm recalibration before evaluation (train.bn_recal_batches)."""

import contextlib

import numpy as np
import pytest
import torch
from helpers import tiny_config
from torch import nn

from cifarnet.config.schema import build_config
from cifarnet.data.datasets import Split
from cifarnet.errors import ConfigError
from cifarnet.training.bn import recal_images, recalibrate_bn
from cifarnet.training.callbacks import Callback
from cifarnet.training.loop import train

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def split(n: int = 50) -> Split:
    rng = np.random.default_rng(1)
    return Split(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                 rng.integers(0, 4, n).astype(np.int64))


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4, momentum=0.1),
                         nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 36, 4))


def test_statistics_are_the_exact_moments_of_the_unaugmented_images() -> None:
    s, model = split(), small_model()
    bn = model[2]
    bn.running_mean.fill_(5.0)  # stale statistics, as after a short run
    idx = recal_images(s, 1, 64, seed=0, epoch=1)  # one batch: all 50 images
    assert len(idx) == 1 and sorted(idx[0].tolist()) == list(range(50))
    rng_before = torch.get_rng_state()
    assert recalibrate_bn(model, s, idx, MEAN, STD, CPU, torch.preserve_format,
                          contextlib.nullcontext()) == 1
    x = (torch.from_numpy(s.images[idx[0].numpy()]).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    act = model[1](model[0](x)).transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(bn.running_mean, act.mean(1))
    torch.testing.assert_close(bn.running_var, act.var(1, unbiased=True))
    assert bn.momentum == 0.1 and not model.training  # restored; left in eval mode
    assert torch.equal(torch.get_rng_state(), rng_before)  # dropout drew nothing


def test_several_batches_average_their_statistics() -> None:
    s, model = split(), small_model()
    idx = recal_images(s, 2, 25, seed=3, epoch=2)
    recalibrate_bn(model, s, idx, MEAN, STD, CPU, torch.preserve_format,
                   contextlib.nullcontext())
    means = []
    for i in idx:
        one = small_model()
        recalibrate_bn(one, s, [i], MEAN, STD, CPU, torch.preserve_format,
                       contextlib.nullcontext())
        means.append(one[2].running_mean)
    torch.testing.assert_close(model[2].running_mean, (means[0] + means[1]) / 2)


def test_recal_images_come_from_their_own_stream() -> None:
    s = split(100)
    a, b = recal_images(s, 3, 10, 0, 1), recal_images(s, 3, 10, 0, 1)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert a[0].tolist() != recal_images(s, 3, 10, 0, 2)[0].tolist()  # per epoch
    assert a[0].tolist() != recal_images(s, 3, 10, 1, 1)[0].tolist()  # per seed
    assert sum(map(len, recal_images(s, 50, 10, 0, 1))) == 100  # capped at the split


def test_zero_batches_leave_the_statistics_as_trained() -> None:
    """`recal_images(..., 0, ...)` gave one empty batch (splitting an empty tensor), and
    `recalibrate_bn` then reset every running statistic: a 30-epoch model "as trained"
    tested at 10.00% in benchmarks/bn_recal.py against 82.25% in its own run."""
    s, model = split(), small_model()
    model[2].running_mean.fill_(5.0)
    assert recal_images(s, 0, 64, seed=0, epoch=1) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for batches in ([], [torch.empty(0, dtype=torch.int64)]):
        assert recalibrate_bn(model, s, batches, MEAN, STD, CPU, torch.preserve_format,
                              contextlib.nullcontext()) == 0
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_field_is_checked() -> None:
    with pytest.raises(ConfigError, match="train.bn_recal_batches: must be >= 0"):
        build_config({"train.bn_recal_batches": -1})


class Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch_end(self, ctx, epoch, step, loss):
        self.losses.append(loss.item())


def test_recalibration_changes_evaluation_only(tiny_tree, tmp_path) -> None:
    """Training is the same with and without it; evaluation of the stale statistics after a
    short high-lr run is near chance (0.25), recalibrated it is not."""
    def run(n: int):
        cfg = tiny_config(tiny_tree, tmp_path / str(n), {
            "train.epochs": 2, "model.dropout": 0.1, "train.bn_recal_batches": n,
            "train.precision": "fp32", "data.val_size": 40})
        rec = Losses()
        return train(cfg, [rec]), rec.losses

    (stale, stale_losses), (recal, recal_losses) = run(0), run(8)
    assert stale_losses == recal_losses
    assert stale.final["train_loss"] == recal.final["train_loss"]
    # measured on one machine, 1 thread / 2 threads (this high-lr run is chaotic: its
    # trajectory depends on the float reduction order): test loss 487 / 41 stale against
    # 0.81 / 0.44 recalibrated, accuracy 0.25 / 0.50 against 0.53 / 0.75 (chance 0.25); the
    # fixed thresholds this test had (stale < 0.3 < 0.6 < recalibrated) held on one only
    for split in ("test", "val"):
        assert recal.final[f"{split}_loss"] < stale.final[f"{split}_loss"] / 10
        assert recal.final[f"{split}_acc"] > stale.final[f"{split}_acc"]
