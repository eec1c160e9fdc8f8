"""The recipe techniques, each off by default: flip test-time augmentation
(train.tta_flip), a moving average of the weights (train.ema_decay), no weight decay on
BatchNorm parameters and biases (train.no_decay_bn_bias) and a BatchNorm learning-rate
multiplier (train.bn_lr_mult), and the augmentation ramp (data.augment_ramp_frac; its
batches are tested in test_augment.py). Each test's expected value is computed by hand."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import InterruptAfter
from helpers import tiny_config as _tiny_config
from torch import nn

from cifarnet.config.schema import RunConfig, build_config
from cifarnet.data.datasets import load_data
from cifarnet.errors import ConfigError
from cifarnet.model.cifarnet import CifarNet
from cifarnet.training.bn import recal_images, recalibrate_bn
from cifarnet.training.evaluation import PREDICTIONS, evaluate
from cifarnet.training.loop import CHECKPOINT, _evaluate_splits, build_run, train, train_step
from cifarnet.training.optim import build_optimizer, build_scheduler

TIMES = ("epoch_time_s", "images_per_s")
NULL = contextlib.nullcontext


def tiny_config(tree, tmp_path, overrides):
    """fp32, so that the hand computations below (fp32) match the run's exactly; `auto`
    is bf16 autocast on CPUs with AVX512-BF16 or AMX."""
    return _tiny_config(tree, tmp_path, {"train.precision": "fp32", **overrides})


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- configuration ----------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "key", "fragment"), [
    ({"train.tta_flip": 1}, "train.tta_flip", "expected true or false"),
    ({"train.tta_flip": "yes"}, "train.tta_flip", "expected true or false"),
    ({"train.tta_translate": 5}, "train.tta_translate", "must be <= 4"),
    ({"train.tta_translate": -1}, "train.tta_translate", "must be >= 0"),
    ({"train.tta_translate": 1.5}, "train.tta_translate", "expected an integer"),
    ({"train.tta_translate": True}, "train.tta_translate", "expected an integer"),
    ({"train.ema_decay": 1.0}, "train.ema_decay", "must be < 1.0"),
    ({"train.ema_decay": 1}, "train.ema_decay", "must be < 1.0"),
    ({"train.ema_decay": -0.5}, "train.ema_decay", "must be >= 0.0"),
    ({"train.ema_decay": True}, "train.ema_decay", "expected a number"),
    ({"train.ema_decay": float("nan")}, "train.ema_decay", "expected a finite number"),
    ({"train.ema_decay": 0.99, "train.bn_recal_batches": 0}, "train.ema_decay",
     "needs train.bn_recal_batches > 0"),
    ({"train.no_decay_bn_bias": "true"}, "train.no_decay_bn_bias", "expected true or false"),
    ({"train.bn_lr_mult": 0}, "train.bn_lr_mult", "must be > 0.0"),
    ({"train.bn_lr_mult": -1.0}, "train.bn_lr_mult", "must be > 0.0"),
    ({"train.bn_lr_mult": 64.5}, "train.bn_lr_mult", "must be <= 64.0"),
    ({"train.bn_lr_mult": "4"}, "train.bn_lr_mult", "expected a number"),
    ({"data.augment_ramp_frac": -0.1}, "data.augment_ramp_frac", "must be >= 0.0"),
    ({"data.augment_ramp_frac": 1.5}, "data.augment_ramp_frac", "must be <= 1.0"),
    ({"data.augment_ramp_frac": "0.2"}, "data.augment_ramp_frac", "expected a number"),
    ({"data.augment_ramp_frac": 0.7}, "data.augment_ramp_frac",
     "plus data.flip_only_frac 0.33 is over 1"),
    ({"data.augment_ramp_frac": 0.5, "data.flip_only_frac": 0.6}, "data.augment_ramp_frac",
     "would overlap"),
])
def test_bad_values_are_refused_naming_the_key(overrides, key, fragment) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: ") as err:
        build_config(overrides)
    assert fragment in str(err.value)


def test_bounds_are_inclusive_where_they_say_so() -> None:
    cfg = build_config({"train.ema_decay": 0.9999, "train.bn_lr_mult": 64,
                        "train.tta_flip": True, "train.no_decay_bn_bias": True})
    assert cfg.train.ema_decay == 0.9999 and cfg.train.bn_lr_mult == 64.0


def test_off_by_default_and_the_default_identity_is_unchanged() -> None:
    t = RunConfig().train
    assert (t.tta_flip, t.ema_decay, t.no_decay_bn_bias, t.bn_lr_mult) == (False, 0.0, False,
                                                                            1.0)
    base = RunConfig().hash()
    # written out at their defaults, the techniques leave the identity alone ...
    assert RunConfig().data.augment_ramp_frac == 0.0
    assert build_config({"train.tta_flip": False, "train.tta_translate": 0,
                         "train.ema_decay": 0,
                         "train.no_decay_bn_bias": False, "train.bn_lr_mult": 1,
                         "data.augment_ramp_frac": 0}).hash() == base
    # ... and each of them, on, is another run
    on = [{"train.tta_flip": True}, {"train.ema_decay": 0.999},
          {"train.no_decay_bn_bias": True}, {"train.bn_lr_mult": 4.0},
          {"data.augment_ramp_frac": 0.2}, {"train.tta_translate": 1}]
    hashes = {build_config(o).hash() for o in on}
    assert len(hashes) == 6 and base not in hashes


# --- flip test-time augmentation ----------------------------------------------------------

class Lopsided(nn.Module):
    """A linear classifier over the pixels of `size` x `size` images that sees left and
    right (and shifted images) differently, returning log-probabilities like CifarNet."""

    def __init__(self, size: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * size * size, 3)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.logits(x), dim=1)


def test_tta_averages_the_logits_of_the_image_and_its_mirror() -> None:
    model = Lopsided()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    batches = [(x[:40], y[:40]), (x[40:], y[40:])]
    with torch.no_grad():
        mirrored = torch.stack([img[:, :, [3, 2, 1, 0]] for img in x])  # columns reversed
        avg = (model.logits(x) + model.logits(mirrored)) / 2
        want_logp = avg - torch.logsumexp(avg, dim=1, keepdim=True)
        plain_pred = model.logits(x).argmax(1)
    want_pred = want_logp.argmax(1)
    assert (want_pred != plain_pred).any()  # the data tells TTA from no TTA
    predicted: list[torch.Tensor] = []
    loss, acc, per_class = evaluate(model, batches, 3, NULL(), predicted, tta_flip=True)
    assert loss == pytest.approx(-want_logp[torch.arange(64), y].mean().item(), rel=1e-6)
    assert acc == pytest.approx((want_pred == y).float().mean().item())
    assert torch.equal(torch.cat(predicted), want_pred)
    for k in range(3):
        assert per_class[k].item() == pytest.approx(
            (want_pred[y == k] == k).float().mean().item())
    plain_loss, plain_acc, _ = evaluate(model, batches, 3, NULL(), tta_flip=False)
    assert plain_loss != pytest.approx(loss)


def _reflect_shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img [C, H, W] moved by (dy, dx) pixels, the uncovered border filled by reflection,
    written index by index (numpy's 'reflect' mode: the edge pixel is not repeated)."""
    _, h, w = img.shape

    def src(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i
    rows = [src(i - dy, h) for i in range(h)]
    cols = [src(j - dx, w) for j in range(w)]
    return img[:, rows][:, :, cols]


@pytest.mark.parametrize("flip", [False, True])
def test_translation_tta_averages_the_shifted_views_as_airbench_does(flip) -> None:
    """1/2 the image + 1/4 it moved 1 pixel down-right + 1/4 it moved up-left (each view
    flip-averaged with flip TTA), by hand, against `evaluate(..., tta_translate=1)`."""
    model = Lopsided(size=6)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(48, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)

    def view(v: torch.Tensor) -> torch.Tensor:
        if not flip:
            return model.logits(v)
        return (model.logits(v) + model.logits(v.flip(-1))) / 2
    with torch.no_grad():
        down_right = torch.stack([_reflect_shift(img, 1, 1) for img in x])
        up_left = torch.stack([_reflect_shift(img, -1, -1) for img in x])
        avg = view(x) / 2 + view(down_right) / 4 + view(up_left) / 4
        want = avg - torch.logsumexp(avg, dim=1, keepdim=True)
        without = view(x).argmax(1)
    assert (want.argmax(1) != without).any()  # the data tells the shifts apart
    predicted: list[torch.Tensor] = []
    loss, acc, _ = evaluate(model, [(x[:30], y[:30]), (x[30:], y[30:])], 3, NULL(), predicted,
                            tta_flip=flip, tta_translate=1)
    assert loss == pytest.approx(-want[torch.arange(48), y].mean().item(), rel=1e-5)
    assert torch.equal(torch.cat(predicted), want.argmax(1))
    assert acc == pytest.approx((want.argmax(1) == y).float().mean().item())


def test_tta_run_evaluates_every_split_and_saves_its_predictions(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.tta_flip": True, "data.val_size": 40,
                                            "train.lr": 0.05})
    data = load_data(cfg.data)
    result = train(cfg, data=data)
    # the evaluated model: the checkpoint's weights and recalibrated BatchNorm statistics
    ckpt = torch.load(result.run_dir / CHECKPOINT, weights_only=True)
    model = CifarNet(cfg.model, num_classes=len(data.classes))
    model.load_state_dict(ckpt["model"])
    model.eval()
    run = build_run(cfg, data)
    for split in ("test", "val"):
        x = torch.cat([b[0] for b in run.evals[split]])
        y = torch.cat([b[1] for b in run.evals[split]])
        with torch.no_grad():
            logp = F.log_softmax((model(x) + model(torch.flip(x, dims=[3]))) / 2, dim=1)
        assert result.final[f"{split}_loss"] == pytest.approx(
            F.nll_loss(logp, y).item(), rel=1e-5)
        assert result.final[f"{split}_acc"] == pytest.approx(
            (logp.argmax(1) == y).float().mean().item())
        if split == "test":
            saved = np.load(result.run_dir / PREDICTIONS)
            assert np.array_equal(saved["predicted"], logp.argmax(1).numpy())


# --- moving average of the weights --------------------------------------------------------

def test_ema_is_the_hand_updated_average_and_what_is_evaluated(tiny_tree, tmp_path) -> None:
    decay, k = 0.9, 3
    cfg = tiny_config(tiny_tree, tmp_path, {"train.ema_decay": decay, "train.lr": 0.05,
                                            "train.bn_recal_batches": 2})
    data = load_data(cfg.data)
    run = build_run(cfg, data)
    run.model.train()
    avg: dict[str, torch.Tensor] = {}
    batches = iter(run.loader.epoch(1))
    for step in range(k):
        x, y = next(batches)
        train_step(run, x, y)
        run.sched.step()
        for name, p in run.model.named_parameters():
            w = p.detach().clone()
            avg[name] = w if step == 0 else decay * avg[name] + (1 - decay) * w
    averaged = dict(run.ema.module.named_parameters())
    live = dict(run.model.named_parameters())
    for name, want in avg.items():
        torch.testing.assert_close(averaged[name].detach(), want)
        assert not torch.allclose(live[name].detach(), want)  # the live weights moved on
    # evaluation: the hand-averaged weights, BatchNorm recalibrated on the run's images
    hand = CifarNet(cfg.model, num_classes=len(data.classes))
    hand.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        for name, p in hand.named_parameters():
            p.copy_(avg[name])
    recalibrate_bn(hand, data.train, recal_images(data.train, 2, 32, cfg.train.seed, 1),
                   data.mean, data.std, torch.device("cpu"), torch.preserve_format, NULL())
    want_loss, want_acc, _ = evaluate(hand, run.evals["test"], len(data.classes), NULL())
    got = _evaluate_splits(run, 1)
    assert got["test_loss"] == pytest.approx(want_loss, rel=1e-4)
    assert got["test_acc"] == pytest.approx(want_acc)
    live_loss, _, _ = evaluate(run.model, run.evals["test"], len(data.classes), NULL())
    assert live_loss != pytest.approx(want_loss, rel=1e-4)


def results(result) -> tuple:
    return ([{k: v for k, v in h.items() if k not in TIMES} for h in result.history],
            result.class_acc, result.status)


def test_ema_run_resumed_equals_uninterrupted(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.epochs": 2, "train.ema_decay": 0.9,
                                            "train.tta_flip": True, "train.bn_lr_mult": 4.0,
                                            "train.no_decay_bn_bias": True, "train.lr": 0.05})
    straight = train(cfg, run_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, [InterruptAfter(1)], run_dir=tmp_path / "cut")
    ckpt = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert int(ckpt["ema"]["n_averaged"]) == 240 // 32  # one update per step of epoch 1
    resumed = train(cfg, run_dir=tmp_path / "cut", resume=True)
    assert resumed.status == "finished"
    assert results(resumed) == results(straight)


# --- parameter groups: no decay on BatchNorm and biases, BatchNorm lr multiplier ----------

def _kinds(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> 'bn', 'bias' or 'weight', read off the modules by hand."""
    kinds = {}
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            kinds[id(p)] = ("bn" if isinstance(m, nn.BatchNorm2d)
                            else "bias" if name == "bias" else "weight")
    return kinds


def test_default_optimizer_is_one_group_of_every_parameter() -> None:
    model = CifarNet()
    opt = build_optimizer(model, RunConfig().train)
    assert len(opt.param_groups) == 1
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    assert opt.param_groups[0]["weight_decay"] == 5e-4


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_no_decay_on_batchnorm_and_biases(optimizer: str) -> None:
    model = CifarNet()
    t = build_config({"train.no_decay_bn_bias": True, "train.optimizer": optimizer}).train
    opt = build_optimizer(model, t)
    kinds = _kinds(model)
    decay = {kinds[id(p)] for g in opt.param_groups if g["weight_decay"] == 5e-4
             for p in g["params"]}
    free = {kinds[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.0
            for p in g["params"]}
    assert decay == {"weight"} and free == {"bn", "bias"}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert all(g["lr"] == t.lr for g in opt.param_groups)  # the lr is not touched
    # the optimiser applies it: a step with zero gradients moves only decayed weights
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    opt.step()
    for p in model.parameters():
        moved = not torch.equal(p.detach(), before[id(p)])
        assert moved == (kinds[id(p)] == "weight" and bool(before[id(p)].any()))


def _lrs(overrides: dict, steps: int = 40) -> list[dict[str, float]]:
    """Each group's lr at every step of a 40-step run of `overrides`."""
    t = build_config({"train.epochs": 4, **overrides}).train
    model = CifarNet()
    opt = build_optimizer(model, t)
    sched = build_scheduler(opt, t, steps_per_epoch=10)
    out = []
    for _ in range(steps):
        out.append({g.get("name", "all"): g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
def test_batchnorm_lr_is_the_multiple_of_the_others_at_every_step(schedule: str) -> None:
    base = {"train.schedule": schedule, "train.step_epochs": 1}
    plain = _lrs(base)
    mult = _lrs({**base, "train.bn_lr_mult": 4.0})
    assert set(mult[0]) == {"decay", "bn"}
    for p, m in zip(plain, mult):
        assert m["decay"] == pytest.approx(p["all"], rel=1e-12)  # the schedule as before
        assert m["bn"] == pytest.approx(4.0 * p["all"], rel=1e-12)
    if schedule == "onecycle":  # the peak: step 9, the last of the warm-up (25% of 40)
        assert mult[9]["decay"] == pytest.approx(0.2) and mult[9]["bn"] == pytest.approx(0.8)
        assert mult[0]["bn"] == pytest.approx(0.08)  # starts at peak / div_factor 10
    else:
        assert mult[0]["bn"] == pytest.approx(0.8)


def test_both_techniques_give_three_groups() -> None:
    model = CifarNet()
    t = build_config({"train.no_decay_bn_bias": True, "train.bn_lr_mult": 8.0,
                      "train.lr": 0.1}).train
    opt = build_optimizer(model, t)
    kinds = _kinds(model)
    got = {g["name"]: ({kinds[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"])
           for g in opt.param_groups}
    assert got == {"decay": ({"weight"}, 0.1, 5e-4), "no_decay": ({"bias"}, 0.1, 0.0),
                   "bn": ({"bn"}, pytest.approx(0.8), 0.0)}
    assert opt.param_groups[0]["name"] == "decay"  # the group whose lr a run logs
