"""Nothing secret is shown or written: a password in a store URL appears in no output, no
file and no store, whichever command prints or writes the URL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import EXE, search_spec, write, write_spec

from cifarnet.tracking.urls import masked, scrubbed

SECRET = "S3cretPw0rd"


def with_password(url: str) -> str:
    """The same URL with a password (the test server trusts every local user, so it is
    accepted and ignored)."""
    return sa.make_url(url).set(password=SECRET).render_as_string(hide_password=False)


def run(folder: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([EXE, *args], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**base, **(env or {})})


def assert_nowhere(folder: Path, *results: subprocess.CompletedProcess) -> None:
    for r in results:
        assert SECRET not in r.stdout and SECRET not in r.stderr, r.stdout + r.stderr
    leaked = [p for p in folder.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_masked_hides_exactly_the_password() -> None:
    assert masked(f"postgresql://u:{SECRET}@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert masked(f"postgresql+psycopg://u:{SECRET}@h/db") == "postgresql+psycopg://u:***@h/db"
    assert masked("postgresql://u@h/db") == "postgresql://u@h/db"
    assert masked("sqlite:////tmp/x/optuna.db") == "sqlite:////tmp/x/optuna.db"
    assert masked(f"http://u:{SECRET}@h:5000") == "http://u:***@h:5000"
    assert masked(f"my-scheme://u:{SECRET}@h") == "my-scheme://u:***@h"  # SQLAlchemy cannot parse
    assert scrubbed(f"failed: {SECRET} at postgresql://u:{SECRET}@h/db",
                    f"postgresql://u:{SECRET}@h/db") == "failed: *** at postgresql://u:***@h/db"


def test_every_form_of_a_password_is_masked_and_nothing_else() -> None:
    """The kind: a password reaching a message in a form the masking missed, or the masking
    eating ordinary text. Query-string and conninfo passwords were shown; a one-letter
    password turned every 'a' of a message into ***."""
    assert masked(f"postgresql://u@h:5432/db?password={SECRET}&sslmode=require") == \
        "postgresql://u@h:5432/db?password=***&sslmode=require"
    assert masked(f"mysql://u@h/db?passwd={SECRET}") == "mysql://u@h/db?passwd=***"
    assert masked(f"postgresql://u@h/db?sslpassword={SECRET}") == \
        "postgresql://u@h/db?sslpassword=***"
    short = "postgresql://alice:a@h/alpha"
    assert masked(short) == "postgresql://alice:***@h/alpha"
    assert scrubbed("database alpha: role alice cannot connect", short) == \
        "database alpha: role alice cannot connect"
    assert scrubbed(f"bad conninfo: dbname=db user=u password={SECRET} host=h",
                    "postgresql://u@h/db") == "bad conninfo: dbname=db user=u password=*** host=h"
    assert scrubbed(f"at postgresql://u@h/db?password={SECRET}&x=1",
                    f"postgresql://u@h/db?password={SECRET}&x=1") == \
        "at postgresql://u@h/db?password=***&x=1"
    # a raw "@" in the password: masked whole (the driver would take "PW@h" for the host),
    # and refused by the commands; a percent-encoded libpq option in the query
    assert masked(f"postgresql://u:{SECRET}@PW@h:1/x") == "postgresql://u:***@h:1/x"
    assert SECRET not in masked(f"postgresql://u@h/db?options=-c%20password%3D{SECRET}")
    # a password inside a longer word is not a token of it; standing alone it is masked
    assert scrubbed("pass1234x and pass1234", "postgresql://u:pass1234@h/db") == \
        "pass1234x and ***"


@pytest.mark.slow
@pytest.mark.postgres
def test_search_and_search_report_never_show_the_password(tiny_tree, tmp_path,
                                                          pg_database) -> None:
    storage = with_password(pg_database("secret"))
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=2))
    searched = run(tmp_path, "search", str(spec), "--storage", storage, "--no-final")
    assert searched.returncode == 0, searched.stderr
    assert "optuna-dashboard postgresql://postgres:***@127.0.0.1:5432/" in searched.stdout
    report = run(tmp_path, "search-report", "tiny_search", "--storage", storage)
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "reports" / "search.tiny_search" / "search.md").read_text()
    assert "Dashboard: `optuna-dashboard postgresql://postgres:***@" in md
    assert_nowhere(tmp_path, searched, report)
    engine = sa.create_engine(storage)
    with engine.connect() as conn:  # nor in the study's attributes
        for table in ("study_user_attributes", "study_system_attributes",
                      "trial_user_attributes", "trial_system_attributes"):
            hits = conn.execute(sa.text(f"select count(*) from {table} "
                                        f"where value_json like '%{SECRET}%'")).scalar()
            assert hits == 0, table
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["search", "search-report"])
def test_a_storage_that_cannot_be_opened_is_named_without_its_password(
        command, tiny_tree, tmp_path) -> None:
    bad = f"postgresql://cifarnet:{SECRET}@127.0.0.1:1/queue"
    target = {"search": lambda: str(write(tmp_path, search_spec(tiny_tree, tmp_path))),
              "search-report": lambda: "tiny_search"}[command]()
    r = run(tmp_path, command, target, "--storage", bad)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: --storage postgresql://cifarnet:***@127.0.0.1:1/queue: "
                               "cannot open"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert_nowhere(tmp_path, r)


@pytest.mark.slow
def test_a_tracking_store_that_cannot_be_opened_is_named_without_its_password(
        tiny_tree, tmp_path) -> None:
    uri = f"postgresql://cifarnet:{SECRET}@127.0.0.1:1/mlflow"
    spec = str(write_spec(tmp_path, tiny_tree))
    ran = run(tmp_path, "run", spec, env={"MLFLOW_TRACKING_URI": uri})
    ui = run(tmp_path, "ui", "--port", "5998", env={"MLFLOW_TRACKING_URI": uri})
    for r in (ran, ui):
        assert r.returncode == 2, r.stderr
        assert "MLFLOW_TRACKING_URI postgresql://cifarnet:***@127.0.0.1:1/mlflow: cannot " \
               "open" in r.stderr
    assert_nowhere(tmp_path, ran, ui)


@pytest.mark.parametrize("env, args", [
    ({}, ["--storage", f"postgresql://u:{SECRET}@PW@127.0.0.1:1/x"]),
    ({"MLFLOW_TRACKING_URI": f"http://u:{SECRET}@127.0.0.1:1"}, []),
    ({"MLFLOW_TRACKING_URI": f"postgresql://u:{SECRET}@PW@127.0.0.1:1/x"}, []),
])
def test_unreachable_or_malformed_stores_are_one_line_without_the_password(
        tiny_tree, tmp_path, env, args) -> None:
    """An MLflow server that does not answer hung `run` for minutes and then printed
    tracebacks holding the URL and its password; a raw '@' in a password leaked the part
    after it as a host name."""
    spec = str(write_spec(tmp_path, tiny_tree, store=False))
    r = run(tmp_path, "run", spec, *args, env=env)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    assert "***" in r.stderr and "Traceback" not in r.stderr
    assert_nowhere(tmp_path, r)
    assert not (tmp_path / "mlruns").exists()  # nothing written, the queue's storage included
