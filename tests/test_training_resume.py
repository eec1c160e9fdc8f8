"""Checkpoints: atomic, complete (every random stream), resumed exactly; unusable ones are
refused in one line or, for a grid, replaced by a fresh start; `train --resume` says what it
does and leaves a finished run untouched."""

import io
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import InterruptAfter, tiny_config

from cifarnet.cli.main import main
from cifarnet.training import checkpoint as ck
from cifarnet.training.callbacks import Callback
from cifarnet.training.checkpoint import CheckpointError, OnBadCheckpoint
from cifarnet.training.loop import CHECKPOINT, METRICS, train

TIMES = ("epoch_time_s", "images_per_s")


def results(result) -> tuple:
    return ([{k: v for k, v in h.items() if k not in TIMES} for h in result.history],
            result.class_acc, result.status)


class Start(Callback):
    def on_run_start(self, ctx):
        self.start, self.resume = ctx.start_epoch, ctx.resume


@pytest.mark.slow
@pytest.mark.parametrize("stop", [1, 3])
def test_interrupted_then_resumed_equals_uninterrupted(tiny_tree, tmp_path, stop) -> None:
    """Interrupt after epoch 1 (or after the last epoch, before metrics.json): the resumed
    run's metrics, per-class table included, equal the uninterrupted run's exactly."""
    cfg = tiny_config(tiny_tree, tmp_path, {"train.epochs": 3, "model.dropout": 0.1})
    straight = train(cfg, run_dir=tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, [InterruptAfter(stop)], run_dir=tmp_path / "cut")
    assert not (tmp_path / "cut" / METRICS).exists()
    start = Start()
    resumed = train(cfg, [start], run_dir=tmp_path / "cut", resume=True)
    assert start.start == stop + 1 and start.resume.completed == stop
    assert results(resumed) == results(straight)
    saved = json.loads((tmp_path / "cut" / METRICS).read_text())
    assert saved["class_acc"] == straight.class_acc and saved["status"] == "finished"


def test_checkpoint_holds_every_random_stream(tiny_tree, tmp_path) -> None:
    result = train(tiny_config(tiny_tree, tmp_path))
    ckpt = torch.load(result.run_dir / CHECKPOINT, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "history", "class_acc",
            "config_hash"} <= set(ckpt)
    assert {"torch", "python", "numpy"} <= set(ckpt["rng"])


def test_rng_state_round_trips_through_a_weights_only_file() -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    buf = io.BytesIO()
    torch.save(ck.rng_state(), buf)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    buf.seek(0)
    ck.set_rng_state(torch.load(buf, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_a_write_that_dies_leaves_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / CHECKPOINT
    ck.save_checkpoint(path, {"epoch": 1})

    def torn(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"epoch": 2})
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left


@pytest.fixture
def interrupted(tiny_tree, tmp_path):
    """A 2-epoch run interrupted after epoch 1, and its config."""
    cfg = tiny_config(tiny_tree, tmp_path, {"train.epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, [InterruptAfter(1)], run_dir=tmp_path / "run")
    return cfg, tmp_path / "run"


BAD = {"truncated": lambda b: b[:683], "empty": lambda b: b"", "garbage": lambda b: b"x" * 99}


@pytest.mark.parametrize("damage", sorted(BAD))
def test_unreadable_checkpoint_is_one_line_or_a_fresh_start(interrupted, damage) -> None:
    cfg, run_dir = interrupted
    path = run_dir / CHECKPOINT
    path.write_bytes(BAD[damage](path.read_bytes()))
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        train(cfg, run_dir=run_dir, resume=True)
    start = Start()
    fresh = train(cfg, [start], run_dir=run_dir, resume=True,
                  on_bad_checkpoint=OnBadCheckpoint.FRESH)
    assert start.start == 1 and "unreadable checkpoint" in start.resume.note
    assert fresh.status == "finished" and fresh.epochs_completed == 2


def test_checkpoint_of_another_config_is_refused(interrupted) -> None:
    cfg, run_dir = interrupted
    with pytest.raises(CheckpointError, match="checkpoint of another config"):
        train(cfg.replace({"train.lr": 0.1}), run_dir=run_dir, resume=True)


def cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def cli_args(cfg, run_dir) -> list[str]:
    return ["--data", cfg.data.path, "--set", f"train.epochs={cfg.train.epochs}", "--set",
            "train.batch_size=32", "--set", "data.num_workers=0", "--run-dir", str(run_dir),
            "--resume"]


def test_cli_resume_says_where_it_resumes(interrupted) -> None:
    cfg, run_dir = interrupted
    r = cli(*cli_args(cfg, run_dir))
    assert r.exit_code == 0, r.output
    assert f"resuming from epoch 1 of 2 ({run_dir / CHECKPOINT}): next epoch 2" in r.stderr


def test_cli_resume_with_nothing_to_resume_says_so(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path)
    r = cli(*cli_args(cfg, tmp_path / "new"))
    assert r.exit_code == 0, r.output
    assert f"no checkpoint in {tmp_path / 'new'}: starting from epoch 1" in r.stderr


def test_cli_resume_of_a_damaged_checkpoint_exits_2(interrupted) -> None:
    cfg, run_dir = interrupted
    (run_dir / CHECKPOINT).write_bytes((run_dir / CHECKPOINT).read_bytes()[:683])
    r = cli(*cli_args(cfg, run_dir))
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unreadable" in lines[0]


def test_cli_resume_of_a_finished_run_leaves_it_untouched(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path)
    run_dir = tmp_path / "done"
    train(cfg, run_dir=run_dir)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}
    r = cli(*cli_args(cfg, run_dir))
    assert r.exit_code == 0, r.output
    assert f"run in {run_dir} is finished (1 of 1 epochs): left untouched" in r.stderr
    assert "test_acc" in r.output
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()} == before


def test_incomplete_checkpoint_is_refused(tmp_path) -> None:
    ck.save_checkpoint(tmp_path / CHECKPOINT, {"epoch": 1, "config_hash": "abc"})
    with pytest.raises(CheckpointError, match="incomplete checkpoint .missing history, model"):
        ck.load_checkpoint(tmp_path / CHECKPOINT, "abc")
    point = ck.resume_point(tmp_path, "abc", 3, OnBadCheckpoint.FRESH)
    assert point.completed == 0 and point.message().startswith(str(tmp_path / CHECKPOINT))
