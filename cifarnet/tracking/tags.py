"""The tag schema of cifarnet-exp's MLflow runs: every tag name the package writes or reads.

Tags are the contract between the runs a grid or search writes and everything that reads them
back (resume, reports, the MLflow UI); spelling one by hand elsewhere is a bug.
"""

from __future__ import annotations

from enum import StrEnum

TAG_ROLE = "cifarnet.role"
TAG_SPEC = "cifarnet.spec"
TAG_HASH = "cifarnet.config_hash"
TAG_CELL = "cifarnet.cell"
# what MLflow's runs table groups a grid's runs by: the cell within its grid and budget
# ("dilation=2,residual_add=true | 30ep g1a2b3c"), so two grids' runs never share a mean
TAG_GROUP = "cifarnet.group"
TAG_VERDICT = "cifarnet.verdict."  # + hypothesis id: its verdict, on the grid's parent run
TAG_SEED = "cifarnet.seed"
# "true" on a run whose seed `--until-decided` added beyond the spec's list (the optional
# stopping that makes its hypothesis read the anytime-valid verdict); absent otherwise
TAG_SEED_ADDED = "cifarnet.seed_added"
TAG_REASON = "cifarnet.failure_reason"
TAG_STATUS = "cifarnet.status"
# a job's worker is alive: "<launch id> <unix seconds>", rewritten every heartbeat interval
TAG_HEARTBEAT = "cifarnet.heartbeat"
TAG_LAUNCHER = "cifarnet.launcher"  # a grid's parent: the launcher that holds it (host, pid)
TAG_GRID = "cifarnet.grid"
# the content fingerprint of the data set a run trained on (a parent: of all its grid's)
TAG_DATA = "cifarnet.data_fingerprint"
TAG_PRECISION = "cifarnet.precision"  # the resolved train.precision: fp32 or bf16
TAG_RESUMED_FROM = "cifarnet.resumed_from"  # the interrupted run whose checkpoint it continued
TAG_PREDICTED = "cifarnet.predicted"  # a grid's predicted cost before it started (one line)
METRIC_PREDICTED = "predicted_wall_s"  # the same, seconds, on the grid's parent run
TAG_NOTE = "mlflow.note.content"
MLFLOW_PARENT = "mlflow.parentRunId"  # a grid run's parent: the grid it belongs to
TAG_OPTUNA_STATE = "optuna.state"
TAG_OPTUNA_TRIAL_NUMBER = "optuna.trial_number"
TAG_OPTUNA_STUDY = "optuna.study"
# an arm's study parent once its study is complete: the best trial and the tuned values
TAG_BEST_TRIAL = "cifarnet.best_trial"
TAG_ARM = "cifarnet.arm"  # an arm's study and trials: the cell they tune (not TAG_CELL, which
# groups a grid's verdict runs in MLflow's UI)
METRIC_BEST_VAL = "best_val_acc"
PARAM_TUNED = "tuned."  # + config key: the arm's tuned value, a param of its study parent


class Role(StrEnum):
    """What a run is (tag `cifarnet.role`)."""

    PARENT = "parent"  # an ablation grid
    CHILD = "child"  # one cell and seed of a grid
    STUDY = "study"  # an Optuna search
    TRIAL = "trial"  # one trial of a search
    FINAL = "final"  # a search's held-out test of its best configuration
    ARM_STUDY = "arm_study"  # a grid's tuning study of one arm (tune, then compare)
    ARM_TRIAL = "arm_trial"  # one trial of an arm's study
