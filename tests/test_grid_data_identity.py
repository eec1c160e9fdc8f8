"""What decides "already done" covers the data a run trained on: the same config on another
data set is another job; the same data in another folder is the same job."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from helpers import children, make_tree, runs_df, write_spec

from cifarnet.cli.main import main


@pytest.mark.slow
def test_a_rerun_on_other_data_trains_and_a_copied_tree_is_already_done(tiny_tree, tmp_path,
                                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    factors = {"model.residual_add": [True]}
    spec = write_spec(tmp_path, tiny_tree, seeds=[0], factors=factors)
    assert CliRunner().invoke(main, ["run", str(spec)]).exit_code == 0

    other = make_tree(tmp_path / "other", per_class_train=60, per_class_test=15, size=32,
                      classes=["ant", "bee", "cat", "eel"])  # one class differs
    r = CliRunner().invoke(main, ["run", str(spec), "--set", f"data.path={other}"])
    assert r.exit_code == 0, r.output
    assert "1 run(s) finished here, 0 already done" in r.output

    copy = shutil.copytree(tiny_tree, tmp_path / "copy")  # same content, another folder
    r = CliRunner().invoke(main, ["run", str(spec), "--set", f"data.path={copy}"])
    assert r.exit_code == 0, r.output
    assert "0 run(s) finished here, 1 already done" in r.output

    kids = children(runs_df(tmp_path))
    assert len(kids) == 2 and kids["tags.cifarnet.data_fingerprint"].nunique() == 2
    assert kids["tags.cifarnet.config_hash"].nunique() == 1  # the config alone is the same
    # the resolved precision is recorded with every run, as a param and a tag
    assert set(kids["tags.cifarnet.precision"]) <= {"fp32", "bf16"}
    assert (kids["tags.cifarnet.precision"] == kids["params.precision"]).all()
