"""`python -m stages evaluate_vae`: importance-sampled (and AIS) log p(x) of the trained VAE, as DVC metrics."""

from __future__ import annotations

import logging

import click

from pipeline.checkpoint import load_model
from pipeline.data.processed import load_processed
from pipeline.distributed import init_distributed, shutdown
from pipeline.evaluation import evaluate_vae
from pipeline.io import check_writable, write_json
from pipeline.models import VAE
from pipeline.seeds import seed_everything
from pipeline.training import TRAINING_ERRORS
from stages.common import fail_cleanly, load_params, params_option

METRICS_PATH = "metrics/evaluate_vae.json"
CARD_PATH = "cards/evaluate_vae.json"
CURVE_PATH = "plots/vae_likelihood_curve.json"


@click.command()
@params_option
@click.option("--checkpoint", default="checkpoints/vae/best.pt", show_default=True, type=click.Path(dir_okay=False))
@click.option("--data-dir", default="data/processed", show_default=True, type=click.Path(file_okay=False))
@fail_cleanly(*TRAINING_ERRORS)
def main(params_path: str, checkpoint: str, data_dir: str) -> None:
    """Estimate log p(x) (11.5-11.6) on the test set (and the evaluate.splits named) with evaluate.num_samples
    importance samples, plus AIS on evaluate.ais_points test points; writes metrics/evaluate_vae.json, its run card
    cards/evaluate_vae.json and the convergence curve plots/vae_likelihood_curve.json. Under torchrun the
    importance sampling is split across the ranks."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_params(params_path)
    seed_everything(config.seed)
    ctx = init_distributed(config.device)
    if ctx.is_writer:
        check_writable("metrics", "cards", "plots")
    data = load_processed(data_dir)
    model = load_model(checkpoint, "model", ctx.device, VAE)
    metrics, card, curve = evaluate_vae(model, data, config.evaluate, config.seed, ctx=ctx)
    shutdown(ctx)
    if not ctx.is_writer:
        return
    card["device"] = ctx.device.type
    write_json(CARD_PATH, card)
    write_json(CURVE_PATH, curve)
    write_json(METRICS_PATH, metrics)
    test, ais = card["test"], card["ais"]
    click.echo(
        f"test log p(x) {test['log_px']:.3f} ± {test['log_px_stderr']:.3f} nats (K={card['num_samples']}), "
        f"ELBO {test['elbo']:.3f}, gap {test['gap']:.3f}, {test['bits_per_dim']:.4f} bits/dim; "
        f"on {ais['points']} test points: AIS {ais['log_px']:.3f}, importance sampling "
        f"{ais['importance_sampled_log_px']:.3f}"
    )
    if "given_y" in test:
        click.echo(
            f"conditional: log p(x) sums p(y) p(x|y) over the classes; with the true labels log p(x|y) "
            f"{test['given_y']['log_px']:.3f}, ELBO {test['given_y']['elbo']:.3f}"
        )
