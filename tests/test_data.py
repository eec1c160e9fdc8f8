"""Datasets: errors, the decoded cache, stratified subsets and validation split."""

import shutil
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import CLASSES, SHARED_CACHE, make_tree, shared_tree_or_skip
from PIL import Image

from cifarnet.cli.main import main
from cifarnet.config.schema import DataConfig
from cifarnet.data import datasets as data_mod
from cifarnet.data.datasets import load_data, stratified_indices
from cifarnet.errors import DataError


def test_loads_tree_with_stats_from_training_split(tiny_tree) -> None:
    d = load_data(DataConfig(path=str(tiny_tree)))
    assert d.train.images.shape == (240, 32, 32, 3) and d.train.images.dtype == np.uint8
    assert len(d.test) == 60 and d.classes == CLASSES
    expected = d.train.images.reshape(-1, 3).mean(0) / 255
    assert np.allclose(d.mean, expected)
    assert d.label == "ImageFolder data"


def test_environment_variable_selects_the_tree(tiny_tree, monkeypatch) -> None:
    monkeypatch.setenv("CIFARNET_DATA", str(tiny_tree))
    assert len(load_data(DataConfig()).train) == 240


def test_second_load_comes_from_the_cache(tiny_tree, monkeypatch) -> None:
    load_data(DataConfig(path=str(tiny_tree)))
    calls = []
    monkeypatch.setattr(data_mod, "_read_decode", lambda p: calls.append(p))
    load_data(DataConfig(path=str(tiny_tree)))
    assert calls == []


def test_cache_is_invalidated_when_files_change(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 5, 2)
    first = load_data(DataConfig(path=str(tree)))
    time.sleep(0.01)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tree / "train" / "ant" / "9999.png")
    assert len(load_data(DataConfig(path=str(tree))).train) == len(first.train) + 1


def test_stratified_subsets_and_validation_split(tiny_tree) -> None:
    d = load_data(DataConfig(path=str(tiny_tree), val_size=40, train_subset=100, test_subset=20))
    assert (len(d.train), len(d.val), len(d.test)) == (100, 40, 20)
    assert np.bincount(d.train.labels).tolist() == [25] * 4
    assert np.bincount(d.val.labels).tolist() == [10] * 4
    assert np.bincount(d.test.labels).tolist() == [5] * 4
    train_rows = {row.tobytes() for row in d.train.images}
    assert not any(row.tobytes() in train_rows for row in d.val.images)
    again = load_data(DataConfig(path=str(tiny_tree), val_size=40, train_subset=100,
                                 test_subset=20))
    assert np.array_equal(again.train.images, d.train.images)


def test_largest_remainder_quota() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 7, np.random.default_rng(0))
    assert len(idx) == 7
    assert np.bincount(labels[idx]).tolist() == [4, 2, 1]


def _err(tree) -> str:
    with pytest.raises(DataError) as e:
        load_data(DataConfig(path=str(tree)))
    return str(e.value)


def test_missing_folder(tmp_path) -> None:
    assert "does not exist" in _err(tmp_path / "nope")


def test_empty_class(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2)
    for f in (tree / "test" / "bee").iterdir():
        f.unlink()
    assert "empty class" in _err(tree)


def test_split_without_the_other_splits_classes(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2)
    shutil.rmtree(tree / "test" / "dog")
    assert "dog" in _err(tree)


def test_image_of_wrong_size(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2)
    Image.fromarray(np.zeros((28, 30, 3), np.uint8)).save(tree / "train" / "cat" / "big.png")
    assert "30x28" in _err(tree) and "big.png" in _err(tree)


def test_impossible_subset(tiny_tree) -> None:
    with pytest.raises(DataError, match="data.train_subset"):
        load_data(DataConfig(path=str(tiny_tree), train_subset=10_000))


def test_cli_exits_2_on_data_errors(tmp_path) -> None:
    r = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.stderr


@pytest.mark.slow
def test_offline_cifar10_download_says_how_to_use_local_data(tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    def fail(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fail)
    with pytest.raises(DataError, match="CIFARNET_DATA"):
        load_data(DataConfig(source="cifar10", cache_dir=str(tmp_path)))


@pytest.mark.shared_data
def test_shared_tree_small_subset() -> None:
    tree = shared_tree_or_skip()
    d = load_data(DataConfig(path=str(tree), train_subset=500, test_subset=200, val_size=100,
                             cache_dir=str(SHARED_CACHE)))
    assert d.label == "CIFAR-10 (JPEG q75 mirror)"
    assert (len(d.train), len(d.val), len(d.test)) == (500, 100, 200)
    assert len(d.classes) == 10
