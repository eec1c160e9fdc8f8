"""The one MLflow client every command uses: each call retried on a transient store error.

MLflow's SQL store turns a dropped database connection into an MlflowException
(TEMPORARILY_UNAVAILABLE) and does not retry it; its REST client retries HTTP 503s, but only
for a server. A database restarting under a long grid (PostgreSQL terminating every
connection, "terminating connection due to administrator command"), or SQLite busy under
another writer, would then crash whichever call met it: a run's metrics, a tag, ending the
parent run after the last job. `mlflow_client()` returns an `MlflowClient` whose every public
method is retried (`cifarnet.tracking.retry.retrying_methods`) while its error is transient
(`is_transient`), and each upsert (`UPSERTS`) also on a unique-key violation: the loser's
side of two workers writing the same tag or dataset row at once, which MLflow's SQL store
does not handle (PostgreSQL: "duplicate key value violates unique constraint tag_pk").
Any other error is raised at once.

The calls are safe to repeat: tags, params of the same value, artifacts and a run's status
overwrite; MLflow logs a metric batch once even when an earlier attempt committed it. The
exception is a `create_run` whose commit succeeded but whose reply was lost (the connection
dropped in between): the retry makes a second run and the first is left RUNNING and empty,
as a killed worker leaves one (a grid ends such a run FAILED, status `stale`, the next time
its job is taken). A method that calls another public method is retried as a whole, once.

Import this module where MLflow is needed (it imports mlflow, which takes a second).
"""

from __future__ import annotations

from mlflow import MlflowClient

from cifarnet.tracking.retry import retrying_methods

# MLflow writes these by reading, then inserting: two workers writing the same row at once
# (a shared parent run's tags, the experiment's tags, the dataset row every run shares) make
# the slower one fail on the table's unique key; its retry updates the row instead
UPSERTS = ("set_tag", "set_experiment_tag", "log_inputs", "log_batch", "log_param")


@retrying_methods(MlflowClient, upserts=UPSERTS)
class RetryingClient(MlflowClient):
    """`mlflow.MlflowClient` with every public method retried on a transient store error
    (see the module's docstring)."""


def mlflow_client(tracking_uri: str | None = None) -> RetryingClient:
    """A retrying client of `tracking_uri` (default: MLflow's current tracking URI)."""
    return RetryingClient(tracking_uri)
