"""What every stage entry shares: the --params option and config loading that exits cleanly on bad input."""

from __future__ import annotations

import functools
import importlib
import importlib.util
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


class LazyGroup(click.Group):
    """A click group whose commands (``modules``: name -> a module defining a click command ``main``) are imported
    on use, so ``--help`` and light commands never load torch."""

    def __init__(self, *args: Any, modules: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.modules = modules

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, module in self.modules.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.list_commands(ctx):
            return None
        return importlib.import_module(self.modules[name]).main


class InvalidParams(click.ClickException):
    """Bad params: the one line ``Error: invalid parameters: ...`` and exit status 2 (click's status for bad usage),
    without the usage text click adds to a UsageError: the options were fine, the file was not."""

    exit_code = 2


def load_params(params_path: str) -> Config:
    """Load and validate params; a bad value becomes a one-line error and exit status 2."""
    try:
        return load_config(params_path)
    except ConfigError as err:
        raise InvalidParams(f"invalid parameters: {err}") from None


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
