"""The layers' import contract: the model and the training loop know nothing of tracking or
search, the statistics know nothing of torch, and only the queue and the search touch Optuna.

Every import counts, lazy ones inside functions included (read from the source's AST)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cifarnet"

# (files, forbidden top-level modules)
RULES = [
    ("model/*.py", {"mlflow", "optuna"}),
    ("training/*.py", {"mlflow", "optuna"}),
    ("analysis/stats.py", {"torch", "torchvision", "mlflow", "optuna"}),
    ("analysis/power.py", {"torch", "torchvision", "mlflow", "optuna"}),
    ("config/*.py", {"torch", "mlflow", "optuna"}),
]
OPTUNA_HOMES = ("queue", "search")


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module that `source` imports, at any depth of the code."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def imported_paths(source: str) -> set[str]:
    """Full dotted names of the modules `source` imports from, at any depth of the code."""
    return {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
            for a in node.names} | {node.module for node in ast.walk(ast.parse(source))
                                    if isinstance(node, ast.ImportFrom) and node.module}


def violations(pattern: str, forbidden: set[str], root: Path = PACKAGE) -> list[str]:
    return [f"{path.relative_to(root)} imports {name}"
            for path in sorted(root.glob(pattern))
            for name in sorted(imported_modules(path.read_text()) & forbidden)]


@pytest.mark.parametrize("pattern,forbidden", RULES, ids=[r[0] for r in RULES])
def test_layer_does_not_import(pattern: str, forbidden: set[str]) -> None:
    assert list(PACKAGE.glob(pattern)), f"no file matches {pattern}"
    assert violations(pattern, forbidden) == []


def test_only_queue_and_search_import_optuna() -> None:
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if "optuna" in imported_modules(p.read_text())
             and p.relative_to(PACKAGE).parts[0] not in OPTUNA_HOMES]
    assert found == []


def test_the_checker_sees_lazy_and_aliased_imports() -> None:
    """A forbidden import added anywhere in a file, however spelled, is found."""
    source = ("import torch\n"
              "def f():\n    from mlflow.entities import Metric\n"
              "class C:\n    def g(self):\n        import optuna.trial as t\n"
              "from . import sibling\n")
    assert imported_modules(source) == {"torch", "mlflow", "optuna"}


def test_a_forbidden_import_fails_the_contract(tmp_path) -> None:
    fake = tmp_path / "cifarnet"
    (fake / "training").mkdir(parents=True)
    (fake / "training" / "loop.py").write_text("def train():\n    import mlflow\n")
    assert violations("training/*.py", {"mlflow"}, fake) == ["training/loop.py imports mlflow"]


# a private module, attribute or method of Optuna or MLflow, and the names the old queue used
PRIVATE = re.compile(r"optuna[.\w]*\._|mlflow[.\w]*\._|\._trial_id|\._backend|"
                     r"_get_stale_trial_ids")


# not yet on the public API: the grid's old work queue (it goes when the grid runs on the
# executors) and relocate-store's cache of MLflow artifact repositories
NOT_YET = ("queue/", "tracking/location.py")


def test_no_private_name_of_optuna_or_mlflow_is_used() -> None:
    """Optuna's and MLflow's public API only: a private name breaks with any release."""
    found = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
             for p in sorted(PACKAGE.rglob("*.py"))
             if not str(p.relative_to(PACKAGE)).startswith(NOT_YET)
             for n, line in enumerate(p.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert found == []


def test_only_the_grid_runner_imports_the_queue() -> None:
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if p.relative_to(PACKAGE).parts[0] != "queue"
             and str(p.relative_to(PACKAGE)) != "ablation/runner.py"
             and any(m == "cifarnet.queue" or m.startswith("cifarnet.queue.")
                     for m in imported_paths(p.read_text()))]
    assert found == []
