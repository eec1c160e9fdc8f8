"""What a command joins or reports is what its spec describes, and it says which: edited
hypotheses are answered as they now read, a report names its grid (and offers the others),
a search report refuses an edited spec, an ablation and a search never share an experiment."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from helpers import runs_df, search_spec, write, write_spec

from cifarnet.cli.main import main


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.slow
def test_edited_hypotheses_are_answered_and_reports_name_their_grid(tiny_tree, tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, tiny_tree, seeds=[0, 1])
    assert _invoke("run", str(spec)).exit_code == 0
    raw = yaml.safe_load(spec.read_text())
    raw["hypotheses"][0].update(claim="the add changes nothing", expect="a == b", rope=0.5)
    spec.write_text(yaml.safe_dump(raw))
    r = _invoke("run", str(spec))  # every job done: nothing trains, the verdicts are new
    assert r.exit_code == 0, r.output
    assert "the add changes nothing" in r.output and "add helps" not in r.output
    rep = _invoke("report", "tiny", "--format", "csv")
    assert rep.exit_code == 0, rep.output
    parent = runs_df(tmp_path).query("`tags.cifarnet.role` == 'parent'")
    assert len(parent) == 1
    grid = parent["tags.cifarnet.grid"].item()
    assert rep.output.splitlines()[0].startswith(
        f"tiny: grid {grid[:12]}, parent run {parent['run_id'].item()}, started ")
    assert "the add changes nothing" in rep.output

    other = write_spec(tmp_path, tiny_tree, seeds=[0], factors={"model.residual_add": [True]})
    assert _invoke("run", str(other)).exit_code == 0  # a second grid in the experiment
    rep = _invoke("report", "tiny", "--format", "csv")
    assert "the experiment holds 2 grids" in rep.output.splitlines()[0]
    assert grid[:12] not in rep.output.splitlines()[0]  # the newest grid
    rep = _invoke("report", "tiny", "--grid", grid[:6], "--format", "csv")
    assert rep.exit_code == 0 and f"grid {grid[:12]}" in rep.output.splitlines()[0]
    bad = _invoke("report", "tiny", "--grid", "zzzz")
    assert bad.exit_code == 2
    assert bad.output.startswith("error: --grid: no grid of experiment tiny has an id starting "
                                 "with 'zzzz' (its grids: ")


def test_an_ablation_and_a_search_never_share_an_experiment(tiny_tree, tmp_path,
                                                            monkeypatch) -> None:
    import optuna

    monkeypatch.chdir(tmp_path)
    search = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=1, name="tiny"))
    assert _invoke("search", str(search), "--no-final").exit_code == 0
    before = len(runs_df(tmp_path))
    r = _invoke("run", str(write_spec(tmp_path, tiny_tree, seeds=[0])))
    assert r.exit_code == 2
    assert r.output == ("error: name: the MLflow experiment 'tiny' already holds an Optuna "
                        "search of the same name; give this spec another name\n")
    assert len(runs_df(tmp_path)) == before  # nothing written
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["search.tiny"]

    monkeypatch.chdir(tmp_path / "runs")  # an ablation first, in a store of its own
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri exported the first
    assert _invoke("run", str(write_spec(tmp_path / "runs", tiny_tree, seeds=[0]))
                   ).exit_code == 0
    r = _invoke("search", str(search), "--no-final")
    assert r.exit_code == 2
    assert r.output == ("error: name: the MLflow experiment 'tiny' already holds an ablation "
                        "grid of the same name; give this spec another name\n")
    studies = optuna.get_all_study_summaries(
        f"sqlite:///{tmp_path / 'runs' / 'mlruns' / 'optuna.db'}")
    assert [s.study_name for s in studies if s.study_name.startswith("search.")] == []


def test_a_search_report_refuses_an_edited_spec(tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = search_spec(tiny_tree, tmp_path, n_trials=1)
    path = write(tmp_path, raw)
    assert _invoke("search", str(path), "--no-final").exit_code == 0
    rep = _invoke("search-report", str(path))
    assert rep.exit_code == 0 and rep.output.startswith(
        "search.tiny_search: spec identity ")
    raw["space"]["train.lr"]["high"] = 0.5
    write(tmp_path, raw)
    rep = _invoke("search-report", str(path))
    assert rep.exit_code == 2
    assert rep.output.startswith("error: name: study search.tiny_search was started from a "
                                 "different spec (identity ")


def test_a_search_report_by_name_reports_a_study_run_with_overrides(tiny_tree, tmp_path,
                                                                   monkeypatch) -> None:
    """`search lr_aug --set ...` then `search-report lr_aug` was refused ("started from a
    different spec"): the overrides change the identity, and a bare name only names the
    study. A spec file that differs is still refused (above)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "searches").mkdir(parents=True)
    raw = search_spec(tiny_tree, tmp_path, n_trials=1)
    write(tmp_path / "experiments" / "searches", raw)
    (tmp_path / "experiments" / "searches" / "search.yaml").rename(
        tmp_path / "experiments" / "searches" / "tiny_search.yaml")
    assert _invoke("search", "tiny_search", "--no-final", "--set",
                   "train.label_smoothing=0.05").exit_code == 0
    rep = _invoke("search-report", "tiny_search")
    assert rep.exit_code == 0, rep.output
    assert rep.output.startswith("search.tiny_search: spec identity ")
