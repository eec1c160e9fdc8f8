"""Optuna searches over the training recipe: spec, objective and pruning, study, report."""
