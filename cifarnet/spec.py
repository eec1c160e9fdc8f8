"""Ablation specs: YAML files that expand into runs over a factorial grid of flags x seeds.

Everything is validated before anything runs; each error names its key (`factors.model.x`,
`hypotheses[0].a`) so the CLI can print one line and exit 2 with nothing written.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cifarnet.config import RunConfig, build_config, coerce_value, flatten_mapping
from cifarnet.errors import ConfigError, UserError
from cifarnet.yamlio import read_yaml_mapping

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
SPEC_KEYS = {"name", "description", "base", "factors", "seeds", "hypotheses"}
HYPOTHESIS_KEYS = {"id", "claim", "metric", "a", "b", "expect", "rope"}
EXPECTATIONS = {"a > b", "a < b", "a == b"}
METRICS = {"test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss"}
SPECS_ROOT = Path("experiments")


class SpecError(UserError):
    """An invalid ablation spec; the message starts with the offending key."""


@dataclass(frozen=True)
class Hypothesis:
    id: str
    claim: str
    metric: str
    a: dict[str, Any]
    b: dict[str, Any]
    expect: str
    rope: float


@dataclass(frozen=True)
class Cell:
    """One point of the factorial grid: factor key -> level."""

    levels: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Job:
    """One run: a cell at a seed, with its full config and identity."""

    cell: Cell
    seed: int
    config: RunConfig
    config_hash: str


@dataclass(frozen=True)
class AblationSpec:
    name: str
    description: str
    base: dict[str, Any]
    factors: dict[str, list[Any]]
    seeds: list[int]
    hypotheses: list[Hypothesis] = field(default_factory=list)
    path: str = ""

    def cells(self) -> list[Cell]:
        keys = list(self.factors)
        return [Cell(dict(zip(keys, values)), cell_label(dict(zip(keys, values))))
                for values in itertools.product(*self.factors.values())]

    def base_config(self) -> RunConfig:
        return build_config(self.base)

    def jobs(self, seeds: list[int] | None = None) -> list[Job]:
        """Every (cell, seed) run, cells outermost so one seed's variants run close in time."""
        base = self.base_config()
        out = []
        for seed in seeds if seeds is not None else self.seeds:
            for cell in self.cells():
                cfg = base.replace({**cell.levels, "train.seed": seed})
                out.append(Job(cell, seed, cfg, cfg.hash()))
        return out

    def with_base(self, overrides: Mapping[str, Any]) -> "AblationSpec":
        """A copy with `--set` overrides merged into the base (validated)."""
        merged = {**self.base, **flatten_mapping(overrides)}
        _check_config(merged, "--set ")
        for key in flatten_mapping(overrides):
            if key in self.factors:
                raise SpecError(f"--set {key}: is a factor of the spec; it cannot be fixed")
        return AblationSpec(self.name, self.description, merged, self.factors, self.seeds,
                            self.hypotheses, self.path)

    def cell_of(self, side: Mapping[str, Any]) -> Cell:
        return next(c for c in self.cells() if c.levels == dict(side))


def format_level(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cell_label(levels: Mapping[str, Any]) -> str:
    """`dilation=2,residual_add=false`: short names unless two factors share one."""
    short = [k.split(".", 1)[1] for k in levels]
    names = short if len(set(short)) == len(short) else list(levels)
    return ",".join(f"{n}={format_level(v)}" for n, v in zip(names, levels.values())) or "base"


def resolve_spec_path(path: str | Path) -> Path:
    """The path as given, else under experiments/ (so `ablations/x.yaml` works from the root)."""
    p = Path(path)
    if p.is_file():
        return p
    alt = SPECS_ROOT / p
    if alt.is_file():
        return alt
    raise SpecError(f"{path}: no such spec file (also looked in {alt})")


def load_spec(path: str | Path) -> AblationSpec:
    p = resolve_spec_path(path)
    return parse_spec(read_yaml_mapping(p), str(p))


def _check_config(overrides: Mapping[str, Any], where: str) -> RunConfig:
    try:
        return build_config(overrides, where=where)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def parse_header(raw: Mapping[str, Any], keys: set[str]) -> tuple[str, str, dict[str, Any]]:
    """The part every spec shares: known keys only, a valid name, a description, and a base
    of run-config overrides (returned as dotted keys, not yet checked as a config)."""
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown spec key (expected {', '.join(sorted(keys))})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(f"name: expected letters, digits, '_', '.', '-' only, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description: expected a string")
    base_raw = raw.get("base") or {}
    if not isinstance(base_raw, Mapping):
        raise SpecError("base: expected a mapping of config keys")
    try:
        return name, description, flatten_mapping(base_raw)
    except ConfigError as exc:
        raise SpecError(f"base.{exc}") from None


def parse_spec(raw: Mapping[str, Any], path: str = "") -> AblationSpec:
    """Validate a spec mapping completely; raise SpecError naming the first bad key."""
    name, description, base = parse_header(raw, SPEC_KEYS)
    _check_config(base, "base.")

    factors = _parse_factors(raw.get("factors"))
    for key in factors:
        if key in base:
            raise SpecError(f"base.{key}: is also a factor; set it in one place only")
    seeds = _parse_seeds(raw.get("seeds"))
    spec = AblationSpec(name, description, base, factors, seeds, [], path)
    hypotheses = _parse_hypotheses(raw.get("hypotheses") or [], spec)
    return AblationSpec(name, description, base, factors, seeds, hypotheses, path)


def _parse_factors(raw: Any) -> dict[str, list[Any]]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError("factors: expected a non-empty mapping of config key -> list of levels")
    factors: dict[str, list[Any]] = {}
    for key, levels in raw.items():
        where = f"factors.{key}"
        if key == "train.seed":
            raise SpecError(f"{where}: seeds are given by the top-level `seeds` list")
        if not isinstance(levels, list) or not levels:
            raise SpecError(f"{where}: expected a non-empty list of levels")
        try:
            values = [coerce_value(key, v, "factors.") for v in levels]
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        if len({repr(v) for v in values}) != len(values):
            raise SpecError(f"{where}: duplicate levels {levels}")
        factors[key] = values
    return factors


def _parse_seeds(raw: Any) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise SpecError("seeds: expected a non-empty list of integers, e.g. [0, 1, 2]")
    for i, s in enumerate(raw):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SpecError(f"seeds[{i}]: expected a non-negative integer, got {s!r}")
    if len(set(raw)) != len(raw):
        raise SpecError(f"seeds: duplicate seeds in {raw}")
    return list(raw)


def _parse_hypotheses(raw: Any, spec: AblationSpec) -> list[Hypothesis]:
    if not isinstance(raw, list):
        raise SpecError("hypotheses: expected a list")
    out: list[Hypothesis] = []
    for i, h in enumerate(raw):
        where = f"hypotheses[{i}]"
        if not isinstance(h, Mapping):
            raise SpecError(f"{where}: expected a mapping")
        unknown = sorted(set(h) - HYPOTHESIS_KEYS)
        if unknown:
            raise SpecError(f"{where}.{unknown[0]}: unknown key (expected "
                            f"{', '.join(sorted(HYPOTHESIS_KEYS))})")
        hid = h.get("id")
        if not isinstance(hid, str) or not hid:
            raise SpecError(f"{where}.id: expected a non-empty string")
        if any(o.id == hid for o in out):
            raise SpecError(f"{where}.id: duplicate hypothesis id {hid!r}")
        metric = h.get("metric", "test_acc")
        if metric not in METRICS:
            raise SpecError(f"{where}.metric: expected one of {', '.join(sorted(METRICS))}, "
                            f"got {metric!r}")
        expect = " ".join(str(h.get("expect", "")).split())
        if expect not in EXPECTATIONS:
            raise SpecError(f"{where}.expect: expected one of 'a > b', 'a < b', 'a == b', "
                            f"got {h.get('expect')!r}")
        rope = h.get("rope", 0.0)
        if isinstance(rope, bool) or not isinstance(rope, (int, float)) or not math.isfinite(
                rope) or rope < 0:
            raise SpecError(f"{where}.rope: expected a finite number >= 0, got {rope!r}")
        if expect == "a == b" and rope == 0:
            raise SpecError(f"{where}.rope: 'a == b' needs a rope > 0 (the region of "
                            "practical equivalence)")
        claim = h.get("claim", "")
        if not isinstance(claim, str):
            raise SpecError(f"{where}.claim: expected a string")
        a = _parse_side(h.get("a"), f"{where}.a", spec)
        b = _parse_side(h.get("b"), f"{where}.b", spec)
        if a == b:
            raise SpecError(f"{where}.b: is the same cell as {where}.a")
        out.append(Hypothesis(hid, claim, metric, a, b, expect, float(rope)))
    return out


def _parse_side(raw: Any, where: str, spec: AblationSpec) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(f"{where}: expected a mapping of factor -> level, e.g. "
                        f"{{{next(iter(spec.factors))}: ...}}")
    side: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            side[key] = coerce_value(key, value, f"{where}.")
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        if key not in spec.factors:
            raise SpecError(f"{where}: {key} is not a factor of the grid "
                            f"(factors: {', '.join(spec.factors)})")
        if side[key] not in spec.factors[key]:
            raise SpecError(f"{where}: {key}={format_level(value)} is not a level of the grid "
                            f"({', '.join(map(format_level, spec.factors[key]))})")
    missing = [k for k in spec.factors if k not in side]
    if missing:
        raise SpecError(f"{where}: not a cell of the grid; give a level for "
                        f"{', '.join(missing)} too")
    return {k: side[k] for k in spec.factors}
