"""Reading YAML safely, with user errors instead of tracebacks.

PyYAML follows YAML 1.1, where `5e-5` (no dot) is a string; users write learning rates and
weight decays that way, so the loader also reads YAML 1.2 floats.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cifarnet.errors import UserError


class _Loader(yaml.SafeLoader):
    """The safe loader, plus floats written without a dot (`1e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, reading `5e-5` as a float."""
    return yaml.load(text, Loader=_Loader)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, read with the safe loader."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data
