"""The layers' import contract: every import goes down the README's layer table; the model and
the training loop know nothing of tracking or search, the statistics know nothing of torch,
and only the search touches Optuna.

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
OPTUNA_HOMES = ("search",)
README = PACKAGE.parent / "README.md"


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


def test_only_search_imports_optuna() -> None:
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if "optuna" in imported_modules(p.read_text())
             and p.relative_to(PACKAGE).parts[0] not in OPTUNA_HOMES]
    assert found == []


def layers(readme: Path = README) -> list[str]:
    """The README's layer table, top row first: `errors`, `workspace`, ..., `cli`."""
    text = readme.read_text().split("<!-- layers -->", 1)[1].split("<!-- /layers -->", 1)[0]
    return [re.match(r"\| `([\w]+)", row)[1] for row in text.splitlines()
            if re.match(r"\| `\w+(/|\.py)`", row)]


def layer_of(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def upward_imports(table: list[str], root: Path = PACKAGE) -> list[str]:
    """Every import of a module of a lower row (or of no row) by a higher one."""
    rank = {name: i for i, name in enumerate(table)}
    found = []
    for path in sorted(root.rglob("*.py")):
        here = layer_of(path, root)
        if here in ("__init__", "__main__"):
            continue
        for module in sorted(imported_paths(path.read_text())):
            if module.startswith("cifarnet."):
                there = module.split(".")[1]
                if there != here and rank.get(there, len(table)) > rank.get(here, -1):
                    found.append(f"{path.relative_to(root)} imports {module}")
    return found


def test_every_package_is_a_row_of_the_layer_table() -> None:
    table = layers()
    found = {layer_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert sorted(found) == sorted(table)


def test_every_import_goes_down_the_layer_table() -> None:
    assert upward_imports(layers()) == []


def test_an_upward_import_fails_the_table(tmp_path) -> None:
    fake = tmp_path / "cifarnet"
    for pkg in ("config", "training"):
        (fake / pkg).mkdir(parents=True)
    (fake / "config" / "schema.py").write_text("def f():\n    from cifarnet.training import x\n")
    (fake / "training" / "loop.py").write_text("from cifarnet.config.schema import f\n")
    assert upward_imports(["config", "training"], fake) == [
        "config/schema.py imports cifarnet.training"]


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


def test_no_private_name_of_optuna_or_mlflow_is_used() -> None:
    """Optuna's and MLflow's public API only: a private name breaks with any release."""
    found = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
             for p in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert found == []


def test_no_function_of_the_package_is_over_60_lines() -> None:
    """A function a reader takes in at once (issue 25: the CLI only parses, calls, prints)."""
    long = [f"{p.relative_to(PACKAGE)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1})"
            for p in sorted(PACKAGE.rglob("*.py"))
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 60]
    assert long == []
