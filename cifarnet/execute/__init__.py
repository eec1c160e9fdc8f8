"""Executors: one interface that maps jobs onto workers (this machine, Ray, Slurm)."""
