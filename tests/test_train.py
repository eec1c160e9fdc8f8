"""The trainer: seeding, divergence, checkpoints and resume, callbacks, the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import SHARED_CACHE, shared_tree_or_skip, tiny_config

from cifarnet.cli.main import main
from cifarnet.data.datasets import load_data
from cifarnet.training.callbacks import Callback, StopTraining
from cifarnet.training.loop import CHECKPOINT, METRICS, train


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_run_start(self, ctx):
        self.events.append(("start", ctx.start_epoch))

    def on_batch_end(self, ctx, epoch, step, loss):
        self.events.append(("batch", epoch, step, loss.item()))

    def on_epoch_end(self, ctx, epoch, metrics):
        self.events.append(("epoch", epoch))

    def on_run_end(self, ctx, result):
        self.events.append(("end", result.status))


def test_metrics_and_callback_order(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.epochs": 2})
    rec = Recorder()
    result = train(cfg, [rec])
    assert result.status == "finished" and result.epochs_completed == 2
    kinds = [e[0] for e in rec.events]
    steps = 240 // 32
    assert kinds == ["start"] + (["batch"] * steps + ["epoch"]) * 2 + ["end"]
    m = result.final
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                "images_per_s"):
        assert key in m
    assert 0 <= m["test_acc"] <= 1 and 0 <= m["train_acc"] <= 1
    assert set(result.class_acc) == {"ant", "bee", "cat", "dog"}
    saved = json.loads((result.run_dir / METRICS).read_text())
    assert saved["final"]["test_acc"] == m["test_acc"]
    assert saved["config"]["train"]["epochs"] == 2


def test_validation_metrics_when_a_split_exists(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"data.val_size": 40})
    m = train(cfg).final
    assert "val_acc" in m and "val_loss" in m


def test_learns_the_tiny_task(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.epochs": 8, "data.augment_strength": 0.0})
    assert train(cfg).final["test_acc"] > 0.8  # chance is 0.25


@pytest.mark.parametrize("backend", ["torch", "albumentations"])
def test_same_seed_same_losses(tiny_tree, tmp_path, backend: str) -> None:
    def losses(seed: int, sub: str) -> list[float]:
        cfg = tiny_config(tiny_tree, tmp_path / sub,
                          {"train.seed": seed, "data.backend": backend})
        rec = Recorder()
        train(cfg, [rec])
        return [e[3] for e in rec.events if e[0] == "batch"]

    assert losses(0, "a") == losses(0, "b")
    assert losses(0, "a") != losses(1, "c")


def test_flip_only_tail_changes_only_the_last_epochs(tiny_tree, tmp_path) -> None:
    """data.flip_only_frac reaches the trainer: epochs before the tail train as before."""
    def losses(frac: float, sub: str) -> list[list[float]]:
        cfg = tiny_config(tiny_tree, tmp_path / sub,
                          {"train.epochs": 3, "data.flip_only_frac": frac})
        rec = Recorder()
        train(cfg, [rec])
        per_epoch: list[list[float]] = [[], [], []]
        for e in rec.events:
            if e[0] == "batch":
                per_epoch[e[1] - 1].append(e[3])
        return per_epoch

    seed_aug, tail = losses(0.0, "a"), losses(0.33, "b")
    assert seed_aug[:2] == tail[:2]
    assert seed_aug[2] != tail[2]


@pytest.mark.parametrize("steps", [1, 2, 4, 5])
def test_one_cycle_survives_very_short_runs(tiny_tree, tmp_path, steps: int) -> None:
    # 240 images; batch 240 // steps gives `steps` steps in one epoch
    cfg = tiny_config(tiny_tree, tmp_path, {"train.batch_size": 240 // steps})
    assert train(cfg).status == "finished"


def test_learning_rate_of_ten_diverges_at_once(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.lr": 10.0, "train.epochs": 30,
                                            "train.batch_size": 16})
    result = train(cfg)
    assert result.status == "diverged"
    assert result.epochs_completed < 5
    assert "lr=10" in result.reason


def test_resume_reaches_the_same_final_metrics(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.epochs": 3, "model.dropout": 0.1})
    straight = train(cfg, run_dir=tmp_path / "straight")

    class StopAfterOne(Callback):
        def on_epoch_end(self, ctx, epoch, metrics):
            if epoch == 1:
                raise StopTraining("stopped", "simulated interruption")

    first = train(cfg, [StopAfterOne()], run_dir=tmp_path / "resumed")
    assert first.status == "stopped" and first.epochs_completed == 1
    ckpt = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "scheduler", "torch_rng"} <= set(ckpt)
    rec = Recorder()
    resumed = train(cfg, [rec], run_dir=tmp_path / "resumed", resume=True)
    assert rec.events[0] == ("start", 2)
    assert resumed.epochs_completed == 3
    assert resumed.history == [
        {**h, "epoch_time_s": r["epoch_time_s"], "images_per_s": r["images_per_s"]}
        for h, r in zip(straight.history, resumed.history)]


def test_crash_is_reported_then_raised(tiny_tree, tmp_path) -> None:
    class Boom(Callback):
        def on_epoch_end(self, ctx, epoch, metrics):
            raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_config(tiny_tree, tmp_path), [Boom(), rec])
    assert rec.events[-1] == ("end", "crashed")


def test_cli_train_prints_table_and_writes_json(tiny_tree, tmp_path) -> None:
    r = CliRunner().invoke(main, [
        "train", "--data", str(tiny_tree), "--set", "train.epochs=1", "--set",
        "train.batch_size=32", "--set", "data.num_workers=0", "--run-dir", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "test_acc" in r.output
    assert json.loads((tmp_path / "run" / METRICS).read_text())["status"] == "finished"


def test_cli_train_bad_override_exits_2(tmp_path) -> None:
    r = CliRunner().invoke(main, ["train", "--set", "train.epochs=0"])
    assert r.exit_code == 2 and "train.epochs" in r.stderr


@pytest.mark.shared_data
def test_one_epoch_on_the_shared_tree(tmp_path) -> None:
    tree = shared_tree_or_skip()
    cfg = tiny_config(tree, tmp_path, {"data.train_subset": 500, "data.test_subset": 200,
                                       "data.cache_dir": str(SHARED_CACHE)})
    result = train(cfg, data=load_data(cfg.data))
    assert result.status == "finished" and 0.0 <= result.final["test_acc"] <= 1.0
