"""`run --workers N`: N worker processes of the local executor, started, shown and stopped
together."""

from __future__ import annotations

import signal
import subprocess
import time

import pandas as pd
import pytest
from helpers import EXE, children, runs_df, search_spec, study_of, trial_runs, write, write_spec

from cifarnet.execute import base
from cifarnet.execute.base import ExecutorOptions, Resources


def test_threads_are_split_so_that_workers_times_threads_fit_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(base, "cpu_count", lambda: 2)
    assert ExecutorOptions(workers=2).resources() == Resources(1, 0.0)
    assert ExecutorOptions(workers=4).resources() == Resources(1, 0.0)  # never 0
    monkeypatch.setattr(base, "cpu_count", lambda: 16)
    assert ExecutorOptions(workers=3).resources() == Resources(5, 0.0)
    # several runs per GPU: each asks a fraction of one (Ray packs them; local: round-robin)
    assert ExecutorOptions(workers=8, runs_per_gpu=4, gpus=2).resources() == Resources(2, 0.25)


def _wait_until_two_run(proc: subprocess.Popen, runs) -> None:
    """Wait (at most 300 s, while `proc` lives) until `runs()`, a DataFrame of MLflow runs,
    holds two RUNNING: both workers train."""
    deadline = time.monotonic() + 300
    while True:
        try:
            if (runs()["status"] == "RUNNING").sum() == 2:
                return
        except Exception:  # no store or no run yet
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)


def _spans(kids) -> list[tuple[float, float]]:
    return sorted(zip(kids["start_time"].astype("int64"), kids["end_time"].astype("int64")))


@pytest.mark.slow
def test_two_workers_run_each_job_once_side_by_side(tiny_tree, tmp_path) -> None:
    spec = write_spec(tmp_path, tiny_tree, epochs=2)  # 2 cells x 2 seeds
    r = subprocess.run([EXE, "run", str(spec), "--workers", "2"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    kids = children(runs_df(tmp_path))
    assert len(kids) == 4 and set(kids["status"]) == {"FINISHED"}
    assert kids["tags.cifarnet.config_hash"].nunique() == 4  # each job once
    spans = _spans(kids)
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # at once
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("tiny: 4 run(s) finished here, 0 already done, "
                           "0 failed; parent run ")
    assert "H" in r.stdout  # the verdict table of the spec's hypothesis
    parent = runs_df(tmp_path).query("`tags.cifarnet.role` == 'parent'").iloc[0]
    assert "with --workers 2 on this machine" in parent["tags.cifarnet.predicted"]


@pytest.mark.slow
def test_workers_add_seeds_until_decided_and_a_bare_spec_says_it_has_no_verdict(
        tiny_tree, tmp_path) -> None:
    """`run --until-decided --max-seeds 3 --workers 2`: the workers are started with the
    seed options (they once got `--max-seeds` alone); seed 2 is added, its runs tagged, the
    verdict the anytime one, and the summary counts the added jobs (it printed "-2 already
    done"); a spec without hypotheses ends `run` and `report` with its one-line note instead
    of a verdict table."""
    spec = write_spec(tmp_path, tiny_tree, epochs=2)  # 2 cells x seeds 0, 1
    r = subprocess.run([EXE, "run", str(spec), "--workers", "2", "--until-decided",
                        "--max-seeds", "3"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    kids = children(runs_df(tmp_path))
    assert set(kids["status"]) == {"FINISHED"}
    # the anytime-valid sequence decides nothing before 4 seeds: seed 2 is added to both
    # cells, and only its runs carry the tag that makes the verdict the anytime one
    per_cell = kids.groupby("tags.cifarnet.cell")["params.train.seed"].nunique()
    assert len(per_cell) == 2 and (per_cell == 3).all(), per_cell
    added = kids.get("tags.cifarnet.seed_added", pd.Series(index=kids.index, dtype=object))
    assert sorted(kids.loc[added == "true", "params.train.seed"]) == ["2", "2"]
    assert "anytime-valid: seeds 2 added by --until-decided" in r.stdout, r.stdout
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("tiny: 6 run(s) finished here, 0 already done, "), last
    bare = write_spec(tmp_path, tiny_tree, name="bare", epochs=1,
                      factors={"model.residual_add": [True, False]}, seeds=[0])
    r = subprocess.run([EXE, "run", str(bare), "--workers", "2"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "note: spec bare declares no hypotheses" in r.stdout, r.stdout
    # its report: the same note instead of an empty verdict table, and no plotting warning
    r = subprocess.run([EXE, "report", "bare", "--out", "rep"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "note: spec bare declares no hypotheses" in r.stdout, r.stdout
    assert "Warning" not in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "times"), [(signal.SIGTERM, 1), (signal.SIGINT, 1),
                                            (signal.SIGINT, 2), (signal.SIGTERM, 2)],
                         ids=["sigterm", "ctrl-c", "ctrl-c-twice", "sigterm-twice"])
def test_one_signal_stops_every_worker_cleanly(tiny_tree, tmp_path, sig, times) -> None:
    """One signal: every worker's run ends KILLED at its next batch; a second one at once
    (it hung the supervisor, or ended it `Aborted!` exit 1, when it raised inside a lock)."""
    # runs long enough (a few minutes) that neither can end between the moment both are
    # seen RUNNING and the signal: 30 tiny epochs took about 10 s, and one sometimes did
    spec = write_spec(tmp_path, tiny_tree, epochs=600)
    proc = subprocess.Popen([EXE, "run", str(spec), "--workers", "2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_two_run(proc, lambda: children(runs_df(tmp_path)))
    for _ in range(times):
        proc.send_signal(sig)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    # one line for all: each worker's own "interrupted:" line is not passed on
    assert [line for line in err.splitlines() if "interrupted" in line] == [
        "interrupted: the grid stopped (a run in progress ends KILLED); rerun to continue"]
    kids = children(runs_df(tmp_path))  # the two not started wait, SCHEDULED, for a rerun
    assert sorted(kids["status"]) == ["KILLED", "KILLED", "SCHEDULED", "SCHEDULED"]
    ps = subprocess.run(["pgrep", "-f", f"cifarnet run {spec}"], capture_output=True,
                        text=True)
    assert ps.stdout == ""  # no worker left behind


@pytest.mark.slow
def test_two_search_workers_share_one_study_and_test_the_best_once(tiny_tree, tmp_path) -> None:
    """`search --workers 2 --n-trials 3` on a new 3-trial study: 3 trials in all (not 3 per
    worker, at most one over: each worker checks the count before it starts a trial), trained
    side by side, each its own MLflow run; the study is complete, so the best configuration
    is retrained and tested once, after both ended."""
    spec = write(tmp_path, search_spec(tiny_tree, tmp_path, n_trials=3))
    r = subprocess.run([EXE, "search", str(spec), "--workers", "2", "--n-trials", "3"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    study = study_of(tmp_path)
    assert 3 <= len(study.trials) <= 4
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    # each worker's sampler is seeded apart: with the spec's seed alone both drew the same
    # first point, and two trials trained one configuration
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(study.trials)
    trials, df = trial_runs(tmp_path)
    assert len(trials) == len(study.trials) and set(trials["status"]) == {"FINISHED"}
    spans = _spans(trials)
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # at once
    finals = df[df["tags.cifarnet.role"] == "final"]
    assert len(finals) == 1 and finals["status"].item() == "FINISHED"
    assert f"best trial {study.best_trial.number}:" in r.stdout
    assert "held-out test of the best configuration" in r.stdout


@pytest.mark.slow
def test_one_ctrl_c_stops_every_search_worker(tiny_tree, tmp_path) -> None:
    """A Ctrl-C ends each worker's trial (its MLflow run KILLED, the trial enqueued again
    with the same parameters, so a rerun continues the same study) and no process is left."""
    long = search_spec(tiny_tree, tmp_path, n_trials=4)
    long["base"]["train"]["epochs"] = 30
    spec = write(tmp_path, long)
    proc = subprocess.Popen([EXE, "search", str(spec), "--workers", "2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_two_run(proc, lambda: trial_runs(tmp_path)[0])
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.strip().splitlines()[-1] == ("interrupted: 2 workers stopped (a trial in "
                                            "progress ends KILLED); rerun to continue the same "
                                            "study")
    trials, _ = trial_runs(tmp_path)
    assert sorted(trials["status"]) == ["KILLED", "KILLED"]
    study = study_of(tmp_path)
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 2  # enqueued again: the rerun takes them first
    ps = subprocess.run(["pgrep", "-f", f"cifarnet search {spec}"], capture_output=True,
                        text=True)
    assert ps.stdout == ""


class _Finished:
    """An executor whose workers all end at once ("done"), the items they were given kept;
    `then` runs before the first one ends (a signal that came as they ended)."""

    items: list = []

    def __init__(self, options, then=None) -> None:
        self.then = then

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None: ...

    def map_unordered(self, fn, items):
        from cifarnet.execute.base import Done

        _Finished.items = list(items)
        if self.then:
            self.then()
        yield from (Done(i, "done") for i in range(len(items)))


def test_a_signal_after_every_search_worker_finished_still_stops_the_search(
        tiny_tree, tmp_path, monkeypatch) -> None:
    """A Ctrl-C that came while the workers were ending was ignored: their results were all
    "done", and `search --workers 2` would have started its held-out test, a whole training.
    A signal stops the command: one line, 128 + the signal."""
    import os

    from click.testing import CliRunner

    import cifarnet.execute.base as base
    from cifarnet.cli.main import main

    monkeypatch.setattr(base, "make_executor", lambda options: _Finished(
        options, lambda: os.kill(os.getpid(), signal.SIGINT)))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, search_spec(tiny_tree, tmp_path))),
                                  "--workers", "2"])
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == (
        "interrupted: every worker had finished before the signal; rerun to continue (the "
        "held-out test of a complete study)"), r.output


def test_the_storage_url_reaches_the_search_workers_off_their_command_line(
        tiny_tree, tmp_path, monkeypatch) -> None:
    """A command line is shown by `ps` to every user of the machine, a PostgreSQL password
    with it: a search worker gets the URL inside its pickled job (multiprocessing's spawn
    command line names no argument of the job)."""
    import multiprocessing.spawn
    import pickle

    from click.testing import CliRunner

    import cifarnet.execute.base as base
    from cifarnet.cli.main import main

    url = f"sqlite:///{tmp_path / 'queue.db'}"  # the password's stand-in: the whole URL
    monkeypatch.setattr(base, "make_executor", _Finished)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["search", str(write(tmp_path, search_spec(tiny_tree, tmp_path))),
                                  "--workers", "2", "--storage", url, "--n-trials", "1",
                                  "--no-final"])
    assert r.exit_code == 0, r.output
    assert [pickle.loads(pickle.dumps(job)).storage_url for job in _Finished.items] == [url] * 2
    assert not any("queue.db" in str(a) for a in multiprocessing.spawn.get_command_line())
