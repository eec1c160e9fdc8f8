"""The CLI's exit codes, through click's runner and through the installed script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cifarnet import __version__
from cifarnet.cli.main import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_version() -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_summary_table() -> None:
    r = invoke("summary")
    assert r.exit_code == 0
    assert "153,104" in r.output and "83 px" in r.output


def test_summary_json_with_override() -> None:
    r = invoke("summary", "--json", "--set", "model.pointwise_after_stride=false")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["total_params"] == 147_616
    assert {"total_macs", "receptive_field", "layers"} <= set(d)
    assert {"name", "out_shape", "params", "macs", "rf"} <= set(d["layers"][0])


def test_summary_preset() -> None:
    r = invoke("summary", "--json", "--preset", "no_depthwise")
    assert json.loads(r.output)["total_params"] == 498_864


@pytest.mark.parametrize(("args", "key"), [
    (["summary", "--set", "model.dilatation=1"], "model.dilatation"),
    (["summary", "--set", "model.dilation=0"], "model.dilation"),
    (["summary", "--set", "model.residual_add=maybe"], "model.residual_add"),
    (["summary", "--set", "nonsense"], "nonsense"),
    (["summary", "--preset", "nope"], "nope"),
    (["summary", "--config", "missing.yaml"], "missing.yaml"),
])
def test_user_errors_exit_2_with_one_line(args: list[str], key: str) -> None:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert key in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_bad_config_file_names_the_key(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: zero\n")
    r = invoke("summary", "--config", str(f))
    assert r.exit_code == 2 and "train.epochs" in r.stderr


@pytest.mark.slow
def test_installed_script_exit_codes() -> None:
    exe = Path(sys.executable).with_name("cifarnet-exp")  # the venv's, activated or not
    assert exe.is_file(), "the console script is installed with the package"
    ok = subprocess.run([exe, "summary", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["receptive_field"] == 83
    bad = subprocess.run([exe, "summary", "--set", "model.dilatation=1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: model.dilatation: unknown key (did you mean model.dilation?)"]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("command, where, what", [
    (["report", "tiny"], "cifarnet.tracking.results.find_parent_run",
     "the report was stopped before it was complete; run it again"),
    (["search-report", "tiny", "--storage", "sqlite:///x.db"],
     "cifarnet.search.storage.open_storage",
     "the search report was stopped before it was complete; run it again"),
    (["summary"], "cifarnet.model.summary.summarize", "summary stopped"),
    (["relocate-store"], "cifarnet.tracking.location.relocate",
     "relocate-store stopped; nothing was changed (one transaction), run it again"),
])
def test_commands_without_a_run_stop_on_a_signal_with_one_line(monkeypatch, tmp_path, sig,
                                                                command, where, what) -> None:
    """Every command follows one signal policy: exit 128 + the signal, one line; here the
    commands with no run to end, stopped in the middle of their work."""
    import os
    import signal

    import importlib

    monkeypatch.chdir(tmp_path)
    # imported before the patch: a module first imported under it would keep the patched
    # function for good (`from ... import name`), and later tests would get it
    for mod in ("cifarnet.search.report", "cifarnet.search.study", "cifarnet.analysis.report",
                "cifarnet.tracking.results", "cifarnet.tracking.location",
                "cifarnet.model.summary", "cifarnet.search.storage"):
        importlib.import_module(mod)
    module, name = where.rsplit(".", 1)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, sig))
        raise AssertionError("not stopped")

    monkeypatch.setattr(__import__(module, fromlist=[name]), name, signalled)
    if command[0] == "search-report":  # it refuses a storage that is not there
        (tmp_path / "x.db").touch()
    if command == ["relocate-store"]:  # it refuses a folder with no store before relocating
        monkeypatch.setattr("cifarnet.tracking.store.store_exists", lambda workspace: True)
    r = CliRunner().invoke(main, command)
    assert r.exit_code == 128 + getattr(signal, sig), r.output
    assert r.output == f"interrupted: {what}\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


@pytest.mark.parametrize(("command", "where", "what"), [
    ("run", "cifarnet.ablation.execute.run_grid",
     "the grid stopped (a run in progress ends KILLED); rerun to continue"),
    ("search", "cifarnet.search.study.run_search",
     "the search stopped (a trial in progress ends KILLED); rerun to continue the same study"),
])
def test_a_stop_before_any_run_claims_no_killed_run(monkeypatch, tmp_path, command, where,
                                                    what) -> None:
    """Stopped while opening its stores, before any run had started, `run` said "the
    current run was ended KILLED" (and `search` the same of a trial): there was none."""
    import importlib
    import os
    import signal

    import yaml
    from helpers import make_tree, search_spec

    monkeypatch.chdir(tmp_path)
    tree = make_tree(tmp_path / "data", per_class_train=12, per_class_test=1)
    spec = (search_spec(tree, tmp_path) if command == "search" else
            {"name": "t", "base": {"data": {"path": str(tree)}, "train": {"epochs": 1}},
             "factors": {"model.residual_add": [True, False]}, "seeds": [0]})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    module, name = where.rsplit(".", 1)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, signalled)
    r = CliRunner().invoke(main, [command, "s.yaml"])
    assert r.exit_code == 128 + signal.SIGINT, r.output
    assert r.stderr.strip().splitlines()[-1] == f"interrupted: {what}"


@pytest.mark.slow
@pytest.mark.parametrize(("command", "where", "what"), [
    ("run", "cifarnet.ablation.execute.run_grid",
     "every run had finished before the signal; `cifarnet-exp report t` shows the verdicts"),
    ("search", "cifarnet.search.study.run_search",
     "every trial had finished before the signal; `cifarnet-exp search-report tiny_search` "
     "shows the study"),
])
def test_a_signal_after_the_last_run_still_stops_the_command(monkeypatch, tmp_path, command,
                                                             where, what) -> None:
    """A Ctrl-C that came after the last run (or trial) had ended was swallowed: `run`
    printed its verdicts and exited 0. The signal policy: 128 + the signal, one line."""
    import importlib
    import os
    import signal

    import yaml
    from helpers import make_tree, search_spec

    monkeypatch.chdir(tmp_path)
    tree = make_tree(tmp_path / "data", per_class_train=12, per_class_test=1)
    spec = (search_spec(tree, tmp_path, n_trials=1) if command == "search" else
            {"name": "t", "base": {"data": {"path": str(tree)}, "train": {"epochs": 1}},
             "factors": {"model.residual_add": [True, False]}, "seeds": [0]})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    module = importlib.import_module(where.rsplit(".", 1)[0])
    real = getattr(module, where.rsplit(".", 1)[1])

    def then_signalled(*args, **kwargs):
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the first signal: recorded, raises nothing
        return out

    monkeypatch.setattr(module, where.rsplit(".", 1)[1], then_signalled)
    r = CliRunner().invoke(main, [command, "s.yaml", *(["--no-final"] if command == "search"
                                                        else [])])
    assert r.exit_code == 128 + signal.SIGINT, r.output
    assert r.stderr.strip().splitlines()[-1] == f"interrupted: {what}"


def test_set_with_a_space_is_one_line_that_says_key_equals_value(tmp_path) -> None:
    """`--set train.lr 0.05` left click's bare "unexpected extra argument (0.05)"."""
    r = invoke("run", "dilation_add", "--set", "train.lr", "0.05", "--dry-run")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "error: Got unexpected extra argument (0.05) (--set takes KEY=VALUE as one word, "
        "e.g. --set train.lr=0.05)"]
    plain = invoke("summary", "extra")
    assert plain.exit_code == 2 and "--set takes" not in plain.output
