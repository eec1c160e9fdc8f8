"""Shared fixtures: a tiny generated ImageFolder tree, an isolated cache, a fast folder, and a
PostgreSQL database per test (pg.py). Plain helpers live in helpers.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import make_tree
from pg import pg_database  # noqa: F401  (a fixture for every test module)


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(autouse=True, scope="module")
def _no_store_variables_across_modules():
    """A module's own fixtures (a grid run once per module) start without a store variable
    that an earlier module's fixture left behind (mlflow.set_tracking_uri writes
    MLFLOW_TRACKING_URI to the environment); the variables' absence is restored after."""
    patch = pytest.MonkeyPatch()
    for name in ("MLFLOW_TRACKING_URI", "CIFARNET_STORAGE"):
        patch.setenv(name, "")
        patch.delenv(name)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Decoded-array caches go to a temp folder, never the user's home."""
    monkeypatch.setenv("CIFARNET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CIFARNET_DATA", raising=False)
    # set first, so that monkeypatch restores the variable's absence after the test even when
    # the test set it (mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI to the environment)
    for name in ("MLFLOW_TRACKING_URI", "CIFARNET_STORAGE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture()
def fast_folder(tmp_path) -> Path:
    """A folder in memory (tmpfs) where there is one: SQLite commits without waiting for
    the disk, so five rounds of 500 claims fit in seconds."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="cifarnet-claims-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
