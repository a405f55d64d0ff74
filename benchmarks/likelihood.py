"""`python -m stages bench likelihood`: speed of the importance-sampled log-likelihood against the matmul rate.

Evaluates K importance samples for each of ``--points`` binary MNIST-size images with an MLP VAE
(pixels-hidden-latent, the IWAE paper's evaluation setting is 10,000 test images, K = 5000; a Bernoulli decoder
unless ``--likelihood gaussian``) through
:func:`pipeline.estimators.importance_sampled_log_likelihood`, the code the evaluate_vae stage runs.
It reports decoder evaluations per second, the decoder's matrix-multiply FLOP rate, and that rate as a
fraction of this machine's float32 ``torch.mm`` rate, measured here on large products. On a shared machine
that rate drifts as neighbours come and go, so the points run in ``--segments`` parts with the rate measured
between them: the overall fraction is against the highest rate seen, and the median of the segments' fractions
is against the rate measured around each (the higher of before and after). A plain batched
implementation (sample all K, decode, per-pixel log-density, logsumexp) runs on a few points of the same
model for comparison. Timings on shared CPUs are provisional.
"""

from __future__ import annotations

import math
import statistics
import time

import click
import torch
from torch import nn

from benchmarks.common import COUNT, DEVICES, THREADS, bench_device, hardware, matmul_rate, synchronize
from pipeline.config import Config, VaeParams
from pipeline.device import to_device
from pipeline.estimators import NOISE_POINTS, importance_sampled_log_likelihood
from pipeline.models.distributions import gaussian_log_density, gaussian_sample, standard_normal_log_density
from pipeline.models.vae import VAE
from pipeline.vae_trainer import build_vae


def decoder_flops(model: VAE) -> int:
    """Multiply-add FLOPs of one decoder evaluation: 2 × Σ in × out over its linear layers."""
    return sum(2 * layer.in_features * layer.out_features for layer in model.decoder if isinstance(layer, nn.Linear))


@torch.no_grad()
def plain_log_likelihood(model: VAE, x: torch.Tensor, num_samples: int, batch: int) -> torch.Tensor:
    """The usual batched estimator: draw all K samples for a batch, decode them all at once, the log-density per
    pixel (binary cross-entropy on the logits, or the Gaussian's), logsumexp over K."""
    out = []
    for xb in x.split(batch):
        mu, logvar = model.encode(xb)
        z, _ = gaussian_sample(mu, logvar, torch.randn(num_samples, *mu.shape))
        logits = model.decode_logits(z.flatten(0, 1)).reshape(num_samples, xb.shape[0], -1)
        log_px = model.log_likelihood_from_logits(logits, xb.flatten(1))
        log_w = log_px + standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)
        out.append(torch.logsumexp(log_w.double(), 0) - math.log(num_samples))
    return torch.cat(out)


@click.command()
@click.option("--points", type=COUNT, default=10000, show_default=True, help="test images (the literature: 10,000)")
@click.option("--samples", type=COUNT, default=5000, show_default=True, help="K, importance samples per image")
@click.option("--hidden", type=COUNT, default=400, show_default=True, help="hidden width of the MLP VAE")
@click.option("--latent", type=COUNT, default=20, show_default=True, help="latent dimensions")
@click.option(
    "--likelihood",
    type=click.Choice(["bernoulli", "gaussian"]),
    default="bernoulli",
    show_default=True,
    help="the decoder's p(x|z)",
)
@click.option("--side", type=COUNT, default=28, show_default=True, help="image side (28: MNIST)")
@click.option("--memory-budget-mb", type=COUNT, default=512, show_default=True)
@click.option("--baseline-points", type=click.IntRange(min=0), default=20, show_default=True,
              help="points for the plain implementation (0: skip)")  # fmt: skip
@click.option("--segments", type=COUNT, default=10, show_default=True,
              help="parts of the points, each timed between matmul rates")  # fmt: skip
@click.option("--rate-size", type=click.IntRange(min=4), default=4096, show_default=True,
              help="side of the square product that measures the rate")  # fmt: skip
@click.option("--device", "device_name", type=DEVICES, default="auto", show_default=True)
@click.option(
    "--threads", type=THREADS, default=0, show_default=True, help="torch CPU threads (0: torch's default, all cores)"
)
def main(
    points: int,
    samples: int,
    hidden: int,
    latent: int,
    likelihood: str,
    side: int,
    memory_budget_mb: int,
    baseline_points: int,
    segments: int,
    rate_size: int,
    device_name: str,
    threads: int,
) -> None:
    """Decoder evaluations per second and the fraction of the float32 matmul rate they achieve."""
    if threads:
        torch.set_num_threads(threads)
    device = bench_device(device_name)
    torch.manual_seed(0)
    config = Config(latent_dim=latent, vae=VaeParams(hidden_sizes=[hidden], likelihood=likelihood))
    model = to_device(build_vae(config, (1, side, side), None), device).eval()
    x = torch.bernoulli(torch.rand(points, 1, side, side, device=device) * 0.3)
    flops = decoder_flops(model)
    click.echo(f"{hardware(device)}; timings on shared machines are provisional")
    rates = matmul_rate(device, size=rate_size)
    for name, value in rates.items():
        click.echo(f"{name}: {value / 1e9:.1f} GFLOP/s")

    importance_sampled_log_likelihood(model, model, x[:16], None, 256, memory_budget_mb=memory_budget_mb)  # warm-up
    size = NOISE_POINTS * math.ceil(points / segments / NOISE_POINTS)
    rate_before, seen_rates, local_fractions, seconds, log_px = max(rates.values()), [], [], 0.0, []
    for start in range(0, points, size):
        part = x[start : start + size]
        synchronize(device)
        began = time.perf_counter()
        result = importance_sampled_log_likelihood(
            model, model, part, None, samples, (1, 10, 100, 1000), memory_budget_mb=memory_budget_mb, first_point=start
        )
        synchronize(device)
        elapsed = time.perf_counter() - began
        rates_after = matmul_rate(device, repeats=3, size=rate_size)
        rate_after = max(rates_after.values())
        local = max(rate_before, rate_after)
        fraction = part.shape[0] * samples * flops / elapsed / local
        click.echo(
            f"points {start}-{start + part.shape[0] - 1}: {elapsed:.1f} s, {fraction:.1%} of the {local / 1e9:.0f} "
            "GFLOP/s measured around it"
        )
        seconds += elapsed
        seen_rates.append(local)
        local_fractions.append(fraction)
        log_px.append(result.log_px)
        rate_before = rate_after
    evaluations = points * samples
    achieved = evaluations * flops / seconds
    click.echo(
        f"{points} points × K={samples} (decoder {latent}-{hidden}-{side * side}, "
        f"{flops / 1e6:.3f} MFLOP each): {seconds:.1f} s, {evaluations / seconds:,.0f} decoder evaluations/s"
    )
    click.echo(
        f"decoder matmul rate {achieved / 1e9:.1f} GFLOP/s = {achieved / max(seen_rates):.1%} of the highest "
        f"matmul rate measured ({max(seen_rates) / 1e9:.1f} GFLOP/s); median over the {len(local_fractions)} "
        f"segments against the rate measured around each: {statistics.median(local_fractions):.1%}"
    )
    if points != 10000:
        click.echo(f"projected for 10,000 points: {seconds * 10000 / points:.0f} s")
    click.echo(f"mean log p(x) {torch.cat(log_px).mean().item():.3f} nats (random weights; a speed test only)")
    rate = max(seen_rates)

    if baseline_points:
        xb = x[:baseline_points]
        baseline_points = len(xb)  # at most --points
        batch = max(1, (memory_budget_mb * 2**20) // (4 * 8 * side * side * samples))
        synchronize(device)
        start = time.perf_counter()
        plain_log_likelihood(model, xb, samples, batch)
        synchronize(device)
        plain = time.perf_counter() - start
        plain_achieved = baseline_points * samples * flops / plain
        click.echo(
            f"plain batched implementation on {baseline_points} points: {plain_achieved / 1e9:.1f} GFLOP/s = "
            f"{plain_achieved / rate:.1%} of the rate (projected {plain * 10000 / baseline_points:.0f} s "
            "for 10,000 points)"
        )
