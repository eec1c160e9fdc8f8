"""After a search: best trials, parameter importances and Optuna's plots (matplotlib, PNG)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cifarnet.errors import UserError
from cifarnet.search.study import FINAL_ATTR
from cifarnet.tracking.urls import masked


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    study_name = name if name.startswith("search.") else f"search.{name}"
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise UserError(f"{name}: no study {study_name!r} in the storage") from None


def best_rows(study: optuna.Study, top: int = 10) -> list[dict[str, Any]]:
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(study.directions) > 1:
        chosen = study.best_trials
    else:
        reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
        chosen = sorted(done, key=lambda t: t.value, reverse=reverse)[:top]
    return [{"trial": t.number, "values": t.values, **t.params,
             "epochs": len(t.intermediate_values) or None,
             "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")} for t in chosen]


# Below this many complete trials, importances (a random forest over the trials, fANOVA) are
# noise: with 2 trials Optuna reports 0.5 / 0.5 whatever the parameters did.
MIN_TRIALS_FOR_IMPORTANCE = 10


def importance_caveat(study: optuna.Study) -> str | None:
    """Why parameter importances would mean nothing for this study, or None when they can be
    computed: fewer than MIN_TRIALS_FOR_IMPORTANCE complete trials, no searched parameter
    that varies, or an objective (the first) with the same value in every complete trial."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return (f"only {len(complete)} complete trial(s); importances need at least "
                f"{MIN_TRIALS_FOR_IMPORTANCE} to mean anything")
    keys = {k for t in complete for k in t.params}
    if not any(len({repr(t.params.get(k)) for t in complete}) > 1 for k in keys):
        return "no searched parameter varies across the complete trials"
    values = [t.values[0] for t in complete]
    if max(values) - min(values) == 0:
        return (f"the objective is {values[0]:.4g} in all {len(complete)} complete trials "
                "(zero variance): no parameter explains anything")
    return None


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's default importances of the first objective; {} when `importance_caveat`
    says they would mean nothing."""
    if importance_caveat(study) is not None:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "importances will be equal" on tiny studies
            return optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if len(study.directions) > 1 else None)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optimisation history, importances, parallel coordinates (and the Pareto front)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    jobs = {"history.png": lambda: ovm.plot_optimization_history(
                study, target=target, target_name="objective 1" if multi else "Objective Value"),
            "parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(study, target=target)}
    if importances(study):
        jobs["importances.png"] = lambda: ovm.plot_param_importances(study, target=target)
    if multi:
        jobs["pareto_front.png"] = lambda: ovm.plot_pareto_front(study)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, make in jobs.items():
            ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5.5)
            label = study.user_attrs.get("data_label", "")
            fig.suptitle(study.study_name + (f" - {label}" if label else ""), fontsize=10)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(out / name)
    return written


def markdown(study: optuna.Study, storage_url: str) -> str:
    rows = best_rows(study)
    counts = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
    lines = [f"# {study.study_name}", "",
             f"{len(study.trials)} trials: " + ", ".join(f"{v} {k.lower()}"
                                                        for k, v in counts.items() if v), ""]
    if rows:
        keys = [k for k in rows[0] if k not in ("trial", "values", "mlflow_run_id")]
        head = ["trial", "objective(s)", *keys, "MLflow run"]
        lines += ["## Best trials", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            vals = ", ".join(f"{v:.4g}" for v in r["values"])
            cells = [str(r["trial"]), vals, *[_fmt(r.get(k)) for k in keys], r["mlflow_run_id"]]
            lines.append("| " + " | ".join(cells) + " |")
    caveat = importance_caveat(study)
    imp = importances(study)
    lines += ["", "## Parameter importances", ""]
    if caveat:
        lines.append(f"Not computed: {caveat}.")
    elif imp:
        lines += [f"- {k}: {v:.3f}" for k, v in imp.items()]
    else:
        lines.append("Not computed: Optuna's importance evaluator failed on this study.")
    final = study.user_attrs.get(FINAL_ATTR)
    if final:
        lines += ["", "## Held-out test of the best configuration", "",
                  f"Best trial {final['trial']} (validation objective "
                  f"{final['val_objective']:.4f}) "
                  f"retrained on train + validation: test accuracy {final['test_acc']:.4f} "
                  f"(MLflow run {final['run_id']}). Measured once, after the search."]
    lines += ["", "Dashboard: `optuna-dashboard " + masked(storage_url) + "`"]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)
