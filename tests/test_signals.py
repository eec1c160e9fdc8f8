"""The signal policy's handlers take no lock (cli.signals): a handler that set a
`threading.Event` while the main thread waited on it deadlocked `run --workers` for good."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cifarnet.signals import StopFlag

# Signals rain on a main thread that waits on the flag the handler sets, as the supervisor
# of `run --workers` does (record_signals; its loop waits 0.2 s at a time) and as `ui` does.
STORM = textwrap.dedent("""
    import os, signal, sys, threading, time
    from cifarnet.signals import StopFlag, record_signals
    kind = sys.argv[1]
    with record_signals() as request:
        if kind == "event":  # what the policy used before: threading.Event
            request.event = threading.Event()
        calm = []
        def storm():
            while not calm:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.0002)
        thread = threading.Thread(target=storm, daemon=True)
        thread.start()
        end = time.monotonic() + 2
        while time.monotonic() < end:
            request.event.wait(0)
        calm.append(1)
        thread.join()
    print("received", len(request.received))
""")


def _storm(kind: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STORM, kind], capture_output=True, text=True,
                          timeout=30)


def test_a_storm_of_signals_never_blocks_a_waiting_main_thread() -> None:
    done = _storm("flag")
    assert done.returncode == 0, done.stderr[-500:]
    assert int(done.stdout.split()[-1]) > 100


def test_the_event_it_replaces_does_block_in_the_same_storm() -> None:
    """The control: with threading.Event the same storm hangs or recurses in the handler
    (the lock `Event.set` waits for is held by the thread it interrupted)."""
    try:
        done = _storm("event")
    except subprocess.TimeoutExpired:
        return  # deadlocked
    # the handler recursed in Event.set until the main thread died (-15: the storm's next
    # SIGTERM met the default handler) instead of finishing the loop
    assert done.returncode != 0 and "received" not in done.stdout


@pytest.mark.parametrize("timeout", [0.0, 0.12])
def test_flag_wait_returns_false_after_its_timeout_and_true_once_set(timeout) -> None:
    flag = StopFlag(poll_s=0.01)
    assert flag.wait(timeout) is False and not flag.is_set()
    flag.set()
    assert flag.is_set() and flag.wait(timeout) is True and flag.wait() is True


# A signal that arrives after the command line is parsed but before the command installs
# its own policy (here: while the workspace is resolved, the group's first step).
EARLY = textwrap.dedent("""
    import os, signal, sys
    import cifarnet.workspace as w
    from cifarnet.cli.main import main
    resolve = w.Workspace.resolve.__func__
    def signalled(cls):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return resolve(cls)
    w.Workspace.resolve = classmethod(signalled)
    main(["summary"], prog_name="cifarnet-exp")
""")


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_starting_is_one_line_and_128_plus_its_number(tmp_path, name) -> None:
    """Before: SIGINT gave click's blank line and `Aborted!` with exit 1, SIGTERM and SIGHUP
    a silent death."""
    import signal

    done = subprocess.run([sys.executable, "-c", EARLY, name], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 128 + getattr(signal, name)
    assert done.stderr == "interrupted: stopped while starting\n"
    assert done.stdout == ""
