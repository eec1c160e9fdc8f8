"""What in an ImageFolder tree counts as a class and as an image (the listing rules).

A tree is `<root>/train/<class>/<image>` and `<root>/test/<class>/<image>`. The rules:

- Ignored silently everywhere (clutter that tools leave): any name starting with "."
  (.DS_Store, ._AppleDouble files, .ipynb_checkpoints, .git, .Trash-*), and the names in
  `CLUTTER` (__MACOSX, Thumbs.db, desktop.ini, @eaDir, ...), compared case-insensitively.
- A class is a folder (or a link to one) directly in train/ or test/. Other files there
  (README.md, labels.csv) are not read; an image file there is an error (images belong in a
  class folder); a broken link there is an error.
- An image is a file (or a link to one) directly in a class folder whose suffix is in
  `IMAGE_SUFFIXES` (any case). Such an entry that is not a readable file (a broken link, a
  folder) is an error naming it; so is a file that does not decode (see `decode`).
- Any other file in a class folder (notes.txt, x.jpg.part) is skipped with one warning line
  that counts them and names the first few. A folder inside a class folder is an error:
  images must sit directly in the class folder (nothing is read recursively).
- Every class has at least one image in each split, train and test have the same classes,
  and there are at least 2 classes; otherwise an error naming the folder.

Every error is a `DataError` (one line, exit 2 at the CLI). Classes are sorted by name; a
class's label is its position. Files are sorted by name within a class.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cifarnet.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                            ".ppm", ".pgm", ".pbm", ".pnm"})
CLUTTER = frozenset(n.lower() for n in (
    "__MACOSX", "Thumbs.db", "ehthumbs.db", "desktop.ini", "@eaDir", "$RECYCLE.BIN",
    "System Volume Information", "lost+found", "__pycache__", "Icon\r"))
SPLITS = ("train", "test")
MAX_NAMED = 3  # skipped files named in a warning


def is_clutter(name: str) -> bool:
    """Hidden names and the known tool clutter: never a class, never an image."""
    return name.startswith(".") or name.lower() in CLUTTER


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class SplitListing:
    """The image files of one split in label order: `paths[i]` (a str, for speed) has label
    `labels[i]`."""

    paths: list[str]
    labels: list[int]
    names: list[str]  # relative to the root, with "/": train/cat/0001.png


@dataclass(frozen=True)
class TreeListing:
    """The classes (sorted) and each split's files, with the relative names they are hashed
    under (`train/cat/0001.jpg`)."""

    root: Path
    classes: list[str]
    splits: dict[str, SplitListing]
    skipped: list[Path]


def list_tree(root: Path) -> TreeListing:
    """The classes and image files of `root` by the rules above; warns about skipped files.

    Raises DataError for a missing root or split folder, a broken link, an image outside a
    class folder, a nested folder, an empty class, classes that differ between the splits,
    or fewer than 2 classes.
    """
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist (data.path / CIFARNET_DATA)")
    _warn_unread_top_level(root)
    per_split = {s: _list_split(root / s) for s in SPLITS}
    train_cls, test_cls = list(per_split["train"]), list(per_split["test"])
    if train_cls != test_cls:
        only = sorted(set(train_cls) ^ set(test_cls))
        raise DataError(f"{root}: train and test have different classes "
                        f"({', '.join(ascii(c) for c in only)} in one split only)")
    if len(train_cls) < 2:
        raise DataError(f"{root / 'train'}: only one class folder ({train_cls[0]!r}); "
                        "a classifier needs at least 2 classes")
    skipped: list[Path] = []
    splits = {}
    for s in SPLITS:
        paths, labels, names = [], [], []
        for label, c in enumerate(train_cls):
            base = os.path.join(root, s, c)
            images, other = per_split[s][c]
            paths += [os.path.join(base, n) for n in images]
            names += [f"{s}/{c}/{n}" for n in images]
            labels += [label] * len(images)
            skipped += other
        splits[s] = SplitListing(paths, labels, names)
    if skipped:
        names = ", ".join(p.relative_to(root).as_posix() for p in skipped[:MAX_NAMED])
        more = f" and {len(skipped) - MAX_NAMED} more" if len(skipped) > MAX_NAMED else ""
        log.warning("warning: %s: skipped %d file(s) that are not images by their suffix "
                    "(%s%s)", root, len(skipped), names, more)
    return TreeListing(root, train_cls, splits, skipped)


def _warn_unread_top_level(root: Path) -> None:
    extra = sorted(e.name for e in _scan(root)
                   if e.is_dir() and e.name not in SPLITS and not is_clutter(e.name))
    if extra:
        log.warning("warning: %s: folder(s) %s are not read (only train/ and test/ are; the "
                    "validation split comes from train/ by data.val_size)", root,
                    ", ".join(f"{n}/" for n in extra))


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def _broken_link(entry: os.DirEntry) -> bool:
    return entry.is_symlink() and not os.path.exists(entry.path)


def _list_split(split_dir: Path) -> dict[str, tuple[list[str], list[Path]]]:
    """{class: (image file names, skipped files)} of one split, classes sorted."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing folder (expected <data>/train/<class>/ and "
                        "<data>/test/<class>/)")
    classes = []
    for e in _scan(split_dir):
        if is_clutter(e.name):
            continue
        if _broken_link(e):
            raise DataError(f"{e.path}: broken symbolic link (to {os.readlink(e.path)})")
        if e.is_dir():
            classes.append(e.name)
        elif is_image_name(e.name):
            raise DataError(f"{e.path}: image outside a class folder (expected "
                            f"{split_dir}/<class>/{e.name})")
    if not classes:
        raise DataError(f"{split_dir}: no class folders")
    return {c: _list_class(split_dir / c) for c in sorted(classes)}


def _list_class(folder: Path) -> tuple[list[str], list[Path]]:
    images, skipped = [], []
    for e in _scan(folder):
        if is_clutter(e.name):
            continue
        if is_image_name(e.name):
            if _broken_link(e):
                raise DataError(f"{e.path}: broken symbolic link (to {os.readlink(e.path)})")
            if not e.is_file():
                raise DataError(f"{e.path}: not a file (a folder named like an image)")
            images.append(e.name)
        elif e.is_dir():
            raise DataError(f"{e.path}: folder inside a class folder (images must sit directly "
                            f"in {folder}; nothing is read recursively)")
        else:
            skipped.append(folder / e.name)
    if not images:
        raise DataError(f"{folder}: empty class folder (no images)")
    return sorted(images), sorted(skipped)
