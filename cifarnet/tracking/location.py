"""An embedded store that was copied or moved: detected before anything is written, and
pointed at its new place on request.

The embedded store (`<root>/mlruns/mlflow.db`, artifacts under `<root>/mlruns/artifacts`)
records every experiment's and run's artifact location as an absolute `file://` URI. Once
the folder is copied or moved, those URIs still name the old place: new checkpoints, reports
and dataset files would be written there (into the original of a copy, where nobody looks for
them, or nowhere, with an error, after a move), while the copy's own artifact files sit
unused. So a command that opens such a store refuses it (`check_location`, a UserError naming
both places and the fix), and `cifarnet-exp relocate-store` rewrites the recorded locations
from the old folder to the new one (`relocate`). The Optuna storage records no paths and needs
nothing. A tracking server (MLFLOW_TRACKING_URI) owns its artifact locations: not checked.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cifarnet.errors import UserError
from cifarnet.workspace import Workspace

# the columns of MLflow's schema that hold an artifact location (MLflow 3.x)
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"))


def _local_root_of(location: str | None) -> Path | None:
    """The `.../mlruns` folder an experiment's artifact location `file://.../mlruns/
    artifacts/<name>` lies in (the last `mlruns/artifacts` of the path); None for any other
    location (a server's, a cloud bucket's, MLflow's own default)."""
    if not location or not location.startswith("file://"):
        return None
    parts = Path(unquote(urlparse(location).path)).parts
    pairs = [i for i in range(len(parts) - 1) if parts[i:i + 2] == ("mlruns", "artifacts")]
    return Path(*parts[:pairs[-1] + 1]) if pairs else None


def foreign_roots(client: Any, workspace: Workspace) -> dict[Path, list[str]]:
    """The store folders other than `workspace.local_root` that this store's experiments
    keep their artifacts in, each with the names of its experiments (empty when the store
    is where it was made, or is not the embedded one)."""
    if not workspace.local_tracking:
        return {}
    from mlflow.entities import ViewType

    out: dict[Path, list[str]] = {}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        root = _local_root_of(exp.artifact_location)
        if root is not None and root != workspace.local_root:
            out.setdefault(root, []).append(exp.name)
    return out


def check_location(client: Any, workspace: Workspace) -> None:
    """Raise UserError when the embedded store was copied or moved (`foreign_roots`), naming
    the old folder, this one and the command that points the store at this one."""
    roots = foreign_roots(client, workspace)
    if roots:
        old, names = next(iter(roots.items()))
        raise UserError(f"{workspace.tracking_key}: this store was copied or moved from "
                        f"{old} (experiment {names[0]!r} keeps its artifacts there, where new "
                        "checkpoints and reports would go); run `cifarnet-exp relocate-store` "
                        "in this folder first")


@dataclass(frozen=True)
class Relocation:
    old: Path
    new: Path
    rows: dict[str, int]  # table -> rows rewritten


def relocate(workspace: Workspace) -> list[Relocation]:
    """Rewrite every artifact location recorded under another store folder to the same place
    under `workspace.local_root` (experiments, runs, logged models), in one transaction under
    the store's start-up lock. Returns one Relocation per old folder (none when the store is
    where it was made). Raises UserError for a store that is not the embedded one."""
    from cifarnet.tracking.client import mlflow_client
    from cifarnet.tracking.startup import init_tracking_store, store_lock

    if not workspace.local_tracking:
        raise UserError("MLFLOW_TRACKING_URI: relocate-store rewrites the embedded store "
                        f"({workspace.local_root}/mlflow.db); a tracking server keeps its own "
                        "artifact locations")
    init_tracking_store(workspace.tracking_uri)
    roots = foreign_roots(mlflow_client(workspace.tracking_uri), workspace)
    done = []
    with store_lock(workspace.tracking_uri, "mlflow"):
        con = sqlite3.connect(workspace.local_root / "mlflow.db")
        try:
            with con:
                for old in roots:
                    old_uri, new_uri = old.as_uri(), workspace.local_root.as_uri()
                    rows = {}
                    for table, column in LOCATION_COLUMNS:
                        cur = con.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE substr({column}, 1, ?) = ?",
                            (new_uri, len(old_uri) + 1, len(old_uri) + 1, old_uri + "/"))
                        rows[table] = cur.rowcount
                    done.append(Relocation(old, workspace.local_root, rows))
        finally:
            con.close()
    return done  # the command ends here: no artifact repository of this process is reused

