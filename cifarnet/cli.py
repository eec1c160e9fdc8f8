"""The `cifarnet-exp` command line. Commands parse arguments and delegate; user errors
(`UserError`) become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import json
import sys
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

