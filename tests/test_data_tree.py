"""What counts as a class and an image: the rules of cifarnet.data.tree against real clutter."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_tree
from PIL import Image

from cifarnet.cli.main import main
from cifarnet.config.schema import DataConfig
from cifarnet.data.datasets import load_data
from cifarnet.data.tree import list_tree
from cifarnet.errors import DataError

TWO = ["ant", "bee"]


def _err(tree) -> str:
    with pytest.raises(DataError) as e:
        load_data(DataConfig(path=str(tree)))
    return str(e.value)


def _cli(tree):
    r = CliRunner().invoke(main, ["train", "--data", str(tree)])
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_clutter_that_tools_leave_is_ignored(tmp_path, caplog) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    clean = load_data(DataConfig(path=str(tree)))
    png = (tree / "train" / "ant" / "0000.png").read_bytes()
    for split in ("train", "test"):
        s = tree / split
        (s / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (s / "__MACOSX" / "ant").mkdir(parents=True)
        (s / "__MACOSX" / "ant" / "._0000.png").write_bytes(b"\0\5\26\7 AppleDouble")
        (s / ".ipynb_checkpoints").mkdir()
        (s / ".ipynb_checkpoints" / "0000-checkpoint.png").write_bytes(png)
        (s / "@eaDir").mkdir()
        (s / "README.txt").write_text("how I made this")
        (s / "desktop.ini").write_text("[.ShellClassInfo]")
        for c in TWO:
            (s / c / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
            (s / c / "desktop.ini").write_text("[.ShellClassInfo]")
            (s / c / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
            (s / c / "._0000.png").write_bytes(b"\0\5\26\7 AppleDouble")  # not an image
            (s / c / ".ipynb_checkpoints").mkdir()
            (s / c / ".hidden.png").write_bytes(png)
    (tree / ".git").mkdir()
    with caplog.at_level(logging.WARNING):
        cluttered = load_data(DataConfig(path=str(tree)))
    assert caplog.records == []
    assert cluttered.classes == TWO
    assert np.array_equal(cluttered.train.images, clean.train.images)
    assert np.array_equal(cluttered.test.labels, clean.test.labels)
    assert cluttered.fingerprint == clean.fingerprint


def test_other_files_in_a_class_folder_are_skipped_with_one_warning(tmp_path, caplog) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    (tree / "train" / "ant" / "notes.txt").write_text("x")
    (tree / "train" / "bee" / "0009.jpg.part").write_bytes(b"partial")
    os.symlink(tmp_path / "gone.txt", tree / "test" / "bee" / "link.txt")
    (tree / "val" / "ant").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        d = load_data(DataConfig(path=str(tree)))
    assert len(d.train) == 6
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2
    assert "val/ are not read" in msgs[0]
    assert ("skipped 3 file(s) that are not images by their suffix (train/ant/notes.txt, "
            "train/bee/0009.jpg.part, test/bee/link.txt)") in msgs[1]


@pytest.mark.parametrize("where", ["train/bee", "test/ant"])
def test_dangling_symlink_named_like_an_image_is_one_line_exit_2(tmp_path, where) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    link = tree / where / "9999.png"
    os.symlink(tmp_path / "missing.png", link)
    assert f"error: {link}: broken symbolic link" in _cli(tree)


def test_dangling_symlink_as_a_class_folder(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    os.symlink(tmp_path / "nowhere", tree / "train" / "cow")
    assert f"{tree / 'train' / 'cow'}: broken symbolic link" in _err(tree)


def test_symlinked_images_and_class_folders_are_followed(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(tree / "train" / "bee", elsewhere)
    os.symlink(elsewhere, tree / "train" / "bee")
    os.symlink(tree / "test" / "ant" / "0000.png", tree / "test" / "ant" / "0005.png")
    d = load_data(DataConfig(path=str(tree)))
    assert len(d.train) == 6 and len(d.test) == 5


@pytest.mark.parametrize("content,match", [
    (b"", "cannot decode image"),
    (b"<html>404 not found</html>", "cannot decode image"),
])
def test_a_file_named_like_an_image_that_is_not_one(tmp_path, content, match) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    bad = tree / "train" / "ant" / "0001.jpg"
    bad.write_bytes(content)
    assert _cli(tree).startswith(f"error: {bad}: {match}")


def test_unreadable_file_names_it(tmp_path, monkeypatch) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    bad = str(tree / "train" / "bee" / "0001.png")
    real_open = os.open

    def deny(path, *args, **kwargs):  # tests run as root, where chmod 000 still reads
        if os.fspath(path) == bad:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    assert _err(tree) == f"{bad}: cannot read (Permission denied)"


def test_folders_where_files_belong(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    (tree / "train" / "ant" / "more").mkdir()
    assert "folder inside a class folder" in _err(tree)
    (tree / "train" / "ant" / "more").rmdir()
    (tree / "train" / "ant" / "x.png").mkdir()
    assert f"{tree / 'train' / 'ant' / 'x.png'}: not a file" in _err(tree)


def test_image_directly_in_a_split_folder(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    shutil.copy(tree / "train" / "ant" / "0000.png", tree / "train" / "loose.png")
    assert "loose.png: image outside a class folder" in _err(tree)


def test_class_folder_with_only_clutter_is_empty(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    for f in (tree / "test" / "bee").iterdir():
        f.unlink()
    (tree / "test" / "bee" / "Thumbs.db").write_bytes(b"x")
    (tree / "test" / "bee" / ".DS_Store").write_bytes(b"x")
    assert f"{tree / 'test' / 'bee'}: empty class folder" in _err(tree)


def test_class_in_train_but_not_in_test(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=["ant", "bee", "cat"])
    shutil.rmtree(tree / "test" / "cat")
    assert "different classes ('cat' in one split only)" in _err(tree)


def test_class_names_that_differ_in_unicode_normalisation_are_shown_apart(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=["caf\u00e9", "dog"])
    (tree / "test" / "caf\u00e9").rename(tree / "test" / "cafe\u0301")
    assert "('cafe\\u0301', 'caf\\xe9' in one split only)" in _err(tree)


def test_one_class_is_refused_before_training(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=["ant"])
    assert "only one class folder ('ant'); a classifier needs at least 2" in _cli(tree)


def test_a_subset_with_one_class_is_refused(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 60, 2, classes=TWO)
    for f in sorted((tree / "train" / "bee").iterdir())[1:]:
        f.unlink()
    with pytest.raises(DataError, match="the training images hold only one class"):
        load_data(DataConfig(path=str(tree), train_subset=10))  # 10 ants, 0 bees


def test_listing_order_and_labels(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 2, 1, classes=["b", "a"])
    listing = list_tree(tree)
    assert listing.classes == ["a", "b"]
    assert listing.splits["train"].names == ["train/a/0000.png", "train/a/0001.png",
                                             "train/b/0000.png", "train/b/0001.png"]
    assert listing.splits["train"].labels == [0, 0, 1, 1]


def test_uppercase_suffix_and_other_formats_are_images(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    src = tree / "train" / "ant" / "0000.png"
    Image.open(src).save(tree / "train" / "ant" / "EXTRA.TIFF")
    Image.open(src).convert("RGB").save(tree / "train" / "ant" / "x.JPG")
    assert len(load_data(DataConfig(path=str(tree))).train) == 8


def test_unlistable_class_folder_names_it(tmp_path, monkeypatch) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    real = os.scandir
    denied = tree / "test" / "bee"

    def scandir(path):
        if os.fspath(path) == os.fspath(denied):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert _err(tree) == f"{denied}: cannot list the folder (Permission denied)"


def test_symlink_loop_as_a_class_folder(tmp_path) -> None:
    tree = make_tree(tmp_path / "t", 3, 2, classes=TWO)
    os.symlink(tree / "train" / "loop", tree / "train" / "loop")
    assert "loop: broken symbolic link" in _err(tree)
