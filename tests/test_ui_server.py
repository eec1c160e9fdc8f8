"""`cifarnet-exp ui`: the address is printed once the server answers there, a port another
program holds is refused before anything is written, and a new store's creation leaves no
library log lines in a command's output."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from click.testing import CliRunner
from helpers import EXE, write_spec
from pg import free_port

from cifarnet.cli.main import main


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


@pytest.mark.slow
def test_the_address_is_printed_once_the_server_answers_there(tmp_path) -> None:
    port = free_port()
    server = subprocess.Popen([EXE, "ui", "--port", str(port)], cwd=tmp_path, env=_env(),
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = server.stderr.readline()
        assert first.startswith("starting the MLflow UI for sqlite:///"), first
        for line in server.stderr:  # the server's own log lines may come first
            if line.startswith("MLflow UI ready at"):
                break
        assert line.strip() == f"MLflow UI ready at http://127.0.0.1:{port}", line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            assert r.status == 200  # at once: no retry needed after the line
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 128 + signal.SIGTERM
        assert "interrupted: the MLflow UI was stopped" in server.stderr.read()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_a_port_in_use_is_refused_in_one_line_and_nothing_is_written(tmp_path,
                                                                    monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        r = CliRunner().invoke(main, ["ui", "--port", str(port)])
    assert r.exit_code == 2
    assert r.output == (f"error: --port {port}: already in use on 127.0.0.1 (another program "
                        "listens there); choose another port\n")
    assert time.monotonic() - started < 10  # refused before any server was started
    assert not (tmp_path / "mlruns").exists()


def test_a_new_store_leaves_no_library_log_lines(tiny_tree, tmp_path) -> None:
    """MLflow logs "Creating initial MLflow database tables..." (and alembic its migration
    steps) at INFO when it makes a store: not in the command's output."""
    spec = write_spec(tmp_path, tiny_tree, factors={"model.residual_add": [True]}, seeds=[0],
                      store=False)
    r = subprocess.run([EXE, "run", str(spec)], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    for noise in ("Creating initial MLflow database tables", "alembic", " INFO "):
        assert noise not in out, out


@pytest.mark.slow
def test_a_planted_log_link_is_not_followed_and_a_killed_ui_leaves_no_server(tmp_path) -> None:
    """`ui` wrote its server log to /tmp/cifarnet-ui-<port>.log and followed a link planted
    there (the link's target was overwritten); kill -9 of `ui` left the MLflow server
    listening, so the next `ui` was refused "port in use". Now the log is a new file of an
    unpredictable name, and the server ends with its command."""
    import tempfile
    from pathlib import Path

    port = free_port()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = Path(tempfile.gettempdir()) / f"cifarnet-ui-{port}.log"
    planted.unlink(missing_ok=True)
    planted.symlink_to(victim)
    server = subprocess.Popen([EXE, "ui", "--port", str(port)], cwd=tmp_path, env=_env(),
                              stderr=subprocess.PIPE, text=True)
    try:
        log = None
        for line in server.stderr:
            if "the server's log:" in line:
                log = Path(line.split("the server's log: ", 1)[1].split(";", 1)[0])
                break
        assert log is not None and log.is_file() and not log.is_symlink(), log
        assert log != planted and victim.read_text() == "precious\n"
        server.kill()  # kill -9 of the command
        server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while True:  # the server got SIGTERM from the kernel and lets the port go
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    break
            assert time.monotonic() < deadline, "the MLflow server outlived its command"
            time.sleep(0.5)
    finally:
        planted.unlink(missing_ok=True)
        if server.poll() is None:
            server.kill()
