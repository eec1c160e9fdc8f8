"""The decoded-array cache never serves images or labels that differ from the tree on disk,
repairs itself, and Dataset.fingerprint is the data's identity."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarnet.config.schema import DataConfig
from cifarnet.data import datasets as data_mod
from cifarnet.data.cache import CACHE_VERSION
from cifarnet.data.datasets import load_data
from cifarnet.data.tree import list_tree

CLASSES = ["ant", "bee"]


def bmp_tree(root: Path, n_train: int = 3, n_test: int = 2, seed: int = 0) -> Path:
    """Uncompressed BMPs: every file has the same size, so content can change while size and
    timestamps stay (what a copy tool that preserves timestamps does)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                img[..., k] += 120
                Image.fromarray(img).save(root / split / c / f"{i:04d}.bmp")
    return root


def on_disk(tree: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What the tree holds now, decoded straight from disk: {split: (images, labels)}."""
    listing = list_tree(tree)
    return {s: (np.stack([np.asarray(Image.open(p).convert("RGB"))
                          for p in listing.splits[s].paths]),
                np.array(listing.splits[s].labels)) for s in ("train", "test")}


def assert_matches_disk(d, tree: Path) -> None:
    disk = on_disk(tree)
    for s, split in (("train", d.train), ("test", d.test)):
        assert np.array_equal(split.images, disk[s][0]), s
        assert np.array_equal(split.labels, disk[s][1]), s


def keep_times(path: Path):
    st = path.stat()
    return lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def cfg(tree: Path, cache: Path) -> DataConfig:
    return DataConfig(path=str(tree), cache_dir=str(cache))


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The files decoded (not served from the cache) by the next loads."""
    calls: list[str] = []
    real = data_mod._read_decode

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(data_mod, "_read_decode", counting)
    return calls


def test_content_replaced_with_same_size_and_mtime(tmp_path, decodes) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    first = load_data(cfg(tree, cache))
    target = tree / "train" / "bee" / "0001.bmp"
    restore = keep_times(target)
    size = target.stat().st_size
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(target)
    restore()
    assert target.stat().st_size == size
    second = load_data(cfg(tree, cache))
    assert (second.train.images[4] == 7).all() and not (first.train.images[4] == 7).all()
    assert second.fingerprint != first.fingerprint
    assert_matches_disk(second, tree)


def test_files_swapped_between_classes(tmp_path) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    first = load_data(cfg(tree, cache))
    a, b = tree / "train" / "ant" / "0000.bmp", tree / "train" / "bee" / "0000.bmp"
    ra, rb = keep_times(a), keep_times(b)
    tmp = tmp_path / "swap"
    shutil.move(a, tmp)
    shutil.move(b, a)
    shutil.move(tmp, b)
    ra()
    rb()
    second = load_data(cfg(tree, cache))
    assert np.array_equal(second.train.images[0], first.train.images[3])
    assert np.array_equal(second.train.images[3], first.train.images[0])
    assert second.fingerprint != first.fingerprint
    assert_matches_disk(second, tree)


def test_renamed_file_changes_order(tmp_path) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    first = load_data(cfg(tree, cache))
    (tree / "train" / "ant" / "0000.bmp").rename(tree / "train" / "ant" / "0009.bmp")
    second = load_data(cfg(tree, cache))
    assert np.array_equal(second.train.images[2], first.train.images[0])
    assert second.fingerprint != first.fingerprint
    assert_matches_disk(second, tree)


def test_file_moved_to_the_other_class(tmp_path) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    load_data(cfg(tree, cache))
    (tree / "train" / "ant" / "0002.bmp").rename(tree / "train" / "bee" / "0002x.bmp")
    second = load_data(cfg(tree, cache))
    assert second.train.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert_matches_disk(second, tree)


def test_tree_copied_over_with_preserved_timestamps(tmp_path) -> None:
    tree, other, cache = bmp_tree(tmp_path / "t"), bmp_tree(tmp_path / "o", seed=1), tmp_path / "c"
    first = load_data(cfg(tree, cache))
    for src in other.rglob("*.bmp"):  # same names and sizes, other pixels, old timestamps
        dst = tree / src.relative_to(other)
        restore = keep_times(dst)
        shutil.copyfile(src, dst)
        restore()
    second = load_data(cfg(tree, cache))
    assert not np.array_equal(second.train.images, first.train.images)
    assert_matches_disk(second, tree)


def test_fingerprint_ignores_timestamps_and_location(tmp_path, decodes) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    first = load_data(cfg(tree, cache))
    assert len(first.fingerprint) == 16 and int(first.fingerprint, 16) >= 0
    n_files = len(decodes)
    for f in tree.rglob("*.bmp"):
        os.utime(f, ns=(1, 10**18))
    assert load_data(cfg(tree, cache)).fingerprint == first.fingerprint
    copy = shutil.copytree(tree, tmp_path / "copy")
    assert load_data(cfg(copy, cache)).fingerprint == first.fingerprint
    assert len(decodes) == n_files  # both served from the one cache entry
    f = tree / "test" / "ant" / "0000.bmp"
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    assert load_data(cfg(tree, cache)).fingerprint != first.fingerprint


def test_fingerprint_covers_the_class_names(tmp_path) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    first = load_data(cfg(tree, cache))
    for s in ("train", "test"):
        (tree / s / "bee").rename(tree / s / "bees")
    second = load_data(cfg(tree, cache))
    assert second.classes == ["ant", "bees"] and second.fingerprint != first.fingerprint


def _entry(cache: Path) -> Path:
    (entry,) = cache.glob(f"imagefolder-*-v{CACHE_VERSION}.npz")
    return entry


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _flip_a_pixel_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _wrong_shape(p: Path) -> None:
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_images"] = arrays["train_images"][:, :16]
    with open(p, "wb") as f:
        np.savez(f, **arrays)


def _wrong_labels(p: Path) -> None:
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_labels"] = arrays["train_labels"][::-1].copy()
    with open(p, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("damage", [_truncate, _empty, _flip_a_pixel_byte, _wrong_shape,
                                    _wrong_labels])
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage, decodes, caplog) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    load_data(cfg(tree, cache))
    n_files = len(decodes)
    damage(_entry(cache))
    with caplog.at_level(logging.WARNING):
        d = load_data(cfg(tree, cache))
    assert len(decodes) == 2 * n_files
    assert any("is damaged" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records)
    assert_matches_disk(d, tree)
    load_data(cfg(tree, cache))
    assert len(decodes) == 2 * n_files  # the rebuilt entry is whole


def test_unwritable_cache_folder_warns_before_decoding_and_goes_on(tmp_path, monkeypatch,
                                                                   caplog) -> None:
    tree = bmp_tree(tmp_path / "t")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    seen_warning_first = []
    real = data_mod._read_decode

    def decode(path):
        seen_warning_first.append(any("cannot be written" in r.getMessage()
                                      for r in caplog.records))
        return real(path)

    monkeypatch.setattr(data_mod, "_read_decode", decode)
    with caplog.at_level(logging.WARNING):
        d = load_data(cfg(tree, blocker / "cache"))
    assert seen_warning_first and all(seen_warning_first)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "decoding without caching" in warnings[0]
    assert_matches_disk(d, tree)


def test_read_only_cache_folder_decodes_without_caching(tmp_path, monkeypatch, caplog) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    cache.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == cache else real(p, mode))
    with caplog.at_level(logging.WARNING):
        d = load_data(cfg(tree, cache))
    assert f"cache folder {cache} cannot be written (no write permission" in caplog.text
    assert list(cache.iterdir()) == []
    assert_matches_disk(d, tree)


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch, caplog) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"

    def disk_full(f, **arrays):
        f.write(b"PK\3\4 half an entry")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with caplog.at_level(logging.WARNING):
        d = load_data(cfg(tree, cache))
    assert_matches_disk(d, tree)
    assert "No space left on device" in caplog.text
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock"]


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from cifarnet.config.schema import DataConfig
    from cifarnet.data.datasets import load_data

    def stuck(f, **arrays):
        f.write(b"PK" + bytes(100_000))
        f.flush()
        print("writing", flush=True)
        time.sleep(600)

    np.savez = stuck
    load_data(DataConfig(path=sys.argv[1], cache_dir=sys.argv[2]))
""")


def test_temporary_file_of_a_killed_writer_is_removed(tmp_path, decodes) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tree), str(cache)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        (tmp,) = cache.glob("*.tmp")
        assert tmp.stat().st_size > 100_000
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert tmp.exists()
    d = load_data(cfg(tree, cache))
    assert not tmp.exists() and list(cache.glob("*.tmp")) == []
    assert_matches_disk(d, tree)
    assert _entry(cache).stat().st_size > 0


def test_temporary_file_of_a_live_writer_is_left_alone(tmp_path) -> None:
    from filelock import FileLock

    cache = tmp_path / "cache"
    cache.mkdir()
    tmp = cache / "imagefolder-0123456789abcdef-v2.npz.deadbeef.tmp"
    tmp.write_bytes(b"in progress")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from filelock import FileLock
        with FileLock({str(cache / 'imagefolder-0123456789abcdef-v2.lock')!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        load_data(cfg(bmp_tree(tmp_path / "t"), cache))
        assert tmp.exists()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(cache / "imagefolder-0123456789abcdef-v2.lock", timeout=5):
        pass
    load_data(cfg(tmp_path / "t", cache))
    assert not tmp.exists()


CONCURRENT = textwrap.dedent("""
    import hashlib, sys, time
    from pathlib import Path
    from cifarnet.config.schema import DataConfig
    from cifarnet.data import datasets as m

    real, n = m._read_decode, [0]
    def slow(path):
        n[0] += 1
        time.sleep(0.1)
        return real(path)
    m._read_decode = slow
    print("ready", flush=True)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.01)
    d = m.load_data(DataConfig(path=sys.argv[1], cache_dir=sys.argv[2]))
    print(n[0], d.fingerprint, hashlib.sha256(d.train.images.tobytes()).hexdigest(), flush=True)
""")


def test_concurrent_loads_decode_once_and_agree(tmp_path) -> None:
    tree, cache, go = bmp_tree(tmp_path / "t", 4, 2), tmp_path / "cache", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tree), str(cache), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    results = [o.split() for o, _ in outs]
    assert sorted(int(r[0]) for r in results) == [0, 0, 12]  # one decoder, two readers
    assert len({(r[1], r[2]) for r in results}) == 1
    assert sum("waiting for another process" in err for _, err in outs) >= 1


def test_a_file_changed_between_hashing_and_decoding_is_not_cached(tmp_path,
                                                                     monkeypatch) -> None:
    tree, cache = bmp_tree(tmp_path / "t"), tmp_path / "cache"
    target = tree / "test" / "bee" / "0001.bmp"
    real = data_mod.file_digest

    def digest_then_change(path):
        d = real(path)
        if path == str(target):
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(target)
        return d

    monkeypatch.setattr(data_mod, "file_digest", digest_then_change)
    with pytest.raises(data_mod.DataError, match=f"{target}: changed while the data was being"):
        load_data(cfg(tree, cache))
    assert not list(cache.glob("*.npz"))
    monkeypatch.setattr(data_mod, "file_digest", real)
    assert_matches_disk(load_data(cfg(tree, cache)), tree)
