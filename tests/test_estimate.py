"""The cost before launch: `run --dry-run` probes each cell on this machine and predicts the
grid's wall time at the chosen --workers, less what the store already holds; it writes
nothing."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from helpers import runs_df, tiny_config, write_spec

from cifarnet.cli.main import main
from cifarnet.data.datasets import load_data
from cifarnet.data.loaders import steps_per_epoch
from cifarnet.training.probe import RunCost, probe


def test_a_run_costs_its_steps_and_its_evaluated_images() -> None:
    cost = RunCost(step_s=0.5, eval_image_s=0.001, steps_per_epoch=100,
                   eval_images_per_epoch=12_000)
    assert cost.epoch_s() == pytest.approx(50 + 12)
    assert cost.run_s(30) == pytest.approx(30 * 62)


def test_the_probe_times_real_steps_and_writes_nothing(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path)
    data = load_data(cfg.data)
    cost = probe(cfg, data, steps=2, warmup=1)
    assert cost.step_s > 0 and cost.eval_image_s > 0
    assert cost.steps_per_epoch == steps_per_epoch(len(data.train), cfg.train.batch_size)
    assert cost.eval_images_per_epoch == (len(data.test) + cfg.train.bn_recal_batches
                                          * cfg.train.batch_size
                                          + (len(data.val) if data.val is not None else 0))
    assert not any(tmp_path.iterdir())  # no run folder, no checkpoint


def test_a_probe_is_kept_per_cost_and_measured_again_when_its_file_is_damaged(
        tiny_tree, tmp_path, monkeypatch) -> None:
    """The second probe of a configuration that costs the same (another seed, learning rate
    or run folder) is the kept figure; another network is probed; a damaged or unwritable
    kept file, or one kept longer than KEEP_S, is measured again, never an error."""
    import cifarnet.training.probe as probe_module

    monkeypatch.setenv("CIFARNET_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(tiny_tree, tmp_path)
    data = load_data(cfg.data)
    calls = []

    def counted(c, d):
        calls.append(c)
        return RunCost(0.25 * len(calls), 0.001, *probe_module.sizes(c, d))

    monkeypatch.setattr(probe_module, "probe", counted)
    first = probe_module.remembered_probe(cfg, data)
    same = cfg.replace({"train.seed": 7, "train.lr": 0.05, "train.out_dir": str(tmp_path / "x")})
    assert probe_module.remembered_probe(same, data) == first and len(calls) == 1
    other = probe_module.remembered_probe(cfg.replace({"model.dilation": 1}), data)
    assert other.step_s == 0.5 and len(calls) == 2
    kept = list((tmp_path / "cache").glob("probe-*.json"))
    assert len(kept) == 2
    for f in kept:
        f.write_text("{not json")
    assert probe_module.remembered_probe(cfg, data).step_s == 0.75  # measured again
    import os

    for f in (tmp_path / "cache").glob("probe-*.json"):  # kept longer than KEEP_S
        os.utime(f, (0, 0))
    assert probe_module.remembered_probe(cfg, data).step_s == 1.0  # measured again
    assert probe_module.remembered_probe(cfg, data).step_s == 1.0  # and kept
    (tmp_path / "cache").chmod(0o500)
    try:
        for f in (tmp_path / "cache").glob("probe-*.json"):
            f.chmod(0o400)
        assert probe_module.remembered_probe(cfg, data).step_s == 1.0  # read, not written
    finally:
        (tmp_path / "cache").chmod(0o700)


def _predicted(output: str, workers: int = 2) -> tuple[int, int]:
    m = re.search(r"predicted: (\d+) run\(s\) to train \((\d+) already done or reusable\), "
                  rf"\d+:\d\d:\d\d \(h:mm:ss\) with --workers {workers} on this machine", output)
    assert m, output
    return int(m[1]), int(m[2])


@pytest.mark.slow
def test_dry_run_predicts_the_time_of_what_is_left(tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, epochs=1, seeds=[0], store=False)
    r = CliRunner().invoke(main, ["run", str(spec), "--dry-run", "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert _predicted(r.output) == (2, 0)
    assert r.output.strip().endswith("nothing was written (dry run)")
    assert not (tmp_path / "mlruns").exists()
    assert CliRunner().invoke(main, ["run", str(spec)]).exit_code == 0
    two_seeds = write_spec(tmp_path, tiny_tree, epochs=1, seeds=[0, 1])
    r = CliRunner().invoke(main, ["run", str(two_seeds), "--dry-run", "--workers", "2"])
    assert _predicted(r.output) == (2, 2)  # seed 0 is done


def test_the_prediction_is_recorded_on_the_parent_run(tiny_tree, tmp_path, monkeypatch):
    """What `--dry-run` prints is also on the grid's parent run from its start: the tag
    `cifarnet.predicted` and the metric `predicted_wall_s` (beside the run's duration)."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, epochs=1, seeds=[0])
    assert CliRunner().invoke(main, ["run", str(spec)]).exit_code == 0
    df = runs_df(tmp_path)
    parent = df[df["tags.cifarnet.role"] == "parent"].iloc[0]
    assert _predicted(parent["tags.cifarnet.predicted"], workers=1) == (2, 0)
    assert parent["metrics.predicted_wall_s"] > 0
    # a rerun that joins the grid leaves its prediction as it was ("0 run(s) to train"
    # replaced it, and a second value was logged)
    assert CliRunner().invoke(main, ["run", str(spec)]).exit_code == 0
    again = runs_df(tmp_path).query("`tags.cifarnet.role` == 'parent'").iloc[0]
    assert again["tags.cifarnet.predicted"] == parent["tags.cifarnet.predicted"]
    import mlflow
    history = mlflow.MlflowClient().get_metric_history(parent["run_id"], "predicted_wall_s")
    assert len(history) == 1


def test_the_grid_estimate_adds_start_up_and_per_run_costs(tiny_tree, tmp_path, monkeypatch):
    """Hand-checked: 4 runs of 3 epochs at 10 s each, 1 s of overhead per run
    (`RUN_OVERHEAD_S`), 5 s of start-up; one worker: 5 + 4 x 31 = 129 s; two workers: each
    starts too (5 + 5) and the runs split, 10 + 124 / 2 = 72 s. Measured on this machine,
    12 runs predicted from epochs alone were 26% to 42% short (BENCHMARKS.md)."""
    import cifarnet.training.probe as probe_module
    from cifarnet.ablation.estimate import RUN_OVERHEAD_S, estimate_grid
    from cifarnet.spec.ablation import load_spec
    from cifarnet.data.datasets import preload_data

    assert RUN_OVERHEAD_S == 1.0
    monkeypatch.setattr(probe_module, "remembered_probe",
                        lambda cfg, data: RunCost(1.0, 0.0, 10, 0))
    spec = load_spec(write_spec(tmp_path, tiny_tree, epochs=3, seeds=[0, 1]))
    jobs = spec.jobs()
    data = preload_data(j.config.data for j in jobs)
    one = estimate_grid(jobs, data, 1, 1, set(), started_s=5.0)
    two = estimate_grid(jobs, data, 2, 1, set(), started_s=5.0)
    assert one.wall_s == pytest.approx(129.0, abs=0.5) and one.fixed_s == pytest.approx(5, abs=.5)
    assert two.wall_s == pytest.approx(72.0, abs=0.5)
    done = estimate_grid(jobs, data, 2, 1, {jobs[0].config_hash}, started_s=5.0)
    assert done.runs == 3 and done.wall_s == pytest.approx(10 + 93 / 2, abs=0.5)


def test_hours_are_not_folded_into_days() -> None:
    from cifarnet.ablation.estimate import hms

    assert hms(31 * 3600 + 3 * 60 + 26) == "31:03:26"  # timedelta printed "1 day, 7:03:26"
    assert hms(59.6) == "0:01:00" and hms(-1) == "0:00:00"


def test_a_dry_run_whose_data_is_missing_is_refused_naming_the_key(tmp_path,
                                                                    monkeypatch) -> None:
    """It printed "predicted time: none" and exit 0; the run itself would fail on it."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tmp_path / "no-such-data", store=False)
    r = CliRunner().invoke(main, ["run", str(spec), "--dry-run"])
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no-such-data" in last and "data.path" in last
    assert not (tmp_path / "mlruns").exists()
