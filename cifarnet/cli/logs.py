"""Library log settings for the terminal: called by the CLI only, never by library code."""

from __future__ import annotations


QUIET_AT_INFO = ("mlflow.store.db.utils", "alembic")


def quiet_libraries() -> None:
    """Keep MLflow's and Optuna's chatter (system-metrics INFO lines, experimental-feature
    warnings, artifact upload bars) out of the progress display, and draw figures off-screen
    (matplotlib's Agg)."""
    import logging
    import os

    import matplotlib

    from cifarnet.search.storage import quiet_optuna

    matplotlib.use("Agg")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # a new store's "Creating initial MLflow database tables..." and alembic's migration lines
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_optuna()
