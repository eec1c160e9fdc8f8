"""The `cifarnet-exp` command line. Commands parse arguments and delegate; user errors
(`UserError`) become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import json
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import click

from cifarnet import __version__
from cifarnet.errors import UserError

SET_HELP = "Override a config key, e.g. --set model.dilation=1 (repeatable)."


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into `error: ...` on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cifarnet-exp")
def main() -> None:
    """Test architectural hypotheses about small CIFAR-10 CNNs, honestly and fast."""


@main.command()
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--preset", default=None, help="Start from a named model preset.")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="YAML run config to start from.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def summary(assignments: tuple[str, ...], preset: str | None, config_file: str | None,
            as_json: bool) -> None:
    """Per-layer shapes, parameters, MACs and receptive fields."""
    from cifarnet.config import load_config
    from cifarnet.presets import preset_overrides
    from cifarnet.summary import format_table, summarize

    cfg = load_config(config_file, assignments,
                      preset_overrides(preset) if preset else None)
    s = summarize(cfg.model)
    if as_json:
        click.echo(json.dumps(s.to_dict()))
    else:
        click.echo(format_table(s))



@main.command("train")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="YAML run config to start from.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--data", "data_path", default=None, help="Local ImageFolder tree (data.path).")
@click.option("--resume", is_flag=True, help="Continue from the run folder's checkpoint.")
@click.option("--run-dir", type=click.Path(), default=None,
              help="Run folder (default: train.out_dir/<config hash>).")
@user_errors
def train_cmd(config_file: str | None, assignments: tuple[str, ...], data_path: str | None,
              resume: bool, run_dir: str | None) -> None:
    """Train one run with a progress bar; final metrics go to the run folder as JSON."""
    from rich.console import Console

    from cifarnet.config import load_config
    from cifarnet.data import load_data
    from cifarnet.progress import RichProgress, metrics_table
    from cifarnet.train import METRICS, train

    cfg = load_config(config_file, assignments)
    if data_path is not None:
        cfg = cfg.replace({"data.path": data_path})
    data = load_data(cfg.data)
    console = Console(stderr=True)
    console.print(f"[bold]{data.label}[/]: {len(data.train):,} train, "
                  f"{len(data.val) if data.val else 0:,} val, {len(data.test):,} test images; "
                  f"config {cfg.hash()[:12]}")
    result = train(cfg, [RichProgress(console)], data=data,
                   run_dir=None if run_dir is None else Path(run_dir),
                   resume=resume)
    Console().print(metrics_table(result))
    click.echo(f"metrics: {result.run_dir / METRICS}")
    if result.status != "finished":
        click.echo(f"run {result.status}: {result.reason}", err=True)
        sys.exit(1)


@main.command("run")
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override the spec's base config, e.g. --set train.epochs=2.")
@click.option("--dry-run", is_flag=True, help="Print the expanded grid; write nothing.")
@click.option("--storage", default=None, envvar="CIFARNET_STORAGE",
              help="Shared queue storage (e.g. postgresql://host/db); default: SQLite under "
                   "mlruns/.")
@click.option("--heartbeat", type=click.IntRange(1), default=10, show_default=True,
              help="Seconds between a worker's heartbeats.")
@click.option("--grace", type=click.IntRange(1), default=30, show_default=True,
              help="Seconds without a heartbeat before a job counts as abandoned.")
@click.option("--until-decided", is_flag=True,
              help="Add seeds to the cells of inconclusive hypotheses until all are decided.")
@click.option("--max-seeds", type=click.IntRange(2), default=10, show_default=True,
              help="With --until-decided: the most seeds a cell gets.")
@user_errors
def run_cmd(spec_path: str, assignments: tuple[str, ...], dry_run: bool, storage: str | None,
            heartbeat: int, grace: int, until_decided: bool, max_seeds: int) -> None:
    """Run an ablation spec: every cell x seed, tracked in MLflow, resumable, shareable."""
    import signal

    from rich.console import Console

    from cifarnet.adaptive import run_until_decided
    from cifarnet.config import parse_assignments
    from cifarnet.data import preload_data
    from cifarnet.progress import GridProgress
    from cifarnet.report import analyze_grid, verdict_table
    from cifarnet.runner import Outcome, run_spec
    from cifarnet.spec import load_spec

    spec = load_spec(spec_path)
    if assignments:
        spec = spec.with_base(parse_assignments(assignments))
    jobs = spec.jobs()
    if dry_run:
        click.echo(_dry_run_table(spec, jobs))
        return
    data = preload_data(j.config.data for j in jobs)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # a second signal: stop now, wherever we are
            raise KeyboardInterrupt
        stop.set()  # the trainer stops at the next batch, the run ends KILLED

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    display = GridProgress()
    total = Outcome()

    def run_jobs(batch) -> None:
        outcome = run_spec(spec, jobs=batch, storage_url=storage, progress=display, data=data,
                           heartbeat_interval=heartbeat, grace_period=grace, stop=stop)
        total.merge(outcome)

    try:
        if until_decided:
            analysis = run_until_decided(spec, max_seeds, run_jobs,
                                         lambda: analyze_grid(spec.name, with_history=False))
        else:
            run_jobs(jobs)
            analysis = analyze_grid(spec.name, with_history=False)
    except KeyboardInterrupt:
        display.close()
        click.echo("interrupted: the current run was ended KILLED; rerun to continue", err=True)
        sys.exit(130)
    display.close()
    if spec.hypotheses:
        Console().print(verdict_table(analysis))
    click.echo(f"{spec.name}: {len(total.finished)} run(s) finished here, "
               f"{total.already_done + len(total.skipped)} already done, "
               f"{len(total.failed)} failed; parent run {total.parent_run_id}")
    if total.failed:
        click.echo(total.failure_line(), err=True)
        sys.exit(1)


def _dry_run_table(spec, jobs) -> str:
    from cifarnet.summary import summarize

    cells = spec.cells()
    base = spec.base_config()
    rows = [("cell", "params", "MACs", "RF")]
    for cell in cells:
        s = summarize(base.replace(cell.levels).model)
        rows.append((cell.label, f"{s.total_params:,}", f"{s.total_macs:,}",
                     str(s.receptive_field)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    epochs = sum(j.config.train.epochs for j in jobs)
    lines.append(f"{len(cells)} cell(s) x {len(spec.seeds)} seed(s) = {len(jobs)} run(s), "
                 f"{epochs} epoch(s) in all; nothing was written (dry run)")
    return "\n".join(lines)


@main.command("report")
@click.argument("target", metavar="SPEC_OR_EXPERIMENT")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Output folder (default: reports/<experiment>).")
@click.option("--format", "formats", type=click.Choice(["md", "html", "csv"]), multiple=True,
              help="Formats to write (repeatable; default all three). Plots are always PNG.")
@user_errors
def report_cmd(target: str, out_dir: str | None, formats: tuple[str, ...]) -> None:
    """Tables, verdicts, plots and an HTML page for a grid's runs, read back from MLflow."""
    from rich.console import Console

    from cifarnet.report import FORMATS, analyze_grid, log_report, verdict_table, write_report
    from cifarnet.results import find_grid

    grid = find_grid(target)
    analysis = analyze_grid(grid)
    out = Path(out_dir) if out_dir else Path("reports") / grid.experiment
    files = write_report(analysis, out, formats or FORMATS)
    log_report(grid.parent_run_id, files)
    Console().print(verdict_table(analysis))
    for f in files:
        click.echo(str(f))


@main.command("search")
@click.argument("spec_path", metavar="SPEC")
@click.option("--n-trials", type=click.IntRange(1), default=None,
              help="Add this many trials now (default: fill the study up to the spec's n_trials).")
@click.option("--storage", default=None, envvar="CIFARNET_STORAGE",
              help="Optuna storage shared by workers (e.g. postgresql://host/db); default: "
                   "SQLite under mlruns/.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override the spec's base config.")
@click.option("--no-final", is_flag=True, help="Skip the held-out test of the best trial.")
@user_errors
def search_cmd(spec_path: str, n_trials: int | None, storage: str | None,
               assignments: tuple[str, ...], no_final: bool) -> None:
    """Optuna search over the recipe (e.g. lr, augment strength), pruned, tracked, shareable."""
    from cifarnet.config import parse_assignments
    from cifarnet.data import load_data
    from cifarnet.search import run_search
    from cifarnet.search_spec import load_search_spec
    from cifarnet.workqueue import default_storage_url

    spec = load_search_spec(spec_path)
    if assignments:
        spec = spec.with_base(parse_assignments(assignments))
    data = load_data(spec.base_config().data)
    try:
        out = run_search(spec, storage_url=storage, n_trials=n_trials, data=data,
                         final=not no_final)
    except KeyboardInterrupt:
        click.echo("interrupted: rerun to continue the same study", err=True)
        sys.exit(130)
    click.echo(f"{out.study_name}: " + ", ".join(f"{v} {k.lower()}" for k, v in
                                               out.trials.items() if v))
    for b in out.best:
        click.echo(f"best trial {b['number']}: values {b['values']} params {b['params']}")
    if out.final:
        click.echo(f"held-out test of the best configuration (trial {out.final['trial']}, "
                   f"retrained on train + validation): test_acc {out.final['test_acc']:.4f}")
    click.echo(f"optuna-dashboard {storage or default_storage_url()}")


@main.command("search-report")
@click.argument("name")
@click.option("--storage", default=None, envvar="CIFARNET_STORAGE")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Output folder (default: reports/search.<name>).")
@user_errors
def search_report_cmd(name: str, storage: str | None, out_dir: str | None) -> None:
    """Best trials, parameter importances and Optuna's plots for a search."""
    from cifarnet.search_report import load_study, markdown, write_plots
    from cifarnet.search_spec import load_search_spec
    from cifarnet.spec import SpecError
    from cifarnet.workqueue import default_storage_url, make_storage

    try:
        name = load_search_spec(name).name
    except SpecError:
        pass
    url = storage or default_storage_url()
    if url == default_storage_url() and not Path(url[len("sqlite:///"):]).exists():
        raise UserError(f"{name}: no local study storage at {url}")
    study = load_study(name, make_storage(url))
    out = Path(out_dir) if out_dir else Path("reports") / study.study_name
    files = write_plots(study, out)
    text = markdown(study, url)
    (out / "search.md").write_text(text)
    click.echo(text)
    for f in [*files, out / "search.md"]:
        click.echo(str(f))


@main.command("ui")
@click.option("--port", type=int, default=5000, show_default=True)
def ui_cmd(port: int) -> None:
    """Start the MLflow UI on 127.0.0.1 against the same store as `run`."""
    import subprocess

    from cifarnet.tracking import setup_mlflow

    uri = setup_mlflow()
    click.echo(f"MLflow UI for {uri} at http://127.0.0.1:{port}", err=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port)]
    sys.exit(subprocess.call(cmd))
