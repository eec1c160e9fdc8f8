"""Live progress: no rate before a batch is timed, an ETA that does not jump at an epoch's
start, a message during the first decode, and a search that reports while it runs."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import make_tree, tiny_config
from rich.console import Console

from cifarnet.cli.main import main
from cifarnet.cli.progress import (
    DecodeProgress,
    RichProgress,
    RunClock,
    SearchProgress,
    format_eta,
)
from cifarnet.data.datasets import load_data
from cifarnet.training.callbacks import RunContext


def _ctx(tmp_path: Path, tree: Path, steps: int = 10, epochs: int = 3) -> RunContext:
    cfg = tiny_config(tree, tmp_path, {"train.epochs": epochs})
    return RunContext(config=cfg, run_dir=tmp_path, device="cpu", data_label="x",
                      classes=["a", "b"], num_params=1, num_train=320, num_val=0, num_test=10,
                      steps_per_epoch=steps)


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=200, color_system=None), buf


def test_no_rate_and_no_eta_before_a_batch_is_timed() -> None:
    clock = RunClock()
    clock.tick(100.0, 1)
    assert clock.images_per_s(256) is None and clock.eta_s(50) is None
    clock.tick(100.5, 2)
    assert clock.images_per_s(256) == 512.0
    assert clock.eta_s(10) == 5.0 and clock.eta_s(10, 2) == 5.0  # no evaluation timed yet


def test_first_progress_frame_shows_no_images_per_second(tmp_path, tiny_tree) -> None:
    """The first frame used to read `256,000,000,000 img/s` (one batch over 1e-9 s)."""
    console, buf = _console()
    ctx = _ctx(tmp_path, tiny_tree)
    bar = RichProgress(console)
    bar.on_run_start(ctx)
    bar.on_batch_end(ctx, 1, 1, torch.tensor(2.3))
    status = bar.progress.tasks[0].fields["status"]
    assert "batch 1/10" in status and "img/s" not in status
    assert bar.progress.tasks[0].fields["eta"] is None
    bar.progress.stop()


def test_eta_does_not_jump_when_an_epoch_starts() -> None:
    """3 epochs of 10 batches of 0.1 s, 1 s of evaluation after each. Once the first
    evaluation is timed, every frame's ETA is the previous one minus the time between them:
    no jump at an epoch's start (the old bar's rate, taken over rich's 30 s window, fell
    during each evaluation and then recovered)."""
    clock, now, epochs, steps = RunClock(), 0.0, 3, 10
    frames = []
    for epoch in range(1, epochs + 1):
        for step in range(1, steps + 1):
            now += 0.1
            clock.tick(now, step)
            left = (epochs - epoch) * steps + steps - step
            frames.append((now, clock.eta_s(left, epochs - epoch + 1)))
        now += 1.0  # evaluation
    assert frames[0][1] is None  # nothing timed at the first frame
    assert abs(frames[9][1] - 2.0) < 1e-9  # epoch 1: batches known, evaluations not yet
    later = frames[10:]
    for (t0, eta0), (t1, eta1) in zip(later, later[1:]):
        assert abs(eta1 - (eta0 - (t1 - t0))) < 1e-9
    assert abs(later[0][1] - (19 * 0.1 + 3 * 1.0 - 1.0)) < 1e-9  # epoch 2, batch 1
    assert abs(clock.seconds_per_batch() - 0.1) < 1e-9
    assert abs(clock.seconds_per_eval() - 1.0) < 1e-9
    assert format_eta(3725.4) == "ETA 1:02:05" and format_eta(None) == "ETA --:--"


def test_first_decode_reports_its_progress_and_a_cached_load_reports_nothing(tmp_path) -> None:
    tree = make_tree(tmp_path / "data", per_class_train=70, per_class_test=10)
    cfg = tiny_config(tree, tmp_path, {"data.cache_dir": str(tmp_path / "cache")}).data
    calls: list[tuple[int, int]] = []
    load_data(cfg, lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 320) and calls[-1] == (320, 320)
    assert (256, 320) in calls
    again: list[tuple[int, int]] = []
    load_data(cfg, lambda done, total: again.append((done, total)))
    assert again == []
    console, buf = _console()
    shown = DecodeProgress(console)
    shown.update(0, 320)
    assert "decoding 320 images into the cache" in shown.progress.tasks[0].description
    shown.update(320, 320)
    assert shown.progress is None  # closed at the end
    piped = io.StringIO()  # not a terminal: nothing at all (a transient bar left a newline)
    quiet = DecodeProgress(Console(file=piped, force_terminal=False))
    quiet.update(0, 320)
    quiet.update(320, 320)
    assert piped.getvalue() == ""


def _trial(number: int, state: str, value: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(number=number, state=SimpleNamespace(name=state), value=value)


def test_search_display_counts_trials_and_shows_the_best_value() -> None:
    console, _ = _console()
    display = SearchProgress("val_acc", target=40, console=console)
    display.trial_callbacks(5)  # a resumed study: 5 trials before this worker's first
    assert display.state.total == 40
    trials = [_trial(0, "COMPLETE", 0.61), _trial(1, "PRUNED"), _trial(2, "COMPLETE", 0.7),
              _trial(3, "FAIL"), _trial(4, "COMPLETE", 0.65), _trial(5, "COMPLETE", 0.5)]
    study = SimpleNamespace(trials=trials, directions=[object()], best_trial=trials[2])
    display.after_trial(study, trials[-1])
    assert display.state.status() == \
        "done 4  pruned 1  failed 1  best val_acc 0.7000 (trial 2)"
    display.current = None  # trial 5's bar has ended (its on_run_end does this)
    display.trial_ended(60.0)
    display.trial_ended(120.0)
    # 34 trials left at the mean of 90 s (no trial running)
    assert display.eta_s() == 34 * 90.0
    display.close()
    added = SearchProgress("val_acc", target=40, n_trials=3, console=console)
    added.trial_callbacks(12)
    assert added.state.total == 15  # --n-trials 3 on a study of 12
    added.close()


@pytest.mark.slow
def test_search_command_reports_each_trial_while_it_runs(tmp_path, tiny_tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = {"name": "tiny_search",
            "base": {"data": {"path": str(tiny_tree), "num_workers": 0, "val_size": 40},
                     "train": {"epochs": 2, "batch_size": 32, "device": "cpu",
                               "out_dir": str(tmp_path / "runs")}},
            "space": {"train.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}},
            "objective": {"metric": "val_acc", "direction": "maximize"},
            "n_trials": 2, "sampler": {"type": "random", "seed": 0},
            "pruner": {"type": "none"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = CliRunner().invoke(main, ["search", "s.yaml", "--no-final"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "trial 0: finished after 2 epoch(s), val_acc" in out
    assert "trial 1: finished after 2 epoch(s), val_acc" in out
    assert "done 2  pruned 0  failed 0  best val_acc" in out


@pytest.mark.parametrize(("status", "start_epoch", "counted"), [
    ("finished", 1, True), ("killed", 1, False), ("crashed", 1, False), ("finished", 3, False)])
def test_only_a_whole_finished_run_sets_the_grids_run_length(status, start_epoch,
                                                              counted) -> None:
    """A run stopped after one epoch of thirty (or resumed at epoch 3) is not a run length:
    counted, it made the grid's ETA 12 x one epoch (seen as `ETA 0:19:36` for a 6-hour grid
    after a Ctrl-C)."""
    from cifarnet.cli.progress import GridProgress

    grid = GridProgress(Console(file=io.StringIO()))
    bar = grid.run_callbacks("cell seed=0")[0]
    ctx = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(epochs=30)),
                          steps_per_epoch=10, start_epoch=start_epoch)
    bar.on_run_start(ctx)
    bar.on_run_end(ctx, SimpleNamespace(status=status, final={}))
    grid.close()
    assert (len(grid.run_seconds) == 1) == counted


@pytest.mark.parametrize("width", [80, 130])
def test_a_narrow_terminal_keeps_every_bars_count_and_eta(width) -> None:
    """At 80 columns the grid's `0/12` and its ETA were lost and the ETA wrapped onto a line
    of its own; on a terminal the label and the status are what gets cut short now."""
    import io

    from rich.console import Console

    from cifarnet.cli.progress import _new_progress

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    progress = _new_progress(console)
    progress.add_task("grid", total=12, status="running 1  waiting 11  failed 0", eta=252000.0)
    progress.add_task("model.dilation=2 model.residual_add=true seed=0", total=30,
                      status="epoch 3/30  batch 120/196  loss 1.234  test_acc 0.5123  850 img/s",
                      eta=3600.0)
    console.print(progress.get_renderable())
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "0/12" in lines[0] and lines[0].rstrip().endswith("ETA 70:00:00")
    assert "0/30" in lines[1] and lines[1].rstrip().endswith("ETA 1:00:00")
    assert all(len(line) <= width for line in lines)


def test_a_cut_label_keeps_the_runs_seed() -> None:
    """At 80 columns the label was cut at its end: the runs of one cell showed the same
    `model.dilation=2 model…`, their seeds lost; with --workers every bar read `worker 1:
    dilat…`. Keys are shortened to their initials first (values whole), then the middle is
    cut, the seed kept."""
    import io

    from rich.console import Console

    from cifarnet.cli.progress import GridProgress, fit_label

    assert fit_label("dilation=2,residual_add=true seed=10", 20) == "d=2,ra=true seed=10"
    assert fit_label("dilation=2,residual_add=true seed=10", 16) == "d=2,ra=\u2026 seed=10"
    assert fit_label("dilation=2,residual_add=true seed=10000000", 20) == \
        "d=2,r\u2026 seed=10000000"
    assert fit_label("tune dilation=2,residual_add=true trial 3", 20) == \
        "tune d=2,ra\u2026 trial 3"
    assert fit_label("final: best configuration, train + val", 16) == "final: b\u2026n + val"
    assert fit_label("short seed=1", 16) == "short seed=1"
    assert fit_label("a long label without a seed", None) == "a long label without a seed"
    cells = ["dilation=2,residual_add=true", "dilation=2,residual_add=false",
             "dilation=1,residual_add=true", "dilation=1,residual_add=false"]
    shown = {fit_label(f"{c} seed={s}", 20) for c in cells for s in (0, 1)}
    assert len(shown) == 8  # every run of the grid told apart
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    display = GridProgress(console)
    bar = display.run_callbacks("dilation=1,residual_add=false seed=2")[0]
    ctx = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(epochs=3)),
                          steps_per_epoch=10, start_epoch=1)
    bar.on_run_start(ctx)
    console.print(display.progress.get_renderable())
    display.close()
    assert "seed=2" in buf.getvalue() and "d=1" in buf.getvalue(), buf.getvalue()
