#!/bin/sh
# A second database for Optuna's studies (searches, tune: blocks), beside MLflow's. (They
# cannot share one: both keep their schema version in a table named alembic_version.)
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname mlflow \
    -c "CREATE DATABASE queue OWNER \"$POSTGRES_USER\""
