"""The Optuna storage of searches and tuned arms: Optuna's own `RDBStorage`, used through its
public API only.

Heartbeats and stale trials are Optuna's: a worker sends a heartbeat every
`heartbeat_interval` s while a trial runs (`Study.optimize` does it), a trial whose heartbeat
is older than `grace_period` s is failed by the next worker that starts a trial, and
`RetryHeartbeatStaleTrialCallback` enqueues it again with its parameters and user attributes
(its MLflow run, from which the retry resumes). Every public method of the storage is
retried while its error is transient (`tracking.retry`: a database restarting, SQLite busy).
"""

from __future__ import annotations

import warnings

import optuna
import sqlalchemy as sa

from cifarnet.errors import StoreError
from cifarnet.tracking.retry import retry_startup, retrying_methods
from cifarnet.tracking.startup import check_sqlite_shape, database_has_table
from cifarnet.tracking.urls import (
    check_not_in_memory,
    check_userinfo,
    masked,
    scrubbed,
    sqlite_path,
)
from cifarnet.workspace import Workspace

MAX_RETRY = 3  # a trial that went stale (or was interrupted) this often is left FAIL


def quiet_optuna() -> None:
    """Optuna logs errors only (a failed trial is said in one line by the search, not with
    Optuna's traceback), and no experimental-feature warnings (for terminal use)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that enqueues a failed trial again (parameters, user attributes and
    reported epochs), at most `MAX_RETRY` times in a row."""
    with warnings.catch_warnings():  # "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRY, inherit_intermediate_values=True)


@retrying_methods(optuna.storages.RDBStorage)
class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, each public method retried on a transient error."""


def open_storage(workspace: Workspace, url: str | None = None, heartbeat_interval: int = 10,
                 grace_period: int = 30) -> RetryingRDBStorage:
    """The Optuna storage at `url` (from `--storage`; default the workspace's), with
    heartbeats and stale trials retried. Its SQLite folder is made only for the embedded
    storage under `mlruns/`. A start-up race with another program creating the same new
    database is retried (`retry_startup`). Raises StoreError (one line naming what chose the
    URL, `Workspace.storage_key`, the password masked) when it cannot be opened."""
    url = url or workspace.storage_url
    key = workspace.storage_key(url)
    check_apart_from_tracking(workspace, url)
    embedded = url == workspace.embedded_storage_url
    check_storage_url(url, key, create_folder=embedded)
    path = sqlite_path(url)
    if path is not None and embedded:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return retry_startup(lambda: RetryingRDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=retry_callback(),
                engine_kwargs=None if path is not None else {"pool_pre_ping": True}))
    except Exception as exc:  # bad URL, unreachable server, missing driver
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise StoreError(f"{key} {masked(url)}: cannot open ({type(exc).__name__}: "
                         f"{scrubbed(text, url)})") from None


def check_apart_from_tracking(workspace: Workspace, url: str) -> None:
    """Refuse (StoreError naming `Workspace.storage_key`) a storage URL that is the MLflow
    tracking store's: both keep their schema version in a table `alembic_version`, so the
    second to open it failed with "Can't locate revision", after both schemas were written."""
    if url == workspace.tracking_uri:
        raise StoreError(f"{workspace.storage_key(url)} {masked(url)}: the same database as "
                         f"MLflow's tracking store ({workspace.tracking_key}); Optuna's storage and "
                         "MLflow need separate databases (both keep their schema version in "
                         "a table alembic_version)")


def storage_exists(url: str) -> bool:
    """Whether the Optuna storage at `url` holds Optuna's tables (a SQLite file that
    exists; a database with a `studies` table). Writes nothing: opening it created an empty
    storage. A database that cannot be reached counts as existing (opening it says why)."""
    path = sqlite_path(url)
    if path is not None:
        return path.is_file()
    return database_has_table(url, "studies") is not False  # unreachable: opening says why


def check_storage_url(url: str, key: str = "--storage", create_folder: bool = False) -> None:
    """Raise StoreError (one line naming `key`, the password masked) unless `url` is an
    SQLAlchemy URL whose database driver is installed and, for SQLite, whose folder and
    file have the right kind (`check_sqlite_shape`; its folder made later only with
    `create_folder`); connects to nothing and writes nothing (for `--dry-run`)."""
    check_userinfo(url, key)
    check_not_in_memory(url, key)
    try:
        sa.engine.make_url(url).get_dialect().import_dbapi()
    except Exception as exc:  # unparsable, unknown dialect, driver not installed
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise StoreError(f"{key} {masked(url)}: cannot use ({type(exc).__name__}: "
                         f"{scrubbed(text, url)})") from None
    path = sqlite_path(url)
    if path is not None:
        try:
            check_sqlite_shape(url, path, create_folder=create_folder)
        except StoreError as exc:
            raise StoreError(f"{key} {exc}") from None
