"""The `cifarnet-exp` command line. Commands parse arguments and delegate; user errors
(`UserError`) become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import json
import sys
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
