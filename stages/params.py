"""`python -m stages params`: every parameter of params.yaml with its default and what it does (the schema in
pipeline/config.py), optionally only the keys under a prefix (`python -m stages params vae`)."""

from __future__ import annotations

import click

from pipeline.config import schema_help


@click.command()
@click.argument("prefix", required=False, default="")
def main(prefix: str) -> None:
    """List the parameters (dotted key = default: meaning), those under PREFIX (e.g. vae, data) if given."""
    lines = [line for line in schema_help() if line.startswith(prefix)]
    if not lines:
        raise click.BadParameter(
            f"no parameter starts with {prefix!r}; run without it to list them all", param_hint="PREFIX"
        )
    click.echo("\n".join(lines))
