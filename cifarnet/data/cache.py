"""The data's fingerprint, and the decoded-array cache that it keys.

Fingerprint: sha256 over the class list and, for every image file in label order, its path
relative to the data root (`train/cat/0001.png`, which carries its split and class) and the
sha256 of its bytes; the first 16 hex digits. It changes when any file's content, name, class
or split changes, or a file is added or removed; it does not change when only timestamps
change or the tree is moved or copied elsewhere. Hashing reads every file: 0.35-1.1 s for the
50,000 training files of the CIFAR-10 JPEG mirror (46 MB, in the page cache; two CPU cores
from idle to heavily shared), against about 35 s to decode them.

Cache: one file per (fingerprint, decoding rules), `<cache>/imagefolder-<fingerprint>-v<N>.npz`
(numpy's zip format: every array carries a CRC-32 that is checked when it is read). An entry
is served only if it reads back whole (CRC), holds the same fingerprint and classes, and its
arrays have the expected shapes, dtypes and labels; otherwise it is reported in one line and
rebuilt. Writers hold a lock beside the entry (`filelock`), write a temporary file in the same
folder and `os.replace` it into place, so a reader sees a whole entry or none; a second process
needing the same entry waits for the first and reads its result. Temporary files left by a
writer that was killed are deleted by the next load (their lock is free). If the cache folder
cannot be written, one warning line says so before decoding and the data is decoded without
caching; a failed write (disk full) is reported the same way and the decoded data is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cifarnet.errors import DataError

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
CACHE_VERSION = 2  # the decoding rules (cifarnet.data.decode); bump when they change
CHUNK = 1 << 20
SPLITS = ("train", "test")
ARRAYS = ("fingerprint", "classes", "train_images", "train_labels", "test_images",
          "test_labels")


def file_digest(path: str | Path) -> bytes:
    """sha256 of the file's bytes, read in 1 MiB chunks; DataError naming it if unreadable."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            while chunk := os.read(fd, CHUNK):
                h.update(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.digest()


def fingerprint(classes: Sequence[str], files: Iterable[tuple[str, bytes]]) -> str:
    """16 hex digits over the class list and (relative path, content sha256) pairs in order."""
    h = hashlib.sha256(f"cifarnet-data-v{FINGERPRINT_VERSION}\n".encode())
    h.update(json.dumps(list(classes)).encode() + b"\n")
    for rel, digest in files:
        h.update(os.fsencode(rel) + b"\0" + digest + b"\n")
    return h.hexdigest()[:16]


def array_fingerprint(classes: Sequence[str], arrays: Iterable[np.ndarray]) -> str:
    """16 hex digits over the class list and the arrays' dtypes, shapes and bytes (for data
    that comes as arrays, e.g. torchvision's CIFAR-10)."""
    h = hashlib.sha256(f"cifarnet-arrays-v{FINGERPRINT_VERSION}\n".encode())
    h.update(json.dumps(list(classes)).encode() + b"\n")
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


class ArrayCache:
    """Entries of named uint8 image and int64 label arrays in one folder (see module doc)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def entry(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def read(self, key: str, fp: str, classes: Sequence[str],
             labels: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The entry's arrays if present and whole; None if absent, or damaged (one warning).

        Whole: readable with matching CRCs, the same fingerprint `fp` and `classes`, images
        (N, 32, 32, 3) uint8 and labels equal to `labels[split]` (int64) for each split.
        """
        path = self.entry(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ARRAYS}
            problem = _check(arrays, fp, classes, labels)
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return arrays
        log.warning("warning: cache entry %s is damaged (%s); rebuilding it", path, problem)
        return None

    @contextmanager
    def writing(self, key: str) -> Iterator[bool]:
        """Hold the entry's lock while the caller decodes and writes; yields False (after one
        warning) if the folder cannot be written, and the caller decodes without caching."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.folder / f"{key}.lock")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self.folder, os.W_OK):
                raise PermissionError(f"no write permission on {self.folder}")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.warning("waiting for another process that is decoding into %s",
                            self.entry(key))
                lock.acquire()
        except OSError as exc:
            log.warning("warning: cache folder %s cannot be written (%s); decoding without "
                        "caching (set data.cache_dir or CIFARNET_CACHE to a writable folder)",
                        self.folder, exc.strerror or exc)
            yield False
            return
        try:
            self._remove_temps(key)
            yield True
        finally:
            lock.release()

    def write(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Write the entry atomically (call inside `writing`); on failure warn and go on."""
        tmp = self.folder / f"{key}.npz.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, self.entry(key))
        except OSError as exc:
            log.warning("warning: could not write cache entry %s (%s); continuing without "
                        "caching", self.entry(key), exc.strerror or exc)
        finally:
            _unlink(tmp)

    def sweep(self) -> None:
        """Delete temporary files of writers that died: those whose entry's lock is free."""
        from filelock import FileLock, Timeout

        try:
            temps = sorted(self.folder.glob("*.npz.*.tmp"))
        except OSError:
            return
        for key in {t.name.split(".npz.")[0] for t in temps}:
            lock = FileLock(self.folder / f"{key}.lock")
            try:
                lock.acquire(timeout=0)
            except (Timeout, OSError):
                continue
            try:
                self._remove_temps(key)
            finally:
                lock.release()

    def _remove_temps(self, key: str) -> None:
        for tmp in self.folder.glob(f"{key}.npz.*.tmp"):
            log.warning("warning: removing %s, left by a cache writer that was stopped", tmp)
            _unlink(tmp)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _check(arrays: dict[str, np.ndarray], fp: str, classes: Sequence[str],
           labels: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a cache entry's arrays, or None."""
    if str(arrays["fingerprint"]) != fp:
        return f"fingerprint {arrays['fingerprint']} instead of {fp}"
    if arrays["classes"].tolist() != list(classes):
        return "other classes"
    for s in SPLITS:
        images, got = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        n = len(labels[s])
        if images.dtype != np.uint8 or images.shape != (n, 32, 32, 3):
            return f"{s} images {images.dtype}{images.shape}, expected uint8({n}, 32, 32, 3)"
        if got.dtype != np.int64 or not np.array_equal(got, labels[s]):
            return f"{s} labels differ from the tree"
    return None
