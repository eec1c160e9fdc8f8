"""Start-up of the shared stores, once, under a lock: any number of workers may start at the
same moment against a new or existing store.

A store (MLflow's tracking database, Optuna's storage) is created and migrated on its first
use; two processes doing that at once race (MLflow's SQLite migrations fail with "Online
migration expected to match one row", "duplicate column name: step" or a
CircularDependencyError; table creation on PostgreSQL with "already exists"). `store_lock`
serialises that first use: a file lock (the `filelock` library) beside a SQLite file, a
session-level advisory lock (`pg_advisory_lock`) on PostgreSQL. The first worker through
creates the tables; the others find them and only check them. Other stores (an MLflow
server over HTTP, which initialises its own database) need no lock.
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cifarnet.errors import StoreError
from cifarnet.tracking.urls import (
    check_not_in_memory,
    check_userinfo,
    is_postgres,
    masked,
    scrubbed,
    sqlite_path,
)
from cifarnet.workspace import Workspace

LOCK_TIMEOUT_S = 300.0
HTTP_TIMEOUT_S = 10.0  # an MLflow server that does not answer its health check in this time


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_lock`, from a lock name."""
    return int.from_bytes(hashlib.sha256(f"cifarnet.{name}".encode()).digest()[:8], "big",
                          signed=True)


class LockHeld(StoreError):
    """The lock is held by another process for longer than the caller would wait."""


@contextmanager
def store_lock(url: str, name: str, timeout_s: float = LOCK_TIMEOUT_S, *,
               create_folder: bool = False, own_file: bool = False) -> Iterator[None]:
    """Hold the start-up lock of the store at `url` (`name` tells stores sharing one
    PostgreSQL database apart: "mlflow", "optuna").

    SQLite: `<file>.lock` beside the database file (the lock file is group-writable, so
    users of one group can share the store). Its folder is created only with
    `create_folder` (the embedded stores under `mlruns/`); a folder the user named that does
    not exist is refused (StoreError), as SQLite itself refuses it: creating it hid a
    mistyped path behind a new, empty store. PostgreSQL: an
    advisory lock on a connection of its own, released when the block ends (or the process
    dies). Anything else: no lock. `own_file`: SQLite's lock file is `<file>.<name>.lock`, so
    a long-held lock (a grid's launcher) does not block the store's start-up.
    Raises LockHeld when the lock is not had within
    `timeout_s` seconds, when the lock file cannot be made or opened (another user's store,
    a read-only disk), or the PostgreSQL server cannot be reached.
    """
    path = sqlite_path(url)
    if path is not None:
        from filelock import FileLock, Timeout

        check_sqlite_shape(url, path, create_folder=create_folder)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # group-writable: users of one group who share a store share its lock
            lock_path = f"{path}.{name}.lock" if own_file else f"{path}.lock"
            lock = FileLock(lock_path, timeout=timeout_s, mode=0o664)
            lock.acquire()
        except Timeout:
            raise LockHeld(f"{masked(url)}: the lock {lock_path} was held for more "
                           f"than {timeout_s:.0f} s; is another process stuck?") from None
        except OSError as exc:  # a folder or lock file of another user, a read-only disk
            raise StoreError(f"{masked(url)}: cannot take the start-up lock {path}.lock "
                             f"({exc.strerror or exc}); users who share a store need write "
                             "access to its folder and files (one group: chmod -R g+w)"
                             ) from None
        try:
            yield
        finally:
            lock.release()
    elif is_postgres(url):
        with _advisory_lock(url, advisory_key(name), timeout_s):
            yield
    else:
        yield


@contextmanager
def _advisory_lock(url: str, key: int, timeout_s: float) -> Iterator[None]:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        try:
            conn = engine.connect()
        except Exception as exc:
            raise StoreError(f"{masked(url)}: cannot open ({type(exc).__name__}: "
                             f"{_first_line(scrubbed(str(exc), url))})") from None
        with conn:
            deadline = time.monotonic() + timeout_s
            while not conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar():
                if time.monotonic() > deadline:
                    raise LockHeld(f"{masked(url)}: the lock (advisory lock {key}) "
                                   f"was held for more than {timeout_s:.0f} s")
                time.sleep(0.1)
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    conn.commit()
                except Exception:  # the server dropped the session: the lock went with it
                    pass
    finally:
        engine.dispose()


def check_sqlite_shape(url: str, path: Path, *, create_folder: bool = True) -> None:
    """Refuse a SQLite store whose folder is not a folder, or whose database file is not a
    file (StoreError naming the path): opening it gave a NotADirectoryError traceback, a
    misleading lock error, or MLflow's retries for a minute (a folder named mlflow.db).
    Without `create_folder` (a store the user named, not the embedded one under `mlruns/`),
    a folder that does not exist is refused too, as SQLite itself refuses it: making it hid
    a mistyped path behind a new, empty store."""
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise StoreError(f"{masked(url)}: {folder} is a file, not a folder; move it "
                                 "away or point the store elsewhere")
            break
    if not create_folder and not path.parent.is_dir():
        raise StoreError(f"{masked(url)}: the folder {path.parent} does not exist (the "
                         "folder of a SQLite store you name is not created; make it, or "
                         "correct the path)")
    if path.exists() and not path.is_file():
        raise StoreError(f"{masked(url)}: {path} is not a database file (a folder?); move it "
                         "away or point the store elsewhere")


def database_has_table(url: str, table: str) -> bool | None:
    """Whether the database at the SQLAlchemy `url` has `table`; None when the URL cannot be
    parsed or the database reached. Reads only (one connection, closed): whether a store
    exists is asked without creating it (`tracking.store.store_exists`,
    `search.storage.storage_exists`)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    try:
        engine = sa.create_engine(url, poolclass=NullPool)
    except Exception:  # noqa: BLE001 - unparsable, unknown dialect, driver missing
        return None
    try:
        return sa.inspect(engine).has_table(table)
    except Exception:  # noqa: BLE001 - refused, auth, unknown database
        return None
    finally:
        engine.dispose()


def check_http_store(uri: str, timeout_s: float = HTTP_TIMEOUT_S, *,
                     key: str = "MLflow tracking store") -> None:
    """Refuse an MLflow tracking server that does not answer `GET /health` within
    `timeout_s` seconds, asked once a second (StoreError, the URL masked): MLflow's own
    client retries an unreachable server for minutes, then raises with the URL, password
    included."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    health = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health",
                                      "", ""))
    request = urllib.request.Request(health)
    if parts.username is not None:  # basic auth, as MLflow sends it
        import base64

        token = base64.b64encode(f"{urllib.parse.unquote(parts.username)}:"
                                 f"{urllib.parse.unquote(parts.password or '')}".encode())
        request.add_header("Authorization", f"Basic {token.decode()}")
    deadline = time.monotonic() + timeout_s
    while True:  # a server restarting gets the rest of `timeout_s`, a second at a time
        try:
            with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())):
                return
        except urllib.error.HTTPError:
            return  # it answers (a proxy may guard /health): MLflow's own calls will tell
        except Exception as exc:  # noqa: BLE001 - refused, unresolvable, timed out, TLS
            if time.monotonic() + 1.0 < deadline:
                time.sleep(1.0)
                continue
            raise StoreError(f"{key} {masked(uri)}: cannot open "
                             f"({type(exc).__name__}: {_first_line(scrubbed(str(exc), uri))})"
                             ) from None


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "postgres", "mysql", "mssql"
                    )  # the stores MLflow 3 opens (its file store is refused), and databricks


def check_tracking_store(workspace: Workspace) -> None:
    """Read-only checks of the workspace's MLflow tracking store, made before anything is
    written anywhere (the queue's storage included): a URI MLflow opens as a store (not its
    file store, which MLflow 3 refuses with a traceback, nor in-memory SQLite), an HTTP
    server answers its health check, a SQLite store's folder and file have the right kind
    (its folder exists, unless it is the embedded store's), a PostgreSQL server accepts a
    connection. Raises StoreError (UserError for an in-memory store) naming
    `workspace.tracking_key`, the URL masked."""
    uri, key = workspace.tracking_uri, workspace.tracking_key
    check_userinfo(uri, key)
    check_not_in_memory(uri, key)
    if uri.split(":", 1)[0] == "databricks":  # `databricks` or `databricks://profile`
        return
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme == "file" or not scheme:
        raise StoreError(f"{key} {masked(uri)}: MLflow's file store is not supported (MLflow "
                         "3 keeps it in maintenance mode); give a database, e.g. "
                         "sqlite:///PATH/mlflow.db, or a tracking server's http:// URL")
    if scheme not in TRACKING_SCHEMES:
        raise StoreError(f"{key} {masked(uri)}: not a tracking store MLflow opens (its "
                         "schemes: http(s)://, sqlite:///, postgresql://, mysql://, mssql://, "
                         "databricks)")
    path = sqlite_path(uri)
    if scheme in ("http", "https"):
        check_http_store(uri, key=key)
    elif path is not None:
        try:
            check_sqlite_shape(uri, path, create_folder=workspace.local_tracking)
        except StoreError as exc:
            raise StoreError(f"{key} {exc}") from None
    elif is_postgres(uri):
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        engine = sa.create_engine(uri, poolclass=NullPool)
        try:
            with engine.connect():
                pass
        except Exception as exc:  # noqa: BLE001 - refused, auth, unknown database
            raise StoreError(f"{key} {masked(uri)}: cannot open "
                             f"({type(exc).__name__}: {_first_line(scrubbed(str(exc), uri))})"
                             ) from None
        finally:
            engine.dispose()


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def _made_aside(path: Path, migrate: Callable[[str], None]) -> None:
    """Make the SQLite store `path` as `<path>.new-<pid>`, migrate it, rename it into place;
    the temporary file goes whatever happens."""
    tmp = path.with_name(f"{path.name}.new-{os.getpid()}")
    try:
        migrate(f"sqlite:///{tmp}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def init_tracking_store(uri: str) -> None:
    """Create or migrate the MLflow tracking store at `uri` once, under its start-up lock.

    The first use of a database store makes MLflow create its tables, run its migrations and
    add the Default experiment (`SqlAlchemyStore.__init__`); here that first use is a
    `MlflowClient(uri).search_experiments(max_results=1)` inside `store_lock(uri, "mlflow")`.
    A new SQLite store is made as a temporary file beside its place and renamed into place
    once MLflow has migrated it: a start cut off (a full disk, `ulimit -f`) leaves no
    half-migrated store that every later start would fail on. A store that is not a database
    (an HTTP server) is left alone. Raises StoreError when the store cannot be opened (its
    URL masked)."""
    from cifarnet.tracking.retry import retry_startup

    if uri.startswith(("http://", "https://")):
        check_http_store(uri)
        return
    if sqlite_path(uri) is None and not is_postgres(uri):
        return
    from mlflow import MlflowClient

    def migrate(url: str) -> None:
        retry_startup(lambda: MlflowClient(url).search_experiments(max_results=1))

    path = sqlite_path(uri)
    try:
        with store_lock(uri, "mlflow"):
            if path is not None and not path.exists():
                _made_aside(path, migrate)
            else:
                migrate(uri)
    except StoreError as exc:
        raise StoreError(f"MLflow tracking store {exc}") from None
    except Exception as exc:
        raise StoreError(f"MLflow tracking store {masked(uri)}: cannot open "
                         f"({type(exc).__name__}: {_first_line(scrubbed(str(exc), uri))})"
                         ) from None
