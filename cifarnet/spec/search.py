"""Search specs: the space, objective(s), sampler and pruner of an Optuna search, validated.

Trials tune on the validation split, never on the test set: a `test_*` objective is refused
and `data.val_size` must be positive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

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
from cifarnet.config.schema import (
    RunConfig,
    build_config,
    check_key,
    coerce_value,
    flatten_mapping,
    is_result_key,
)
from cifarnet.config.yamlio import read_yaml_mapping
from cifarnet.data.datasets import DATA_KEYS
from cifarnet.errors import ConfigError, clip, shown
from cifarnet.spec.metrics import OBJECTIVE_METRICS

SEARCH_KEYS = {"name", "description", "base", "space", "objective", "objectives", "n_trials",
               "sampler", "pruner"}
PARAM_TYPES = {"float": {"type", "low", "high", "log", "step"},
               "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
SAMPLERS = {"tpe": {"type", "seed", "n_startup_trials", "multivariate"},
            "random": {"type", "seed"}, "nsgaii": {"type", "seed", "population_size"}}
PRUNERS = {"median": {"type", "n_startup_trials", "n_warmup_steps"},
           "percentile": {"type", "percentile", "n_startup_trials", "n_warmup_steps"},
           "hyperband": {"type", "min_resource", "reduction_factor"},
           "threshold": {"type", "lower", "upper", "n_warmup_steps"}, "none": {"type"}}
# (type, lowest, highest) of every sampler and pruner setting: what Optuna accepts
# (numpy's RandomState takes seeds 0 .. 2**32 - 1; NSGA-II needs a population of 2 or more).
SETTINGS: dict[str, tuple[type, float | None, float | None]] = {
    "seed": (int, 0, 2**32 - 1), "n_startup_trials": (int, 0, None),
    "multivariate": (bool, None, None), "population_size": (int, 2, None),
    "n_warmup_steps": (int, 0, None), "percentile": (float, 0, 100),
    "min_resource": (int, 1, None), "reduction_factor": (int, 2, None),
    "lower": (float, None, None), "upper": (float, None, None)}


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass(frozen=True)
class SearchSpec:
    name: str
    description: str
    base: dict[str, Any]
    space: list[Param]
    objectives: list[Objective]
    n_trials: int
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "none"})

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def identity(self) -> str:
        """sha256 of what decides the study's trials: the base run config's hash (defaults
        filled in, so two ways of writing one config agree), the space, the objectives, the
        sampler and the pruner. Not the name, the description or `n_trials` (a rerun may
        ask for more trials). A study joins only a spec with the same identity."""
        canon = {"base": self.base_config().hash(),
                 "space": [dataclasses.asdict(p) for p in self.space],
                 "objectives": [dataclasses.asdict(o) for o in self.objectives],
                 "sampler": self.sampler, "pruner": self.pruner}
        text = json.dumps(canon, sort_keys=True, separators=(",", ":"), default=list)
        return hashlib.sha256(text.encode()).hexdigest()

    def base_config(self) -> RunConfig:
        return build_config(self.base)

    def with_base(self, overrides: Mapping[str, Any]) -> "SearchSpec":
        sets = list(flatten_mapping(overrides))
        merged = {**self.base, **flatten_mapping(overrides)}
        for key in sets:
            if key in {p.key for p in self.space}:
                raise SpecError(f"--set {key}: is searched over; it cannot be fixed")
        _check_val_size(check_sets(merged, sets), "--set ")
        _refuse_extremes(merged, self.space, f"{set_names(sets)}: space.")
        return SearchSpec(self.name, self.description, merged, self.space, self.objectives,
                          self.n_trials, self.sampler, self.pruner)


def load_search_spec(path: str | Path) -> SearchSpec:
    """Read and validate a search spec from a path or a shipped search's name."""
    return parse_search_spec(read_yaml_mapping(resolve_spec_path(path, "searches")))


def _check_base(base: Mapping[str, Any], where: str) -> RunConfig:
    try:
        cfg = build_config(base, where=where)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    return _check_val_size(cfg, where)


def _check_val_size(cfg: RunConfig, where: str) -> RunConfig:
    if cfg.data.val_size <= 0:
        raise SpecError(f"{where}data.val_size: trials tune on a validation split carved from "
                        "the training set; set it > 0 (e.g. 5000)")
    return cfg


MAX_EXTREMES = 10_000  # combinations of extremes checked per cell (more: not checked)


def impossible_extreme(base: Mapping[str, Any], space: list[Param],
                       cells: Sequence[Mapping[str, Any]] = ({},),
                       ) -> tuple[str, dict[str, Any], ConfigError] | None:
    """The first combination of the space's extremes (each numeric range's low and high,
    every categorical choice) that makes an impossible config with `base` and one of
    `cells` (extra fixed levels, e.g. a grid's factor levels), as (the space key to name,
    the combination, the error); None when there is none. The rules between keys
    (`config.schema._check_combinations`: the augmentation ramp plus the flip-only finish at
    most 1, a weight EMA only with BatchNorm recalibration) are monotone in each value, so a
    value sampled inside the ranges can be impossible only if an extreme is. Checked before
    any trial, so a search never stops at its first unlucky sample with its study written."""
    options = [p.choices if p.type == "categorical" else (p.low, p.high) for p in space]
    if math.prod(len(o) for o in options) > MAX_EXTREMES:
        return None
    keys = [p.key for p in space]
    for levels in cells:
        for combo in itertools.product(*options):
            values = dict(zip(keys, combo))
            try:
                build_config({**base, **levels, **values})
            except ConfigError as exc:
                return (error_key(exc) if error_key(exc) in values else keys[0]), values, exc
    return None


def _refuse_extremes(base: Mapping[str, Any], space: list[Param], where: str,
                     cells: Sequence[Mapping[str, Any]] = ({},)) -> None:
    """SpecError `<where><key>: ...` when `impossible_extreme` finds a combination."""
    found = impossible_extreme(base, space, cells)
    if found is not None:
        key, values, exc = found
        at = ", ".join(f"{k}={v}" for k, v in values.items())
        raise SpecError(f"{where}{key}: the space reaches an impossible config ({at}): {exc}")


def parse_search_spec(raw: Mapping[str, Any]) -> SearchSpec:
    name, description, base = parse_header(raw, SEARCH_KEYS)
    space = _parse_space(raw.get("space"))
    for p in space:
        if p.key in base:
            raise SpecError(f"base.{p.key}: is also searched over; set it in one place only")
    _check_base(base, "base.")
    _refuse_extremes(base, space, "space.")
    objectives = _parse_objectives(raw)
    n_trials = raw.get("n_trials", 20)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or not (
            1 <= n_trials <= MAX_RUNS):
        raise SpecError(f"n_trials: expected an integer from 1 to {MAX_RUNS:,}, "
                        f"got {shown(n_trials)}")
    sampler = _parse_choice(raw.get("sampler", {"type": "nsgaii" if len(objectives) > 1
                                                else "tpe"}), "sampler", SAMPLERS)
    pruner = _parse_choice(raw.get("pruner", {"type": "none"}), "pruner", PRUNERS)
    if len(objectives) > 1 and pruner["type"] != "none":
        raise SpecError("pruner: Optuna cannot prune multi-objective searches; use type: none")
    return SearchSpec(name, str(description), base, space, objectives, n_trials, sampler,
                      pruner)


def _parse_space(raw: Any) -> list[Param]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError("space: expected a non-empty mapping of config key -> distribution")
    out = []
    for key, dist in raw.items():
        if not isinstance(key, str):
            raise SpecError(f"space.{shown(key)}: keys must be strings")
        where = f"space.{clip(key)}"
        try:
            check_key(key, "space.")
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        if key == "train.seed":
            raise SpecError(f"{where}: the seed is not a hyperparameter")
        if not is_result_key(key):
            raise SpecError(f"{where}: cannot change a result (it is left out of a run's "
                            "identity); set it in base")
        if key.startswith("data.") and key.split(".", 1)[1] in DATA_KEYS:
            raise SpecError(f"{where}: selects the images (the trials train on data loaded "
                            "once, before the first trial); set it in base")
        if not isinstance(dist, Mapping) or dist.get("type") not in PARAM_TYPES:
            raise SpecError(f"{where}.type: expected one of {', '.join(PARAM_TYPES)}")
        extra = sorted(set(dist) - PARAM_TYPES[dist["type"]])
        if extra:
            raise SpecError(f"{where}.{extra[0]}: unknown key for a {dist['type']} parameter")
        out.append(_parse_param(key, dist, where))
    return out


def _parse_param(key: str, dist: Mapping[str, Any], where: str) -> Param:
    kind = dist["type"]
    if kind == "categorical":
        choices = dist.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise SpecError(f"{where}.choices: expected a list of at least two values")
        try:
            values = tuple(coerce_value(key, c, "space.") for c in choices)
        except ConfigError as exc:
            raise SpecError(f"{where}.choices: {exc}") from None
        if len(set(map(repr, values))) != len(values):
            raise SpecError(f"{where}.choices: duplicate values")
        return Param(key, kind, choices=values)
    low, high = dist.get("low"), dist.get("high")
    for bound, value in (("low", low), ("high", high)):
        number_ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not number_ok or not math.isfinite(value):
            raise SpecError(f"{where}.{bound}: expected a finite {kind}, got {shown(value)}")
        try:
            coerce_value(key, value)
        except ConfigError as exc:
            raise SpecError(f"{where}.{bound}: {exc}") from None
    if low >= high:
        raise SpecError(f"{where}: low ({low}) must be below high ({high})")
    log = dist.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log: expected true or false")
    if log and low <= 0:
        raise SpecError(f"{where}.low: a log-scale range needs low > 0, got {low}")
    step = dist.get("step")
    step_types = int if kind == "int" else (int, float)
    if step is not None and (log or isinstance(step, bool) or not isinstance(step, step_types)
                             or not math.isfinite(step) or step <= 0 or step > high - low):
        raise SpecError(f"{where}.step: expected a positive {kind} no larger than high - low "
                        f"(and no log scale), got {shown(step)}")
    return Param(key, kind, low, high, log, step)


def _parse_objectives(raw: Mapping[str, Any]) -> list[Objective]:
    if ("objective" in raw) == ("objectives" in raw):
        raise SpecError("objective: give exactly one of `objective` (a mapping) or "
                        "`objectives` (a list of two, for a Pareto front)")
    items = [raw["objective"]] if "objective" in raw else raw["objectives"]
    key = "objective" if "objective" in raw else "objectives"
    if not isinstance(items, list) or not items:
        raise SpecError(f"{key}: expected a non-empty list")
    out = []
    for i, item in enumerate(items):
        where = key if key == "objective" else f"{key}[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"metric", "direction"}:
            raise SpecError(f"{where}: expected {{metric: ..., direction: ...}}")
        metric, direction = item.get("metric"), item.get("direction")
        if isinstance(metric, str) and metric.startswith("test_"):
            raise SpecError(f"{where}.metric: {clip(metric)} would tune on the test set; use the "
                            "validation split (val_acc, val_loss)")
        if not isinstance(metric, str) or metric not in OBJECTIVE_METRICS:
            raise SpecError(f"{where}.metric: expected one of "
                            f"{', '.join(sorted(OBJECTIVE_METRICS))}, got {shown(metric)}")
        if not isinstance(direction, str) or direction not in ("maximize", "minimize"):
            raise SpecError(f"{where}.direction: expected maximize or minimize, "
                            f"got {shown(direction)}")
        out.append(Objective(metric, direction))
    if out[0].metric in ("params", "macs"):
        raise SpecError(f"{key}: the first objective must be a training metric (val_acc, ...)")
    if len(out) > 2 or any(o.metric not in ("params", "macs") for o in out[1:]):
        raise SpecError(f"{key}: a second objective must be params or macs")
    return out


def _parse_choice(raw: Any, where: str, kinds: dict[str, set[str]]) -> dict[str, Any]:
    """A sampler or pruner: a known type, known settings, each of the type and range that
    Optuna accepts (`SETTINGS`), so a bad one is refused before a study is created."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str) or (
            raw["type"] not in kinds):
        raise SpecError(f"{where}.type: expected one of {', '.join(kinds)}")
    extra = sorted(map(str, set(raw) - kinds[raw["type"]]))
    if extra:
        raise SpecError(f"{where}.{clip(extra[0])}: unknown key for {where} {raw['type']}")
    out: dict[str, Any] = {"type": raw["type"]}
    for k, v in raw.items():
        if k == "type":
            continue
        tp, lo, hi = SETTINGS[k]
        ok = isinstance(v, bool) if tp is bool else (
            not isinstance(v, bool) and isinstance(v, (int, float) if tp is float else int))
        if not ok or (tp is float and not math.isfinite(v)):
            kind = {bool: "true or false", int: "an integer", float: "a finite number"}[tp]
            raise SpecError(f"{where}.{k}: expected {kind}, got {shown(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"from {lo:,} to {hi:,}" if hi is not None else f">= {lo:,}"
            raise SpecError(f"{where}.{k}: expected {span}, got {shown(v)}")
        out[k] = float(v) if tp is float else v
    if out["type"] == "threshold":
        if "lower" not in out and "upper" not in out:
            raise SpecError(f"{where}: a threshold pruner needs lower or upper")
        if "lower" in out and "upper" in out and out["lower"] >= out["upper"]:
            raise SpecError(f"{where}.upper: must be above lower ({out['lower']})")
    return out


# ---- an ablation spec's `tune:` block (tune, then compare) ----------------------------------

TUNE_KEYS = {"space", "n_trials", "epochs", "val_size", "seed", "sampler", "pruner"}
TUNE_SETTABLE = ("n_trials", "epochs", "val_size", "seed")  # `--set tune.KEY=VALUE`
TUNE_OBJECTIVE = Objective("val_acc", "maximize")
DEFAULT_TUNE_SEED = 1000  # the trials' train.seed unless `tune.seed` says otherwise


@dataclass(frozen=True)
class TuneBlock:
    """An ablation spec's `tune:` block: the same tuning budget for every arm of a hypothesis.

    `space`: the search space (the search spec's syntax); `n_trials`: Optuna trials per arm;
    `epochs`: training epochs per trial; `val_size`: images carved from the training set for
    the trials' validation split (the objective is `val_acc`, maximised; the trials hold no
    test split); `seed`: the trials' `train.seed`, never one of the verdict seeds (the verdict
    runs are fresh seeds); `sampler`, `pruner`: as in a search spec, the same for every arm.
    Melis, Dyer & Blunsom 2018 (ICLR), "On the State of the Art of Evaluation in Neural
    Language Models": comparisons at one recipe can credit the architecture for a recipe
    mismatch; Dodge et al. 2019 (EMNLP), "Show Your Work": report the expected best
    validation score against the tuning budget."""

    space: list[Param]
    n_trials: int
    epochs: int
    val_size: int
    seed: int = DEFAULT_TUNE_SEED
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "none"})

    def keys(self) -> set[str]:
        return {p.key for p in self.space}

    def to_dict(self) -> dict[str, Any]:
        """The block as a spec writes it (the grid's identity, the parent run's spec.yaml,
        read back by the reports)."""
        return {"space": {p.key: _param_dict(p) for p in self.space},
                "n_trials": self.n_trials,
                "epochs": self.epochs, "val_size": self.val_size, "seed": self.seed,
                "sampler": self.sampler, "pruner": self.pruner}


def _param_dict(p: Param) -> dict[str, Any]:
    """A parameter as the spec writes it (`{type: float, low: .., high: .., log: true}`)."""
    if p.type == "categorical":
        return {"type": p.type, "choices": list(p.choices)}
    return {"type": p.type, "low": p.low, "high": p.high, "log": p.log,
            **({"step": p.step} if p.step is not None else {})}


def parse_tune_block(raw: Any, factors: Mapping[str, Any], seeds: list[int],
                     base: Mapping[str, Any], match: Any = None) -> TuneBlock:
    """Validate a `tune:` block; raise SpecError naming `tune.<key>`. `match`: the spec's
    `match:` (a matched `model.width` cannot be tuned)."""
    if not isinstance(raw, Mapping):
        raise SpecError("tune: expected a mapping with space, n_trials, epochs, val_size")
    unknown = sorted(map(str, set(raw) - TUNE_KEYS))
    if unknown:
        raise SpecError(f"tune.{clip(unknown[0])}: unknown key (expected "
                        f"{', '.join(sorted(TUNE_KEYS))})")
    try:
        space = _parse_space(raw.get("space"))
    except SpecError as exc:
        raise SpecError(f"tune.{exc}") from None
    for p in space:
        if p.key in factors:
            raise SpecError(f"tune.space.{p.key}: is a factor of the grid; an arm cannot tune "
                            "the level that defines it")
        if p.key == "train.epochs":
            raise SpecError("tune.space.train.epochs: the trials' epochs are tune.epochs, the "
                            "verdict's base.train.epochs")
        if p.key in base:
            raise SpecError(f"tune.space.{p.key}: is also set in base; set it in one place "
                            "only")
        if p.key == "model.width" and match is not None:
            raise SpecError("tune.space.model.width: match: params sets model.width per cell; "
                            "tuning it would undo the matching")
    values = {}
    for key, lo in (("n_trials", 1), ("epochs", 1), ("val_size", 1)):
        v = raw.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= (
                MAX_RUNS if key == "n_trials" else 10**9):
            limit = f"from 1 to {MAX_RUNS:,}" if key == "n_trials" else ">= 1"
            raise SpecError(f"tune.{key}: expected an integer {limit}, got {shown(v)}")
        values[key] = v
    seed = raw.get("seed", DEFAULT_TUNE_SEED)
    try:
        coerce_value("train.seed", seed)
    except ConfigError as exc:
        raise SpecError(f"tune.seed: {str(exc).removeprefix('train.seed: ')}") from None
    if seed in seeds:
        raise SpecError(f"tune.seed: {seed} is also a verdict seed (seeds); the verdict runs "
                        "must be fresh seeds, not used while tuning")
    sampler = _parse_choice(raw.get("sampler", {"type": "tpe", "seed": 0}), "tune.sampler",
                            {k: v for k, v in SAMPLERS.items() if k != "nsgaii"})
    pruner = _parse_choice(raw.get("pruner", {"type": "none"}), "tune.pruner", PRUNERS)
    block = TuneBlock(space, values["n_trials"], values["epochs"], values["val_size"], seed,
                      sampler, pruner)
    _check_base({**{k: v for k, v in base.items() if k not in block.keys()},
                 **tune_overrides(block)}, "tune: ")
    check_tune_extremes(block, base, factors, "tune.space.")
    return block


def check_tune_extremes(block: TuneBlock, base: Mapping[str, Any],
                        factors: Mapping[str, Sequence[Any]], where: str) -> None:
    """SpecError naming `<where><key>` when some arm (any cell of `factors`) with some
    extreme of the tune space is an impossible config (`impossible_extreme`)."""
    _refuse_extremes({**base, **tune_overrides(block)}, list(block.space), where,
                     factor_levels(factors))


def tune_overrides(block: TuneBlock) -> dict[str, Any]:
    """What every trial of every arm changes in the arm's config: the trials' budget, the
    validation split and the tuning seed."""
    return {"train.epochs": block.epochs, "data.val_size": block.val_size,
            "train.seed": block.seed}


def arm_search_spec(name: str, arm_config: RunConfig, block: TuneBlock) -> SearchSpec:
    """The search that tunes one arm: the arm's config (every field that differs from the
    defaults, the searched keys left out) with the trials' overrides, the block's space,
    `val_acc` maximised, the block's trials, sampler and pruner. `name` names the study."""
    defaults = RunConfig().flatten()
    base = {k: v for k, v in arm_config.flatten().items()
            if v != defaults[k] and k not in block.keys()}
    base.update(tune_overrides(block))
    return SearchSpec(name, "", base, list(block.space), [TUNE_OBJECTIVE], block.n_trials,
                      dict(block.sampler), dict(block.pruner))
