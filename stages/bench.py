"""`python -m stages bench NAME`: speed and quality figures, printed (never asserted in tests)."""

from __future__ import annotations

import importlib

import click

BENCHMARKS = {
    "vae": "benchmarks.vae",
    "likelihood": "benchmarks.likelihood",
    "gan": "benchmarks.gan",
    "onnx": "benchmarks.onnx",
    "quality": "benchmarks.quality",
}


class LazyBenchmarks(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, module in BENCHMARKS.items() if importlib.util.find_spec(module) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.list_commands(ctx):
            return None
        return importlib.import_module(BENCHMARKS[name]).main


@click.group(cls=LazyBenchmarks)
def main() -> None:
    """Benchmarks; each prints its figures and the device it ran on."""
