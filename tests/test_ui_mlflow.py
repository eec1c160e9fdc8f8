"""What a user sees in MLflow's UI: run names, experiment tags, the dataset input, and (with a
browser installed) the experiment page itself, driven in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import make_tree
from pg import free_port

from cifarnet.tracking.names import parent_run_name, short_run_name

EXE = str(Path(sys.executable).with_name("cifarnet-exp"))
NAMES = {"dil=2 add=on s0", "dil=2 add=off s0", "dil=1 add=on s0", "dil=1 add=off s0"}
MIRROR = "CIFAR-10 (JPEG q75 mirror)"


def test_short_run_name_shows_every_differing_flag_and_the_seed() -> None:
    assert short_run_name({"model.dilation": 1, "model.residual_add": False}, 0) == \
        "dil=1 add=off s0"
    assert short_run_name({"model.pointwise_after_stride": True, "model.depthwise": False,
                           "model.regular_after_depthwise": True, "model.extra_adds": True,
                           "model.width": 1.5, "model.dropout": 0.1}, 12) == \
        "pw=on dw=off reg=on xadd=on w=1.5 drop=0.1 s12"
    # an unknown key falls back to its last part; a grid without factors is the seed alone
    assert short_run_name({"train.some_new_knob": 3}, 2) == "some_new_knob=3 s2"
    assert short_run_name({}, 4) == "s4"


def test_parent_names_tell_two_grids_of_one_spec_apart() -> None:
    a = parent_run_name("dilation_add", 30, "1a2b3c4d5e")
    b = parent_run_name("dilation_add", 2, "9f8e7d6c5b")
    assert a == "dilation_add 30ep g1a2b3c" and b == "dilation_add 2ep g9f8e7d"
    assert a != b


def test_an_existing_experiment_without_the_kind_tag_gets_it(tmp_path, monkeypatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    from cifarnet.tracking.store import get_or_create_experiment
    from cifarnet.workspace import Workspace

    ws = Workspace.resolve(tmp_path, {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    client = MlflowClient()
    old = client.create_experiment("old")  # as made by an earlier version
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert get_or_create_experiment(client, ws, "old") == old
    tags = client.get_experiment(old).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.cifarnet"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "cifarnet.group"}]
    assert "metrics.`test_acc`" in view["selectedColumns"]
    new = get_or_create_experiment(client, ws, "a search", group_by=None)
    view = json.loads(client.get_experiment(new).tags["mlflow.sharedViewState.cifarnet"])
    assert view["groupBy"] is None


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory) -> Path:
    """A finished 2x2 grid at one seed (1 epoch, tiny data labelled as the JPEG mirror)."""
    root = tmp_path_factory.mktemp("ui")
    tree = make_tree(root / "data", per_class_train=20, per_class_test=5)
    (tree / "README.md").write_text("CIFAR-10 re-encoded as JPEG, quality 75 (test copy)\n")
    spec = {"name": "tiny_ui", "description": "a tiny grid for the UI",
            "base": {"data": {"path": str(tree), "num_workers": 0},
                     "train": {"epochs": 1, "batch_size": 32, "device": "cpu",
                               "out_dir": str(root / "runs")}},
            "factors": {"model.dilation": [2, 1], "model.residual_add": [True, False]},
            "seeds": [0],
            "hypotheses": [{"id": "H", "claim": "add helps", "expect": "a > b", "rope": 0.002,
                            "a": {"model.dilation": 2, "model.residual_add": True},
                            "b": {"model.dilation": 2, "model.residual_add": False}}]}
    (root / "tiny_ui.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "CIFARNET_CACHE": str(root / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([EXE, "run", "tiny_ui.yaml"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def _client(root: Path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    return MlflowClient()


@pytest.mark.slow
def test_grid_runs_have_short_names_kind_tag_and_a_dataset_input(grid_store) -> None:
    client = _client(grid_store)
    exp = client.get_experiment_by_name("tiny_ui")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    kids = [r for r in runs if r.data.tags.get("cifarnet.role") == "child"]
    parent = next(r for r in runs if r.data.tags.get("cifarnet.role") == "parent")
    assert {r.info.run_name for r in kids} == NAMES
    assert parent.info.run_name.startswith("tiny_ui 1ep g")
    assert parent.info.run_name[len("tiny_ui 1ep g"):] == parent.data.tags["cifarnet.grid"][:6]
    # the full cell stays in its tag
    by_name = {r.info.run_name: r for r in kids}
    assert by_name["dil=1 add=off s0"].data.tags["cifarnet.cell"] == \
        "dilation=1,residual_add=false"
    digests = set()
    for r in kids:
        (inp,) = r.inputs.dataset_inputs
        ds = inp.dataset
        assert ds.name == MIRROR
        profile = json.loads(ds.profile)
        assert (profile["num_train"], profile["num_val"], profile["num_test"]) == (80, 0, 20)
        assert profile["num_train"] == int(r.data.params["data.num_train"])
        assert json.loads(ds.source)["uri"] == str((grid_store / "data").resolve())
        assert "mlflow_tensorspec" in json.loads(ds.schema)
        assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "train"}
        digests.add(ds.digest)
    assert len(digests) == 1, "the same images and splits give one digest"


def test_ui_prints_the_runs_table_address_of_each_experiment(grid_store) -> None:
    from cifarnet.tracking.store import experiment_links

    _client(grid_store)
    exp_id = _client(grid_store).get_experiment_by_name("tiny_ui").experiment_id
    ((name, url),) = experiment_links("http://127.0.0.1:5000")
    assert name == "tiny_ui"
    assert url == (f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs"
                   "?workflowType=machine_learning&viewStateShareKey=cifarnet")


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _chromium(browser: str, profile: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--no-first-run",
           f"--user-data-dir={profile}", "--window-size=1600,900",
           "--virtual-time-budget=20000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def ui_port(grid_store):
    """`cifarnet-exp ui` serving the grid's store, once it answers; stopped after the module."""
    if _browser() is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    port = free_port()
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen([EXE, "ui", "--port", str(port)], cwd=grid_store, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the MLflow UI did not start in 120 s"
                time.sleep(1)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.browser
def test_the_experiment_page_lists_the_runs_by_name(grid_store, ui_port, tmp_path) -> None:
    """`cifarnet-exp ui` serves the store; headless Chromium opens the address it prints and
    finds the runs table: the four short names, the dataset, grouped by cell. Screenshots go
    to tmp_path (and to $CIFARNET_SCREENSHOTS when set, for docs/)."""
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    exp_id = _client(grid_store).get_experiment_by_name("tiny_ui").experiment_id
    url = (f"http://127.0.0.1:{ui_port}/#/experiments/{exp_id}/runs"
           "?workflowType=machine_learning&viewStateShareKey=cifarnet")
    dom = _chromium(browser, tmp_path / "p1", url, "--dump-dom").stdout
    for name in NAMES:
        assert name in dom, f"{name} not on the page"
    assert MIRROR in dom, "the Dataset column is empty"
    assert "Group: dilation=" in dom, "runs are not grouped by cell"
    assert "test_acc" in dom
    shots = [tmp_path / "mlflow_runs.png", tmp_path / "mlflow_plain.png"]
    _chromium(browser, tmp_path / "p2", url, f"--screenshot={shots[0]}")
    _chromium(browser, tmp_path / "p3", f"http://127.0.0.1:{ui_port}/#/experiments/{exp_id}",
              f"--screenshot={shots[1]}")
    assert shots[0].stat().st_size > 10_000
    if out := os.environ.get("CIFARNET_SCREENSHOTS"):
        for s in shots:
            shutil.copy(s, Path(out) / s.name)


@pytest.mark.slow
@pytest.mark.browser
def test_the_parent_run_page_shows_the_verdict(grid_store, ui_port, tmp_path) -> None:
    """The grid's answer is in MLflow's UI, not only in a report file: the parent run's page
    shows the hypothesis's verdict tag and its difference and seed count as metrics."""
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    client = _client(grid_store)
    exp_id = client.get_experiment_by_name("tiny_ui").experiment_id
    parent = client.search_runs([exp_id], "tags.`cifarnet.role` = 'parent'")[0]
    from cifarnet.analysis.stats import Outcome

    assert parent.data.tags["cifarnet.verdict.H"] in set(map(str, Outcome))
    assert parent.data.metrics["H.n"] == 1
    url = (f"http://127.0.0.1:{ui_port}/#/experiments/{exp_id}/runs/{parent.info.run_id}"
           "?workflowType=machine_learning")
    dom = _chromium(browser, tmp_path / "p", url, "--dump-dom").stdout
    assert "cifarnet.verdict.H" in dom, "the verdict tag is not on the parent's page"
    assert "H.mean_diff" in dom and "H.n" in dom, "the verdict's metrics are not shown"
    assert "a tiny grid for the UI" in dom  # the spec's description, the parent's note
