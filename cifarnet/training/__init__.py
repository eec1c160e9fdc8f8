"""Training: one run from a config, with callbacks for everything else.

Imports neither MLflow nor Optuna (tracking and pruning hang off `callbacks.Callback`)."""
