"""Retrying a database access that failed with an error known to be transient.

`retry_setup` retries only errors that go away by themselves: SQLite busy or locked by
another writer; PostgreSQL's serialization failure and deadlock; and a PostgreSQL server
restarting (its connections terminated, "the database system is shutting down" or "starting
up"). Anything else (a bad URL, a refused connection, a unique-key violation) is raised at
once.

`retry_startup` also retries the errors of a start-up race. Our own workers create a store
one at a time (under `cifarnet.tracking.startup.store_lock`), but a program that does not
take that lock (optuna-dashboard, `optuna.load_study` in a notebook, `mlflow ui`) may create
the same new database at the same moment; the loser of that race sees its schema half made
("UNIQUE constraint failed: alembic_version.version_num", "table ... already exists",
"duplicate column name", MLflow's "Online migration expected to match one row"). A second
try finds the tables made and only checks them.
"""

from __future__ import annotations

import functools
import inspect
import random
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")
# SQLSTATE: serialization_failure, deadlock_detected; a server restarting: admin_shutdown
# (its connections are terminated), crash_shutdown, cannot_connect_now (starting up)
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
TRANSIENT_SQLITE = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})
# the same, as they read once wrapped by MLflow or Optuna (which keep only the message)
TRANSIENT_MARKERS = ("database is locked", "database table is locked", "deadlock detected",
                     "could not serialize access", "the database system is starting up",
                     "the database system is shutting down",
                     "terminating connection due to administrator command",
                     "server closed the connection unexpectedly")
# a store created at the same moment by a program outside our start-up lock
STARTUP_RACE_MARKERS = ("alembic_version", "already exists", "duplicate column name",
                        "online migration expected to match one row",
                        "circulardependencyerror", "circular dependency")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return seen


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or an error it wraps) is one that a retry can cure."""
    for e in _chain(exc):
        if getattr(e, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return True
        if getattr(e, "sqlite_errorname", None) in TRANSIENT_SQLITE:
            return True
        if any(m in str(e).lower() for m in TRANSIENT_MARKERS):
            return True
    return False


def is_unique_violation(exc: BaseException) -> bool:
    """True when `exc` (or an error it wraps) is a unique-key violation (SQLSTATE 23505,
    SQLite's "UNIQUE constraint failed"): on an upsert that reads, then inserts (MLflow's
    tags and dataset rows), the loser of two workers writing the same row at once."""
    for e in _chain(exc):
        if getattr(e, "sqlstate", None) == "23505":
            return True
        text = str(e).lower()
        if "unique constraint failed" in text or "violates unique constraint" in text:
            return True
    return False


def is_startup_race(exc: BaseException) -> bool:
    """True when `exc` (or an error it wraps) reads as the loser's side of two programs
    creating one database's schema at once (see the module's docstring)."""
    return any(m in f"{type(e).__name__}: {e}".lower()
               for e in _chain(exc) for m in STARTUP_RACE_MARKERS)


PAUSE_S = 0.5  # the first retry's pause, seconds (about)


def retry_setup(fn: Callable[[], T], attempts: int = 6, pause_s: float | None = None,
                retry_if: Callable[[BaseException], bool] = is_transient) -> T:
    """Call `fn`, retrying with a growing, randomised pause (about `pause_s` x attempt
    seconds, default `PAUSE_S`: 7.5 s over the 5 pauses) while it fails with an error
    `retry_if` accepts (default: `is_transient`); any other error, or the last of `attempts`
    attempts' error, is raised."""
    pause_s = PAUSE_S if pause_s is None else pause_s
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not retry_if(exc):
                raise
            time.sleep(pause_s * (1 + attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def retry_startup(fn: Callable[[], T], attempts: int = 6, pause_s: float | None = None) -> T:
    """`retry_setup` for the first opening of a store: transient errors and the errors of a
    start-up race with a program outside our lock (`is_startup_race`) are retried."""
    return retry_setup(fn, attempts, pause_s,
                       retry_if=lambda e: is_transient(e) or is_startup_race(e))


_retrying = threading.local()  # a call wrapped by `retrying_methods` is running in this thread


def _transient_or_race(exc: BaseException) -> bool:
    return is_transient(exc) or is_unique_violation(exc)


def _retried(method: Callable[..., Any], upsert: bool) -> Callable[..., Any]:
    retry_if = _transient_or_race if upsert else is_transient

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_retrying, "active", False):  # inside a retried call: retried as a whole
            return method(self, *args, **kwargs)
        _retrying.active = True
        try:
            return retry_setup(lambda: method(self, *args, **kwargs), retry_if=retry_if)
        finally:
            _retrying.active = False
    return call


def retrying_methods(base: type, also: tuple[str, ...] = (),
                     upserts: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Class decorator: every public method of `base`, and the private ones named in `also`
    (those a wrapper of the class calls directly), as the decorated subclass has them
    (overrides included), is retried by `retry_setup` while its error is transient; the
    methods named in `upserts` also on a unique-key violation (`is_unique_violation`: the
    second attempt finds the other writer's row and updates it). A retried method that
    calls another is retried as a whole, once: the inner call is not retried again. For
    clients of a store whose calls are safe to repeat (see the users' docstrings for the
    exceptions)."""
    def decorate(cls: type) -> type:
        names = [n for n, _ in inspect.getmembers(base, inspect.isfunction)
                 if not n.startswith("_")]
        for name in [*names, *also]:
            setattr(cls, name, _retried(getattr(cls, name), upsert=name in upserts))
        return cls
    return decorate
