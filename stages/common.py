"""What every stage entry shares: the --params option and config loading that exits cleanly on bad input."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from pipeline.config import Config, ConfigError, load_config

params_option = click.option(
    "--params",
    "params_path",
    default="params.yaml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="parameters file validated against the schema in pipeline/config.py",
)


def load_params(params_path: str) -> Config:
    """Load and validate params; a bad value becomes a one-line error and exit status 2."""
    try:
        return load_config(params_path)
    except ConfigError as err:
        raise click.UsageError(f"invalid parameters: {err}") from None


def fail_cleanly(*errors: type[BaseException]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn the listed library errors into a click error message and a non-zero exit, without a traceback."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except errors as err:
                raise click.ClickException(str(err)) from None

        return run

    return wrap
