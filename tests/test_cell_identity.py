"""One cell, one identity: however a spec spells a cell (factor order, side order, nested or
dotted keys, `1` or `1.0`), its runs are tagged, read back from MLflow and judged as one.

The grids here train nothing: `train` is replaced by one that logs a test accuracy fixed by
the run's config (so by its cell and seed, never by how the spec spells them), through the
real runner, queue, MLflow store and the readers `report` and `results` use."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cifarnet.spec.ablation import cell_label, parse_spec
from cifarnet.spec.common import SHIPPED_ROOT
from cifarnet.analysis.report import analyze_grid
from cifarnet.analysis.results import spec_changes
from cifarnet.cli.main import main
from cifarnet.config.schema import ConfigError, flatten_mapping
from cifarnet.errors import UserError
from cifarnet.tracking.client import mlflow_client
from cifarnet.tracking.results import find_parent_run
from cifarnet.tracking.store import MlflowRunCallback
from cifarnet.tracking.tags import TAG_CELL
from cifarnet.training.callbacks import RunResult
from cifarnet.training.status import RunStatus

SHIPPED = sorted((SHIPPED_ROOT / "ablations").glob("*.yaml"))


def fake_train(cfg, callbacks, **kw):
    """No training: a test (and validation) accuracy fixed by the config, logged on the run
    as the real callback logs it. The cell's part is the same on every seed, so verdicts
    are decisive and any mismatch of runs to cells shows."""
    cell = int(cfg.replace({"train.seed": 0}).hash()[:8], 16) % 100 / 1000
    acc = 0.5 + cell + int(cfg.hash()[8:16], 16) % 10 / 10_000
    for c in callbacks:
        if isinstance(c, MlflowRunCallback):
            mlflow_client().log_metric(c.run_id, "test_acc", acc, step=1)
    return RunResult(RunStatus.FINISHED, cfg.hash(), kw["run_dir"], 1,
                     [{"test_acc": acc, "val_acc": acc}])


@pytest.fixture()
def no_training(monkeypatch, tmp_path):
    monkeypatch.setattr("cifarnet.ablation.jobs.train", fake_train)
    monkeypatch.setattr("cifarnet.search.study.train", fake_train)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_sets(tree: Path, folder: Path, raw: dict) -> list[str]:
    sets = [f"data.path={tree}", "data.num_workers=0", "train.epochs=1",
            "train.batch_size=32", "train.device=cpu", f"train.out_dir={folder / 'runs'}"]
    if raw.get("tune"):
        sets += ["tune.n_trials=2", "tune.epochs=1", "tune.val_size=40"]
    return sets


def run_grid(folder: Path, tree: Path, raw: dict, *extra: str):
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    args = ["run", str(path), "--no-reuse", *extra]
    return CliRunner().invoke(main, [*args, *(f"--set={s}" for s in tiny_sets(tree, folder,
                                                                               raw))])


def verdicts(name: str) -> tuple:
    """What `report` and `results` read: the grid's newest parent run, its spec.yaml, its
    runs, the verdicts, and the variants table."""
    a = analyze_grid(find_parent_run(name), with_history=False)
    table = sorted((r["cell"], r["finished"], round(r["final_acc_mean"], 9))
                   for r in a.variants.to_dict("records"))
    return table, [(v.hypothesis.id, v.a_cell, v.b_cell, v.comparison.n,
                    round(v.comparison.mean, 9), str(v.outcome), str(v.verdict_holm))
                   for v in a.verdicts]


def nested(side: dict) -> dict:
    out: dict = {}
    for key, value in side.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def spellings(raw: dict) -> list[dict]:
    """The shipped spec as written, then with its factors in every order: each order once
    with its sides' keys reversed, then once written nested with every factor's levels
    reversed."""
    out = [raw]
    for flip, order in itertools.product((False, True),
                                         itertools.permutations(raw["factors"])):
        factors = {k: raw["factors"][k][::-1] if flip else raw["factors"][k] for k in order}
        hyps = [{**h, **{s: (nested(h[s]) if flip else dict(reversed(h[s].items())))
                         for s in ("a", "b")}} for h in raw["hypotheses"]]
        out.append({**raw, "factors": nested(factors) if flip else factors,
                    "hypotheses": hyps})
    return [{**r, "name": f"{raw['name']}_{i}"} for i, r in enumerate(out)]


@pytest.mark.slow
@pytest.mark.parametrize("shipped", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_spelling_of_a_shipped_spec_gives_the_same_verdicts(shipped, tiny_tree,
                                                                  no_training) -> None:
    raw = yaml.safe_load(shipped.read_text())
    first = None
    for variant in spellings(raw):
        r = run_grid(no_training, tiny_tree, variant)
        assert r.exit_code == 0, (variant, r.output)
        found = verdicts(variant["name"])
        if first is None:
            first = found
            assert all(v[3] == len(raw["seeds"]) for v in found[1])  # every seed paired
            assert all(finished == len(raw["seeds"]) for _, finished, _ in found[0])
        assert found == first, variant


USER_SPEC = {
    "name": "mine",
    "factors": {"model.pointwise_after_stride": [True, False], "model.extra_adds": [False, True]},
    "seeds": [0, 1],
    "hypotheses": [{"id": "P1", "claim": "the 1x1 after stride helps",
                    "a": {"model.pointwise_after_stride": True, "model.extra_adds": False},
                    "b": {"model.pointwise_after_stride": False, "model.extra_adds": False},
                    "expect": "a > b", "rope": 0.002}]}


@pytest.mark.slow
def test_a_spec_whose_factors_are_not_alphabetical_gets_its_verdict(tiny_tree,
                                                                    no_training) -> None:
    """Issue 26's case: `run` ended 0 with `P1 | 0 | ... | inconclusive` and `report` wrote
    every cell empty."""
    r = run_grid(no_training, tiny_tree, USER_SPEC)
    assert r.exit_code == 0, r.output
    table, [v] = verdicts("mine")
    assert v[3] == 2 and v[5] != "inconclusive", v
    assert [finished for _, finished, _ in table] == [2, 2, 2, 2]
    client = mlflow_client()
    exp = client.get_experiment_by_name("mine").experiment_id
    tags = {r.data.tags[TAG_CELL] for r in client.search_runs([exp], "tags.`cifarnet.role` = 'child'")}
    assert tags == {f"extra_adds={x},pointwise_after_stride={y}"  # the canonical label
                    for x in ("true", "false") for y in ("true", "false")}
    rep = CliRunner().invoke(main, ["report", "mine", "--out", "rep", "--format", "csv"])
    assert rep.exit_code == 0, rep.output
    variants = (no_training / "rep" / "variants.csv").read_text()
    assert variants.count(",2,0,") == 4, variants  # finished 2, failed 0 in every cell


@pytest.mark.slow
def test_a_store_with_spec_order_tags_reads_the_same(tiny_tree, no_training) -> None:
    """Runs tagged as the old runner tagged them (levels in the spec's factor order) are
    matched to their cells through the same canonical label."""
    assert run_grid(no_training, tiny_tree, USER_SPEC).exit_code == 0
    before = verdicts("mine")
    assert before[1][0][3] == 2  # P1 paired on both seeds
    client = mlflow_client()
    exp = client.get_experiment_by_name("mine").experiment_id
    for run in client.search_runs([exp], "tags.`cifarnet.role` = 'child'"):
        add, pw = sorted(run.data.tags[TAG_CELL].split(","))
        client.set_tag(run.info.run_id, TAG_CELL, f"{pw},{add}")  # spec order
    assert verdicts("mine") == before


@pytest.mark.slow
def test_runs_that_finished_but_match_no_cell_are_an_error(tiny_tree, no_training) -> None:
    """No pairs although the runs finished is the tool's fault: one line naming the
    hypothesis and the cell, non-zero exit from `report` and `run`; never inconclusive."""
    assert run_grid(no_training, tiny_tree, USER_SPEC).exit_code == 0
    client = mlflow_client()
    exp = client.get_experiment_by_name("mine").experiment_id
    b = "extra_adds=false,pointwise_after_stride=false"
    for run in client.search_runs([exp], f"tags.`{TAG_CELL}` = '{b}'"):
        client.set_tag(run.info.run_id, TAG_CELL, "pointwise=off")
    rep = CliRunner().invoke(main, ["report", "mine", "--out", "rep"])
    assert rep.exit_code == 2, rep.output
    line = rep.output.strip().splitlines()[-1]
    assert line.startswith("error: hypothesis P1: no seed has both sides"), line
    assert f"cell {b} matched no run, though 2 run(s) of its jobs finished" in line
    assert "pointwise=off" in line
    again = run_grid(no_training, tiny_tree, USER_SPEC)  # every job done: straight to verdicts
    assert again.exit_code == 2 and "hypothesis P1: no seed has both sides" in again.output


@pytest.mark.slow
def test_an_enum_level_is_read_back(tiny_tree, no_training) -> None:
    """`train.precision: [fp32, bf16]`: the parent's spec.yaml holds the levels' text (YAML
    wrote the enum as a Python object that reading the spec back refused)."""
    raw = {"name": "prec", "factors": {"train.precision": ["fp32", "bf16"]}, "seeds": [0, 1],
           "hypotheses": [{"id": "Q", "a": {"train.precision": "bf16"},
                           "b": {"train.precision": "fp32"}, "expect": "a == b",
                           "rope": 0.5}]}
    r = run_grid(no_training, tiny_tree, raw)
    assert r.exit_code == 0, r.output
    _, [v] = verdicts("prec")
    assert v[1:4] == ("precision=bf16", "precision=fp32", 2)


# --- the identity itself (no store) -----------------------------------------------------

def test_a_cell_has_one_label_however_it_is_spelled() -> None:
    one = cell_label({"model.residual_add": True, "model.dilation": 2})
    assert one == "dilation=2,residual_add=true"
    assert cell_label({"model.dilation": 2, "model.residual_add": True}) == one
    assert cell_label({"model": {"residual_add": True, "dilation": 2}}) == one
    assert cell_label({"data.augment_strength": 1}) == cell_label(
        {"data.augment_strength": 1.0}) == "augment_strength=1.0"


def test_nested_factors_and_sides_are_the_dotted_ones() -> None:
    dotted = {"name": "d", "factors": {"model.dilation": [2, 1], "data.augment_strength": [1, 0.5]},
              "seeds": [0], "hypotheses": [{"id": "H", "expect": "a > b", "rope": 0.01,
                                            "a": {"model.dilation": 2, "data.augment_strength": 1.0},
                                            "b": {"data.augment_strength": 1, "model.dilation": 1}}]}
    written = {**dotted, "factors": {"model": {"dilation": [2, 1]},
                                     "data": {"augment_strength": [1.0, 0.5]}},
               "hypotheses": [{**dotted["hypotheses"][0],
                               "a": {"data": {"augment_strength": 1}, "model": {"dilation": 2}},
                               "b": {"model": {"dilation": 1}, "data.augment_strength": 1.0}}]}
    a, b = parse_spec(dotted), parse_spec(written)
    assert [c.label for c in a.cells()] == [c.label for c in b.cells()]
    assert [c.label for c in a.arms()] == [c.label for c in b.arms()] == [
        "augment_strength=1.0,dilation=2", "augment_strength=1.0,dilation=1"]
    assert [j.config_hash for j in a.jobs()] == [j.config_hash for j in b.jobs()]


def test_a_key_given_dotted_and_nested_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.dilation: given twice"):
        flatten_mapping({"model.dilation": 1, "model": {"dilation": 2}})
    with pytest.raises(UserError, match="factors.model.dilation: given twice"):
        parse_spec({"name": "d", "factors": {"model.dilation": [1], "model": {"dilation": [2]}},
                    "seeds": [0]})


def test_a_default_written_out_is_no_change_of_the_spec() -> None:
    left_out = parse_spec({"name": "d", "factors": {"model.dilation": [2, 1]}, "seeds": [0]})
    written = parse_spec({"name": "d", "base": {"model": {"residual_add": True},
                                                "train.lr": 0.2},
                          "factors": {"model.dilation": [2, 1]}, "seeds": [0]})
    assert written.base_config() == left_out.base_config()
    assert spec_changes(written, left_out) == []
    changed = parse_spec({"name": "d", "base": {"train.epochs": 2},
                          "factors": {"model.dilation": [2, 1]}, "seeds": [0]})
    assert spec_changes(changed, left_out) == ["train.epochs=2 (the file: default)"]
