-- A second database for the shared work queue (Optuna's storage), beside MLflow's.
CREATE DATABASE queue OWNER cifarnet;
