"""Ablations: specs that expand into cells x seeds, the grid runner, and adaptive seeds."""
