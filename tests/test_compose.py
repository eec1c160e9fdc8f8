"""The team server's docker-compose.yml, checked by parsing it (Docker does not run here):
every port on 127.0.0.1, no password in the file, the MLflow server built from a Dockerfile
pinned to the clients' MLflow, with its PostgreSQL driver, behind MLflow's basic-auth app."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_arg(path: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path}: no ARG {name}=..."
    return match.group(1)


def test_every_port_is_bound_to_localhost() -> None:
    services = compose()["services"]
    ports = [(name, p) for name, s in services.items() for p in s.get("ports", [])]
    assert ports, "the compose file publishes no port"
    for name, port in ports:
        assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is open to every interface"


def test_no_password_is_written_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"://[^/\s:@]+:[^@\s]+@", text), "a URL with a password"
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        keys = env if isinstance(env, dict) else [e.split("=")[0] for e in env]
        assert not [k for k in keys if "PASSWORD" in k.upper()], f"{name}: a literal password"
        if name in ("postgres", "mlflow"):  # they need the passwords: from the env file
            assert service.get("env_file") == "docker/.env", name


def test_the_env_file_is_not_committed_and_its_example_is() -> None:
    example = (REPO / "docker" / ".env.example").read_text()
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert re.search(rf"^{key}=", example, re.MULTILINE), key
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env is not ignored by git"


def locked(name: str) -> str:
    """The version requirements.lock pins (the README's install reads it)."""
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in requirements.lock")


def test_mlflow_server_is_built_from_a_dockerfile_pinned_to_the_clients_mlflow() -> None:
    service = compose()["services"]["mlflow"]
    assert "image" not in service, "a prebuilt image instead of docker/mlflow/Dockerfile"
    build = service["build"]
    context = REPO / (build if isinstance(build, str) else build["context"])
    dockerfile = context / "Dockerfile"
    assert dockerfile_arg(dockerfile, "MLFLOW_VERSION") == version("mlflow") == locked("mlflow")
    assert dockerfile_arg(dockerfile, "PSYCOPG_VERSION") == version("psycopg") == locked(
        "psycopg")
    assert '"mlflow==${MLFLOW_VERSION}"' in dockerfile.read_text()
    # nothing installed when the container starts: it must start without internet
    assert "pip install" not in COMPOSE.read_text()
    entry = (context / "entrypoint.sh").read_text()
    assert "--app-name basic-auth" in entry and "MLFLOW_BACKEND_STORE_URI" in entry
