"""One signal policy for every command: SIGINT, SIGTERM and SIGHUP stop the work cleanly.

The first signal sets a stop event: the trainer's `StopOnEvent` callback turns it into
KeyboardInterrupt at the next batch boundary and the current run ends KILLED (a rerun resumes
it); the command then exits 128 + the signal's number (130, 143, 129) with one line. A
second signal stops at once.

**A handler takes no lock.** Python runs a signal handler in the main thread between two
bytecodes, possibly while that thread holds a lock; a handler that takes the same lock waits
for itself forever. `threading.Event.set` takes the lock that `Event.wait` holds around its
checks, so a handler that set an Event while the main thread waited on it deadlocked (seen:
`run --workers 2` hung for good after a second SIGTERM, its workers already gone). The stop
request is therefore a `StopFlag`: setting it is one attribute store, and waiting on it polls.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopFlag:
    """An event a signal handler may set: the `is_set`/`set`/`wait` of `threading.Event`
    without its lock (see the module's note). `wait` polls every `poll_s` seconds, so a
    waiter sees a `set` within that time; any thread may wait."""

    def __init__(self, poll_s: float = 0.05) -> None:
        self._flag = False
        self.poll_s = poll_s

    def set(self) -> None:
        self._flag = True  # one store: atomic under the GIL, no lock taken

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False when `timeout` seconds (None: no limit) passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._flag:
            left = self.poll_s if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.poll_s, left))
        return True


class StopRequest:
    """The stop flag shared with the work, and the signal that set it."""

    def __init__(self) -> None:
        self.event = StopFlag()
        self.signum: int | None = None
        self.received: list[int] = []  # every signal, in order (`record_signals`)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (130 when stopped by a KeyboardInterrupt alone)."""
        return 128 + (self.signum or signal.SIGINT)


@contextlib.contextmanager
def _handling(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for every signal of SIGNALS during the block; the old handlers after."""
    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the policy for the block (main thread only); restore the old handlers after."""
    request = StopRequest()

    def handler(signum: int, frame: object) -> None:
        if request.event.is_set():  # a second signal: stop now, wherever we are
            raise KeyboardInterrupt
        request.signum = signum
        request.event.set()

    with _handling(handler):
        yield request


@contextlib.contextmanager
def _stop_raising(exc: type[BaseException]) -> Iterator[StopRequest]:
    """The first signal raises `exc` where the process is, recorded in the request."""
    request = StopRequest()

    def handler(signum: int, frame: object) -> None:
        request.signum = signum
        request.event.set()
        raise exc

    with _handling(handler):
        yield request


def stop_at_once() -> contextlib.AbstractContextManager[StopRequest]:
    """The policy of a command with no run to end (report, search-report, summary,
    relocate-store): the first signal stops it where it is (KeyboardInterrupt, recorded in
    the request), so the command exits 128 + the signal's number with one line, as the others
    do, instead of a traceback (SIGINT) or a silent death (SIGTERM, SIGHUP)."""
    return _stop_raising(KeyboardInterrupt)


class Stopped(BaseException):
    """Raised by the handler of `stop_while_starting`: a BaseException that is not a
    KeyboardInterrupt, so that click passes it on untouched (it turns KeyboardInterrupt into
    a blank line and `Aborted!`)."""


def stop_while_starting() -> contextlib.AbstractContextManager[StopRequest]:
    """The policy of the command line until a command installs its own (`main`'s): the first
    signal raises `Stopped` where the process is, recorded in the request."""
    return _stop_raising(Stopped)


@contextlib.contextmanager
def record_signals() -> Iterator[StopRequest]:
    """The policy of a supervisor (`run --workers`): every signal is recorded in
    `request.received` (the first also in `signum`, and the event set) and none raises, so
    the supervisor is never interrupted inside a lock it holds; it passes each signal on to
    its workers, which apply the policy of `stop_on_signals` themselves."""
    request = StopRequest()

    def handler(signum: int, frame: object) -> None:
        request.signum = request.signum or signum
        request.received.append(signum)
        request.event.set()

    with _handling(handler):
        yield request
