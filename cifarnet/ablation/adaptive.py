"""Adaptive seeds: keep adding seeds to the cells of undecided hypotheses until every verdict
is decided or a cell has `max_seeds` seeds. Each added seed is an ordinary job of the same grid
(tracked, resumable, deduplicated).

Looking after every seed and stopping at the first verdict is optional stopping: with the
fixed-n 95% t-interval a null effect would be shown "a > b" in 8.7% of simulated
sequences (3 to 10 seeds; tests/test_sequential.py). So the stopping rule uses the anytime-valid verdict of
`cifarnet.analysis.sequential`: Lai's (1976) confidence sequence for a normal mean with
unknown variance, the normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon (2021,
Ann. Statist. 49(2)), whose 95% coverage holds at every number of seeds at once, so stopping
whenever it decides keeps the error rate at most 5% per hypothesis. The report shows that
verdict beside the fixed-n one; after an adaptive run, the anytime verdict is the one to read.
Hypotheses with no verdict (both arms at chance, a metric never logged) get no seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from cifarnet.spec.ablation import AblationSpec, Job
from cifarnet.analysis.verdicts import Analysis, undecided_cells


def next_jobs(spec: AblationSpec, analysis: Analysis, max_seeds: int) -> list[Job]:
    """One more seed for every cell of an undecided hypothesis (anytime-valid verdict
    inconclusive); [] when all are decided or such a cell has `max_seeds` seeds."""
    cells = undecided_cells(analysis)
    if not cells:
        return []
    runs = analysis.runs
    used = set(runs["seed"]) | set(spec.seeds) if len(runs) else set(spec.seeds)
    per_cell = {c: set(runs[runs["cell"] == c]["seed"]) if len(runs) else set() for c in cells}
    if max(len(s) for s in per_cell.values()) >= max_seeds:
        return []
    seed = max(used) + 1
    while seed in spec.reserved_seeds():  # the tuning trials' seed: verdict seeds are fresh
        seed += 1
    return [replace(j, added=True) for j in spec.jobs([seed]) if j.cell.label in cells]


def run_until_decided(spec: AblationSpec, max_seeds: int, run: Callable[[list[Job]], object],
                      analyse: Callable[[], Analysis]) -> Analysis:
    """Run the grid, then add seeds while `next_jobs` asks for them."""
    run(spec.jobs())
    analysis = analyse()
    while jobs := next_jobs(spec, analysis, max_seeds):
        run(jobs)
        analysis = analyse()
    return analysis
