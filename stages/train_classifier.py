"""`python -m stages train_classifier`: the feature classifier of the sample-quality metrics."""

from __future__ import annotations

import logging

import click

from pipeline.classifier_trainer import train_classifier
from pipeline.data.processed import load_processed
from pipeline.training import TRAINING_ERRORS
from stages.common import fail_cleanly, load_params, params_option


@click.command()
@params_option
@click.option("--data-dir", default="data/processed", show_default=True, type=click.Path(file_okay=False))
@fail_cleanly(*TRAINING_ERRORS)
def main(params_path: str, data_dir: str) -> None:
    """Train a small CNN on the training split (on its classes, or without labels on telling four flips and
    rotations apart); writes checkpoints/classifier, dvclive/classifier, metrics/train_classifier.json and
    cards/train_classifier.json."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_params(params_path)
    summary = train_classifier(config, load_processed(data_dir))
    if summary:
        click.echo(f"train_classifier: test accuracy {summary['accuracy']:.4f}")
