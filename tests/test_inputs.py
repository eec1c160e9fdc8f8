"""Every bad input is refused by the command line before anything is written (issue 17
sections 2-3, issue 11 item 10, issue 13): one line naming the key, exit code 2, and no
mlruns/ folder (no MLflow store, no Optuna study) in the working folder."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from helpers import make_tree, search_spec

from cifarnet.cli.main import main
from cifarnet.spec.search import parse_search_spec
from cifarnet.search.study import SPEC_ATTR

GRID = {
    "name": "t",
    "base": {"train": {"epochs": 1}},
    "factors": {"model.dilation": [2, 1], "model.residual_add": [True, False]},
    "seeds": [0, 1],
    "hypotheses": [{"id": "H", "claim": "c", "metric": "test_acc",
                    "a": {"model.residual_add": True, "model.dilation": 2},
                    "b": {"model.residual_add": False, "model.dilation": 2},
                    "expect": "a > b", "rope": 0.002}],
}


def refused(folder: Path, args: list[str], starts: str):
    """Run the CLI in `folder`; assert exit 2, one line starting `error: <starts>`, and
    nothing written."""
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.stderr.startswith(f"error: {starts}"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (folder / "mlruns").exists()
    assert not (folder / "reports").exists()
    assert not (folder / "runs").exists()  # the default train.out_dir: made by a first run
    return r


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    p = folder / name
    p.write_text(text)
    return p


def test_duplicate_factors_key_is_refused(here) -> None:
    spec = write(here, "name: t\nfactors:\n  model.dilation: [2, 1]\nseeds: [0, 1, 2]\n"
                       "factors:\n  model.residual_add: [true, false]\n")
    r = refused(here, ["run", str(spec)], "factors: key written twice (lines 2 and 5)")
    assert str(spec) in r.stderr
    refused(here, ["run", str(spec), "--dry-run"], "factors: key written twice")


def test_alias_bomb_is_refused_quickly_in_one_short_line(here) -> None:
    lines = ["name: t", "seeds: [0]", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["factors: {model.dilation: *a8}"]
    spec = write(here, "\n".join(lines) + "\n")
    start = time.perf_counter()
    r = refused(here, ["run", str(spec)], "a4: aliases expand this value to more than 100,000")
    assert time.perf_counter() - start < 5
    assert len(r.stderr) < 300


def test_a_million_run_grid_is_refused_before_building(here) -> None:
    spec = dict(GRID, hypotheses=[], factors={
        "train.lr": [0.001 * (i + 1) for i in range(100)],
        "train.batch_size": list(range(1, 101)),
        "model.width": [0.05 * (i + 1) for i in range(100)]})
    path = write(here, yaml.safe_dump(spec))
    start = time.perf_counter()
    refused(here, ["run", str(path), "--dry-run"], "factors: 1,000,000 cell(s) x 2 seed(s)")
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(("change", "starts"), [
    ({"name": ".."}, "name: expected 1 to 64"),
    ({"name": "t\n"}, "name: expected 1 to 64"),
    ({"name": "n" * 300}, "name: expected 1 to 64"),
    ({"seeds": [0, 2**64]}, "seeds[1]: expected an integer from 0 to 2**63 - 1"),
    ({"factors": {"train.out_dir": ["a", "b"]}}, "factors.train.out_dir: cannot change"),
    ({"factors": {"data.num_workers": [0, 2]}}, "factors.data.num_workers: cannot change"),
    ({"factors": {"train.device": ["cpu", "auto"]}}, "factors.train.device: cannot change"),
])
def test_spec_values_that_would_break_later_are_refused(here, change, starts) -> None:
    spec = {**GRID, **change}
    if "factors" in change:
        spec["hypotheses"] = []
    refused(here, ["run", str(write(here, yaml.safe_dump(spec)))], starts)


def test_val_acc_hypothesis_without_validation_split_is_refused(here) -> None:
    spec = dict(GRID)
    spec["hypotheses"] = [dict(GRID["hypotheses"][0], metric="val_acc")]
    path = write(here, yaml.safe_dump(spec))
    refused(here, ["run", str(path)], "hypotheses[0].metric: val_acc needs a validation split")
    spec["base"] = {"train": {"epochs": 1}, "data": {"val_size": 40}}
    path = write(here, yaml.safe_dump(spec))
    refused(here, ["run", str(path), "--set", "data.val_size=0"],
            "--set (hypotheses[0].metric): val_acc needs a validation split")


@pytest.mark.parametrize(("heartbeat", "grace", "ok"), [
    (10, 30, True), (10, 25, True), (10, 24, False), (10, 10, False), (10, 5, False),
    (1, 7, True), (1, 6, False), (60, 125, True), (60, 90, False)])
def test_grace_must_exceed_heartbeat_by_a_margin(here, heartbeat, grace, ok) -> None:
    spec = write(here, yaml.safe_dump(GRID))
    args = ["run", str(spec), "--dry-run", "--heartbeat", str(heartbeat), "--grace", str(grace)]
    if ok:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    else:
        refused(here, args, f"--grace: {grace} s is too short for --heartbeat {heartbeat} s; "
                            f"use at least 2 x heartbeat + 5 = {2 * heartbeat + 5} s")


def test_set_string_value_is_the_raw_text(here, tiny_tree) -> None:
    """`--set "data.path=exp #2"` trained on ./exp: the text after `=` was read as YAML."""
    spec = write(here, yaml.safe_dump(GRID))
    r = refused(here, ["run", str(spec), "--set", "data.path=exp #2"], "")
    assert "exp #2" in r.stderr and "does not exist" in r.stderr
    refused(here, ["run", str(spec), "--set", "train.lr=0.05 #x"], "--set train.lr: expected")
    refused(here, ["run", str(spec), "--set", "data.path= exp"], "data.path: leading or trailing spaces")


def test_max_seeds_and_n_trials_are_bounded(here) -> None:
    spec = write(here, yaml.safe_dump(GRID))
    refused(here, ["run", str(spec), "--until-decided", "--max-seeds", "2501"],
            "--max-seeds: 4 cell(s) x 2501 seeds is more than the limit of 10,000")


def test_an_option_that_would_be_ignored_is_refused(here, tiny_tree) -> None:
    """Options read only beside another (or with something to act on) were silently ignored:
    `--max-seeds` without `--until-decided` ran the spec's seeds; `--until-decided` on a spec
    with no hypotheses ran its seeds and stopped, and so did a `--max-seeds` no larger than
    the spec's seeds (its power line even planned fewer seeds than the grid runs); `train
    --data` beside `--set data.path=`, and `--run-dir` beside `--set train.out_dir=`, used one
    of the two without a word."""
    spec = write(here, yaml.safe_dump(GRID))
    refused(here, ["run", str(spec), "--max-seeds", "4"],
            "--max-seeds: read only with --until-decided")
    bare = write(here, yaml.safe_dump({k: v for k, v in GRID.items() if k != "hypotheses"}),
                 "bare.yaml")
    refused(here, ["run", str(bare), "--until-decided"],
            "--until-decided: spec t declares no hypotheses")
    refused(here, ["run", str(spec), "--until-decided", "--max-seeds", "2"],
            "--max-seeds: 2 is not more than the spec's 2 seeds, so --until-decided could "
            "add none; give at least 3")
    refused(here, ["train", "--data", str(tiny_tree), "--set", f"data.path={tiny_tree}"],
            "--data: data.path is also given by --set")
    refused(here, ["train", "--run-dir", str(here / "r"), "--set", f"data.path={tiny_tree}",
                   "--set", f"train.out_dir={here / 'o'}"],
            "--run-dir: the run folder is given, so --set train.out_dir")
    assert not (here / "r").exists() and not (here / "o").exists()
    refused(here, ["train", "--data", str(here / "missing"), "--run-dir", str(here / "r")], "")
    assert not (here / "r").exists()  # the run folder was made before the data was looked at
    # `summary` reads the model alone: `--set train.lr=1` printed the same table
    refused(here, ["summary", "--set", "train.lr=1"],
            "train.lr: summary describes the model only (model.* keys)")
    refused(here, ["summary", "--set", "trian.lr=1"], "trian.lr: unknown key")
    ok = CliRunner().invoke(main, ["summary", "--set", "model.dilation=1"])
    assert ok.exit_code == 0 and "75 px" in ok.output
    # the valid forms are not refused, and a spec without hypotheses says it gives no verdict
    r = CliRunner().invoke(main, ["run", str(spec), "--until-decided", "--max-seeds", "4",
                                  "--dry-run", "--set", f"data.path={tiny_tree}"])
    assert r.exit_code == 0 and "4 seeds detect" in r.output, r.output
    r = CliRunner().invoke(main, ["run", str(bare), "--dry-run", "--set",
                                  f"data.path={tiny_tree}"])
    assert r.exit_code == 0, r.output
    assert "note: spec t declares no hypotheses: its runs are tracked and reported, but no " \
           "verdict is given" in r.output


def test_error_lines_stay_one_line(here) -> None:
    refused(here, ["run", "no\nsuch.yaml"], "no\\nsuch.yaml: no such spec file")


def test_shipped_spec_names_work_for_run_and_search(here, tiny_tree) -> None:
    """`cifarnet-exp run dilation_add` was refused while `report dilation_add` worked."""
    (here / "experiments" / "ablations").mkdir(parents=True)
    (here / "experiments" / "searches").mkdir(parents=True)
    write(here / "experiments" / "ablations", yaml.safe_dump(dict(GRID, name="grid_x")),
          "grid_x.yaml")
    r = CliRunner().invoke(main, ["run", "grid_x", "--dry-run"])
    assert r.exit_code == 0 and "4 cell(s) x 2 seed(s) = 8 run(s)" in r.output, r.output
    refused(here, ["run", "grid_y"], "grid_y: no such spec file (also looked for "
                                     "experiments/ablations/grid_y.yaml); shipped "
                                     "ablations: dilation_add, dilation_add_tuned, extra_adds, "
                                     "grid_x, ")
    # the shipped names work from any folder, not only the checkout's
    r = CliRunner().invoke(main, ["run", "dilation_add", "--dry-run", "--set",
                                  f"data.path={tiny_tree}"])
    assert r.exit_code == 0 and "4 cell(s) x 3 seed(s) = 12 run(s)" in r.output, r.output
    assert not (here / "mlruns").exists()
    bad = search_spec(tiny_tree, here, name="search_x", n_trials=10_001)
    write(here / "experiments" / "searches", yaml.safe_dump(bad), "search_x.yaml")
    refused(here, ["search", "search_x"], "n_trials: expected an integer from 1 to 10,000")


@pytest.mark.parametrize(("change", "starts"), [
    ({"sampler": {"type": "tpe", "seed": 2**32}}, "sampler.seed: expected from 0 to"),
    ({"sampler": {"type": "random", "seed": -1}}, "sampler.seed: expected from 0 to"),
    ({"sampler": {"type": "tpe", "n_startup_trials": 2.5}}, "sampler.n_startup_trials: "),
    ({"pruner": {"type": "median", "n_warmup_steps": 1.5}}, "pruner.n_warmup_steps: "),
    ({"pruner": {"type": "percentile", "percentile": 150}}, "pruner.percentile: expected"),
    ({"pruner": {"type": "hyperband", "reduction_factor": 1}}, "pruner.reduction_factor"),
    ({"pruner": {"type": "threshold"}}, "pruner: a threshold pruner needs lower or upper"),
    ({"pruner": {"type": "threshold", "lower": 2, "upper": 1}}, "pruner.upper: must be"),
    ({"space": {"data.num_workers": {"type": "int", "low": 0, "high": 4}}},
     "space.data.num_workers: cannot change a result"),
    ({"name": "s" * 300}, "name: expected 1 to 64"),
    ({"space": {"train.epochs": {"type": "int", "low": 1, "high": 4, "step": 0.5}}},
     "space.train.epochs.step: expected a positive int"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2, "step": 0.5}}},
     "space.train.lr.step: expected a positive float no larger than high - low"),
])
def test_search_settings_are_refused_before_a_study_exists(here, tiny_tree, change,
                                                           starts) -> None:
    spec = write(here, yaml.safe_dump(search_spec(tiny_tree, here, **change)))
    refused(here, ["search", str(spec)], starts)


def test_search_n_trials_option_is_bounded(here, tiny_tree) -> None:
    spec = write(here, yaml.safe_dump(search_spec(tiny_tree, here)))
    refused(here, ["search", str(spec), "--n-trials", "10001"], "--n-trials: at most 10,000")


def test_search_rerun_with_a_different_spec_under_the_same_name_is_refused(here,
                                                                          tiny_tree) -> None:
    """A study is joined by its name; a changed spec would mix two searches in one study."""
    db = here / "queue" / "optuna.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    first = parse_search_spec(search_spec(tiny_tree, here))
    study = optuna.create_study(study_name="search.tiny_search", storage=url,
                                direction="maximize")
    study.set_user_attr(SPEC_ATTR, first.identity())
    changed = search_spec(tiny_tree, here)
    changed["space"]["train.lr"]["high"] = 0.5
    path = write(here, yaml.safe_dump(changed))
    r = refused(here, ["search", str(path), "--storage", url],
                "name: study search.tiny_search was started from a different spec")
    assert "give the spec a new name" in r.stderr
    assert len(optuna.load_study(study_name="search.tiny_search", storage=url).trials) == 0
    # --set changes the base config, so it changes the identity too
    same = write(here, yaml.safe_dump(search_spec(tiny_tree, here)), "same.yaml")
    refused(here, ["search", str(same), "--storage", url, "--set", "train.epochs=2"],
            "name: study search.tiny_search was started from a different spec")


def test_search_identity_ignores_only_name_description_and_n_trials(tiny_tree,
                                                                   tmp_path) -> None:
    a = parse_search_spec(search_spec(tiny_tree, tmp_path))
    same = [search_spec(tiny_tree, tmp_path, n_trials=50, description="other words"),
            search_spec(tiny_tree, tmp_path, name="other")]
    assert all(parse_search_spec(s).identity() == a.identity() for s in same)
    nested = search_spec(tiny_tree, tmp_path)
    nested["base"]["train"]["lr"] = 0.2  # the default, written out: the same config
    del nested["space"]["train.lr"]
    ref = search_spec(tiny_tree, tmp_path)
    del ref["space"]["train.lr"]
    assert parse_search_spec(nested).identity() == parse_search_spec(ref).identity()
    different = [search_spec(tiny_tree, tmp_path, sampler={"type": "random", "seed": 1}),
                 search_spec(tiny_tree, tmp_path, pruner={"type": "median"}),
                 search_spec(tiny_tree, tmp_path,
                             objective={"metric": "val_loss", "direction": "minimize"})]
    assert all(parse_search_spec(s).identity() != a.identity() for s in different)


@pytest.mark.parametrize(("args", "starts"), [
    (["run", "dilation_add", "--workers", "0"], "Invalid value for '--workers': 0 is not"),
    (["search", "lr_aug", "--workers", "-1"], "Invalid value for '--workers': -1 is not"),
    (["run", "dilation_add", "--heartbeat", "0"], "Invalid value for '--heartbeat'"),
    (["search", "lr_aug", "--n-trials", "0"], "Invalid value for '--n-trials'"),
    (["run", "dilation_add", "--bogus"], "No such option '--bogus'"),
    (["run"], "Missing argument 'SPEC'"),
    (["report", "x", "--format", "pdf"], "Invalid value for '--format'"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["search", "lr_aug", "--workers", "65"], "Invalid value for '--workers': 65 is not in the "
                                              "range 1<=x<=64"),
    (["report", "nosuch"], "nosuch: no experiment of that name (no store at "),
    (["run", "x" * 5000], "xxxxxxxx"),  # a name too long for a file: no traceback
    # an empty --storage ran on the default storage without a word
    (["run", "dilation_add", "--storage", ""], "Invalid value for --storage: an empty URL"),
    (["search-report", "lr_aug", "--storage", " "], "Invalid value for --storage: an empty "),
])
def test_a_command_line_error_is_one_line_naming_the_option(here, args, starts) -> None:
    """Click's usage errors are one line too (its own form is four: usage, hint, blank,
    error), exit 2, nothing written."""
    refused(here, args, starts)


@pytest.mark.parametrize(("url", "starts"), [
    ("bogus://x", "--storage bogus://x: cannot use (NoSuchModuleError"),
    ("notaurl", "--storage notaurl: cannot use (ArgumentError"),
    ("mysql://u:pw@h/db", "--storage mysql://u:***@h/db: cannot use (ModuleNotFoundError"),
])
def test_a_dry_run_checks_the_storage_it_will_not_open(here, url, starts) -> None:
    """`--dry-run` printed its plan for any `--storage`; the real run then failed on it."""
    spec = write(here, yaml.safe_dump(GRID))
    refused(here, ["run", str(spec), "--dry-run", "--storage", url], starts)


@pytest.mark.parametrize(("env", "args", "starts"), [
    ({"CIFARNET_STORAGE": "bogus://x"}, ["--dry-run"], "CIFARNET_STORAGE bogus://x: cannot use"),
    ({"CIFARNET_STORAGE": "sqlite:///{here}/nope/o.db"}, [],
     "CIFARNET_STORAGE sqlite:///{here}/nope/o.db: the folder {here}/nope does not exist"),
    ({}, ["--storage", "sqlite:///{here}/nope/o.db"],
     "--storage sqlite:///{here}/nope/o.db: the folder {here}/nope does not exist"),
    ({"MLFLOW_TRACKING_URI": "sqlite:///{here}/nope/m.db"}, [],
     "MLFLOW_TRACKING_URI sqlite:///{here}/nope/m.db: the folder {here}/nope does not exist"),
    # the read-only checks of both stores are made by --dry-run too
    ({"MLFLOW_TRACKING_URI": "sqlite:///{here}/nope/m.db"}, ["--dry-run"],
     "MLFLOW_TRACKING_URI sqlite:///{here}/nope/m.db: the folder {here}/nope does not exist"),
    ({}, ["--dry-run", "--storage", "sqlite:///{here}/nope/o.db"],
     "--storage sqlite:///{here}/nope/o.db: the folder {here}/nope does not exist"),
    # a URI MLflow 3 cannot open as a store gave a traceback, after mlruns/optuna.db was made
    ({"MLFLOW_TRACKING_URI": "foo://x"}, [], "MLFLOW_TRACKING_URI foo://x: not a tracking "
                                             "store MLflow opens"),
    ({"MLFLOW_TRACKING_URI": "{here}/store"}, [],
     "MLFLOW_TRACKING_URI {here}/store: MLflow's file store is not supported"),
    ({"MLFLOW_TRACKING_URI": "file://{here}/store"}, ["--dry-run"],
     "MLFLOW_TRACKING_URI file://{here}/store: MLflow's file store is not supported"),
    # in-memory SQLite: each worker got an empty queue of its own and ran every job again
    ({}, ["--workers", "2", "--storage", "sqlite://"],
     "--storage sqlite://: an in-memory SQLite store is private to one process"),
    ({"CIFARNET_STORAGE": "sqlite:///:memory:"}, ["--dry-run"],
     "CIFARNET_STORAGE sqlite:///:memory:: an in-memory SQLite store"),
    ({"MLFLOW_TRACKING_URI": "sqlite://"}, [],
     "MLFLOW_TRACKING_URI sqlite://: an in-memory SQLite store"),
])
def test_a_store_error_names_what_chose_the_store(here, monkeypatch, env, args,
                                                  starts) -> None:
    """Every storage error said `--storage`, also to a user who had only set
    CIFARNET_STORAGE; and the folder of a SQLite store the user named was created when it
    was missing, so a mistyped path ran on a new, empty store. The folder stays uncreated."""
    tree = make_tree(here / "data", per_class_train=2, per_class_test=1)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(here=here))
    spec = write(here, yaml.safe_dump({**GRID, "base": {**GRID["base"],
                                                        "data": {"path": str(tree)}}}))
    refused(here, ["run", str(spec), *(a.format(here=here) for a in args)],
            starts.format(here=here))
    assert not (here / "nope").exists()


def test_search_report_makes_no_storage(here) -> None:
    """`search-report NAME --storage sqlite:///dir/typo.db` created typo.db (and Optuna's
    tables in an empty PostgreSQL database), then said there was no study."""
    refused(here, ["search-report", "lr_aug", "--storage", f"sqlite:///{here}/typo.db"],
            f"--storage sqlite:///{here}/typo.db: no Optuna storage there, so no study lr_aug")
    refused(here, ["search-report", "lr_aug", "--storage", f"sqlite:///{here}/nope/o.db"],
            f"--storage sqlite:///{here}/nope/o.db: no Optuna storage there")
    refused(here, ["search-report", "lr_aug"], f"mlruns/ sqlite:///{here}/mlruns/optuna.db: "
                                              "no Optuna storage there")
    assert sorted(p.name for p in here.iterdir()) == []


@pytest.mark.parametrize("args", [[], ["--dry-run"]])
def test_one_database_for_both_stores_is_refused(here, monkeypatch, tiny_tree, args) -> None:
    """The queue and MLflow in one database: the second failed with "Can't locate revision"
    after both schemas were written into it."""
    url = f"sqlite:///{here}/both.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    spec = write(here, yaml.safe_dump({**GRID, "base": {**GRID["base"],
                                                        "data": {"path": str(tiny_tree)}}}))
    refused(here, ["run", str(spec), "--storage", url, *args],
            f"--storage {url}: the same database as MLflow's tracking store "
            "(MLFLOW_TRACKING_URI); Optuna's storage and MLflow need separate databases")
    assert not (here / "both.db").exists()


def test_ui_port_and_preset_are_checked(here) -> None:
    r = CliRunner().invoke(main, ["ui", "--port", "70000"])
    assert r.exit_code == 2 and "--port" in r.stderr
    assert not (here / "mlruns").exists()
    r = refused(here, ["summary", "--preset", "p" * 10_000], "preset 'ppp")
    assert len(r.stderr) < 300 and "choose from" in r.stderr


def test_no_command_prints_the_help(here) -> None:
    r = CliRunner().invoke(main, [])
    assert r.exit_code == 0 and r.output.startswith("Usage: ") and "run" in r.output
    assert not (here / "mlruns").exists()


@pytest.mark.parametrize("args", [["run", "dilation_add"], ["run", "dilation_add", "--dry-run"],
                                  ["train"]])
def test_a_device_this_machine_lacks_is_refused_when_parsed(here, args) -> None:
    """`--set train.device=cuda` on a machine without a GPU: a traceback from the prediction
    probe (exit 1), after mlruns/ was written and a parent run was left RUNNING for good."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    tree = make_tree(here / "data", per_class_train=2, per_class_test=1)
    refused(here, [*args, "--set", "train.device=cuda", "--set", f"data.path={tree}"],
            "train.device: cuda is not on this machine (0 cuda device(s) here)")


@pytest.mark.parametrize(("key", "value", "starts"), [
    ("train.batch_size", "9" * 30, "--set train.batch_size: must be <= 1000000, got 9999"),
    ("train.batch_size", "2000000", "--set train.batch_size: must be <= 1000000"),
    ("data.path", "x" * 100_000, "--set data.path: at most 4,096 characters, got 100,000"),
    ("train.epochs", "1000000", "--set train.epochs: must be <= 100000"),
])
def test_an_absurd_value_is_refused_where_it_is_parsed(here, key, value, starts) -> None:
    """`train.batch_size=10**30` trained, then crashed in bn.py (`Overflow when unpacking
    long long`); a 100,000-character data.path gave an OSError traceback with 100 KB of
    stderr. Every integer fits an int64 and every text value a path (PATH_MAX)."""
    refused(here, ["run", "dilation_add", "--set", f"{key}={value}"], starts)
