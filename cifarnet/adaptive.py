"""Adaptive seeds: keep adding seeds to the cells of inconclusive hypotheses until every
verdict is decided or a cell has `max_seeds` seeds. Each added seed is an ordinary job of
the same grid (tracked, resumable, deduplicated)."""

from __future__ import annotations

from typing import Callable

from cifarnet.analysis import Analysis, undecided_cells
from cifarnet.spec import AblationSpec, Job


def next_jobs(spec: AblationSpec, analysis: Analysis, max_seeds: int) -> list[Job]:
    """One more seed for every cell of an inconclusive hypothesis; [] when done."""
    cells = undecided_cells(analysis)
    if not cells:
        return []
    runs = analysis.runs
    used = set(runs["seed"]) | set(spec.seeds) if len(runs) else set(spec.seeds)
    per_cell = {c: set(runs[runs["cell"] == c]["seed"]) if len(runs) else set() for c in cells}
    if max(len(s) for s in per_cell.values()) >= max_seeds:
        return []
    seed = max(used) + 1
    return [j for j in spec.jobs([seed]) if j.cell.label in cells]


def run_until_decided(spec: AblationSpec, max_seeds: int, run: Callable[[list[Job]], object],
                      analyse: Callable[[], Analysis]) -> Analysis:
    """Run the grid, then add seeds while `next_jobs` asks for them."""
    run(spec.jobs())
    analysis = analyse()
    while jobs := next_jobs(spec, analysis, max_seeds):
        run(jobs)
        analysis = analyse()
    return analysis
