"""`python -m stages train_vae`: train the VAE on data/processed (also under torchrun, one process per device)."""

from __future__ import annotations

import logging

import click

from pipeline.data.processed import load_processed
from pipeline.training import TRAINING_ERRORS
from pipeline.vae_trainer import train_vae
from stages.common import fail_cleanly, load_params, params_option


@click.command()
@params_option
@click.option("--data-dir", default="data/processed", show_default=True, type=click.Path(file_okay=False))
@fail_cleanly(*TRAINING_ERRORS)
def main(params_path: str, data_dir: str) -> None:
    """Train the VAE of §11.1; writes checkpoints/vae, dvclive/vae, outputs/vae, metrics/train_vae.json and
    cards/train_vae.json."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_params(params_path)
    summary = train_vae(config, load_processed(data_dir))
    if summary:
        click.echo(f"train_vae: best epoch's bound {summary['train']:.3f} (train), {summary['valid']:.3f} (valid) nats")
