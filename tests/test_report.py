"""Reports on a tiny real grid hold the numbers MLflow holds; adaptive seeds add runs."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import children, runs_df, search_spec, write, write_spec

from cifarnet.ablation.adaptive import next_jobs, run_until_decided
from cifarnet.spec.ablation import parse_spec
from cifarnet.analysis.verdicts import analyze
from cifarnet.analysis.stats import Outcome
from cifarnet.cli.main import main
from cifarnet.tracking.results import load_runs


@pytest.fixture(scope="module")
def ran_grid(tmp_path_factory, tiny_tree):
    folder = tmp_path_factory.mktemp("grid")
    spec = write_spec(folder, tiny_tree, epochs=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        r = CliRunner().invoke(main, ["run", str(spec)])
    assert r.exit_code == 0, r.output
    assert "hypotheses" in r.output and "H" in r.output  # the verdict table is printed
    return folder


@pytest.mark.slow
def test_report_files_hold_mlflows_numbers(ran_grid, monkeypatch) -> None:
    monkeypatch.chdir(ran_grid)
    r = CliRunner().invoke(main, ["report", "tiny", "--out", "rep"])
    assert r.exit_code == 0, r.output
    out = ran_grid / "rep"
    for name in ("curves.png", "differences.png", "class_deltas.png", "report.html",
                 "report.md", "variants.csv", "hypotheses.csv", "runs.csv"):
        assert (out / name).stat().st_size > 0, name
    kids = children(runs_df(ran_grid))
    variants = pd.read_csv(out / "variants.csv").set_index("cell")
    for cell, group in kids.groupby("tags.cifarnet.cell"):
        assert variants.loc[cell, "final_acc_mean"] == pytest.approx(
            group["metrics.test_acc"].mean())
        assert variants.loc[cell, "finished"] == len(group)
    hyp = pd.read_csv(out / "hypotheses.csv").iloc[0]
    a = kids[kids["tags.cifarnet.cell"] == "residual_add=true"].set_index("tags.cifarnet.seed")
    b = kids[kids["tags.cifarnet.cell"] == "residual_add=false"].set_index("tags.cifarnet.seed")
    diff = (a["metrics.test_acc"] - b["metrics.test_acc"]).mean() * 100
    assert hyp["n"] == 2 and hyp["mean_diff"] == pytest.approx(diff)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "residual_add=true" in html
    parent = runs_df(ran_grid).query("`tags.cifarnet.role` == 'parent'")["run_id"].item()
    md = (out / "report.md").read_text()
    assert "**reduced budget: 2 epochs," in md.splitlines()[2]  # what it reports, at the top
    assert f"- parent run: {parent}" in md and "(grid id " in md and "grid id ?" not in md
    assert "- seeds: 2 (0, 1)" in md
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "report")}
    assert "report/report.html" in logged and "report/curves.png" in logged


def test_load_runs_is_a_public_dataframe(ran_grid, monkeypatch) -> None:
    monkeypatch.chdir(ran_grid)
    df = load_runs("tiny", with_history=True)
    assert len(df) == 4 and {"cell", "seed", "status", "history"} <= set(df.columns)
    assert all(len(h["test_acc"]) == 2 for h in df["history"])


def test_report_of_unknown_experiment_exits_2(ran_grid, monkeypatch) -> None:
    monkeypatch.chdir(ran_grid)
    r = CliRunner().invoke(main, ["report", "no_such_experiment"])
    assert r.exit_code == 2 and "no_such_experiment" in r.stderr
    # an empty --grid is the prefix of every id: it reported the newest grid as if chosen
    r = CliRunner().invoke(main, ["report", "tiny", "--grid", ""])
    assert r.exit_code == 2 and r.stderr.startswith("error: --grid: empty;"), r.output


GB = Outcome.GREATER_BEYOND_ROPE
SPEC = parse_spec({
    "name": "adaptive", "factors": {"model.residual_add": [True, False],
                                    "model.dilation": [2, 1]},
    "seeds": [0, 1],
    "hypotheses": [{"id": "H", "a": {"model.residual_add": True, "model.dilation": 2},
                    "b": {"model.residual_add": False, "model.dilation": 2},
                    "expect": "a > b", "rope": 0.002}]})


def fake_runs(values: dict[str, dict[int, float]]) -> pd.DataFrame:
    rows = [{"cell": c, "seed": s, "status": "FINISHED", "metrics.test_acc": v}
            for c, by_seed in values.items() for s, v in by_seed.items()]
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_next_jobs_adds_one_seed_to_undecided_cells_only() -> None:
    a, b = "dilation=2,residual_add=true", "dilation=2,residual_add=false"
    noisy = {a: {0: 0.81, 1: 0.80}, b: {0: 0.80, 1: 0.805}}
    jobs = next_jobs(SPEC, analyze(SPEC, fake_runs(noisy)), max_seeds=5)
    assert {j.cell.label for j in jobs} == {a, b} and {j.seed for j in jobs} == {2}
    assert next_jobs(SPEC, analyze(SPEC, fake_runs(noisy)), max_seeds=2) == []
    # two seeds decide the fixed-n verdict but not the anytime-valid one that adaptive seeds
    # stop on (Lai's sequence excludes nothing before 4 seeds): one more seed
    clear = {a: {0: 0.85, 1: 0.851}, b: {0: 0.80, 1: 0.8005}}
    v = analyze(SPEC, fake_runs(clear)).verdicts[0]
    assert v.comparison.verdict == GB and v.verdict_anytime == "inconclusive"
    assert {j.seed for j in next_jobs(SPEC, analyze(SPEC, fake_runs(clear)), max_seeds=5)} == {2}
    clear = {a: {0: 0.85, 1: 0.851, 2: 0.849, 3: 0.8502}, b: {0: 0.80, 1: 0.8005, 2: 0.8, 3: 0.8}}
    assert analyze(SPEC, fake_runs(clear)).verdicts[0].verdict_anytime == GB
    assert next_jobs(SPEC, analyze(SPEC, fake_runs(clear)), max_seeds=5) == []


@pytest.mark.slow
def test_run_until_decided_keeps_adding_seeds() -> None:
    """A constructed inconclusive case: noisy at first, a steady gap on the added seeds."""
    a, b = "dilation=2,residual_add=true", "dilation=2,residual_add=false"
    values = {a: {0: 0.81, 1: 0.80}, b: {0: 0.80, 1: 0.805}}
    batches: list[list] = []

    def run(jobs) -> None:
        batches.append(jobs)
        for j in jobs:
            if j.seed >= 2:
                values[j.cell.label][j.seed] = 0.83 if j.cell.label == a else 0.80

    final = run_until_decided(SPEC, 12, run, lambda: analyze(SPEC, fake_runs(values)))
    assert len(batches[0]) == 8  # the whole grid at the listed seeds first
    assert all({j.cell.label for j in batch} == {a, b} for batch in batches[1:])
    assert [batch[0].seed for batch in batches[1:]] == list(range(2, 2 + len(batches) - 1))
    assert final.verdicts[0].comparison.verdict == GB
    assert final.verdicts[0].verdict_anytime == GB
    assert not math.isnan(final.verdicts[0].comparison.mean)


def test_an_output_folder_that_cannot_be_made_is_one_line(ran_grid, tiny_tree, tmp_path,
                                                          monkeypatch) -> None:
    """A file where an output folder goes: `report --out`, `train --run-dir`, and
    `train.out_dir` of `train`, `run` and `search` gave a traceback and exit 1 (`run` after
    opening the stores). One line naming the key, exit 2, no store made."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    data = ["--data", str(tiny_tree), "--set", "train.epochs=1"]
    spec = write_spec(tmp_path, tiny_tree, store=False)
    search = write(tmp_path, search_spec(tiny_tree, tmp_path))
    cases = [(["train", *data, "--run-dir", "afile/run"], "--run-dir", "afile/run"),
             (["train", *data, "--set", "train.out_dir=afile/runs"], "train.out_dir",
              "afile/runs/"),
             (["run", str(spec), "--set", "train.out_dir=afile/runs"], "train.out_dir",
              "afile/runs"),
             (["search", str(search), "--set", "train.out_dir=afile/runs"], "train.out_dir",
              "afile/runs")]
    for args, key, path in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith(f"error: {key}: cannot create the folder {path}"), r.output
        assert r.output.strip().endswith("Not a directory") and r.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "search.yaml", "tiny.yaml"]
    monkeypatch.chdir(ran_grid)
    r = CliRunner().invoke(main, ["report", "tiny", "--out", str(tmp_path / "afile" / "rep")])
    assert r.exit_code == 2 and r.stderr.startswith("error: --out: cannot create the folder")
    assert r.stderr.count("\n") == 1
