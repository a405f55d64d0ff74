"""`python -m stages evaluate_samples`: GAN and VAE sample quality on one table, and their likelihoods side by side."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import torch

from pipeline.checkpoint import load_model
from pipeline.data.processed import load_processed
from pipeline.device import select_device
from pipeline.evaluation import (
    GAUSSIAN_COMPARISON,
    DecoderMean,
    check_fits_data,
    evaluate_gaussian_likelihood,
    sample_quality_report,
    seeded_sampler,
)
from pipeline.io import check_writable, read_json, write_json
from pipeline.models import VAE, Classifier, Generator
from pipeline.seeds import seed_everything, stream_seed
from pipeline.training import TRAINING_ERRORS
from stages.common import fail_cleanly, load_params, params_option

METRICS_PATH = "metrics/evaluate_samples.json"
CARD_PATH = "cards/evaluate_samples.json"
VAE_METRICS_PATH = "metrics/evaluate_vae.json"  # what the evaluate_vae stage writes


@click.command()
@params_option
@click.option("--data-dir", default="data/processed", show_default=True, type=click.Path(file_okay=False))
@click.option("--classifier", "classifier_path", default="checkpoints/classifier/best.pt", show_default=True)
@click.option("--gan", "gan_path", default="checkpoints/gan/best.pt", show_default=True)
@click.option("--vae", "vae_path", default="checkpoints/vae/best.pt", show_default=True)
@click.option(
    "--vae-metrics",
    "vae_metrics_path",
    default=VAE_METRICS_PATH,
    show_default=True,
    help="the evaluate_vae stage's metrics: the VAE's own AIS and importance-sampled log p(x), shown beside",
)
@fail_cleanly(*TRAINING_ERRORS)
def main(
    params_path: str, data_dir: str, classifier_path: str, gan_path: str, vae_path: str, vae_metrics_path: str
) -> None:
    """Fréchet distance (with its real-data floor), precision/recall and, on labelled data, the classifier score of
    GAN and VAE samples in the classifier's features; log p(x) of the GAN generator and of the VAE decoder by AIS
    under one Gaussian observation model (sigma chosen on validation data for each, the same test points), beside
    the VAE's own AIS and importance-sampled figures. Writes metrics/evaluate_samples.json and its run card
    cards/evaluate_samples.json."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_params(params_path)
    check_writable("metrics", "cards")
    seed_everything(config.seed)
    device = select_device(config.device)
    data = load_processed(data_dir)
    if not Path(vae_metrics_path).is_file():
        raise click.ClickException(
            f"{vae_metrics_path}: no such file; run python -m stages evaluate_vae first (dvc repro runs it)"
        )
    vae_own = read_json(vae_metrics_path)
    missing = [key for key in ("ais", "log_px") if not isinstance(vae_own, dict) or key not in vae_own]
    if missing:
        fix = "re-run python -m stages evaluate_vae"
        if Path(vae_metrics_path).resolve() != Path(VAE_METRICS_PATH).resolve():
            fix = f"pass --vae-metrics {VAE_METRICS_PATH}, which python -m stages evaluate_vae writes"
        raise click.ClickException(
            f"{vae_metrics_path}: lacks {', '.join(missing)}, so it is not evaluate_vae's metrics; {fix}"
        )
    classifier = load_model(classifier_path, "model", device, Classifier)
    generator = load_model(gan_path, "generator_ema", device, Generator)
    vae = load_model(vae_path, "model", device, VAE)
    for name, model in (("GAN", generator), ("VAE", vae)):
        check_fits_data(model, data, name)
    check_fits_data(classifier, data, "feature classifier", shape_only=True)
    real_test, real_train = torch.from_numpy(data.x["test"]), torch.from_numpy(data.x["train"])
    labels = torch.from_numpy(data.y["test"]) if data.y is not None else None
    card = {"classifier_task": classifier.task, "device": device.type}
    metrics: dict = {}
    for name, model, decode, latent_from_noise in (
        ("gan", generator, generator, None),
        ("vae", vae, vae.decode_mean, vae.prior_from_noise),
    ):
        model_labels = labels if model.num_classes is not None else None
        sampler = seeded_sampler(
            decode,
            model.latent_dim,
            device,
            model_labels,
            stream_seed(config.seed, "evaluate_samples", name),
            latent_from_noise,
        )
        report = sample_quality_report(
            sampler, classifier, real_test, real_train, config.evaluate.num_generated, seed=config.seed
        )
        card[name] = report
        metrics["fd_floor"] = report["frechet_floor"]  # the same real images for both: the same floor
        metrics[name] = {"fd": report["frechet_distance"], "prec": report["precision"], "rec": report["recall"]}
        click.echo(
            f"{name}: Fréchet distance {report['frechet_distance']:.2f} (floor {report['frechet_floor']:.2f}), "
            f"precision {report['precision']:.3f}, recall {report['recall']:.3f}"
        )
    card["likelihood"] = {"comparison": GAUSSIAN_COMPARISON}
    for name, decoder, prior in (("gan", generator, None), ("vae", DecoderMean(vae), vae)):
        if name == "gan" and generator.code_dim:
            card["likelihood"][name] = {
                "not_computed": "InfoGAN's categorical and continuous codes are part of the generator's latent and "
                "HMC cannot move a discrete code: AIS over z alone would not estimate p(x)"
            }
            continue
        likelihood, card["likelihood"][name] = evaluate_gaussian_likelihood(
            decoder, data, config.evaluate, config.seed, prior
        )
        metrics[name]["gaussian_ais"] = likelihood["log_px"]
        click.echo(
            f"{name}: AIS log p(x) {likelihood['log_px']:.2f} nats ({likelihood['bits_per_dim']:.3f} bits/dim) under "
            f"the Gaussian observation model, sigma {card['likelihood'][name]['sigma']}"
        )
    metrics["vae"] |= {"ais": vae_own["ais"], "is": vae_own["log_px"]}
    card["likelihood"]["vae_own_decoder"] = {"source": vae_metrics_path, "likelihood": vae.likelihood} | {
        key: vae_own[key] for key in ("ais", "log_px")
    }
    write_json(CARD_PATH, card)
    write_json(METRICS_PATH, metrics)
