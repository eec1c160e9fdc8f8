"""What every spec shares (ablation specs, search specs, `tune:` blocks): names, the header
(name, description, base), `--set` merging, the factorial grid, finding a spec file, and the
one error type, whose message starts with the offending key."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from cifarnet.config.schema import RunConfig, build_config, flatten_mapping
from cifarnet.errors import ConfigError, UserError, clip, shown

# A spec name becomes an MLflow experiment name (at most 500 characters), part of an Optuna
# study name (512), a run name (250) and a folder name (255 bytes): 64 characters, starting
# with a letter or digit (so never `.`, `..` or an option-like `-x`), fits all of them.
MAX_NAME = 64
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (MAX_NAME - 1))
MAX_DESCRIPTION = 5000  # an MLflow tag value (the parent run's note); 5,000 fits every version
MAX_RUNS = 10_000  # cells x seeds of one grid; counted before anything is built
SPECS_ROOT = Path("experiments")  # a project's own specs, under the working folder
# the specs shipped with cifarnet-exp (beside the package in a checkout or editable install)
SHIPPED_ROOT = Path(__file__).resolve().parents[2] / "experiments"


class SpecError(UserError):
    """An invalid ablation spec; the message starts with the offending key."""


def resolve_spec_path(path: str | Path, kind: str = "ablations") -> Path:
    """The spec file for `path`: the path as given, else under the working folder's
    experiments/, else a bare name, experiments/<kind>/<name>.yaml (`kind` is "ablations" or
    "searches"), there or among the specs shipped with cifarnet-exp (`SHIPPED_ROOT`, from
    any working folder), so `run dilation_add` and `search lr_aug` work like `report
    dilation_add`. Raises SpecError listing where it looked and the names it knows."""
    p = Path(path)
    named = p.with_suffix(".yaml") if p.suffix != ".yaml" else p
    tried = [p, SPECS_ROOT / p, SPECS_ROOT / kind / p, SPECS_ROOT / kind / named]
    for candidate in [*tried, *(root / q for root in (SHIPPED_ROOT, SHIPPED_ROOT / kind)
                                for q in (p, named))]:
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # a name longer than the file system allows: no such file
            continue
    shipped = sorted({f.stem for root in (SPECS_ROOT, SHIPPED_ROOT)
                      for f in (root / kind).glob("*.yaml")})
    hint = f"; shipped {kind}: {', '.join(shipped)}" if shipped else ""
    raise SpecError(f"{clip(str(path))}: no such spec file (also looked for "
                    f"{clip(str(tried[-1]))}){hint}")


def error_key(exc: ConfigError) -> str:
    """The dotted key a ConfigError names first (its text up to the first ':')."""
    return str(exc).split(":", 1)[0]


def set_names(sets: Sequence[str]) -> str:
    """The `--set` keys as an error names them: '--set a, --set b'."""
    return ", ".join(f"--set {k}" for k in sets)


def check_sets(merged: Mapping[str, Any], sets: Sequence[str]) -> RunConfig:
    """The config of a base with `--set` keys `sets` merged in. Raises SpecError naming the
    `--set` key, also where the rule it breaks names a key that came from the spec's base."""
    try:
        return build_config(merged)
    except ConfigError as exc:
        raise SpecError(f"--set {exc}" if error_key(exc) in sets
                        else f"{set_names(sets)}: {exc}") from None


def factor_levels(factors: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The full factorial grid: one {key: level} per cell, the first factor outermost
    (the order of `AblationSpec.cells`)."""
    keys = list(factors)
    return [dict(zip(keys, values)) for values in itertools.product(*factors.values())]


def parse_header(raw: Mapping[str, Any], keys: set[str]) -> tuple[str, str, dict[str, Any]]:
    """The part every spec shares: known keys only, a valid name, a description, and a base
    of run-config overrides (returned as dotted keys, not yet checked as a config)."""
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown spec key (expected {', '.join(sorted(keys))})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SpecError(f"name: expected 1 to {MAX_NAME} letters, digits, '_', '.', '-', "
                        f"starting with a letter or digit, got {shown(name)}")
    description = raw.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise SpecError("description: expected a string")
    if len(description) > MAX_DESCRIPTION:
        raise SpecError(f"description: at most {MAX_DESCRIPTION:,} characters (it is stored as "
                        f"an MLflow tag), got {len(description):,}")
    base_raw = raw.get("base") or {}
    if not isinstance(base_raw, Mapping):
        raise SpecError("base: expected a mapping of config keys")
    try:
        return name, description, flatten_mapping(base_raw)
    except ConfigError as exc:
        raise SpecError(f"base.{exc}") from None
