"""How a training run ended: a closed set of states shared by the trainer and its readers."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's end state (also tag `cifarnet.status`; a StrEnum, so it is written as text).

    finished: every epoch ran. diverged: the loss went non-finite or past the divergence
    bound. pruned: a pruner stopped it early. killed: a signal or Ctrl-C stopped it.
    crashed: an exception stopped it. stale: its worker vanished (no heartbeat past the
    grace period) and another worker ended it.
    """

    FINISHED = "finished"
    DIVERGED = "diverged"
    PRUNED = "pruned"
    KILLED = "killed"
    CRASHED = "crashed"
    STALE = "stale"

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status this end state is recorded as."""
        return {RunStatus.FINISHED: "FINISHED", RunStatus.KILLED: "KILLED"}.get(self, "FAILED")
