"""Helpers shared by the tests: tiny generated data, shrunken real configs, tiny specs, and
readers of what a run left in MLflow and Optuna. Test files import from here, never from each
other."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from PIL import Image

from cifarnet.config.schema import RunConfig, build_config
from cifarnet.training.callbacks import Callback

SHARED_TREE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg"


# The real tree is decoded once per machine into the user's cache (about 35 s the first time).
SHARED_CACHE = Path.home() / ".cache" / "cifarnet"


CLASSES = ["ant", "bee", "cat", "dog"]


def make_tree(root: Path, per_class_train: int = 60, per_class_test: int = 15,
              classes: list[str] = CLASSES, size: int = 32) -> Path:
    """Class-coloured noisy squares as PNGs: learnable, and decoded losslessly."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3))
                img[:, :, k % 3] += 120 + 60 * (k // 3)
                x0 = rng.integers(0, size // 2)
                img[x0:x0 + 8, :, (k + 1) % 3] = 250
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


def tiny_config(tree: Path, tmp_path: Path, overrides: dict | None = None) -> RunConfig:
    """The real default config, shrunk: 1 epoch, tiny data, CPU (lightning-hydra style)."""
    base = {"data.path": str(tree), "data.num_workers": 0, "train.epochs": 1,
            "train.batch_size": 32, "train.device": "cpu", "train.out_dir": str(tmp_path / "runs")}
    base.update(overrides or {})
    return build_config(base)


def shared_tree_or_skip() -> Path:
    if not (SHARED_TREE / "train").is_dir():
        pytest.skip(f"{SHARED_TREE} not present")
    return SHARED_TREE



# --- grids ---------------------------------------------------------------------------

EXE = str(Path(sys.executable).with_name("cifarnet-exp"))


_TEMPLATE: list[Path] = []


def seed_store(folder: Path) -> None:
    """Put a migrated, empty MLflow store at `folder/mlruns/mlflow.db` unless one is there:
    a copy of one that the product made (`init_tracking_store`) once in this session.
    MLflow migrates a new SQLite store in about 2.7 s; tests of a store's first start make
    theirs from nothing (`write_spec(..., store=False)`)."""
    import shutil
    import tempfile

    from cifarnet.tracking.startup import init_tracking_store

    target = folder / "mlruns" / "mlflow.db"
    if target.exists():
        return
    if not _TEMPLATE:
        made = Path(tempfile.mkdtemp(prefix="cifarnet-store-template-")) / "mlflow.db"
        init_tracking_store(f"sqlite:///{made}")
        _TEMPLATE.append(made)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[0], target)


def write_spec(folder: Path, tree: Path, *, name: str = "tiny", epochs: int = 1,
               factors: dict | None = None, seeds: list[int] | None = None,
               store: bool = True) -> Path:
    """A tiny grid's spec in `folder` (and, with `store`, a migrated empty store beside it,
    `seed_store`)."""
    spec = {
        "name": name,
        "description": "a tiny grid for tests",
        "base": {"data": {"path": str(tree), "num_workers": 0},
                 "train": {"epochs": epochs, "batch_size": 32, "device": "cpu",
                           "out_dir": str(folder / "runs")}},
        "factors": factors or {"model.residual_add": [True, False]},
        "seeds": seeds or [0, 1],
        "hypotheses": [{"id": "H", "claim": "add helps", "a": {"model.residual_add": True},
                        "b": {"model.residual_add": False}, "expect": "a > b",
                        "rope": 0.002}] if factors is None else [],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    if store:
        seed_store(folder)
    return path


def runs_df(folder: Path, experiment: str = "tiny"):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment])


def children(df):
    return df[df["tags.cifarnet.role"] == "child"]


# --- interrupting a run at a chosen moment ----------------------------------------------

def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int,
                timeout: float = 300.0) -> None:
    """Send `sig` to `proc` at a moment `ready()` holds, checked again while the process is
    frozen (SIGSTOP), so the run cannot move past that moment between the check and the
    signal; a moment already gone lets the process go on and waits for the next.

    Before, tests read the store and signalled a running process: a run of a few tiny epochs
    could end in between (CI: the SIGTERM meant for a run landed after it had FINISHED)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "exited"
        assert time.monotonic() < deadline, "timed out waiting for the moment to signal"
        if ready():
            proc.send_signal(signal.SIGSTOP)
            try:
                if ready():
                    proc.send_signal(sig)
                    return
            finally:
                proc.send_signal(signal.SIGCONT)
        time.sleep(0.2)


def running_epochs(folder: Path) -> int | None:
    """Epochs the RUNNING run of the folder's SQLite MLflow store has logged (its `test_acc`
    steps; 0 before the first), or None when no run is RUNNING."""
    db = folder / "mlruns" / "mlflow.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as con:
            rows = con.execute(
                "select r.run_uuid, max(m.step) from runs r left join metrics m "
                "on m.run_uuid = r.run_uuid and m.key = 'test_acc' "
                "where r.status = 'RUNNING' group by r.run_uuid").fetchall()
    except sqlite3.OperationalError:
        return None
    return max((int(step or 0) for _, step in rows), default=None)



# --- searches -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def search_spec(tree: Path, folder: Path, **changes) -> dict:
    spec = {
        "name": "tiny_search",
        "base": {"data": {"path": str(tree), "num_workers": 0, "val_size": 40},
                 "train": {"epochs": 1, "batch_size": 32, "device": "cpu",
                           "out_dir": str(folder / "runs")}},
        "space": {"train.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                  "data.augment_strength": {"type": "float", "low": 0.0, "high": 2.0}},
        "objective": {"metric": "val_acc", "direction": "maximize"},
        "n_trials": 3,
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
    }
    spec.update(changes)
    return spec


def write(folder: Path, spec: dict) -> Path:
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study_of(folder: Path, name: str = "tiny_search") -> optuna.Study:
    return optuna.load_study(study_name=f"search.{name}",
                             storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")


def trial_runs(folder: Path, name: str = "tiny_search"):
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=[name])
    return df[df["tags.cifarnet.role"] == "trial"], df



class InterruptAfter(Callback):
    """Ctrl-C at the end of `epoch`, after its checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, ctx, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt
