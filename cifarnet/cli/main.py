"""The `cifarnet-exp` command line. Commands parse arguments and delegate; user errors
(`UserError`) become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click
from click.core import ParameterSource

from cifarnet import __version__
from cifarnet.errors import UserError, one_line
from cifarnet.workspace import check_folder, make_folder

SET_HELP = "Override a config key, e.g. --set model.dilation=1 (repeatable)."
MAX_WORKERS = 64  # local worker processes (each holds a model, its data and a display bar)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into `error: ...` on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(2)
    return wrapper


def stops_at_once(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The signal policy of a command with no run to end (`signals.stop_at_once`): a signal
    stops it with `interrupted: <what>` and exit 128 + the signal's number."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from cifarnet.signals import stop_at_once

            with stop_at_once() as request:
                try:
                    return fn(*args, **kwargs)
                except KeyboardInterrupt:
                    interrupted(request, what)
        return wrapper
    return decorate


class OneLineErrors(click.Group):
    """Click's group, whose usage errors (an unknown option, a value out of range, a missing
    argument) are one line naming it, `error: Invalid value for '--workers': ...`, and exit
    code 2, as every other bad input is; click's own form is four lines (usage, a hint, a
    blank line, the error)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The installed command: once it has said its last line, a late signal (a second
        Ctrl-C) is ignored while the interpreter shuts down, not raised there (exit -2)."""
        import signal

        from cifarnet.signals import SIGNALS

        try:
            return self.main(*args, **kwargs)
        finally:
            for s in SIGNALS:
                signal.signal(s, signal.SIG_IGN)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        import signal

        from cifarnet.signals import Stopped, stop_while_starting

        # past `ulimit -f` a write fails with EFBIG (one line, DiskFull) instead of SIGXFSZ
        # killing the process mid-write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        kwargs.pop("standalone_mode", None)
        # until a command installs its own signal policy, a signal stops the command where
        # it is with one line and 128 + its number (click's "Aborted!" and exit 1 for
        # SIGINT, a silent death for SIGTERM, before)
        with stop_while_starting() as starting:
            try:
                code = self._main(*args, **kwargs)
            except Stopped:
                interrupted(starting, "stopped while starting")
        sys.exit(code if isinstance(code, int) else 0)  # --help, --version: click's Exit

    def _main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # no command: the help, as asked
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.UsageError as exc:
            click.echo(f"error: {one_line(exc.format_message())}{set_hint(exc)}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C at a prompt
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cifarnet-exp")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Test architectural hypotheses about small CIFAR-10 CNNs, honestly and fast."""
    from cifarnet.workspace import Workspace

    ctx.obj = Workspace.resolve()  # once: every command's stores and folders


def _given_storage(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--storage ""` ran on the default storage without a word: refused."""
    if value is not None and not value.strip():
        source = ctx.get_parameter_source(param.name or "storage")
        key = "CIFARNET_STORAGE" if source == ParameterSource.ENVIRONMENT else "--storage"
        raise click.BadParameter("an empty URL; give one, or leave it out for the default "
                                 "storage (mlruns/optuna.db)", param_hint=key)
    return value


def set_hint(exc: click.UsageError) -> str:
    """`--set train.lr 0.05` leaves `0.05` as an extra argument: say that --set takes one
    word (the command's parsed `--set` values are on the error's context)."""
    given = exc.ctx.params.get("assignments") if exc.ctx else None
    if "unexpected extra argument" in exc.format_message() and given:
        return " (--set takes KEY=VALUE as one word, e.g. --set train.lr=0.05)"
    return ""


def interrupted(request: Any, what: str) -> NoReturn:
    """The one line and exit code of a command stopped by a signal."""
    click.echo(f"interrupted: {what}", err=True)
    sys.exit(request.exit_code)


def executor_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose where runs execute (`cifarnet.execute`)."""
    from cifarnet.execute.base import ExecutorKind

    for option in reversed([
        click.option("--executor", type=click.Choice([k.value for k in ExecutorKind]),
                     default="local", show_default=True,
                     help="Where runs execute: this machine, a Ray cluster, or Slurm."),
        click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=1,
                     show_default=True,
                     help="Runs at once (local: worker processes, the cores split between "
                          "them; ray/slurm: the most at once)."),
        click.option("--runs-per-gpu", type=click.IntRange(1, 64), default=1,
                     show_default=True, help="Runs sharing one GPU (small runs fill it "
                                             "together)."),
        click.option("--ray-address", default=None, help="A running Ray cluster (default: "
                                                         "a local Ray for the command)."),
        click.option("--slurm-cluster", type=click.Choice(["slurm", "local"]), default="slurm",
                     show_default=True, help="submitit's cluster: sbatch, or this machine "
                                             "through submitit's local executor."),
        click.option("--slurm-partition", default=None, help="sbatch --partition."),
        click.option("--slurm-time", type=click.IntRange(1), default=24 * 60,
                     show_default=True, help="sbatch --time, in minutes."),
    ]):
        fn = option(fn)
    return fn


@main.command()
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a model key (model.*; the summary reads no other).")
@click.option("--preset", default=None, help="Start from a named model preset.")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="YAML run config to start from (its model section is what is summarized).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
@stops_at_once("summary stopped")
def summary(assignments: tuple[str, ...], preset: str | None, config_file: str | None,
            as_json: bool) -> None:
    """Per-layer shapes, parameters, MACs and receptive fields."""
    from cifarnet.config.presets import preset_overrides
    from cifarnet.config.schema import load_config, parse_assignments
    from cifarnet.model.summary import format_table, summarize

    cfg = load_config(config_file, assignments,
                      preset_overrides(preset) if preset else None)
    for key in parse_assignments(assignments):  # the summary reads the model alone
        if not key.startswith("model."):
            raise UserError(f"{key}: summary describes the model only (model.* keys); this "
                            "key would change nothing")
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
    from rich.markup import escape

    from cifarnet.cli.progress import (
        DecodeProgress,
        RichProgress,
        metrics_table,
        table_console,
    )
    from cifarnet.signals import stop_on_signals
    from cifarnet.config.schema import load_config, parse_assignments
    from cifarnet.data.datasets import load_data
    from cifarnet.training.callbacks import StopOnEvent
    from cifarnet.training.checkpoint import resume_point
    from cifarnet.training.loop import METRICS, default_run_dir, train

    given = parse_assignments(assignments)
    if data_path is not None and "data.path" in given:
        raise UserError("--data: data.path is also given by --set; give it once")
    if run_dir is not None and "train.out_dir" in given:
        raise UserError("--run-dir: the run folder is given, so --set train.out_dir (the "
                        "folder of run folders) would be ignored; give one of them")
    cfg = load_config(config_file, assignments)
    if data_path is not None:
        cfg = cfg.replace({"data.path": data_path})
    from cifarnet.hardware import check_device_present

    check_device_present(cfg.train.device)  # before any folder is made
    console = Console(stderr=True)
    folder, folder_key = ((Path(run_dir), "--run-dir") if run_dir is not None
                          else (default_run_dir(cfg), "train.out_dir"))
    if resume:
        point = resume_point(folder, cfg.hash(), cfg.train.epochs)
        click.echo(point.message(), err=True)
        if point.finished:
            result = train(cfg, run_dir=folder, resume=True)
            table_console().print(metrics_table(result))
            click.echo(f"metrics: {result.run_dir / METRICS}")
            return
    data = load_data(cfg.data, DecodeProgress(console).update)
    make_folder(folder, folder_key)  # after the data is found: bad data writes no folder
    console.print(f"[bold]{escape(data.label)}[/]: {len(data.train):,} train, "
                  f"{len(data.val) if data.val else 0:,} val, {len(data.test):,} test images; "
                  f"config {cfg.hash()[:12]}")
    with stop_on_signals() as request:
        try:
            result = train(cfg, [RichProgress(console), StopOnEvent(request.event)], data=data,
                           run_dir=folder, resume=resume)
        except KeyboardInterrupt:
            interrupted(request, "the run stopped after its last checkpoint; `train --resume` "
                                 "continues it")
    table_console().print(metrics_table(result))
    click.echo(f"metrics: {result.run_dir / METRICS}")
    if result.status != "finished":
        click.echo(f"run {result.status}: {result.reason}", err=True)
        sys.exit(1)


@main.command("run")
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override the spec's base config, e.g. --set train.epochs=2.")
@click.option("--dry-run", is_flag=True, help="Print the expanded grid; write nothing.")
@click.option("--storage", default=None, envvar="CIFARNET_STORAGE", callback=_given_storage,
              help="Optuna storage of a `tune:` block's studies (e.g. postgresql://host/db); "
                   "default: SQLite under mlruns/. A grid without one needs none.")
@click.option("--heartbeat", type=click.IntRange(1), default=10, show_default=True,
              help="Seconds between a worker's heartbeats.")
@click.option("--grace", type=click.IntRange(1), default=30, show_default=True,
              help="Seconds without a heartbeat before a job counts as abandoned; at least "
                   "2 x --heartbeat + 5, so that one late heartbeat never looks like a dead "
                   "worker.")
@click.option("--until-decided", is_flag=True,
              help="Add seeds to the cells of inconclusive hypotheses until all are decided.")
@click.option("--max-seeds", type=click.IntRange(2), default=10, show_default=True,
              help="With --until-decided: the most seeds a cell gets.")
@click.option("--no-reuse", is_flag=True,
              help="Train every job, even one that another experiment has already finished "
                   "(same config and data); by default such a run is copied.")
@executor_options
@user_errors
def run_cmd(spec_path: str, assignments: tuple[str, ...], dry_run: bool, storage: str | None,
            heartbeat: int, grace: int, until_decided: bool, max_seeds: int, no_reuse: bool,
            **executor: Any) -> None:
    """Run an ablation spec (a file, or a shipped name such as dilation_add): every
    cell x seed, tracked in MLflow, resumable, on this machine, a Ray cluster or Slurm."""
    check_grace(heartbeat, grace)
    from cifarnet.cli.logs import quiet_libraries

    quiet_libraries()
    from cifarnet.spec.ablation import load_spec
    from cifarnet.spec.common import MAX_RUNS

    spec = load_spec(spec_path)
    if assignments:  # run-config keys into the base; tune.* into the tune block
        spec = spec.with_sets(assignments)
    max_seeds_source = click.get_current_context().get_parameter_source("max_seeds")
    check_seed_options(spec, until_decided, max_seeds,
                       max_seeds_given=max_seeds_source is not ParameterSource.DEFAULT)
    if until_decided and len(spec.cells()) * max_seeds > MAX_RUNS:
        raise UserError(f"--max-seeds: {len(spec.cells())} cell(s) x {max_seeds} seeds is more "
                        f"than the limit of {MAX_RUNS:,} runs per grid")
    workspace = click.get_current_context().obj
    options = _launch_options(spec, workspace, executor, heartbeat, grace, not no_reuse)
    if spec.tune is not None:  # a split the trials' data cannot give: refused before any write
        from cifarnet.ablation.plan import load_trial_data, trial_jobs

        load_trial_data([j.config for j in trial_jobs(spec)])
    if spec.tune is not None or storage is not None:
        _check_storage(workspace, storage)
    if storage is not None and spec.tune is None:
        click.echo("note: --storage has no effect on a grid without a tune: block", err=True)
    if dry_run:
        _dry_run(spec, workspace, storage, options.executor.workers, not no_reuse,
                 max_seeds if until_decided else len(spec.seeds))
        return
    _run_grid(spec, workspace, options, storage, until_decided, max_seeds)


def _launch_options(spec: Any, workspace: Any, given: dict[str, Any], heartbeat: int,
                    grace: int, reuse: bool) -> Any:
    """`ablation.execute.LaunchOptions` from the command line (`executor_options`)."""
    from cifarnet.ablation.execute import LaunchOptions
    from cifarnet.execute.base import ExecutorKind, ExecutorOptions

    kind = ExecutorKind(given["executor"])
    if kind is not ExecutorKind.RAY and given["ray_address"]:
        raise UserError("--ray-address: read only with --executor ray")
    device = spec.base_config().train.device
    if kind is ExecutorKind.LOCAL:  # a device this machine lacks: refused before any write
        from cifarnet.hardware import check_device_present

        check_device_present(device)
        gpus = _cuda_devices(spec)
    else:  # each run asks its node for a GPU (a CPU login node may submit GPU jobs)
        gpus = int(device.startswith("cuda"))
    return LaunchOptions(ExecutorOptions(
        kind=kind, workers=given["workers"], runs_per_gpu=given["runs_per_gpu"], gpus=gpus,
        ray_address=given["ray_address"], slurm_cluster=given["slurm_cluster"],
        slurm={"partition": given["slurm_partition"], "time": given["slurm_time"]},
        folder=str(workspace.root / "runs" / "submitit")), reuse, heartbeat, grace)


def _dry_run(spec: Any, workspace: Any, storage: str | None, workers: int, reuse: bool,
             seeds: int) -> None:
    """`run --dry-run`: the grid, its predicted time and power; nothing written."""
    from cifarnet.tracking.startup import check_tracking_store

    jobs = spec.jobs()
    check_tracking_store(workspace)
    from cifarnet.ablation.plan import dry_run_estimate, grid_table, power_lines

    click.echo(grid_table(spec, jobs))
    click.echo(dry_run_estimate(spec, jobs, workers, workspace, reuse=reuse))
    for line in power_lines(spec, workspace, seeds):
        click.echo(line)
    if note := no_hypotheses_line(spec):
        click.echo(note)
    click.echo("nothing was written (dry run)")


def _check_storage(workspace: Any, storage: str | None) -> None:
    """The studies' storage URL checked (read-only, one line naming what chose it), not
    opened."""
    from cifarnet.search.storage import check_apart_from_tracking, check_storage_url

    url = storage or workspace.storage_url
    check_storage_url(url, workspace.storage_key(url),
                      create_folder=url == workspace.embedded_storage_url)
    check_apart_from_tracking(workspace, url)


def _run_grid(spec: Any, workspace: Any, options: Any, storage: str | None,
              until_decided: bool, max_seeds: int) -> None:
    """`run`: the grid launched (tuned first, seeds added until decided), its verdicts, the
    summary line, and the exit code (1 when a run failed)."""
    from cifarnet.ablation.adaptive import run_until_decided
    from cifarnet.ablation.execute import Outcome, run_grid
    from cifarnet.ablation.plan import grid_estimate
    from cifarnet.analysis.report import analyze_grid, log_verdicts
    from cifarnet.cli.progress import DecodeProgress, GridProgress
    from cifarnet.signals import record_signals, stop_on_signals
    from cifarnet.data.datasets import preload_data
    from cifarnet.tracking.results import find_parent_run

    jobs = spec.jobs()
    for out_dir in sorted({str(j.config.train.out_dir) for j in jobs}):  # before any store
        check_folder(Path(out_dir), "train.out_dir")  # made by the first run
    data = preload_data((j.config.data for j in jobs), DecodeProgress().update)
    workers = options.executor.workers

    def estimate():  # the prediction --dry-run prints, shown and recorded on a new parent
        found = grid_estimate(spec, jobs, data, workers, workspace, reuse=options.reuse)
        click.echo(found.line())
        return found

    display, total = GridProgress(), Outcome()
    # in this process a second signal stops at once; with workers the executor passes the
    # stop on, further signals only recorded (one raised meanwhile would leave them running)
    policy = stop_on_signals() if options.executor.in_process else record_signals()
    with policy as request:
        def run_jobs(batch) -> None:
            first = not total.parent_run_id  # --until-decided: later batches add seeds
            total.merge(run_grid(spec, workspace, options, jobs=batch, data=data,
                                 listener=display, stop=request.event,
                                 estimate=estimate if first else None))

        def analysis_now():  # this command's grid, not the experiment's newest one
            grid = find_parent_run(spec.name, workspace, run_id=total.parent_run_id)
            analysis = analyze_grid(grid, with_history=False)
            log_verdicts(grid, analysis)  # on the parent run, for MLflow's UI
            return analysis

        try:
            if spec.tune is not None:  # every arm tuned first, then the verdict runs
                spec, jobs = _tune(spec, workspace, storage, data, display, request.event,
                                   options.heartbeat_s, options.grace_s, estimate,
                                   reuse=options.reuse)
            if until_decided:
                analysis = run_until_decided(spec, max_seeds, run_jobs, analysis_now)
            else:
                run_jobs(jobs)
                analysis = analysis_now()
        except KeyboardInterrupt:
            display.close()
            interrupted(request, "the grid stopped (a run in progress ends KILLED); rerun "
                                 "to continue")
    display.close()
    if request.event.is_set():  # a signal after the last run had ended still stops it
        interrupted(request, "every run had finished before the signal; `cifarnet-exp "
                             f"report {spec.name}` shows the verdicts")
    _print_grid_end(spec, analysis, total)


def _print_grid_end(spec: Any, analysis: Any, total: Any) -> None:
    from cifarnet.analysis.report import verdict_table
    from cifarnet.cli.progress import table_console

    if spec.hypotheses:
        table_console().print(verdict_table(analysis))
    else:
        click.echo(no_hypotheses_line(spec))
    if total.reused:
        click.echo(f"reused {len(total.reused)} finished run(s) of other experiments (tag "
                   "cifarnet.reused_from); --no-reuse trains them again")
    click.echo(f"{spec.name}: {len(total.finished)} run(s) finished here, "
               f"{total.already_done} already done, {len(total.failed)} failed; "
               f"parent run {total.parent_run_id}")
    if total.failed:
        click.echo(total.failure_line(), err=True)
        sys.exit(1)


def _tune(spec: Any, workspace: Any, storage: str | None, data: dict, display: Any,
          stop: Any, heartbeat: int, grace: int, estimate: Any,
          reuse: bool = True) -> tuple[Any, list[Any]]:
    """`search.tune.tune_grid`: every arm's study complete; the spec with its tuned values
    and its verdict jobs (their data loaded into `data`)."""
    from cifarnet.data.datasets import data_key, load_data
    from cifarnet.search.tune import tune_grid

    tuned, _ = tune_grid(spec, workspace, data=data, storage_url=storage, listener=display,
                         stop=stop, heartbeat_interval=heartbeat, grace_period=grace,
                         estimate=estimate, reuse=reuse)
    jobs = tuned.jobs()
    for j in jobs:  # a tuned data key (none of the shipped spaces has one) loads here
        if data_key(j.config.data) not in data:
            data[data_key(j.config.data)] = load_data(j.config.data)
    return tuned, jobs


def _cuda_devices(spec: Any) -> int:
    """CUDA devices the workers share (0 when the spec trains on the CPU or none is here)."""
    if spec.base_config().train.device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_seed_options(spec: Any, until_decided: bool, max_seeds: int,
                       max_seeds_given: bool) -> None:
    """Refuse the seed options that would be silently ignored (UserError naming the option):
    `--max-seeds` without `--until-decided`, `--until-decided` on a spec that declares no
    hypotheses (nothing to decide: the grid would run its own seeds and stop), and a
    `--max-seeds` no larger than the spec's seed count (no seed could be added)."""
    if max_seeds_given and not until_decided:
        raise UserError("--max-seeds: read only with --until-decided; add --until-decided or "
                        "drop --max-seeds")
    if until_decided and max_seeds <= len(spec.seeds):
        raise UserError(f"--max-seeds: {max_seeds} is not more than the spec's "
                        f"{len(spec.seeds)} seeds, so --until-decided could add none; give "
                        f"at least {len(spec.seeds) + 1}")
    if until_decided and not spec.hypotheses:
        raise UserError(f"--until-decided: spec {spec.name} declares no hypotheses, so there "
                        "is nothing to decide; add `hypotheses:` to the spec or drop "
                        "--until-decided")


def no_hypotheses_line(spec: Any) -> str | None:
    """The line `run` prints for a spec without hypotheses (its runs give no verdict), or None."""
    if spec.hypotheses:
        return None
    return (f"note: spec {spec.name} declares no hypotheses: its runs are tracked and "
            "reported, but no verdict is given (add `hypotheses:` to the spec for one)")


def check_grace(heartbeat: int, grace: int) -> None:
    """Refuse a grace period that would declare live workers stale (UserError, --grace)."""
    if grace < min_grace(heartbeat):
        raise UserError(f"--grace: {grace} s is too short for --heartbeat {heartbeat} s; use at "
                        f"least 2 x heartbeat + 5 = {min_grace(heartbeat)} s")


def min_grace(heartbeat: int) -> int:
    """The shortest --grace for a --heartbeat (seconds): two missed beats and 5 s of slack."""
    return 2 * heartbeat + 5


@main.command("report")
@click.argument("target", metavar="SPEC_OR_EXPERIMENT")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Output folder (default: reports/<experiment>).")
@click.option("--format", "formats", type=click.Choice(["md", "html", "csv"]), multiple=True,
              help="Formats to write (repeatable; default all three). Plots are always PNG.")
@click.option("--grid", "grid_id", default=None, metavar="ID",
              help="The grid to report (a prefix of its id, tag cifarnet.grid) when the "
                   "experiment holds several; default: the newest.")
@user_errors
@stops_at_once("the report was stopped before it was complete; run it again")
def report_cmd(target: str, out_dir: str | None, formats: tuple[str, ...],
               grid_id: str | None) -> None:
    """Tables, verdicts, plots and an HTML page for a grid's runs, read back from MLflow."""
    from cifarnet.cli.logs import quiet_libraries

    quiet_libraries()

    from cifarnet.analysis.report import (
        FORMATS,
        analyze_grid,
        log_report,
        log_verdicts,
        verdict_table,
        write_report,
    )
    from cifarnet.cli.progress import table_console
    from cifarnet.tracking.results import find_parent_run

    workspace = click.get_current_context().obj
    grid = find_parent_run(target, workspace, grid=grid_id)
    click.echo(grid.identity_line())
    analysis = analyze_grid(grid, with_predictions=True)
    out = make_folder(Path(out_dir) if out_dir else workspace.reports_dir / grid.experiment,
                      "--out")
    files = write_report(analysis, out, formats or FORMATS)
    log_report(grid, files)
    log_verdicts(grid, analysis)
    if analysis.spec.hypotheses:
        table_console().print(verdict_table(analysis))
    else:
        click.echo(no_hypotheses_line(analysis.spec))
    for f in files:
        click.echo(str(f))


@main.command("results")
@click.option("--claims", "claims_path", default="seed_claims.yaml", show_default=True,
              help="Claims file: points, their specs and hypotheses, the author's words "
                   "(looked up like a spec: here, under experiments/, or the shipped one).")
@click.option("--out", "out_file", type=click.Path(), default="RESULTS.md", show_default=True,
              help="The page to write; its plots go to results/ beside it.")
@click.option("--force", is_flag=True,
              help="Replace a page that answers from other runs (refused otherwise).")
@user_errors
@stops_at_once("the results page was stopped before it was complete; run it again")
def results_cmd(claims_path: str, out_file: str, force: bool) -> None:
    """RESULTS.md: each claim of the seed write-up answered from the tracking store (the
    newest grid of its spec), with the author's conclusion beside the verdict."""
    import shlex
    import tempfile

    from cifarnet.cli.logs import quiet_libraries

    quiet_libraries()

    from cifarnet.spec.ablation import load_spec
    from cifarnet.analysis.report import analyze_grid
    from cifarnet.analysis.results import (
        check_claims,
        check_replace,
        claims_file,
        analyses_for,
        load_claims,
        spec_plots,
        write_results,
    )
    from cifarnet.tracking.results import find_parent_run
    from cifarnet.tracking.store import store_exists
    from cifarnet.tracking.urls import masked

    workspace = click.get_current_context().obj
    claims = load_claims(claims_file(claims_path))
    if not store_exists(workspace):  # else every claim would read "not run yet", silently
        raise UserError(f"{workspace.tracking_key}: no tracking store at "
                        f"{masked(workspace.tracking_uri)}; run the claims' specs first, or "
                        "run results in the folder whose mlruns/ holds their runs (this "
                        "project's: results/store)")
    analyses = analyses_for(claims, lambda name: analyze_grid(
        find_parent_run(name, workspace), with_history=True))
    written = {}
    for i, c in enumerate(claims.claims):  # the spec files as they read now: a grid that ran
        try:                                # otherwise is named
            written[c.spec] = load_spec(c.spec)
        except UserError as exc:
            if analyses.get(c.spec) is None:  # no grid, and the file cannot be run either
                raise UserError(f"claims[{i}].spec: {exc}") from None
            written[c.spec] = None
    check_claims(claims, analyses, written)
    out = Path(out_file)
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; give the page's file name")
    if not force:
        check_replace(out, analyses)
    with tempfile.TemporaryDirectory(prefix="cifarnet-results-") as tmp:
        plots = {name: spec_plots(a, Path(tmp) / a.spec.name)
                 for name, a in analyses.items() if a is not None}
        argv = shlex.join(["cifarnet-exp", "results", *(
            ["--claims", claims_path] if claims_path != "seed_claims.yaml" else []),
            *(["--out", out_file] if out_file != "RESULTS.md" else [])])
        write_results(claims, analyses, plots, out, argv, masked(workspace.tracking_uri),
                      written)
    missing = [name for name, a in analyses.items() if a is None]
    click.echo(f"{out}: {len(claims.claims)} claim(s) from {len(analyses)} spec(s)"
               + (f"; not run yet: {', '.join(missing)}" if missing else ""))


@main.command("search")
@click.argument("spec_path", metavar="SPEC")
@click.option("--n-trials", type=click.IntRange(1), default=None,
              help="Add this many trials now (default: fill the study up to the spec's n_trials).")
@click.option("--storage", default=None, envvar="CIFARNET_STORAGE", callback=_given_storage,
              help="Optuna storage shared by workers (e.g. postgresql://host/db); default: "
                   "SQLite under mlruns/.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override the spec's base config.")
@click.option("--no-final", is_flag=True, help="Skip the held-out test of the best trial.")
@click.option("--heartbeat", type=click.IntRange(1), default=10, show_default=True,
              help="Seconds between a worker's heartbeats.")
@click.option("--grace", type=click.IntRange(1), default=30, show_default=True,
              help="Seconds without a heartbeat before a trial counts as abandoned (it is "
                   "then run again with the same parameters).")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=1, show_default=True,
              help="Worker processes on this machine, sharing the study (CPU: the cores are "
                   "split between them; CUDA: devices round-robin).")
@user_errors
def search_cmd(spec_path: str, n_trials: int | None, storage: str | None,
               assignments: tuple[str, ...], no_final: bool, heartbeat: int,
               grace: int, workers: int) -> None:
    """Optuna search over the recipe (e.g. lr, augment strength), pruned, tracked, shareable.
    SPEC is a file or a shipped name such as lr_aug."""
    check_grace(heartbeat, grace)
    from cifarnet.cli.logs import quiet_libraries

    quiet_libraries()
    from cifarnet.spec.common import MAX_RUNS
    from cifarnet.cli.progress import DecodeProgress, SearchProgress
    from cifarnet.signals import stop_on_signals
    from cifarnet.config.schema import parse_assignments
    from cifarnet.data.datasets import load_data
    from cifarnet.spec.search import load_search_spec
    from cifarnet.search.study import run_search
    from cifarnet.training.callbacks import StopOnEvent

    workspace = click.get_current_context().obj
    spec = load_search_spec(spec_path)
    if assignments:
        spec = spec.with_base(parse_assignments(assignments))
    if n_trials is not None and n_trials > MAX_RUNS:
        raise UserError(f"--n-trials: at most {MAX_RUNS:,}, got {n_trials:,}")
    check_folder(Path(spec.base_config().train.out_dir), "train.out_dir")  # before any store
    data = load_data(spec.base_config().data, DecodeProgress().update)
    display = SearchProgress(spec.objectives[0].metric, spec.n_trials, n_trials)
    if workers > 1:  # the cache is filled: the workers read it
        _search_workers(spec, workers, workspace, storage, n_trials, heartbeat, grace, display)
        n_trials = 0  # the workers ran the trials; what is left here is the final test
    with stop_on_signals() as request:
        try:
            out = run_search(spec, workspace, storage_url=storage, n_trials=n_trials,
                             data=data, final=not no_final, heartbeat_interval=heartbeat,
                             grace_period=grace,
                             callbacks=lambda number: [*display.trial_callbacks(number),
                                                       StopOnEvent(request.event)],
                             study_callbacks=[display.after_trial])
        except KeyboardInterrupt:
            display.close()
            interrupted(request, "the search stopped (a trial in progress ends KILLED); "
                                 "rerun to continue the same study")
        finally:
            display.close()
    if request.event.is_set():  # a signal after the last trial had ended still stops it
        interrupted(request, "every trial had finished before the signal; `cifarnet-exp "
                             f"search-report {spec.name}` shows the study")
    _print_search_end(spec, out, no_final, grace, storage or workspace.storage_url)


def _print_search_end(spec: Any, out: Any, no_final: bool, grace: int, url: str) -> None:
    """The study's counts, its best trials, and the held-out test or why it has not run."""
    from cifarnet.tracking.urls import masked

    counts = ", ".join(f"{v} {k.lower()}" for k, v in out.trials.items() if v)
    click.echo(f"{out.study_name} (spec identity {spec.identity()[:12]}): {counts}")
    for b in out.best:
        click.echo(f"best trial {b['number']}: values {b['values']} params {b['params']}")
    if out.final:
        click.echo(f"held-out test of the best configuration (trial {out.final['trial']}, "
                   f"retrained on train + validation): test_acc {out.final['test_acc']:.4f}")
    elif not no_final and out.counted < out.n_trials:
        click.echo(f"held-out test: not yet; it runs once, when the study holds its "
                   f"n_trials ({out.counted} of {out.n_trials} so far)")
    elif not no_final and not spec.multi and out.trials["RUNNING"]:
        # another worker's trials, or a killed worker's: those go stale --grace s after
        # their last heartbeat (one without any: --grace s after it started)
        click.echo(f"held-out test: not yet; {out.trials['RUNNING']} trial(s) still RUNNING "
                   f"(another worker's, or a killed one's: stale {grace} s after its last "
                   "heartbeat); rerun after that to finish the study")
    click.echo(f"optuna-dashboard {masked(url)}")


def _search_workers(spec: Any, workers: int, workspace: Any, storage_url: str | None,
                    n_trials: int | None, heartbeat: int, grace: int, display: Any) -> None:
    """`search --workers N`: N worker processes (`execute.local`), each running Optuna's
    `Study.optimize` on the study until it holds the same count (so `--n-trials K` adds K
    trials in all); the display follows the study; each signal is passed on once to every
    worker. Returns when all have ended well, for the caller's held-out test of the best
    trial; exits 1 when one of them failed, 128 + signal when stopped."""
    import threading

    from cifarnet.signals import record_signals
    from cifarnet.search.worker import SearchWorker, search_worker
    from cifarnet.execute.base import ExecutorOptions, make_executor
    from cifarnet.execute.local import signal_workers
    from cifarnet.search.study import counted_trials, open_search

    # the study, both stores and the parent run made here, once; a bad spec refused here
    s = open_search(spec, workspace, storage_url=storage_url, heartbeat_interval=heartbeat,
                    grace_period=grace)
    until = spec.n_trials if n_trials is None else len(counted_trials(s.study)) + n_trials
    job = SearchWorker(spec, workspace, storage_url, until, heartbeat, grace)
    display.state.total = until
    ended = threading.Event()

    def follow(request: Any) -> None:  # the display, and every signal passed on once
        passed_on = 0
        while not ended.wait(1.0):
            while passed_on < len(request.received):
                signal_workers(request.received[passed_on])
                passed_on += 1
            display.after_trial(s.study, None)

    options = ExecutorOptions(workers=workers, gpus=_cuda_devices(spec))
    with record_signals() as request, make_executor(options) as executor:
        watcher = threading.Thread(target=follow, args=(request,), daemon=True)
        watcher.start()
        try:
            done = list(executor.map_unordered(search_worker, [job] * workers))
        finally:
            ended.set()
            watcher.join()
    display.close()
    stopped = [d.value for d in done].count("interrupted")
    if request.event.is_set():  # a signal, also one that came after every trial had ended:
        # the held-out test would have started anyway (a whole training)
        interrupted(request, f"{workers} workers stopped (a trial in progress ends KILLED); "
                             "rerun to continue the same study" if stopped
                    else "every worker had finished before the signal; rerun to continue "
                         "(the held-out test of a complete study)")
    failed = [f"{type(d.error).__name__}: {d.error}" for d in done if d.error is not None]
    if failed:
        click.echo(f"error: a worker failed ({one_line(failed[0])}); rerun to continue the "
                   "same study", err=True)
        sys.exit(1)


@main.command("search-report")
@click.argument("name")
@click.option("--storage", default=None, envvar="CIFARNET_STORAGE", callback=_given_storage)
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Output folder (default: reports/search.<name>).")
@user_errors
@stops_at_once("the search report was stopped before it was complete; run it again")
def search_report_cmd(name: str, storage: str | None, out_dir: str | None) -> None:
    """Best trials, parameter importances and Optuna's plots for a search."""
    from cifarnet.cli.logs import quiet_libraries

    quiet_libraries()
    from cifarnet.spec.common import SpecError
    from cifarnet.search.storage import check_storage_url, open_storage, storage_exists
    from cifarnet.search.report import load_study, markdown, write_plots
    from cifarnet.spec.search import load_search_spec
    from cifarnet.search.study import SPEC_ATTR
    from cifarnet.tracking.urls import masked

    workspace = click.get_current_context().obj
    spec = None
    given_file = Path(name).is_file()  # a bare name (lr_aug) only names the study: a study
    try:                                # run with --set overrides has another identity
        spec = load_search_spec(name)
        name = spec.name
    except SpecError:
        pass
    url = storage or workspace.storage_url
    check_storage_url(url, workspace.storage_key(url), create_folder=True)  # a report
    if not storage_exists(url):  # writes no storage: one not there is not made (it was)
        raise UserError(f"{workspace.storage_key(url)} {masked(url)}: no Optuna storage "
                        f"there, so no study {name}")
    study = load_study(name, open_storage(workspace, url))
    stored = study.user_attrs.get(SPEC_ATTR, "")
    if given_file and spec is not None and stored and stored != spec.identity():
        raise UserError(f"name: study {study.study_name} was started from a different spec "
                        f"(identity {stored[:12]}, this spec {spec.identity()[:12]}); report "
                        "it by its name instead of the edited spec file")
    click.echo(f"{study.study_name}: spec identity {stored[:12] or '(unrecorded)'}, "
               f"{len(study.trials)} trial(s), storage {masked(url)}")
    out = make_folder(Path(out_dir) if out_dir else workspace.reports_dir / study.study_name,
                      "--out")
    files = write_plots(study, out)
    text = markdown(study, url)
    (out / "search.md").write_text(text)
    click.echo(text)
    for f in [*files, out / "search.md"]:
        click.echo(str(f))


@main.command("relocate-store")
@user_errors
@stops_at_once("relocate-store stopped; nothing was changed (one transaction), run it again")
def relocate_store_cmd() -> None:
    """Point a copied or moved mlruns/ store at its new folder.

    The embedded MLflow store records absolute artifact locations; after the folder is copied
    or moved, every command refuses it until this rewrites them from the old folder to this
    one (experiments, runs, logged models; one transaction). The Optuna storage needs nothing.
    """
    from cifarnet.tracking.location import relocate
    from cifarnet.tracking.store import store_exists
    from cifarnet.tracking.urls import masked

    workspace = click.get_current_context().obj
    if not store_exists(workspace):  # opening it would create one
        raise UserError(f"{workspace.tracking_key}: no tracking store at "
                        f"{masked(workspace.tracking_uri)}; run relocate-store in the folder "
                        "the store was copied or moved to (the one holding mlruns/)")
    done = relocate(workspace)
    if not done:
        click.echo("nothing to relocate: the store's artifacts are already here")
    for r in done:
        rows = ", ".join(f"{n} {table}" for table, n in r.rows.items())
        click.echo(f"relocated {r.old} -> {r.new} ({rows})")


@main.command("ui")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@user_errors
def ui_cmd(port: int) -> None:
    """Start the MLflow UI on 127.0.0.1 against the same store as `run`.

    The server runs in its own process group, so a signal to this command (Ctrl-C, SIGTERM,
    SIGHUP) takes the whole server down with it, quietly; it also ends when this command is
    killed (Linux's parent-death signal). Its log is a new file of a name no one can predict
    (`mkstemp`: a link planted at a fixed name was followed and its target overwritten)."""
    import os
    import subprocess
    import tempfile

    from cifarnet.cli.logs import quiet_libraries
    from cifarnet.execute.local import die_with_parent
    from cifarnet.signals import stop_on_signals
    from cifarnet.tracking.store import experiment_links, setup_mlflow
    from cifarnet.tracking.urls import masked

    quiet_libraries()
    workspace = click.get_current_context().obj
    check_port_free(port)
    setup_mlflow(workspace)
    uri = workspace.tracking_uri
    base = f"http://127.0.0.1:{port}"
    click.echo(f"starting the MLflow UI for {masked(uri)} ...", err=True)
    # the store's URI goes by environment, not argv, where `ps` would show its password
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    # the server's own log (uvicorn's INFO lines, warnings) goes to a file, not the terminal
    fd, log_path = tempfile.mkstemp(prefix=f"cifarnet-ui-{port}-", suffix=".log")
    with stop_on_signals() as request, os.fdopen(fd, "w") as log:
        server = subprocess.Popen(cmd, start_new_session=True, stdout=log,
                                  stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                                  env={**os.environ, "MLFLOW_BACKEND_STORE_URI": uri})
        ready = False
        try:
            while server.poll() is None and not request.event.wait(0.5):
                if not ready and server_answers(base):
                    ready = True  # the address is printed once a browser would get a page
                    click.echo(f"MLflow UI ready at {base}", err=True)
                    for name, url in experiment_links(base):
                        click.echo(f"  {name}: {url}", err=True)
                    click.echo(f"(the server's log: {log_path}; Ctrl-C stops it)", err=True)
        except KeyboardInterrupt:  # a second signal
            pass
        if server.poll() is None:
            _stop_group(server)
            interrupted(request, "the MLflow UI was stopped")
    if not ready:
        click.echo(f"error: the MLflow UI exited (code {server.returncode}) before it "
                   f"answered at {base}; its log: {log_path}", err=True)
        sys.exit(1)
    sys.exit(server.returncode)


def check_port_free(port: int) -> None:
    """Refuse a --port another program listens on at 127.0.0.1 (UserError naming --port),
    before anything starts: MLflow's server would otherwise print a traceback and exit."""
    import errno
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: already in use on 127.0.0.1 (another "
                                "program listens there); choose another port") from None
            if exc.errno == errno.EACCES:
                raise UserError(f"--port {port}: this user may not listen on it (ports "
                                "below 1024 need privileges); choose another port") from None
            raise


def server_answers(base: str) -> bool:
    """True when MLflow's server at `base` answers its health check (GET /health: 200)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _stop_group(process: Any, timeout_s: float = 10.0) -> None:
    """SIGTERM to the process's group, SIGKILL if it is still there after `timeout_s`."""
    import os
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue
