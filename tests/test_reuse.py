"""Reuse instead of retraining: a job another experiment already FINISHED (same config hash,
same data) is copied into the new grid, not trained; `--no-reuse` trains it."""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner
from helpers import children, runs_df, write_spec

from cifarnet.cli.main import main


@pytest.mark.slow
def test_a_finished_job_of_another_experiment_is_copied_not_trained(tiny_tree, tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = write_spec(tmp_path, tiny_tree, name="tiny", seeds=[0])
    assert CliRunner().invoke(main, ["run", str(first)]).exit_code == 0
    source = children(runs_df(tmp_path, "tiny")).set_index("tags.cifarnet.config_hash")

    second = write_spec(tmp_path, tiny_tree, name="tiny_b", seeds=[0, 1])
    r = CliRunner().invoke(main, ["run", str(second)])
    assert r.exit_code == 0, r.output
    assert "reused 2 finished run(s) of other experiments" in r.output
    assert "tiny_b: 2 run(s) finished here" in r.output  # seed 1 only was trained
    kids = children(runs_df(tmp_path, "tiny_b"))
    assert len(kids) == 4 and set(kids["status"]) == {"FINISHED"}
    reused = kids[kids["tags.cifarnet.reused_from"].notna()]
    assert sorted(reused["tags.cifarnet.seed"]) == ["0", "0"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    for _, run in reused.iterrows():
        src = source.loc[run["tags.cifarnet.config_hash"]]
        assert run["tags.cifarnet.reused_from"] == src["run_id"]
        assert run["tags.cifarnet.spec"] == "tiny_b"  # the grid's own tags, not the source's
        for key in ("test_acc", "train_loss"):
            assert ([(m.step, m.value) for m in client.get_metric_history(run["run_id"], key)]
                    == [(m.step, m.value) for m in client.get_metric_history(src["run_id"],
                                                                             key)])
        assert run["params.train.seed"] == src["params.train.seed"]
    rep = CliRunner().invoke(main, ["report", "tiny_b", "--format", "csv"])
    assert rep.exit_code == 0, rep.output

    third = write_spec(tmp_path, tiny_tree, name="tiny_c", seeds=[0])
    r = CliRunner().invoke(main, ["run", str(third), "--no-reuse"])
    assert r.exit_code == 0 and "reused" not in r.output
    assert "tiny_c: 2 run(s) finished here" in r.output
    kids = children(runs_df(tmp_path, "tiny_c"))
    assert "tags.cifarnet.reused_from" not in kids or kids["tags.cifarnet.reused_from"].isna(
        ).all()
