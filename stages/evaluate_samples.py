"""`python -m stages evaluate_samples`: GAN and VAE sample quality on one table, and the GAN's AIS likelihood."""

from __future__ import annotations

import logging

import click
import torch

from pipeline.data.processed import load_processed
from pipeline.device import seed_everything, select_device
from pipeline.io import read_json, write_json
from pipeline.metrics import conditional_sampler, gan_log_likelihood, sample_quality_report
from pipeline.models.classifier import load_classifier
from pipeline.models.gan import load_generator
from pipeline.models.vae import load_vae
from stages.common import fail_cleanly, load_params, params_option

SAMPLE_QUALITY_PATH = "metrics/sample_quality.json"
GAN_LIKELIHOOD_PATH = "metrics/gan_likelihood.json"


@click.command()
@params_option
@click.option("--data-dir", default="data/processed", show_default=True, type=click.Path(file_okay=False))
@click.option("--classifier", "classifier_path", default="checkpoints/classifier/best.pt", show_default=True)
@click.option("--gan", "gan_path", default="checkpoints/gan/best.pt", show_default=True)
@click.option("--vae", "vae_path", default="checkpoints/vae/best.pt", show_default=True)
@click.option(
    "--classifier-metrics", default="metrics/classifier.json", show_default=True, help="copied into the table"
)
@fail_cleanly(ValueError, FileNotFoundError)
def main(
    params_path: str, data_dir: str, classifier_path: str, gan_path: str, vae_path: str, classifier_metrics: str
) -> None:
    """Fréchet distance (with its real-data floor), precision/recall and, on labelled data, the classifier score of
    GAN and VAE samples in the classifier's features (metrics/sample_quality.json); the GAN's log p(x) by AIS with
    a Gaussian observation model, sigma chosen on validation data (metrics/gan_likelihood.json)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_params(params_path)
    seed_everything(config.seed)
    device = select_device(config.device)
    data = load_processed(data_dir)
    classifier = load_classifier(classifier_path, device)
    generator = load_generator(gan_path, device, ema=True)
    vae = load_vae(vae_path, device)
    for name, model in (("GAN", generator), ("VAE", vae)):
        if tuple(model.image_shape) != tuple(data.image_shape):
            raise click.ClickException(
                f"the {name} was trained on {tuple(model.image_shape)} images but the data are {data.image_shape}; "
                "retrain it (dvc repro)"
            )
    real_test, real_train = torch.from_numpy(data.x["test"]), torch.from_numpy(data.x["train"])
    labels = torch.from_numpy(data.y["test"]) if data.y is not None else None
    table = {
        "classifier_task": classifier.task,
        "classifier_test_accuracy": read_json(classifier_metrics)["test_accuracy"],
    }
    for name, model, decode in (("gan", generator, generator), ("vae", vae, vae.decode_mean)):
        model_labels = labels if model.num_classes is not None else None
        sampler = conditional_sampler(decode, model.latent_dim, device, model_labels, config.seed + 5)
        table[name] = sample_quality_report(
            sampler, classifier, real_test, real_train, config.evaluate.num_generated, seed=config.seed
        )
        click.echo(
            f"{name}: Fréchet distance {table[name]['frechet_distance']:.2f} "
            f"(floor {table[name]['frechet_floor']:.2f}), precision {table[name]['precision']:.3f}, "
            f"recall {table[name]['recall']:.3f}"
        )
    write_json(SAMPLE_QUALITY_PATH, table)
    likelihood = gan_log_likelihood(generator, data, config.evaluate, config.seed)
    write_json(GAN_LIKELIHOOD_PATH, likelihood)
    click.echo(
        f"gan: AIS log p(x) {likelihood['log_px']:.2f} nats ({likelihood['bits_per_dim']:.3f} bits/dim), "
        f"sigma {likelihood['sigma']}"
    )
