"""Ablation specs: YAML files that expand into runs over a factorial grid of flags x seeds.

Everything is validated before anything runs; each error names its key (`factors.model.x`,
`hypotheses[0].a`) so the CLI can print one line and exit 2 with nothing written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from enum import StrEnum
from pathlib import Path
from typing import Any, Mapping, Sequence

from cifarnet.config.schema import (
    MAX_SEED,
    RunConfig,
    build_config,
    coerce_value,
    flatten_mapping,
    is_result_key,
)
from cifarnet.config.yamlio import read_yaml_mapping
from cifarnet.errors import ConfigError, clip, shown
from cifarnet.spec.common import (
    MAX_RUNS,
    SpecError,
    check_sets,
    error_key,
    factor_levels,
    parse_header,
    resolve_spec_path,
    set_names,
)
from cifarnet.spec.metrics import (
    HYPOTHESIS_METRICS as METRICS,
    VAL_METRICS,
    Expect,
    parse_time_to,
)

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_CLAIM = 500
SPEC_KEYS = {"name", "description", "base", "factors", "seeds", "hypotheses", "match", "tune"}


class Match(StrEnum):
    """What a spec holds equal across its cells (`match:`); see `cifarnet.model.match`."""

    PARAMS = "params"  # model.width set per cell: parameters within 1% of the base config's
HYPOTHESIS_KEYS = {"id", "claim", "metric", "a", "b", "expect", "rope"}
EXPECTATIONS = {str(e) for e in Expect}


@dataclass(frozen=True)
class Hypothesis:
    id: str
    claim: str
    metric: str
    a: dict[str, Any]
    b: dict[str, Any]
    expect: Expect
    rope: float


@dataclass(frozen=True)
class Cell:
    """One point of the factorial grid: factor key -> level."""

    levels: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Job:
    """One run: a cell at a seed, with its full config and identity. `added`: a seed that
    `--until-decided` added beyond the spec's list (`ablation.adaptive.next_jobs`); its run
    is tagged so (`tracking.tags.TAG_SEED_ADDED`), and its hypothesis then reads the
    anytime-valid verdict."""

    cell: Cell
    seed: int
    config: RunConfig
    config_hash: str
    added: bool = False


@dataclass(frozen=True)
class AblationSpec:
    name: str
    description: str
    base: dict[str, Any]
    factors: dict[str, list[Any]]
    seeds: list[int]
    hypotheses: list[Hypothesis] = field(default_factory=list)
    path: str = ""
    match: Match | None = None
    # `tune:` (a `cifarnet.spec.search.TuneBlock`): every arm is tuned before the verdict
    tune: Any = None
    # cell label -> the best parameters of its arm's study, once tuned (`with_tuned`)
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)

    def arms(self) -> list[Cell]:
        """The cells a hypothesis names (its a and b sides), in the grid's order: the cells
        a `tune:` block tunes."""
        named = {cell_identity(side) for h in self.hypotheses for side in (h.a, h.b)}
        return [c for c in self.cells() if cell_identity(c.levels) in named]

    def with_tuned(self, best: Mapping[str, Mapping[str, Any]]) -> "AblationSpec":
        """A copy whose arm cells train with their tuned parameters (cell label -> params;
        a stored label in any part order, `canonical_label`)."""
        return replace(self, tuned={self.canonical_label(k): dict(v) for k, v in best.items()})

    def reserved_seeds(self) -> set[int]:
        """Seeds the verdict runs never use (the tuning trials' seed)."""
        return {self.tune.seed} if self.tune is not None else set()

    def cells(self) -> list[Cell]:
        return [Cell(levels, cell_label(levels)) for levels in factor_levels(self.factors)]

    def base_config(self) -> RunConfig:
        return build_config(self.base)

    def cell_config(self, cell: Cell) -> RunConfig:
        """The base config with the cell's levels (and, with `match: params`, the
        `model.width` that gives it the base config's parameter count within 1%). Raises
        SpecError naming `match` when no width does."""
        base = self.base_config()
        cfg = base.replace(cell.levels)
        if self.match is Match.PARAMS:
            from cifarnet.model.match import matched_width, params_at

            target = params_at(base.model, base.model.width)
            try:
                width, _ = matched_width(cfg.model, target)
            except ValueError as exc:
                raise SpecError(f"match: cell {cell.label}: {exc}") from None
            cfg = cfg.replace({"model.width": width})
        if cell.label in self.tuned:
            cfg = cfg.replace(self.tuned[cell.label])
        return cfg

    def untuned_config(self, cell: Cell) -> RunConfig:
        """The cell's config before tuning (what its arm's study starts from)."""
        return replace(self, tuned={}).cell_config(cell)

    def jobs(self, seeds: list[int] | None = None) -> list[Job]:
        """Every (cell, seed) run, cells outermost so one seed's variants run close in time."""
        configs = {cell.label: self.cell_config(cell) for cell in self.cells()}
        out = []
        for seed in seeds if seeds is not None else self.seeds:
            for cell in self.cells():
                cfg = configs[cell.label].replace({"train.seed": seed})
                out.append(Job(cell, seed, cfg, cfg.hash()))
        return out

    def with_sets(self, assignments: Sequence[str]) -> "AblationSpec":
        """A copy with the CLI's `--set KEY=VALUE` applied: run-config keys to the base
        (`with_base`), `tune.n_trials`, `tune.epochs`, `tune.val_size` and `tune.seed` to the
        `tune:` block (validated as the block is). Raises SpecError naming the `--set`."""
        from cifarnet.config.schema import parse_assignments
        from cifarnet.config.yamlio import parse_plain_scalar

        tune_sets = [a for a in assignments if a.split("=", 1)[0].strip().startswith("tune.")]
        rest = [a for a in assignments if a not in tune_sets]
        spec = self.with_base(parse_assignments(rest)) if rest else self
        if not tune_sets:
            return spec
        if spec.tune is None:
            raise SpecError(f"--set {clip(tune_sets[0])}: the spec has no tune block")
        from cifarnet.spec.search import TUNE_SETTABLE, parse_tune_block

        raw = spec.tune.to_dict()
        for a in tune_sets:
            key, eq, text = a.partition("=")
            if not eq:
                raise SpecError(f"--set {clip(a)}: expected KEY=VALUE, e.g. tune.n_trials=2")
            name = key.strip()[len("tune."):]
            if name not in TUNE_SETTABLE:
                raise SpecError(f"--set {clip(key.strip())}: only "
                                f"{', '.join('tune.' + k for k in TUNE_SETTABLE)} can be set "
                                "on the command line; edit the spec for the rest")
            raw[name] = parse_plain_scalar(text)
        try:
            block = parse_tune_block(raw, spec.factors, spec.seeds, spec.base, spec.match)
        except SpecError as exc:
            raise SpecError(f"--set {exc}") from None
        return replace(spec, tune=block)

    def settled_jobs(self) -> list[Job]:
        """The jobs whose config is known: with a `tune:` block, an arm's jobs only once it
        is tuned (before, its untuned config would match another grid's untuned runs of the
        same cell, and those would be counted as this grid's)."""
        if self.tune is None:
            return self.jobs()
        arms = {c.label for c in self.arms()}
        return [j for j in self.jobs() if j.cell.label not in arms or j.cell.label in self.tuned]

    def with_base(self, overrides: Mapping[str, Any]) -> "AblationSpec":
        """A copy with `--set` overrides merged into the base (validated, in every cell and,
        with a `tune:` block, at every extreme of its space). Raises SpecError naming the
        `--set` key, also where the rule it breaks names a key of the spec's base."""
        sets = list(flatten_mapping(overrides))
        merged = {**self.base, **flatten_mapping(overrides)}
        check_sets(merged, sets)
        named_sets = set_names(sets)
        _check_cells(merged, self.factors, f"{named_sets}: ")
        if self.tune is not None:
            from cifarnet.spec.search import check_tune_extremes

            check_tune_extremes(self.tune, merged, self.factors, f"{named_sets}: tune.space.")
        for key in sets:
            if key in self.factors:
                raise SpecError(f"--set {key}: is a factor of the spec; it cannot be fixed")
            if key == "train.seed":
                raise SpecError("--set train.seed: seeds are given by the spec's `seeds` list")
            if self.tune is not None and key in self.tune.keys():
                raise SpecError(f"--set {key}: is tuned per arm (tune.space); it cannot be "
                                "fixed")
        spec = replace(self, base=merged, hypotheses=[])
        for i, h in enumerate(self.hypotheses):  # e.g. --set data.val_size=0 under val_acc
            _check_metric_available(h.metric, h.a, h.b, spec, f"--set (hypotheses[{i}].metric)")
        out = replace(self, base=merged)
        if out.match is not None:  # a --set that leaves some cell no matching width
            try:
                out.jobs([out.seeds[0]])
            except SpecError as exc:
                raise SpecError(f"{named_sets}: {exc}") from None
        return out

    def cell_of(self, side: Mapping[str, Any]) -> Cell:
        """The cell of a hypothesis side, however it spells the cell (`cell_identity`)."""
        ident = cell_identity(side)
        return next(c for c in self.cells() if cell_identity(c.levels) == ident)

    def canonical_label(self, label: str) -> str:
        """The label of the cell a stored label names (a run's `cifarnet.cell` tag, an arm's
        `cifarnet.arm`, a key of tuned.yaml), its `name=level` parts in any order: a store
        written before labels were canonical lists them in its spec's factor order. The
        label unchanged when it names no cell of the grid."""
        return self._labels_by_parts.get(_label_parts(label), label)

    @cached_property
    def _labels_by_parts(self) -> dict[tuple[str, ...], str]:
        return {_label_parts(c.label): c.label for c in self.cells()}


def format_level(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cell_identity(levels: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A cell's one identity, however a spec spells it: (dotted key, level) pairs ordered by
    key, nested keys flattened (`model: {x: 1}` is `model.x`), each level as the config
    schema coerces it (`1` and `1.0` of a float key are one level). Its label
    (`cell_label`), and so the runs' `cifarnet.cell` tag, reuse, reports, tuning and results,
    derive from it."""
    flat = flatten_mapping(levels)
    return tuple((k, coerce_value(k, flat[k])) for k in sorted(flat))


def cell_label(levels: Mapping[str, Any]) -> str:
    """`dilation=2,residual_add=false`: the cell's identity (`cell_identity`) with short
    names unless two factors share one."""
    ident = cell_identity(levels)
    short = [k.split(".", 1)[1] for k, _ in ident]
    names = short if len(set(short)) == len(short) else [k for k, _ in ident]
    return ",".join(f"{n}={format_level(v)}" for n, (_, v) in zip(names, ident)) or "base"


def _label_parts(label: str) -> tuple[str, ...]:
    return tuple(sorted(label.split(",")))


def load_spec(path: str | Path) -> AblationSpec:
    """Read and validate an ablation spec from a path or a shipped spec's name.

    `path`: a YAML file, or a name looked up as `experiments/ablations/NAME.yaml`. Every
    field is validated where it is parsed (names, factors over hashed keys, seeds in
    0..2**63-1, at most 10,000 runs, hypotheses whose cells exist and whose metric the runs
    will log). Raises SpecError (a UserError) naming the spec key, with the line for a key
    written twice."""
    p = resolve_spec_path(path, "ablations")
    return parse_spec(read_yaml_mapping(p), str(p))


def _check_config(overrides: Mapping[str, Any], where: str) -> RunConfig:
    try:
        return build_config(overrides, where=where)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def _check_cells(base: Mapping[str, Any], factors: Mapping[str, list[Any]],
                 where: str) -> None:
    """Every cell's config is possible: a level valid alone can break a rule between keys
    with the base or another factor (e.g. the augmentation ramp plus the flip-only finish
    over 1). Raises SpecError `<where>factors.<key>: level <v> in cell <label>: <rule>`,
    naming the factor that varies (the one the rule names, else the first)."""
    for levels in factor_levels(factors):
        try:
            build_config({**base, **levels})
        except ConfigError as exc:
            key = error_key(exc) if error_key(exc) in levels else next(iter(levels))
            raise SpecError(f"{where}factors.{key}: level {format_level(levels[key])} in cell "
                            f"{cell_label(levels)}: {exc}") from None


def parse_spec(raw: Mapping[str, Any], path: str = "") -> AblationSpec:
    """Validate a spec mapping completely; raise SpecError naming the first bad key."""
    name, description, base = parse_header(raw, SPEC_KEYS)
    _check_config(base, "base.")

    factors = _parse_factors(raw.get("factors"))
    for key in factors:
        if key in base:
            raise SpecError(f"base.{key}: is also a factor; set it in one place only")
    seeds = _parse_seeds(raw.get("seeds"))
    cells = math.prod(len(levels) for levels in factors.values())
    if cells * len(seeds) > MAX_RUNS:
        raise SpecError(f"factors: {cells:,} cell(s) x {len(seeds):,} seed(s) = "
                        f"{cells * len(seeds):,} runs, more than the limit of {MAX_RUNS:,} "
                        "runs per grid; split the grid into several specs")
    _check_cells(base, factors, "")
    match = _parse_match(raw.get("match"), factors)
    spec = AblationSpec(name, description, base, factors, seeds, [], path, match)
    hypotheses = _parse_hypotheses(raw.get("hypotheses") or [], spec)
    spec = replace(spec, hypotheses=hypotheses)
    if raw.get("tune") is not None:
        from cifarnet.spec.search import parse_tune_block

        if not hypotheses:
            raise SpecError("tune: no hypothesis names a cell to tune; add hypotheses, or "
                            "drop the tune block")
        spec = replace(spec, tune=parse_tune_block(raw["tune"], factors, seeds, base, match))
        for i, h in enumerate(hypotheses):
            target = parse_time_to(h.metric)
            if (target.metric if target else h.metric) in VAL_METRICS:
                raise SpecError(f"hypotheses[{i}].metric: {h.metric} in a tuned grid would "
                                "score the arms on the validation images that chose their "
                                "recipes; use a test_* metric")
    if match is not None:
        spec.jobs([spec.seeds[0]])  # every cell has a matching width, or SpecError now
    return spec


def _parse_match(raw: Any, factors: Mapping[str, Any]) -> Match | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or raw not in {m.value for m in Match}:
        raise SpecError(f"match: expected one of {', '.join(m.value for m in Match)}, "
                        f"got {shown(raw)}")
    if "model.width" in factors:
        raise SpecError("match: model.width is a factor; matching parameters sets it per cell")
    return Match(raw)


def _flat(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Dotted and nested keys alike (`model.x` or `model: {x: ...}`), as the base reads them."""
    try:
        return flatten_mapping(raw)
    except ConfigError as exc:
        raise SpecError(f"{where}.{exc}") from None


def _parse_factors(raw: Any) -> dict[str, list[Any]]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError("factors: expected a non-empty mapping of config key -> list of levels")
    factors: dict[str, list[Any]] = {}
    for key, levels in _flat(raw, "factors").items():
        where = f"factors.{clip(key)}"
        if key == "train.seed":
            raise SpecError(f"{where}: seeds are given by the top-level `seeds` list")
        if not isinstance(levels, list) or not levels:
            raise SpecError(f"{where}: expected a non-empty list of levels")
        if len(levels) > MAX_RUNS:
            raise SpecError(f"{where}: {len(levels):,} levels, more than the limit of "
                            f"{MAX_RUNS:,} runs per grid")
        try:
            values = [coerce_value(key, v, "factors.") for v in levels]
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        if not is_result_key(key):
            raise SpecError(f"{where}: cannot change a result (it is left out of a run's "
                            "identity, so every level would be one run); set it in base")
        if len({(type(v), v) for v in values}) != len(values):  # -0.0 == 0.0: one level
            raise SpecError(f"{where}: duplicate levels {shown(levels)}")
        factors[key] = values
    return factors


def _parse_seeds(raw: Any) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise SpecError("seeds: expected a non-empty list of integers, e.g. [0, 1, 2]")
    if len(raw) > MAX_RUNS:
        raise SpecError(f"seeds: {len(raw):,} seeds, more than the limit of {MAX_RUNS:,} runs "
                        "per grid")
    for i, s in enumerate(raw):
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise SpecError(f"seeds[{i}]: expected an integer from 0 to 2**63 - 1, "
                            f"got {shown(s)}")
    if len(set(raw)) != len(raw):
        raise SpecError(f"seeds: duplicate seeds in {shown(raw)}")
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
        if not isinstance(hid, str) or not ID_RE.fullmatch(hid):
            raise SpecError(f"{where}.id: expected 1 to 64 letters, digits, '_', '.', '-', "
                            f"starting with a letter or digit, got {shown(hid)}")
        if any(o.id == hid for o in out):
            raise SpecError(f"{where}.id: duplicate hypothesis id {shown(hid)}")
        metric = h.get("metric", "test_acc")
        try:
            target = parse_time_to(metric) if isinstance(metric, str) else None
        except ValueError as exc:
            raise SpecError(f"{where}.metric: {exc}") from None
        if target is None and (not isinstance(metric, str) or metric not in METRICS):
            raise SpecError(f"{where}.metric: expected one of {', '.join(sorted(METRICS))} "
                            f"or epochs_to:<test_acc|val_acc>>=<accuracy>, got {shown(metric)}")
        expect = " ".join(str(h.get("expect", ""))[:100].split())
        if expect not in EXPECTATIONS:
            raise SpecError(f"{where}.expect: expected one of 'a > b', 'a < b', 'a == b', "
                            f"got {shown(h.get('expect'))}")
        rope = h.get("rope", 0.0)
        if isinstance(rope, bool) or not isinstance(rope, (int, float)) or not math.isfinite(
                rope) or rope < 0:
            raise SpecError(f"{where}.rope: expected a finite number >= 0, got {shown(rope)}")
        if expect == "a == b" and rope == 0:
            raise SpecError(f"{where}.rope: 'a == b' needs a rope > 0 (the region of "
                            "practical equivalence)")
        claim = h.get("claim", "")
        if not isinstance(claim, str):
            raise SpecError(f"{where}.claim: expected a string")
        claim = claim.strip()  # a folded `>` scalar ends in a line break
        if len(claim) > MAX_CLAIM or any(ord(c) < 32 or ord(c) == 127 for c in claim):
            raise SpecError(f"{where}.claim: expected one line of at most {MAX_CLAIM} "
                            f"characters, got {shown(claim)}")
        a = _parse_side(h.get("a"), f"{where}.a", spec)
        b = _parse_side(h.get("b"), f"{where}.b", spec)
        if a == b:
            raise SpecError(f"{where}.b: is the same cell as {where}.a")
        _check_metric_available(metric, a, b, spec, f"{where}.metric")
        out.append(Hypothesis(hid, claim, metric, a, b, Expect(expect), float(rope)))
    return out


def _check_metric_available(metric: str, a: Mapping[str, Any], b: Mapping[str, Any],
                            spec: AblationSpec, where: str) -> None:
    """A validation metric needs a validation split in both arms (data.val_size > 0);
    otherwise no run would ever have the metric and the verdict would stay n = 0 forever."""
    target = parse_time_to(metric)
    if target is not None:
        metric = target.metric
    if metric not in VAL_METRICS:
        return
    for side in (a, b):
        cfg = build_config({**spec.base, **side})
        if cfg.data.val_size <= 0:
            raise SpecError(f"{where}: {metric} needs a validation split, but data.val_size is "
                            f"0 in cell {cell_label(side)}; set data.val_size > 0 in base, or "
                            "use a test_* or train_* metric")


def _parse_side(raw: Any, where: str, spec: AblationSpec) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(f"{where}: expected a mapping of factor -> level, e.g. "
                        f"{{{next(iter(spec.factors))}: ...}}")
    side: dict[str, Any] = {}
    for key, value in _flat(raw, where).items():
        try:
            side[key] = coerce_value(key, value, f"{where}.")
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        if key not in spec.factors:
            raise SpecError(f"{where}: {key} is not a factor of the grid "
                            f"(factors: {', '.join(spec.factors)})")
        if side[key] not in spec.factors[key]:
            raise SpecError(f"{where}: {key}={clip(format_level(value))} is not a level of the "
                            "grid "
                            f"({', '.join(map(format_level, spec.factors[key]))})")
    missing = [k for k in spec.factors if k not in side]
    if missing:
        raise SpecError(f"{where}: not a cell of the grid; give a level for "
                        f"{', '.join(missing)} too")
    return {k: side[k] for k in spec.factors}
