"""Class names that MLflow refuses as metric keys: a documented safe mapping, real names kept."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from helpers import make_tree

from cifarnet.cli.main import main
from cifarnet.config.schema import DataConfig
from cifarnet.data.datasets import load_data
from cifarnet.errors import DataError
from cifarnet.data.keys import class_metric_keys, safe_key


def mlflow_accepts(key: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_length_limit, _validate_metric_name

    try:
        _validate_metric_name(key)
        _validate_length_limit("Metric name", 250, key)
    except MlflowException:
        return False
    return True


@pytest.mark.parametrize("name,key", [
    ("cat", "test_acc_class.cat"),
    ("sea lion", "test_acc_class.sea lion"),
    ("st. bernard", "test_acc_class.st. bernard"),
    ("x-ray_01", "test_acc_class.x-ray_01"),
    ("Kätzchen", "test_acc_class.Kätzchen"),
    ("cat (domestic)", "test_acc_class.cat _domestic_"),
    ("a:b", "test_acc_class.a_b"),
    ("c++", "test_acc_class.c__"),
    ("what?!", "test_acc_class.what__"),
    ("50% off", "test_acc_class.50_ off"),
    ("tab\there", "test_acc_class.tab_here"),
    ("..", "test_acc_class..."),
])
def test_mapping(name, key) -> None:
    assert safe_key("test_acc_class.", name) == key
    assert mlflow_accepts(key)


def test_the_raw_key_of_the_reported_name_is_refused_by_mlflow() -> None:
    assert not mlflow_accepts("test_acc_class.cat (domestic)")


def test_long_names_are_cut_with_a_hash() -> None:
    a, b = "n" * 300, "n" * 299 + "m"
    ka, kb = safe_key("test_acc_class.", a), safe_key("test_acc_class.", b)
    assert len(ka) == len(kb) == 250 and ka != kb and mlflow_accepts(ka)


def test_two_names_with_one_key_are_refused_before_training(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 2, 1, classes=["cat (domestic)", "cat [domestic]"])
    with pytest.raises(DataError, match=r"'cat \(domestic\)' and 'cat \[domestic\]' both "
                                        r"become the MLflow metric key 'test_acc_class.cat "
                                        r"_domestic_'"):
        load_data(DataConfig(path=str(tree)))
    with pytest.raises(Exception, match="both become"):
        class_metric_keys(["a/b", "a:b"])


def test_collision_in_a_grid_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    tree = make_tree(tmp_path / "t", 2, 1, classes=["a:b", "a_b"])
    r = CliRunner().invoke(main, ["run", str(_spec(tmp_path, tree))])
    assert r.exit_code == 2 and "both become the MLflow metric key" in r.stderr
    assert not (tmp_path / "mlruns").exists()


def _spec(folder, tree):
    path = folder / "keys.yaml"
    path.write_text(yaml.safe_dump({
        "name": "keys", "description": "class names as metric keys",
        "base": {"data": {"path": str(tree), "num_workers": 0},
                 "train": {"epochs": 1, "batch_size": 16, "device": "cpu",
                           "out_dir": str(folder / "runs")}},
        "factors": {"train.lr": [0.05]}, "seeds": [0]}))
    return path


@pytest.mark.slow
def test_a_class_mlflow_refuses_ends_finished_with_the_safe_key(tmp_path, monkeypatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; an unset variable is not restored
    # by monkeypatch.delenv, so register it here and the store does not leak into later tests
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    tree = make_tree(tmp_path / "t", 8, 2, classes=["cat (domestic)", "dog"])
    r = CliRunner().invoke(main, ["run", str(_spec(tmp_path, tree))])
    assert r.exit_code == 0, r.output + r.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=["keys"])
    kid = df[df["tags.cifarnet.role"] == "child"]
    assert kid["status"].tolist() == ["FINISHED"]
    assert kid["metrics.test_acc_class.cat _domestic_"].between(0, 1).all()
    assert kid["metrics.test_acc_class.dog"].between(0, 1).all()
    names = json.loads(mlflow.artifacts.load_text(
        f"runs:/{kid['run_id'].item()}/class_names.json"))
    assert names == {"test_acc_class.cat _domestic_": "cat (domestic)",
                     "test_acc_class.dog": "dog"}
