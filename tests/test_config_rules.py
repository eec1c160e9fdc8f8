"""Rules between config keys (the augmentation ramp plus the flip-only finish at most 1, a
weight EMA only with BatchNorm recalibration) hold wherever a value can come from: the base,
a factor level in some cell only, `--set`, a search space or a tune space at any value the
sampler may draw. Each refusal is one SpecError that names the key the user wrote, before
anything is written (a search used to stop at its first unlucky sample, its study written)."""

import copy
from pathlib import Path

import pytest
from helpers import search_spec

from cifarnet.spec.ablation import load_spec, parse_spec
from cifarnet.spec.common import SpecError
from cifarnet.spec.search import load_search_spec, parse_search_spec

GRID = {
    "name": "t",
    "base": {"train": {"epochs": 3}},
    "factors": {"model.residual_add": [True, False]},
    "seeds": [0, 1],
    "hypotheses": [{"id": "H", "claim": "c", "metric": "test_acc",
                    "a": {"model.residual_add": True}, "b": {"model.residual_add": False},
                    "expect": "a > b", "rope": 0.002}],
}
OVER = "plus data.flip_only_frac"


def grid(**changes) -> dict:
    spec = copy.deepcopy(GRID)
    spec.update(changes)
    return spec


def refused(fn, *args) -> str:
    with pytest.raises(SpecError) as err:
        fn(*args)
    return str(err.value)


# --- a factor level that breaks a rule in some cells only ------------------------------------

def test_a_factor_level_over_the_rule_names_the_factor_and_its_cell() -> None:
    msg = refused(parse_spec, grid(factors={"data.augment_ramp_frac": [0.0, 0.5, 0.8]}))
    assert msg.startswith("factors.data.augment_ramp_frac: level 0.8 in cell "
                          "augment_ramp_frac=0.8: data.augment_ramp_frac: 0.8 " + OVER), msg


def test_the_factor_that_varies_is_named_even_where_the_rule_names_the_base() -> None:
    msg = refused(parse_spec, grid(base={"data": {"augment_ramp_frac": 0.5}},
                                   factors={"data.flip_only_frac": [0.0, 0.33, 0.6]}))
    assert msg.startswith("factors.data.flip_only_frac: level 0.6 in cell "
                          "flip_only_frac=0.6: data.augment_ramp_frac: 0.5 " + OVER), msg


def test_levels_equal_in_value_are_one_level() -> None:
    msg = refused(parse_spec, grid(factors={"data.augment_ramp_frac": [0.0, -0.0]}))
    assert msg.startswith("factors.data.augment_ramp_frac: duplicate levels"), msg


# --- --set: the key that was set is named ----------------------------------------------------

def test_set_is_named_where_the_rule_names_a_key_of_the_base() -> None:
    spec = parse_spec(grid(base={"train": {"epochs": 3}, "data": {"augment_ramp_frac": 0.5}}))
    msg = refused(spec.with_sets, ["data.flip_only_frac=0.6"])
    assert msg.startswith("--set data.flip_only_frac: data.augment_ramp_frac: 0.5 " + OVER), msg
    msg = refused(spec.with_sets, ["data.augment_ramp_frac=0.9"])
    assert msg.startswith("--set data.augment_ramp_frac: 0.9 " + OVER), msg


def test_set_against_a_factor_level_names_the_set_and_the_cell() -> None:
    spec = parse_spec(grid(factors={"data.augment_ramp_frac": [0.0, 0.3]}, hypotheses=[]))
    msg = refused(spec.with_sets, ["data.flip_only_frac=0.8"])
    assert msg.startswith("--set data.flip_only_frac: factors.data.augment_ramp_frac: level "
                          "0.3 in cell augment_ramp_frac=0.3: "), msg


# --- search spaces: every value the sampler may draw -----------------------------------------

@pytest.mark.parametrize("space,base,key", [
    ({"data.augment_ramp_frac": {"type": "float", "low": 0.0, "high": 0.9}}, {},
     "space.data.augment_ramp_frac"),
    ({"data.augment_ramp_frac": {"type": "categorical", "choices": [0.0, 0.8]}}, {},
     "space.data.augment_ramp_frac"),
    ({"data.augment_ramp_frac": {"type": "float", "low": 0.0, "high": 0.6},
      "data.flip_only_frac": {"type": "float", "low": 0.0, "high": 0.6}}, {},
     "space.data.augment_ramp_frac"),
    ({"data.augment_ramp_frac": {"type": "float", "low": 0.0, "high": 0.3}},
     {"flip_only_frac": 0.9}, "space.data.augment_ramp_frac"),
    ({"train.ema_decay": {"type": "float", "low": 0.0, "high": 0.99}},
     {"bn_recal_batches": 0}, "space.train.ema_decay"),
])
def test_a_search_space_that_reaches_an_impossible_config_is_refused(tiny_tree, tmp_path,
                                                                     space, base, key) -> None:
    raw = search_spec(tiny_tree, tmp_path, space=space)
    for k, v in base.items():
        raw["base"]["train" if k == "bn_recal_batches" else "data"][k] = v
    msg = refused(parse_search_spec, raw)
    assert msg.startswith(f"{key}: the space reaches an impossible config ("), msg


def test_set_on_a_search_is_checked_against_its_space() -> None:
    spec = load_search_spec("recipe")  # its ramp reaches 0.3
    msg = refused(spec.with_base, {"data.flip_only_frac": 0.9})
    assert msg.startswith("--set data.flip_only_frac: space.data.augment_ramp_frac: the space "
                          "reaches an impossible config (") and "0.3" in msg, msg
    assert spec.with_base({"data.flip_only_frac": 0.7}).base["data.flip_only_frac"] == 0.7


# --- tune spaces: every arm, at every value ---------------------------------------------------

def _tuned(space: dict, **changes) -> dict:
    return grid(tune={"space": space, "n_trials": 2, "epochs": 1, "val_size": 20}, **changes)


def test_a_tune_space_that_reaches_an_impossible_arm_is_refused() -> None:
    ramp = {"data.augment_ramp_frac": {"type": "float", "low": 0.0, "high": 0.9}}
    msg = refused(parse_spec, _tuned(ramp))
    assert msg.startswith("tune.space.data.augment_ramp_frac: the space reaches"), msg
    # possible in the base, impossible in one arm (a factor level)
    low = {"data.augment_ramp_frac": {"type": "float", "low": 0.0, "high": 0.3}}
    msg = refused(parse_spec, _tuned(low, factors={"data.flip_only_frac": [0.0, 0.9]},
                                     hypotheses=[{**GRID["hypotheses"][0],
                                                  "a": {"data.flip_only_frac": 0.0},
                                                  "b": {"data.flip_only_frac": 0.9}}]))
    assert msg.startswith("tune.space.data.augment_ramp_frac: the space reaches"), msg
    # and a --set that makes the tune space reach it
    spec = parse_spec(_tuned(low))
    msg = refused(spec.with_sets, ["data.flip_only_frac=0.8"])
    assert msg.startswith("--set data.flip_only_frac: tune.space.data.augment_ramp_frac: "), msg


ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted([*(ROOT / "experiments").glob("*/*.yaml"),
                *(ROOT / "benchmarks" / "specs").rglob("*.yaml")])


@pytest.mark.parametrize("path", SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_and_benchmark_spec_passes_every_rule(path: Path) -> None:
    """The shipped specs (experiments/<kind>/, beside the claims file) and those the benchmarks run (the recipe techniques and the short
    recipe search among them) load as the product would load them, so a benchmark never
    stops on a spec error after hours of other runs. A search spec is a folder `searches`
    or `search`; every other spec is an ablation grid."""
    load = load_search_spec if path.parent.name in ("searches", "search") else load_spec
    assert load(str(path)).name == path.stem
    assert len(SPECS) >= 20  # the globs found the folders


def test_keys_the_schedule_does_not_read_leave_the_identity_alone() -> None:
    """`train.warmup_frac` is read only by onecycle and `train.step_*` only by step, but both
    entered every config's hash: a grid over warmup_frac with cosine trained identical cells
    as different runs, and never reused one for the other. Now a key the schedule does not
    read enters the hash at its default; keys it reads still change it."""
    from cifarnet.config.schema import RunConfig, build_config

    def h(**kv) -> str:
        return build_config({f"train.{k}": v for k, v in kv.items()}).hash()

    assert h(schedule="cosine", warmup_frac=0.5) == h(schedule="cosine")
    assert h(schedule="constant", step_epochs=3, step_gamma=0.5) == h(schedule="constant")
    assert h(schedule="step", warmup_frac=0.5) == h(schedule="step")
    assert h(warmup_frac=0.5) != RunConfig().hash()  # onecycle reads it
    assert h(step_epochs=3) == RunConfig().hash()  # onecycle does not read step_*
    assert h(schedule="step", step_epochs=3) != h(schedule="step")
    assert h(schedule="step", step_gamma=0.5) != h(schedule="step")


def test_a_data_path_the_source_does_not_read_is_refused() -> None:
    """`data.source=cifar10` with `data.path` set trained on torchvision's CIFAR-10 and
    dropped the path without a word."""
    from cifarnet.config.schema import build_config
    from cifarnet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^data\.path: '/x' is not read with "
                                          r"data\.source=cifar10"):
        build_config({"data.source": "cifar10", "data.path": "/x"})
    assert build_config({"data.source": "imagefolder", "data.path": "/x"}).data.path == "/x"
    assert build_config({"data.source": "auto", "data.path": "/x"}).data.path == "/x"
