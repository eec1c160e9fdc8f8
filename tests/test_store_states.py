"""Stores in the states users leave them: a deleted experiment, a grid whose parent run is
gone or was never recorded, values past the store's limits."""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner
from helpers import children, runs_df, write_spec

from cifarnet.cli.main import main


def _as_a_new_process() -> None:
    """Each command is a process of its own; these run in one (CliRunner), where MLflow
    keeps each run's artifact repository (its old location) in a private cache."""
    from mlflow.tracking._tracking_service import utils

    getattr(utils, "_artifact_repos_cache", {}).clear()


def _run(spec, *extra):
    return CliRunner().invoke(main, ["run", str(spec), *extra])


@pytest.mark.slow
def test_a_deleted_experiment_is_refused_with_the_restore_command(tiny_tree, tmp_path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, seeds=[0])
    assert _run(spec).exit_code == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    client.delete_experiment(exp.experiment_id)
    r = _run(spec)
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: name: the MLflow experiment 'tiny' was deleted; restore it with `mlflow "
        f"experiments restore --experiment-id {exp.experiment_id}` (same MLFLOW_TRACKING_URI), "
        f"or rename the spec")


@pytest.mark.slow
def test_a_grid_whose_parent_run_was_deleted_gets_a_new_one(tiny_tree, tmp_path,
                                                            monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, seeds=[0])
    assert _run(spec).exit_code == 0
    df = runs_df(tmp_path)
    old_parent = df[df["tags.cifarnet.role"] == "parent"]["run_id"].item()
    mlflow.MlflowClient().delete_run(old_parent)
    spec2 = write_spec(tmp_path, tiny_tree, seeds=[0, 1])  # same grid, one more seed
    r = _run(spec2)
    assert r.exit_code == 0, r.output
    df = runs_df(tmp_path)
    parents = df[df["tags.cifarnet.role"] == "parent"]
    assert len(parents) == 1 and parents["run_id"].item() != old_parent
    assert parents["status"].item() == "FINISHED"
    assert len(children(df)) == 4


@pytest.mark.slow
def test_values_past_the_store_limits_are_refused_before_any_write(tiny_tree, tmp_path,
                                                                  monkeypatch) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, seeds=[0], store=False)
    raw = yaml.safe_load(spec.read_text())
    raw["description"] = "x" * 9240
    spec.write_text(yaml.safe_dump(raw))
    r = _run(spec)
    assert r.exit_code == 2
    assert r.output.strip() == ("error: description: at most 5,000 characters (it is stored as "
                                "an MLflow tag), got 9,240")
    assert not (tmp_path / "mlruns").exists()
    # shortened, the grid runs at once (no study was left behind to wait on)
    raw["description"] = "short"
    spec.write_text(yaml.safe_dump(raw))
    r = _run(spec)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "mlruns" / "optuna.db").exists()  # a grid opens no Optuna storage


@pytest.mark.slow
def test_a_grid_reports_the_jobs_another_grid_already_finished(tiny_tree, tmp_path,
                                                               monkeypatch) -> None:
    """Grid C adds a factor to grid A: A's runs count as done for C ("already done") and so
    are C's results too; and `run` analyses its own grid, not the experiment's newest."""
    from cifarnet.tracking.results import find_parent_run, load_runs
    from cifarnet.workspace import Workspace

    monkeypatch.chdir(tmp_path)
    a = write_spec(tmp_path, tiny_tree, seeds=[0], factors={"model.residual_add": [True, False]})
    assert _run(a).exit_code == 0
    c = write_spec(tmp_path, tiny_tree, seeds=[0], factors={
        "model.residual_add": [True, False], "model.dilation": [2, 1]})
    r = _run(c)
    assert r.exit_code == 0 and "2 already done" in r.output, r.output
    ws = Workspace.resolve(tmp_path)
    runs = load_runs("tiny", workspace=ws)  # the newest grid: C
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    assert runs["config_hash"].nunique() == 4
    parents = runs_df(tmp_path).query("`tags.cifarnet.role` == 'parent'")
    first = parents.sort_values("start_time")["run_id"].iloc[0]
    assert len(load_runs(find_parent_run("tiny", ws, run_id=first))) == 2


def test_store_limits_name_the_key() -> None:
    import pytest

    from cifarnet.errors import UserError
    from cifarnet.tracking.limits import check_store_limits

    check_store_limits("e", {"description": "x" * 8000}, [{"data.path": "p" * 6000}])
    with pytest.raises(UserError, match=r"^data.path: a value of 6,001 characters; an MLflow "
                                        r"param holds at most 6,000$"):
        check_store_limits("e", {}, [{"data.path": "p" * 6001}])
    with pytest.raises(UserError, match=r"^factors: 8,001 characters; an MLflow tag holds at "
                                        r"most 8,000$"):
        check_store_limits("e", {"factors": "f" * 8001}, [])
    with pytest.raises(UserError, match=r"^name: 501 characters"):
        check_store_limits("n" * 501, {}, [])


def _artifact_files(folder) -> dict[str, int]:
    """Artifact file -> its modification time (ns)."""
    root = folder / "mlruns" / "artifacts"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["copied", "moved"])
def test_a_copied_or_moved_store_is_refused_until_relocated(tiny_tree, tmp_path, monkeypatch,
                                                            how) -> None:
    """The embedded store records absolute artifact locations: a copy would write its new
    checkpoints and reports into the original, a moved one into nowhere. Refused (exit 2,
    nothing written) until `relocate-store`; then everything lands in the new folder."""
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    monkeypatch.chdir(first)
    spec = write_spec(first, tiny_tree, seeds=[0])
    assert _run(spec).exit_code == 0
    before = _artifact_files(first)
    (shutil.copytree if how == "copied" else shutil.move)(first, second)
    monkeypatch.chdir(second)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri exported first's
    spec2 = write_spec(second, tiny_tree, seeds=[0, 1])  # one more seed
    db = second / "mlruns" / "mlflow.db"
    stamp = db.read_bytes()
    for args in (["run", str(spec2)], ["report", "tiny"], ["ui", "--port", "5999"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.strip() == (
            f"error: mlruns/: this store was copied or moved from "
            f"{first / 'mlruns'} (experiment 'tiny' keeps its artifacts there, where new "
            "checkpoints and reports would go); run `cifarnet-exp relocate-store` in this "
            "folder first")
    assert db.read_bytes() == stamp  # nothing written
    r = CliRunner().invoke(main, ["relocate-store"])
    assert r.exit_code == 0, r.output
    _as_a_new_process()
    assert r.output == (f"relocated {first / 'mlruns'} -> {second / 'mlruns'} "
                               "(1 experiments, 3 runs, 0 logged_models)\n")
    assert CliRunner().invoke(main, ["relocate-store"]).output.startswith("nothing to relocate")
    assert _run(spec2).exit_code == 0
    assert CliRunner().invoke(main, ["report", "tiny"]).exit_code == 0
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    for run in client.search_runs([client.get_experiment_by_name("tiny").experiment_id]):
        assert run.info.artifact_uri.startswith((second / "mlruns").as_uri() + "/")
    after = _artifact_files(second)
    changed = {f for f, t in after.items() if before.get(f) != t}
    assert any("/artifacts/report/" in f for f in changed), sorted(changed)  # rewritten here
    assert any("/artifacts/checkpoint/" in f for f in set(after) - set(before)), changed
    if how == "copied":
        assert _artifact_files(first) == before  # the original is untouched


def test_relocate_store_where_there_is_none_creates_nothing(tmp_path, monkeypatch) -> None:
    """It said "nothing to relocate: the store's artifacts are already here" after creating
    an empty store (and MLflow's INFO lines) in a folder that had none."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = CliRunner().invoke(main, ["relocate-store"])
    assert r.exit_code == 2
    assert r.output == (f"error: mlruns/: no tracking store at sqlite:///"
                        f"{tmp_path / 'mlruns' / 'mlflow.db'}; run relocate-store in the folder "
                        "the store was copied or moved to (the one holding mlruns/)\n")
    assert list(tmp_path.iterdir()) == []
    # the variable is the key only where it chose the store (it was named when never set)
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    r = CliRunner().invoke(main, ["relocate-store"])
    assert r.exit_code == 2
    assert r.output.startswith(f"error: MLFLOW_TRACKING_URI: no tracking store at sqlite:///{other}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", ["mlruns is a file", "mlflow.db is a folder"])
@pytest.mark.parametrize("command", [["ui", "--port", "5997"], ["report", "tiny"]])
def test_a_store_of_the_wrong_shape_is_one_line(tmp_path, monkeypatch, shape, command) -> None:
    """`ui` printed a NotADirectoryError traceback for an mlruns file, and retried MLflow's
    engine for a minute on an mlflow.db folder; `run` blamed the start-up lock."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if shape == "mlruns is a file":
        (tmp_path / "mlruns").write_text("x")
        want = f"{tmp_path / 'mlruns'} is a file, not a folder"
    else:
        (tmp_path / "mlruns" / "mlflow.db").mkdir(parents=True)
        want = f"{tmp_path / 'mlruns' / 'mlflow.db'} is not a database file"
    r = CliRunner().invoke(main, command)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and want in r.output


@pytest.mark.parametrize("args", [["report", "tiny"], ["results"], ["search-report", "tiny"],
                                  ["relocate-store"]], ids=lambda a: a[0])
def test_read_only_commands_create_no_store_at_a_sqlite_uri(tmp_path, monkeypatch, args) -> None:
    """With MLFLOW_TRACKING_URI naming a SQLite file that does not exist, `report` created
    the file (and its lock) before it said the experiment was missing, and `results` then
    found a store there and wrote a page of "not run yet"."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "none.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_damaged_spec_artifact_is_one_line_naming_the_run(tiny_tree, tmp_path,
                                                            monkeypatch) -> None:
    """A parent's spec.yaml damaged in the store (`name: [unclosed`): `report` ended in a
    yaml.parser.ParserError traceback."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, seeds=[0])
    assert _run(spec).exit_code == 0
    df = runs_df(tmp_path)
    parent = df[df["tags.cifarnet.role"] == "parent"]["run_id"].item()
    artifact = next((tmp_path / "mlruns" / "artifacts").rglob(f"{parent}/artifacts/spec.yaml"))
    artifact.write_text("name: [unclosed\n")
    r = CliRunner().invoke(main, ["report", "tiny", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2, r.output
    assert r.output == (f"error: run {parent}: its artifact spec.yaml is not valid YAML (line "
                        "2, column 1: expected ',' or ']', but got '<stream end>'); the store "
                        "was damaged\n")
