#!/bin/sh
# Starts the tracking server behind MLflow's basic-auth app. The backend store's URI is built
# here from docker/.env (user and password percent-encoded) and handed over in the
# environment (MLFLOW_BACKEND_STORE_URI), so no password is written in docker-compose.yml or
# shown in the container's process list.
set -eu
: "${POSTGRES_USER:?set it in docker/.env (see docker/.env.example)}"
: "${POSTGRES_PASSWORD:?set it in docker/.env (see docker/.env.example)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set it in docker/.env (see docker/.env.example)}"
MLFLOW_BACKEND_STORE_URI=$(python - <<'PY'
import os, urllib.parse
q = lambda key: urllib.parse.quote(os.environ[key], safe="")
host = os.environ.get("POSTGRES_HOST", "postgres")
print(f"postgresql+psycopg://{q('POSTGRES_USER')}:{q('POSTGRES_PASSWORD')}@{host}:5432/mlflow")
PY
)
export MLFLOW_BACKEND_STORE_URI
unset POSTGRES_PASSWORD
exec mlflow server --app-name basic-auth --artifacts-destination /mlartifacts \
    --host 0.0.0.0 --port 5000 "$@"
