"""What a report reports: grid, parent run, data, budget, recipe, dates and seeds.

Every report starts with these lines, read from the runs' own params (not from the spec file
on disk, which may have changed since). A value that differs between cells is listed with
"(varies by cell)". A run shorter than the default recipe's epochs or on a subset of the data
is labelled "reduced budget: ..." in the header and in every plot title.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from cifarnet.config.schema import TrainConfig

FULL_EPOCHS = TrainConfig().epochs


@dataclass(frozen=True)
class GridSource:
    """Where the runs come from: the MLflow experiment, the grid id (tag `cifarnet.grid` of the
    parent run) and the parent run id. Empty strings when unknown (e.g. runs built in memory)."""

    experiment: str = ""
    grid_id: str = ""
    parent_run_id: str = ""


@dataclass(frozen=True)
class Provenance:
    """The header: (field, value) pairs in display order, and the budget line."""

    fields: tuple[tuple[str, str], ...]
    budget: str
    reduced: bool


def _values(runs: pd.DataFrame, key: str) -> list[str]:
    col = f"params.{key}"
    if col not in runs:
        return []
    return sorted({str(v) for v in runs[col].dropna()}, key=_sort_key)


def _sort_key(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _number(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    if f.is_integer() and abs(f) >= 1000:
        return f"{int(f):,}"
    return f"{f:.4g}" if len(v) > 8 else v  # a tuned 0.01878515050174937 reads 0.01879


def _show(runs: pd.DataFrame, key: str, fmt=_number) -> str:
    vals = _values(runs, key)
    if not vals:
        return "unknown"
    shown = ", ".join(fmt(v) for v in vals)
    return shown + (" (varies by cell)" if len(vals) > 1 else "")


def _is_set(v: str) -> bool:
    return v not in ("None", "none", "null", "")


def _date(ts: object) -> str:
    """A timestamp as UTC minutes (naive timestamps are taken as UTC)."""
    t = pd.Timestamp(ts)
    t = t.tz_convert("UTC") if t.tzinfo is not None else t
    return t.strftime("%Y-%m-%d %H:%M UTC")


def budget_line(runs: pd.DataFrame) -> tuple[str, bool]:
    """("reduced budget: 2 epochs, 2,000 training images, 500 test images", True), or
    ("full budget: ...", False). Reduced: fewer epochs than the default recipe's, or a
    training or test subset."""
    epochs = [float(v) for v in _values(runs, "train.epochs") if _sort_key(v)[0] == 0]
    if not epochs:
        return ("budget unknown (no finished run)", False)
    subset_train = any(_is_set(v) for v in _values(runs, "data.train_subset"))
    subset_test = any(_is_set(v) for v in _values(runs, "data.test_subset"))
    reduced = min(epochs) < FULL_EPOCHS or subset_train or subset_test
    parts = [f"{_show(runs, 'train.epochs')} epoch{'s' if max(epochs) != 1 else ''}",
             f"{_show(runs, 'data.num_train')} training images"]
    if subset_test or not reduced:
        parts.append(f"{_show(runs, 'data.num_test')} test images")
    return (("reduced budget: " if reduced else "full budget: ") + ", ".join(parts), reduced)


def describe(runs: pd.DataFrame, source: GridSource | None = None,
             now: dt.datetime | None = None) -> Provenance:
    """The header of a report on `runs` (the DataFrame of `tracking.results.load_runs`; only
    FINISHED runs count)."""
    source = source or GridSource()
    ok = runs[runs["status"] == "FINISHED"] if "status" in runs and len(runs) else runs
    seeds = sorted({int(s) for s in ok["seed"]}) if "seed" in ok and len(ok) else []
    budget, reduced = budget_line(ok)
    starts = ok["start_time"].dropna() if "start_time" in ok else pd.Series(dtype=object)
    ends = ok["end_time"].dropna() if "end_time" in ok else pd.Series(dtype=object)
    when = (f"{_date(starts.min())} to {_date(ends.max())}" if len(starts) and len(ends)
            else "unknown")
    now = now or dt.datetime.now(dt.UTC)
    recipe = (f"{_show(ok, 'train.optimizer')}, lr {_show(ok, 'train.lr')}, batch "
              f"{_show(ok, 'train.batch_size')}, schedule {_show(ok, 'train.schedule')}, "
              f"weight decay {_show(ok, 'train.weight_decay')}, label smoothing "
              f"{_show(ok, 'train.label_smoothing')}")
    fields = (
        ("grid", f"{source.experiment or '?'} (grid id {source.grid_id or '?'})"),
        ("parent run", source.parent_run_id or "?"),
        ("data", _show(ok, "data.label")),
        ("images", (f"{_show(ok, 'data.num_train')} train, {_show(ok, 'data.num_val')} "
                    f"validation, {_show(ok, 'data.num_test')} test")),
        ("epochs", _show(ok, "train.epochs")),
        ("recipe", recipe),
        ("precision", _show(ok, "precision")),  # resolved on the machine that ran them
        ("seeds", (f"{len(seeds)} ({', '.join(str(s) for s in seeds) or 'none'}); "
                   f"{len(ok)} finished run(s)")),
        ("runs", when),
        ("report written", now.strftime("%Y-%m-%d %H:%M UTC")),
    )
    return Provenance(fields, budget, reduced)
