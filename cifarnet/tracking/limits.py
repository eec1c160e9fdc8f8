"""The limits MLflow's stores put on what a run records, checked before the first write.

A value past a limit is refused by some stores (PostgreSQL: a database error) and silently
kept by others (SQLite), so a grid would fail halfway on a team server after working locally.
The limits are MLflow's own (`mlflow.utils.validation`); the spec key is named in the error.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from cifarnet.errors import UserError


def _limits() -> dict[str, int]:
    from mlflow.utils import validation as v

    return {"tag": v.MAX_TAG_VAL_LENGTH, "param": v.MAX_PARAM_VAL_LENGTH,
            "key": v.MAX_ENTITY_KEY_LENGTH, "experiment": v.MAX_EXPERIMENT_NAME_LENGTH}


def check_store_limits(experiment: str, tags: Mapping[str, str],
                       params: Iterable[Mapping[str, object]]) -> None:
    """Raise UserError naming the first spec key whose value a store would refuse.

    Args:
        experiment: the experiment name (spec key `name`).
        tags: spec key -> the tag value it becomes (e.g. `description` -> the run note).
        params: each run's flattened params (config key -> value).
    """
    limit = _limits()
    if len(experiment) > limit["experiment"]:
        raise UserError(f"name: {len(experiment):,} characters; MLflow experiment names hold "
                        f"at most {limit['experiment']:,}")
    for key, value in tags.items():
        if len(value) > limit["tag"]:
            raise UserError(f"{key}: {len(value):,} characters; an MLflow tag holds at most "
                            f"{limit['tag']:,}")
    for run in params:
        for key, value in run.items():
            if len(key) > limit["key"]:
                raise UserError(f"{key[:60]}...: a key of {len(key):,} characters; MLflow "
                                f"keys hold at most {limit['key']:,}")
            if len(str(value)) > limit["param"]:
                raise UserError(f"{key}: a value of {len(str(value)):,} characters; an MLflow "
                                f"param holds at most {limit['param']:,}")
