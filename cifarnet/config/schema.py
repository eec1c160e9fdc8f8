"""Strict, frozen run configuration.

One `RunConfig` (model, data, train) is passed down everywhere, nanoGPT-style. It is built
from nested mappings (YAML) and dotted overrides (`model.dilation=1`); every unknown key,
wrong type or impossible value raises one `ConfigError` naming the full dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import yaml

from cifarnet.config.yamlio import parse_plain_scalar, read_yaml_mapping
from cifarnet.errors import ConfigError, clip, shown
from cifarnet.hardware import Precision  # noqa: F401 (a config type; the hardware resolves it)

MAX_SEED = 2**63 - 1  # seeds are logged and analysed as int64 (pandas, numpy)
MAX_IMAGES = 100_000_000  # a subset or split size: far past any data set this trains on
MAX_TEXT = 4096  # a text value (a path): Linux's PATH_MAX; longer ones are no file name
DEVICE_RE = re.compile(r"auto|cpu|mps|(?:cuda|xpu)(?::[0-9]{1,3})?")


def _opt(default: Any, doc: str, *, min: float | None = None, gt: float | None = None,
         max: float | None = None, lt: float | None = None, hashed: bool = True,
         hashed_when_set: bool = False) -> Any:
    """A config field with its bounds and a one-line description (shown by `--help`-like docs).

    `hashed_when_set`: the field enters `RunConfig.hash` only when its value differs from
    `default`. For fields added after runs were recorded whose default reproduces those runs
    exactly (a technique that is off by default): their identity, their run folders and
    their checkpoints stay valid."""
    return field(default=default,
                 metadata={"doc": doc, "min": min, "gt": gt, "max": max, "lt": lt,
                           "hashed": hashed, "hashed_when_set": hashed_when_set})


# Keys that existed once, with what replaces them: an old config that uses one is refused
# with this message rather than read with a changed meaning.
RETIRED_KEYS: dict[str, str] = {
    "train.amp": "replaced by train.precision (auto | fp32 | bf16); amp=true meant bf16 "
                 "autocast on CUDA only, so write train.precision=auto (bf16 where the device "
                 "computes it natively, CPUs included) or train.precision=fp32",
}


@dataclass(frozen=True)
class ModelConfig:
    """Feature flags of CifarNet; the defaults are the seed network (153,104 parameters)."""

    residual_add: bool = _opt(True, "torch.add of block 3a's output and the dilated 3b's output")
    dilation: int = _opt(2, "dilation of block 3's second 3x3 convolution (1 = none)", min=1, max=4)
    pointwise_after_stride: bool = _opt(True, "1x1 convolution after each stride-2 3x3 convolution")
    depthwise: bool = _opt(True, "depthwise-separable convolutions in 2a, 3a, 4a, 4b")
    regular_after_depthwise: bool = _opt(True, "regular 3x3 in 2b, 3b (false: depthwise-separable)")
    extra_adds: bool = _opt(False, "also add 1a + 1b and 2a + 2b")
    width: float = _opt(1.0, "channel multiplier (1.0 = seed widths)", gt=0.0, max=8.0)
    dropout: float = _opt(0.0, "dropout before the classifier", min=0.0, max=0.9)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are split and augmented."""

    source: Literal["auto", "cifar10", "imagefolder"] = _opt(
        "auto", "auto: imagefolder when a path is set (data.path or CIFARNET_DATA), else cifar10")
    path: str | None = _opt(None, "local ImageFolder tree (train/<class>, test/<class>)",
                            hashed=False)
    cache_dir: str | None = _opt(None, "decoded-array cache (default ~/.cache/cifarnet)",
                                 hashed=False)
    train_subset: int | None = _opt(None, "class-stratified training subset size", min=10,
                                    max=MAX_IMAGES)
    test_subset: int | None = _opt(None, "class-stratified test subset size", min=10,
                                   max=MAX_IMAGES)
    val_size: int = _opt(0, "class-stratified validation images carved from training", min=0,
                         max=MAX_IMAGES)
    split_seed: int = _opt(0, "seed of the subsets and the validation split", min=0,
                           max=MAX_SEED)
    augment_strength: float = _opt(1.0, "scales shift, scale, rotation limits and hole side",
                                   min=0.0, max=4.0)
    flip_only_frac: float = _opt(
        0.33, "fraction of the epochs, at the end, trained with the flip alone (no warp, no "
        "hole); round(frac * epochs) epochs, 0 = the seed's augmentation throughout",
        min=0.0, max=1.0)
    augment_ramp_frac: float = _opt(
        0.0, "fraction of the epochs, at the start, over which the augmentation strength "
        "rises linearly to data.augment_strength: k = round(frac * epochs) epochs, epoch e "
        "of them at strength * e / (k + 1); 0 = full strength from the first epoch (the "
        "seed). The flip-only finish (data.flip_only_frac) wins where both would apply. "
        "Source: Tan & Le 2021, EfficientNetV2 (progressive learning: weak augmentation "
        "first, stronger later); cifarnet.data.loaders.AugmentSchedule", min=0.0, max=1.0,
        hashed_when_set=True)
    backend: Literal["torch", "albumentations"] = _opt(
        "torch", "augmentation backend: batched tensor ops, or albumentations per image")
    num_workers: int = _opt(2, "DataLoader workers (albumentations backend)", min=0, max=1024,
                            hashed=False)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe and the execution settings of one run."""

    epochs: int = _opt(30, "training epochs", min=1, max=100_000)
    batch_size: int = _opt(256, "batch size", min=1, max=1_000_000)
    optimizer: Literal["sgd", "adam", "adamw"] = _opt("sgd", "sgd is Nesterov SGD")
    lr: float = _opt(0.2, "peak learning rate", gt=0.0, max=100.0)
    momentum: float = _opt(0.9, "SGD momentum / Adam beta1", min=0.0, max=0.999)
    weight_decay: float = _opt(5e-4, "weight decay", min=0.0, max=1.0)
    schedule: Literal["onecycle", "cosine", "step", "constant"] = _opt("onecycle", "lr schedule")
    warmup_frac: float = _opt(0.25, "onecycle: fraction of steps rising to the peak", gt=0.0,
                              max=0.9)
    step_epochs: int = _opt(10, "step: epochs between decays", min=1, max=100_000)
    step_gamma: float = _opt(0.1, "step: decay factor", gt=0.0, max=1.0)
    label_smoothing: float = _opt(0.1, "label smoothing", min=0.0, max=0.5)
    seed: int = _opt(0, "run seed: init, data order and augmentation streams derive from it",
                     min=0, max=MAX_SEED)
    bn_recal_batches: int = _opt(
        16, "BatchNorm running statistics recomputed before every evaluation on this many "
        "unaugmented training batches (update_bn / precise BN, see cifarnet.training.bn); "
        "0 = off", min=0, max=100_000)
    device: str = _opt("auto", "auto (cuda, mps, cpu), or cpu, mps, cuda, cuda:N, xpu, xpu:N",
                       hashed=False)
    precision: Precision = _opt(
        Precision.AUTO, "auto: bf16 autocast where the device computes bf16 natively (CUDA "
        "with bf16, CPUs with AVX512-BF16 or AMX), else fp32; BatchNorm statistics, the loss "
        "and the optimiser state stay fp32 (the config hash holds the resolved value)")
    channels_last: bool = _opt(True, "channels_last memory format on CUDA and CPU (faster on both)",
                               hashed=False)
    compile: bool = _opt(False, "torch.compile the model", hashed=False)
    out_dir: str = _opt("runs", "folder of run folders (checkpoints, metrics)", hashed=False)
    # The recipe techniques below are off by default; the defaults give the runs recorded
    # before they existed, bit for bit, under the same config hash (`hashed_when_set`).
    tta_flip: bool = _opt(
        False, "horizontal-flip test-time augmentation: every evaluation (validation, test "
        "and the saved test predictions) classifies an image by the average of its logits "
        "and its mirror image's logits (log_softmax of the mean; the model's "
        "log-probabilities differ from its logits by a per-image constant that the "
        "renormalisation removes). Source: Krizhevsky, Sutskever & Hinton 2012 (ImageNet "
        "CNN, averaged predictions of an image and its reflection); Keller Jordan's "
        "cifar10-airbench (KellerJordan/cifar10-airbench) averages the logits of both",
        hashed_when_set=True)
    tta_translate: int = _opt(
        0, "translation test-time augmentation, in pixels (0 = off): every evaluation also "
        "classifies the image shifted by this many pixels down-right and up-left (reflect "
        "padding), and averages the logits with weights 1/2 (the image) and 1/4 (each "
        "shift); with train.tta_flip each of the three views is itself flip-averaged (6 "
        "forward passes). Source: Keller Jordan's cifar10-airbench "
        "(KellerJordan/cifar10-airbench, `infer_mirror_translate`, tta_level=2, 1 pixel)",
        min=0, max=4, hashed_when_set=True)
    ema_decay: float = _opt(
        0.0, "exponential moving average of the weights, updated after every optimiser step "
        "(ema = decay * ema + (1 - decay) * w; the first step copies w), and every "
        "evaluation uses the averaged weights with BatchNorm statistics recalibrated on "
        "train.bn_recal_batches training batches (required > 0). 0 = off, e.g. 0.999. "
        "torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn. Source: Polyak & "
        "Juditsky 1992 (averaging of iterates); Tan & Le 2019, EfficientNet (weight EMA "
        "0.9999); airbench (KellerJordan/cifar10-airbench) uses a weight EMA",
        min=0.0, lt=1.0, hashed_when_set=True)
    no_decay_bn_bias: bool = _opt(
        False, "no weight decay on BatchNorm weights and biases nor on convolution biases "
        "(a parameter group with weight_decay 0). Source: Goyal et al. 2017, 'Accurate, "
        "Large Minibatch SGD' (no decay on BN gamma/beta); He et al. 2019, 'Bag of Tricks "
        "for Image Classification with CNNs' (no bias decay)", hashed_when_set=True)
    bn_lr_mult: float = _opt(
        1.0, "learning-rate multiplier of the BatchNorm weights and biases (their own "
        "parameter group; every schedule scales it with the others: onecycle peaks at "
        "train.lr * bn_lr_mult). 1 = off. Source: Keller Jordan's cifar10-airbench "
        "(KellerJordan/cifar10-airbench) trains the BatchNorm biases at 64x the lr",
        gt=0.0, max=64.0, hashed_when_set=True)

    def __post_init__(self) -> None:
        # Built from plain mappings (YAML, to_dict) the field arrives as its string.
        object.__setattr__(self, "precision", Precision(self.precision))


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def flatten(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {'model.dilation': 2, ...}: MLflow params."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain values only (enums as their strings), for YAML, JSON and MLflow."""
        return dataclasses.asdict(self, dict_factory=_plain_dict)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    def hash(self) -> str:
        """sha256 of the canonical JSON of every field that can change a result.

        Paths, worker counts, the device and compile are execution details, left out so that
        the same experiment on two machines has one identity. `train.precision` enters as
        the precision the run resolves to on this machine (`auto` becomes bf16 or fp32):
        bf16 changes results, and until a measurement shows the change is within noise, a
        bf16 run and an fp32 run are different runs. A key that the chosen
        `train.schedule` does not read (`UNREAD_BY_SCHEDULE`) enters at its default, so that
        two configs that train identically have one identity.
        """
        flat = self.flatten()
        for key in UNREAD_BY_SCHEDULE.get(self.train.schedule, ()):
            flat[key] = _default(key)
        canon = {k: v for k, v in flat.items() if _field_meta(k).get("hashed", True)
                 and not (_field_meta(k).get("hashed_when_set") and v == _default(k))}
        if canon.get("train.precision") == Precision.AUTO:
            from cifarnet.hardware import resolve_precision, select_device

            canon["train.precision"] = str(resolve_precision(
                Precision.AUTO, select_device(self.train.device)))
        text = json.dumps(canon, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def replace(self, overrides: Mapping[str, Any]) -> "RunConfig":
        """A copy with dotted or nested overrides applied (validated)."""
        return build_config(overrides, base=self)


def _plain_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in items}


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# train.schedule -> the keys of the other schedules, which it does not read
UNREAD_BY_SCHEDULE: dict[str, tuple[str, ...]] = {
    "onecycle": ("train.step_epochs", "train.step_gamma"),
    "cosine": ("train.warmup_frac", "train.step_epochs", "train.step_gamma"),
    "constant": ("train.warmup_frac", "train.step_epochs", "train.step_gamma"),
    "step": ("train.warmup_frac",),
}


def _field_meta(dotted: str) -> Mapping[str, Any]:
    section, name = dotted.split(".", 1)
    return {f.name: f.metadata for f in dataclasses.fields(SECTIONS[section])}[name]


def _default(dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}[name]


def config_keys() -> list[str]:
    """Every valid dotted key."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def is_result_key(dotted: str) -> bool:
    """Whether the key can change a run's result (is part of `RunConfig.hash`); paths,
    workers, the device, channels_last and compile cannot."""
    return bool(_field_meta(dotted).get("hashed", True))


def is_string_key(dotted: str) -> bool:
    """Whether the key holds text (a path, a device, or one of a set of names)."""
    section, name = dotted.split(".", 1)
    tp = typing.get_type_hints(SECTIONS[section])[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    inner = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    return inner is str or typing.get_origin(inner) is Literal


def _is_optional(dotted: str) -> bool:
    section, name = dotted.split(".", 1)
    return type(None) in typing.get_args(typing.get_type_hints(SECTIONS[section])[name])


def parse_value(dotted: str, text: str) -> Any:
    """The value of `--set KEY=TEXT`.

    For string-typed keys (`data.path`, `train.out_dir`, `train.device`, the choice keys) the
    value is the raw text: `data.path=exp #2` is the folder `exp #2`. Leading or trailing
    spaces, surrounding quotes and an empty value are refused (naming the key) rather than
    guessed at; for the optional paths (`data.path`, `data.cache_dir`) an empty value or
    `null` means unset. Every other key takes exactly one plain YAML scalar (`1`, `0.05`,
    `5e-5`, `true`, `null`); anything else, comments included, is kept as text and then
    refused by the key's type check.
    """
    check_key(dotted)
    if not is_string_key(dotted):
        return parse_plain_scalar(text)
    if _is_optional(dotted) and text in ("", "null", "~"):
        return None
    if text == "":
        raise ConfigError(f"{dotted}: empty value")
    if text != text.strip():
        raise ConfigError(f"{dotted}: leading or trailing spaces in {shown(text)}; the text "
                          "after '=' is taken literally")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        raise ConfigError(f"{dotted}: {shown(text)} is quoted; the text after '=' is taken "
                          "literally, so drop the quotes")
    return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from `--set`: the key is checked, the value read by `parse_value`."""
    if "=" not in text:
        raise ConfigError(f"--set {shown(text)}: expected KEY=VALUE, e.g. model.dilation=1")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {shown(text)}: empty key")
    return key, parse_value(key, value)


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Repeated `--set KEY=VALUE` options as one dotted mapping (later ones win)."""
    return dict(parse_assignment(a) for a in assignments)


def flatten_mapping(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested and dotted keys to dotted keys only: {'train': {'lr': 1}} -> {'train.lr': 1}."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, "
                          f"got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{prefix}{shown(key)}: keys must be strings")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted in SECTIONS:
            inner = flatten_mapping(value, dotted + ".")
        elif isinstance(value, Mapping) and "." not in dotted:
            raise ConfigError(f"{clip(dotted)}: unknown section (expected one of "
                              f"{', '.join(SECTIONS)})")
        else:
            inner = {dotted: value}
        for k in inner.keys() & out.keys():  # `model.x` and `model: {x}`: one key, two names
            raise ConfigError(f"{clip(k)}: given twice, once dotted and once nested")
        out.update(inner)
    return out


def check_key(dotted: str, where: str = "") -> None:
    """Raise if `dotted` is not a config key; `where` prefixes the name in the message."""
    if dotted in config_keys():
        return
    if dotted in RETIRED_KEYS:
        raise ConfigError(f"{where}{dotted}: {RETIRED_KEYS[dotted]}")
    section = dotted.split(".", 1)[0]
    close = difflib.get_close_matches(dotted[:100], config_keys(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    if section not in SECTIONS:
        raise ConfigError(f"{where}{clip(dotted)}: unknown key; keys start with "
                          f"{', '.join(s + '.' for s in SECTIONS)}{hint}")
    raise ConfigError(f"{where}{clip(dotted)}: unknown key{hint}")


def coerce_value(dotted: str, value: Any, where: str = "") -> Any:
    """Check `value` against the field's type and bounds; return it (ints widened to float)."""
    check_key(dotted, where)
    section, name = dotted.split(".", 1)
    fld = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[name]
    hints = typing.get_type_hints(SECTIONS[section])
    value = _check_type(f"{where}{dotted}", value, hints[name])
    _check_bounds(f"{where}{dotted}", value, fld.metadata)
    if dotted == "train.device" and not DEVICE_RE.fullmatch(value):
        raise ConfigError(f"{where}{dotted}: expected auto, cpu, mps, cuda, cuda:N, xpu or "
                          f"xpu:N, got {shown(value)}")
    return value


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0])
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or not isinstance(value, str):
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, "
                              f"got {shown(value)}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return tp(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {shown(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {shown(value)}")
        if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(f"{key}: expected a non-empty string without line breaks or "
                              f"control characters, got {shown(value)}")
        if len(value) > MAX_TEXT:
            raise ConfigError(f"{key}: at most {MAX_TEXT:,} characters, got {len(value):,}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_bounds(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    lo, gt, hi, lt = meta.get("min"), meta.get("gt"), meta.get("max"), meta.get("lt")
    if hi is None and isinstance(value, int) and abs(value) > MAX_SEED:
        # every integer is logged and analysed as an int64
        raise ConfigError(f"{key}: must be between -(2**63 - 1) and 2**63 - 1, got "
                          f"{shown(value)}")
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: must be >= {lo}, got {shown(value)}")
    if gt is not None and value <= gt:
        raise ConfigError(f"{key}: must be > {gt}, got {shown(value)}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: must be <= {hi}, got {shown(value)}")
    if lt is not None and value >= lt:
        raise ConfigError(f"{key}: must be < {lt}, got {shown(value)}")


def _check_combinations(cfg: "RunConfig", where: str = "") -> None:
    """Refuse values that are each valid but impossible together, naming the key that
    asks for what the other forbids."""
    t, d = cfg.train, cfg.data
    if d.source == "cifar10" and d.path is not None:
        raise ConfigError(
            f"{where}data.path: {shown(d.path)} is not read with data.source=cifar10 "
            "(torchvision's CIFAR-10); set data.source=imagefolder (or auto) to train on it, "
            "or drop data.path")
    if d.augment_ramp_frac + d.flip_only_frac > 1.0:
        raise ConfigError(
            f"{where}data.augment_ramp_frac: {d.augment_ramp_frac:g} plus data.flip_only_frac "
            f"{d.flip_only_frac:g} is over 1 (the ramp at the start and the flip-only finish "
            "would overlap); lower one of them")
    if t.ema_decay > 0 and t.bn_recal_batches == 0:
        raise ConfigError(
            f"{where}train.ema_decay: {t.ema_decay:g} needs train.bn_recal_batches > 0 (the "
            "averaged weights are evaluated with BatchNorm statistics recalibrated for them; "
            "statistics gathered by other weights do not fit them); set "
            "train.bn_recal_batches (default 16) or train.ema_decay=0")


def build_config(overrides: Mapping[str, Any] | None = None, *,
                 base: RunConfig | None = None, where: str = "") -> RunConfig:
    """A RunConfig from `base` (default: all defaults) and nested or dotted overrides.

    `overrides`: {"train.lr": 0.05} or {"train": {"lr": 0.05}}; values are type-checked
    strictly (a bool is not an int) and bounded. Raises ConfigError naming the dotted key for
    an unknown key (with the closest known one), a wrong type or an impossible value."""
    base = base or RunConfig()
    flat = flatten_mapping(overrides or {})
    sections = base.to_dict()
    for dotted, value in flat.items():
        value = coerce_value(dotted, value, where)
        section, name = dotted.split(".", 1)
        sections[section][name] = value
    cfg = RunConfig(**{s: SECTIONS[s](**v) for s, v in sections.items()})
    _check_combinations(cfg, where)
    return cfg


def load_config(path: str | None, assignments: list[str] | tuple[str, ...] = (),
                preset: Mapping[str, Any] | None = None) -> RunConfig:
    """The CLI's way in: a YAML file, a preset's overrides, then `--set KEY=VALUE` in order."""
    cfg = RunConfig()
    if path is not None:
        cfg = build_config(read_yaml_mapping(path), base=cfg)
    if preset:
        cfg = build_config(preset, base=cfg)
    return build_config(parse_assignments(assignments), base=cfg)
