"""Ablation specs: each validation error names its key, exits 2 and writes nothing."""

import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from cifarnet.spec.ablation import load_spec, parse_spec
from cifarnet.spec.common import SpecError
from cifarnet.cli.main import main
from cifarnet.config.schema import config_keys, is_result_key
from cifarnet.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "experiments" / "ablations").glob("*.yaml"))

GOOD = {
    "name": "t",
    "base": {"train": {"epochs": 1}},
    "factors": {"model.dilation": [2, 1], "model.residual_add": [True, False]},
    "seeds": [0, 1, 2],
    "hypotheses": [{"id": "H", "claim": "c", "metric": "test_acc",
                    "a": {"model.residual_add": True, "model.dilation": 2},
                    "b": {"model.residual_add": False, "model.dilation": 2},
                    "expect": "a > b", "rope": 0.002}],
}


def with_change(path: str, value) -> dict:
    import copy

    spec = copy.deepcopy(GOOD)
    node, keys = spec, path.split("/")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return spec


DELETE = object()


def test_expansion_counts() -> None:
    spec = parse_spec(GOOD)
    assert len(spec.cells()) == 4 and len(spec.jobs()) == 12
    labels = [c.label for c in spec.cells()]
    assert labels[0] == "dilation=2,residual_add=true"
    assert len({j.config_hash for j in spec.jobs()}) == 12
    assert {j.config.train.epochs for j in spec.jobs()} == {1}


@pytest.mark.parametrize(("path", "value", "key"), [
    ("colour", "red", "colour"),
    ("name", "bad name!", "name"),
    ("base/train", {"epoch": 3}, "base.train.epoch"),
    ("base/train", {"epochs": "3"}, "base.train.epochs"),
    ("factors/model.dilatation", [1, 2], "factors.model.dilatation"),
    ("factors/model.dilation", [], "factors.model.dilation"),
    ("factors/model.dilation", [2, 2], "factors.model.dilation"),
    ("factors/model.dilation", [2, 0], "factors.model.dilation"),
    ("factors/model.residual_add", ["yes", "no"], "factors.model.residual_add"),
    ("seeds", [0, 0], "seeds"),
    ("seeds", [], "seeds"),
    ("seeds", [0, "one"], "seeds[1]"),
    ("hypotheses/0/expect", "a >> b", "hypotheses[0].expect"),
    ("hypotheses/0/a", {"model.dilation": 3, "model.residual_add": True}, "hypotheses[0].a"),
    ("hypotheses/0/a", {"model.dilation": 2}, "hypotheses[0].a"),
    ("hypotheses/0/a", {"model.dilation": 2, "model.residual_add": True, "model.depthwise": True},
     "hypotheses[0].a"),
    ("hypotheses/0/b", {"model.dilatation": 2}, "hypotheses[0].b.model.dilatation"),
    ("hypotheses/0/rope", -1, "hypotheses[0].rope"),
    ("hypotheses/0/metric", "accuracy", "hypotheses[0].metric"),
    ("hypotheses/0/extra", 1, "hypotheses[0].extra"),
])
def test_each_error_names_its_key(path: str, value, key: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change(path, value))
    assert str(err.value).startswith(key), str(err.value)


def test_missing_factors_and_bad_top_level() -> None:
    with pytest.raises(SpecError, match="^factors"):
        parse_spec(with_change("factors", DELETE))
    with pytest.raises(SpecError, match="^factors.train.seed"):
        parse_spec(with_change("factors/train.seed", [0, 1]))


def _write(tmp_path: Path, spec: dict) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.parametrize(("path", "value", "key"), [
    ("factors/model.dilatation", [1, 2], "factors.model.dilatation"),
    ("hypotheses/0/a", {"model.dilation": 2}, "hypotheses[0].a"),
    ("seeds", [1, 1], "seeds"),
])
def test_cli_exits_2_and_writes_nothing(tmp_path, monkeypatch, path, value, key) -> None:
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, with_change(path, value))
    r = CliRunner().invoke(main, ["run", str(spec)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {key}")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()


def test_cli_bad_set_and_missing_data_write_nothing(tiny_tree, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, GOOD)
    r = CliRunner().invoke(main, ["run", str(spec), "--set", "train.epochz=1"])
    assert r.exit_code == 2 and "train.epochz" in r.stderr
    r = CliRunner().invoke(main, ["run", str(spec), "--set", "model.dilation=1"])
    assert r.exit_code == 2 and "model.dilation" in r.stderr
    r = CliRunner().invoke(main, ["run", str(spec), "--set", f"data.path={tmp_path / 'none'}"])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = CliRunner().invoke(main, ["run", "nope.yaml"])
    assert r.exit_code == 2 and "nope.yaml" in r.stderr
    r = CliRunner().invoke(main, ["run", str(spec), "--set", f"data.path={tiny_tree}",
                                  "--storage", f"sqlite:///{tmp_path}/nope/o.db"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --storage")
    assert not (tmp_path / "mlruns").exists()


def test_dry_run_prints_cells_and_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["run", str(_write(tmp_path, GOOD)), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dilation=1,residual_add=false" in r.output and "153,104" in r.output
    assert " 75" in r.output and " 83" in r.output
    assert "4 cell(s) x 3 seed(s) = 12 run(s), 12 epoch(s)" in r.output
    assert not (tmp_path / "mlruns").exists()


def test_spec_path_is_looked_up_under_experiments(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    assert load_spec("ablations/dilation_add.yaml").name == "dilation_add"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_are_valid(path: Path) -> None:
    spec = load_spec(path)
    assert len(spec.seeds) >= 3 and spec.hypotheses
    assert spec.base_config().train.epochs == 30


def test_every_point_of_the_seed_analysis_has_a_spec() -> None:
    assert {p.stem for p in SHIPPED} >= {"dilation_add", "pointwise_after_stride",
                                         "regular_after_depthwise", "extra_adds"}


# --- the spec means what it says; bad input refused at parse (issue 17, sections 2-3) ------

def test_duplicate_factors_key_in_a_spec_file_is_an_error(tmp_path) -> None:
    """Written twice, PyYAML keeps the last `factors:`: 6 runs instead of 12, silently."""
    p = tmp_path / "dup.yaml"
    p.write_text("name: t\nfactors:\n  model.dilation: [2, 1]\nseeds: [0, 1, 2]\n"
                 "factors:\n  model.residual_add: [true, false]\n")
    with pytest.raises(UserError, match=r"^factors: key written twice \(lines 2 and 5\)"):
        load_spec(p)
    p.write_text("name: t\nbase:\n  train:\n    epochs: 1\n    epochs: 2\n"
                 "factors: {model.dilation: [2, 1]}\nseeds: [0]\n")
    with pytest.raises(UserError, match=r"^base\.train\.epochs: key written twice"):
        load_spec(p)


@pytest.mark.parametrize("name", ["..", ".", "x\n", "x\r", "-x", ".hidden", "a/b", "x" * 65,
                                  "x" * 300, "", "a b", "ü"])
def test_names_that_the_store_or_a_folder_would_misread_are_refused(name) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change("name", name))
    assert str(err.value).startswith("name: expected 1 to 64"), str(err.value)
    assert len(str(err.value)) < 200


def test_longest_name_is_accepted() -> None:
    assert parse_spec(with_change("name", "a" * 64)).name == "a" * 64
    assert parse_spec(with_change("name", "v1.2_x-y")).name == "v1.2_x-y"


@pytest.mark.parametrize("key", sorted(k for k in config_keys() if not is_result_key(k)))
def test_factor_over_a_key_that_cannot_change_a_result_is_refused(key) -> None:
    values = {"train.out_dir": ["a", "b"], "data.num_workers": [0, 2],
              "train.device": ["cpu", "auto"], "train.compile": [True, False],
              "train.channels_last": [True, False], "data.cache_dir": ["/a", "/b"],
              "data.path": ["/a", "/b"]}[key]
    spec = with_change(f"factors/{key}", values)
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert str(err.value).startswith(f"factors.{key}: cannot change a result"), str(err.value)


def test_factor_over_out_dir_in_particular() -> None:
    """The issue's example: `train.out_dir: [a, b]` promised 2 runs per cell and ran 1."""
    with pytest.raises(SpecError, match="^factors.train.out_dir: cannot change a result"):
        parse_spec(with_change("factors/train.out_dir", ["a", "b"]))


@pytest.mark.slow
def test_grid_size_is_counted_before_anything_is_built() -> None:
    spec = with_change("factors", {"train.lr": [0.001 * (i + 1) for i in range(100)],
                                   "train.batch_size": list(range(1, 101)),
                                   "model.width": [0.05 * (i + 1) for i in range(100)]})
    spec["hypotheses"] = []
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert time.perf_counter() - start < 2.0
    assert str(err.value) == ("factors: 1,000,000 cell(s) x 3 seed(s) = 3,000,000 runs, more "
                              "than the limit of 10,000 runs per grid; split the grid into "
                              "several specs")
    spec["factors"] = {"train.batch_size": list(range(1, 101))}
    spec["seeds"] = list(range(100))
    assert len(parse_spec(spec).jobs()) == 10_000  # the limit itself is allowed
    spec["seeds"] = list(range(101))
    with pytest.raises(SpecError, match="^factors: 100 cell"):
        parse_spec(spec)


@pytest.mark.parametrize(("seeds", "key"), [([0, 2**63], "seeds[1]"), ([-1], "seeds[0]"),
                                            ([10**30], "seeds[0]"), ([1.5], "seeds[0]"),
                                            ([True], "seeds[0]")])
def test_seeds_beyond_int64_are_refused(seeds, key) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change("seeds", seeds))
    assert str(err.value).startswith(f"{key}: expected an integer from 0 to 2**63 - 1")


def test_largest_seed_is_accepted() -> None:
    spec = parse_spec(with_change("seeds", [0, 2**63 - 1]))
    assert {j.config.train.seed for j in spec.jobs()} == {0, 2**63 - 1}


def test_val_metric_needs_a_validation_split() -> None:
    spec = with_change("hypotheses/0/metric", "val_acc")
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert str(err.value).startswith("hypotheses[0].metric: val_acc needs a validation split")
    spec["base"]["data"] = {"val_size": 40}
    ok = parse_spec(spec)
    assert ok.hypotheses[0].metric == "val_acc"
    with pytest.raises(SpecError, match=r"^--set \(hypotheses\[0\]\.metric\): val_acc needs"):
        ok.with_base({"data.val_size": 0})
    # a factor over val_size: the arm at 0 has no validation metric
    spec = with_change("hypotheses/0/metric", "val_loss")
    spec["factors"] = {"data.val_size": [0, 40], "model.dilation": [2, 1]}
    spec["hypotheses"][0]["a"] = {"data.val_size": 40, "model.dilation": 2}
    spec["hypotheses"][0]["b"] = {"data.val_size": 0, "model.dilation": 2}
    with pytest.raises(SpecError, match=r"^hypotheses\[0\]\.metric: val_loss needs .* "
                                        r"cell val_size=0,dilation=2"):
        parse_spec(spec)


@pytest.mark.parametrize(("path", "value", "key"), [
    ("hypotheses/0/claim", "two\nlines", "hypotheses[0].claim"),
    ("hypotheses/0/claim", "x" * 501, "hypotheses[0].claim"),
    ("hypotheses/0/id", "H 1", "hypotheses[0].id"),
    ("hypotheses/0/id", "[/]", "hypotheses[0].id"),
    ("hypotheses/0/id", "x" * 65, "hypotheses[0].id"),
    ("hypotheses/0/metric", ["test_acc"], "hypotheses[0].metric"),
    ("description", "d" * 5001, "description"),
    ("description", 3, "description"),
])
def test_user_text_fields_are_bounded(path, value, key) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change(path, value))
    assert str(err.value).startswith(key) and len(str(err.value)) < 300, str(err.value)


def test_folded_claim_and_markup_in_a_claim_are_kept() -> None:
    spec = parse_spec(with_change("hypotheses/0/claim", "a [/] b [red]c\n"))
    assert spec.hypotheses[0].claim == "a [/] b [red]c"


def test_messages_quote_bounded_values() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change("seeds", [0, 0] + list(range(1, 5000))))
    assert len(str(err.value)) < 200
    with pytest.raises(SpecError) as err:
        parse_spec(with_change("factors/model.width", [1.0] * 5000))
    assert len(str(err.value)) < 200


def test_verdict_table_renders_markup_in_user_text_as_written() -> None:
    """A claim with `[/]` crashed the terminal table at the end of a grid."""
    from rich.console import Console

    from cifarnet.analysis.report import verdict_table
    from cifarnet.analysis.verdicts import analyze

    raw = with_change("hypotheses/0/claim", "add [/] helps [bold]a lot")
    spec = parse_spec(raw)
    a, b = "dilation=2,residual_add=true", "dilation=2,residual_add=false"
    runs = pd.DataFrame([{"cell": c, "seed": s, "status": "FINISHED", "metrics.test_acc": v}
                         for c, vs in ((a, (0.85, 0.86, 0.851)), (b, (0.80, 0.805, 0.80)))
                         for s, v in enumerate(vs)])
    console = Console(record=True, width=200)
    console.print(verdict_table(analyze(spec, runs)))
    text = console.export_text()
    assert "add [/] helps [bold]a lot" in text and "a > b by more than the rope" in text


def test_progress_lines_with_markup_do_not_crash() -> None:
    from rich.console import Console

    from cifarnet.cli.progress import GridProgress

    console = Console(record=True, width=200)
    display = GridProgress(console)
    display.message("[red]x crashed[/]: OSError: data [/] gone")
    display.close()
    assert "data [/] gone" in console.export_text()


def test_bare_names_find_the_shipped_specs(monkeypatch) -> None:
    """`run dilation_add` works like `report dilation_add` (issue 13)."""
    from cifarnet.spec.search import load_search_spec

    monkeypatch.chdir(REPO)
    assert load_spec("dilation_add").name == "dilation_add"
    assert load_spec("dilation_add.yaml").name == "dilation_add"
    assert load_spec("experiments/ablations/extra_adds.yaml").name == "extra_adds"
    assert load_search_spec("lr_aug").name == "lr_aug"
    assert load_search_spec("searches/lr_aug.yaml").name == "lr_aug"
    with pytest.raises(SpecError) as err:
        load_spec("dilation_ad")
    msg = str(err.value)
    assert msg.startswith("dilation_ad: no such spec file") and "dilation_add" in msg
    with pytest.raises(SpecError, match="^lr_aug: no such spec file"):
        load_spec("lr_aug")  # a search is not an ablation


def test_storage_is_accepted_by_run_with_a_note_where_it_has_no_effect(tiny_tree, tmp_path,
                                                                      monkeypatch) -> None:
    """A grid without a `tune:` block opens no Optuna storage: `--storage` is still accepted
    (scripts pass it) and said to have no effect, in one line; nothing is made there."""
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, GOOD)
    r = CliRunner().invoke(main, ["run", str(spec), "--dry-run", "--set",
                                  f"data.path={tiny_tree}", "--storage",
                                  f"sqlite:///{tmp_path}/o.db"])
    assert r.exit_code == 0, r.output
    assert r.stderr == "note: --storage has no effect on a grid without a tune: block\n"
    assert not (tmp_path / "o.db").exists()


def test_a_tab_indented_spec_names_its_line_column_and_cause(tmp_path, monkeypatch) -> None:
    """A tab-indented spec said `not valid YAML (while scanning for the next token)`, with
    neither its place nor its cause."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tab.yaml").write_text("name: x\nfactors:\n\tmodel.dilation: [1, 2]\n")
    r = CliRunner().invoke(main, ["run", "tab.yaml"])
    assert r.exit_code == 2
    assert r.stderr == ("error: tab.yaml: not valid YAML (line 3, column 1: found character "
                        "'\\t' that cannot start any token; indent with spaces, not tabs)\n")
