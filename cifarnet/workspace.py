"""Where a command keeps its state: resolved once by the CLI and passed down, so no module
reads the working directory or the environment on its own.

The default layout of a folder that cifarnet-exp runs in:
  mlruns/mlflow.db       MLflow's SQLite store (unless MLFLOW_TRACKING_URI is set)
  mlruns/artifacts/      its artifacts, one folder per experiment
  mlruns/optuna.db       Optuna studies of searches and tune: blocks (unless --storage /
                         CIFARNET_STORAGE)
  experiments/           specs looked up by relative path or shipped name
  reports/               `report` and `search-report` output
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cifarnet.errors import UserError


@dataclass(frozen=True)
class Workspace:
    """Absolute locations of a command's stores and folders."""

    root: Path
    tracking_uri: str
    storage_url: str
    specs_dir: Path
    reports_dir: Path

    @classmethod
    def resolve(cls, root: Path | None = None,
                environ: Mapping[str, str] | None = None) -> "Workspace":
        """The workspace of folder `root` (default: the working directory). The tracking URI
        is `MLFLOW_TRACKING_URI` when set, else SQLite at `<root>/mlruns/mlflow.db`; the
        storage is `CIFARNET_STORAGE` when set, else SQLite at `<root>/mlruns/optuna.db`."""
        env = os.environ if environ is None else environ
        root = (root or Path.cwd()).resolve()
        local = root / "mlruns"
        return cls(root=root,
                   tracking_uri=(env.get("MLFLOW_TRACKING_URI")
                                 or f"sqlite:///{local / 'mlflow.db'}"),
                   storage_url=(env.get("CIFARNET_STORAGE")
                                or f"sqlite:///{local / 'optuna.db'}"),
                   specs_dir=root / "experiments", reports_dir=root / "reports")

    @property
    def local_root(self) -> Path:
        """The folder of the embedded stores (`<root>/mlruns`)."""
        return self.root / "mlruns"

    @property
    def local_tracking(self) -> bool:
        """True when MLflow's store is the embedded SQLite file under `local_root`."""
        return self.tracking_uri == f"sqlite:///{self.local_root / 'mlflow.db'}"

    @property
    def tracking_key(self) -> str:
        """What an error about the tracking store names as its key: the embedded store's
        folder `mlruns/`, else `MLFLOW_TRACKING_URI`, the variable that chose another store
        (naming the variable when it was never set misled the reader)."""
        return "mlruns/" if self.local_tracking else "MLFLOW_TRACKING_URI"

    @property
    def embedded_storage_url(self) -> str:
        """The embedded Optuna storage, SQLite at `<root>/mlruns/optuna.db`."""
        return f"sqlite:///{self.local_root / 'optuna.db'}"

    def storage_key(self, url: str) -> str:
        """What an error about the Optuna storage `url` names as its key: `mlruns/` for the
        embedded storage, `CIFARNET_STORAGE` when that variable chose `url`, else `--storage`
        (the command line chose it). Before, every error said `--storage`, also to a user who
        had only set the variable."""
        if url == self.embedded_storage_url:
            return "mlruns/"
        return "CIFARNET_STORAGE" if url == self.storage_url else "--storage"

    def artifact_location(self, experiment: str) -> str | None:
        """Where a new experiment keeps its artifacts: under `mlruns/artifacts/<name>` for the
        embedded store; None (the server decides) for any other store."""
        if not self.local_tracking:
            return None
        return (self.local_root / "artifacts" / experiment).as_uri()


def make_folder(path: Path, key: str) -> Path:
    """Create the output folder `path` (and its parents) if missing; return it. Raises
    UserError naming `key` (the option or config key that chose it) when it cannot be made
    (a file in the way, no permission): before, a traceback and exit 1."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{key}: cannot create the folder {path}: "
                        f"{exc.strerror or exc}") from None
    return path


def check_folder(path: Path, key: str) -> Path:
    """Refuse (UserError naming `key`, in `make_folder`'s words) an output folder that could
    not be created: the nearest existing path above it is a file, or not writable. Creates
    nothing: a command refused later (a bad store URL) left an empty folder behind when it
    was made first. Returns `path`."""
    for above in (path, *path.parents):
        if above.exists():
            if not above.is_dir():
                raise UserError(f"{key}: cannot create the folder {path}: Not a directory")
            if above != path and not os.access(above, os.W_OK | os.X_OK):
                raise UserError(f"{key}: cannot create the folder {path}: Permission denied")
            break
    return path
