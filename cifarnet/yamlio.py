"""Reading YAML files safely, with user errors instead of tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cifarnet.errors import UserError


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, read with the safe loader."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data
