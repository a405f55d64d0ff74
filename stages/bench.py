"""`python -m stages bench NAME`: speed and quality figures, printed (never asserted in tests)."""

from __future__ import annotations

import click

from stages.common import LazyGroup

BENCHMARKS = {
    "vae": "benchmarks.vae",
    "likelihood": "benchmarks.likelihood",
    "gan": "benchmarks.gan",
    "onnx": "benchmarks.onnx",
    "quality": "benchmarks.quality",
}


@click.group(cls=LazyGroup, modules=BENCHMARKS)
def main() -> None:
    """Benchmarks; each prints its figures and the device it ran on."""
