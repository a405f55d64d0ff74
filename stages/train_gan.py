"""`python -m stages train_gan`: train the GAN on data/processed (also under torchrun, one process per device)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pipeline.checkpoint import load_model
from pipeline.data.processed import load_processed
from pipeline.evaluation import check_fits_data
from pipeline.gan_trainer import train_gan
from pipeline.models import Classifier
from pipeline.training import TRAINING_ERRORS
from stages.common import fail_cleanly, load_params, params_option


@click.command()
@params_option
@click.option("--data-dir", default="data/processed", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--classifier",
    "classifier_path",
    default="checkpoints/classifier/best.pt",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="feature classifier for the sample metrics logged while training (skipped if the file is absent)",
)
@fail_cleanly(*TRAINING_ERRORS)
def main(params_path: str, data_dir: str, classifier_path: str) -> None:
    """Train the GAN of §11.2; writes checkpoints/gan, dvclive/gan, outputs/gan and cards/train_gan.json (its
    samples' metrics are the evaluate_samples stage's)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_params(params_path)
    data = load_processed(data_dir)
    classifier = load_model(classifier_path, kind=Classifier) if Path(classifier_path).exists() else None
    if classifier is None:
        logging.info("train_gan: no classifier at %s; training without sample metrics", classifier_path)
    else:
        check_fits_data(classifier, data, "feature classifier", shape_only=True)
    summary = train_gan(config, data, classifier=classifier)
    if summary:
        fd = summary.get("valid_fd")
        click.echo("train_gan: done" + (f", valid Fréchet distance {fd:.2f}" if fd is not None else ""))
