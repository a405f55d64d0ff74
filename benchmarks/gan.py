"""`python -m stages bench gan`: DCGAN training throughput at 28×28 on this device, side by side with the classic
PyTorch DCGAN example's training step, optionally a short Fashion-MNIST run with its sample-quality metrics.

Throughput: :class:`pipeline.gan_trainer.GanTrainer` (the code the train_gan stage runs), dcgan
architecture, one discriminator and one generator update per batch, timed over one epoch of
``--images`` random 28×28 images after a short warm-up epoch; images/s counts real images consumed
(each step also generates as many).

The reference is a re-implementation of the training step of the classic example (pytorch/examples, dcgan/main.py)
adapted to 28×28 at the same layer widths: its generator (transposed convolutions from a 1×1 latent, batch norm,
ReLU; a 7×7 first stage, then two stride-2 stages, a 3×3 output layer with a sigmoid, as our [0, 1] images need),
its discriminator (stride-2 convolutions, batch norm, LeakyReLU 0.2, a 7×7 convolution to one sigmoid output),
its N(0, 0.02) initialization, ``BCELoss``, Adam 2e-4 / beta1 0.5, a shuffling ``DataLoader`` (no worker processes:
the images are in memory) and its step: D on the real batch, D on the detached fakes, D's update, then G's update
through D on the same fakes. Both steps' floating-point operations per image are counted by
``torch.utils.flop_counter.FlopCounterMode``, and their rates are set against this machine's float32 matmul rate.

``--recipe NAME``: the pipeline itself (download, preprocess, train_classifier, train_gan, train_vae, evaluate_vae,
evaluate_samples, as `dvc repro` runs them) in ``--workdir`` with ``recipes/gan/NAME.yaml`` merged into the
shipped params, ``--dataset`` (Fashion-MNIST from Debian's dataset-fashion-mnist mirror by default; grey values),
and the budgets ``--minutes`` for the GAN and ``--vae-minutes`` for the VAE it is compared with; it prints
evaluate_samples' figures for both: Fréchet distance in the feature classifier's features and its real-data floor,
precision, recall, classifier score, AIS log p(x), and the training times.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    COUNT,
    DEVICES,
    REPO,
    THREADS,
    bench_device,
    check_workdir,
    epoch_images_per_second,
    hardware,
    matmul_rate,
    recipe_overlay,
    run_stages,
    shipped_params_with,
    synchronize,
)
from pipeline.checkpoint import load_checkpoint
from pipeline.config import Config, GanParams
from pipeline.data.processed import ProcessedData
from pipeline.distributed import DistContext
from pipeline.gan_trainer import GanTrainer

DEBIAN_MIRROR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist (grey Fashion-MNIST)
GAN_RECIPES = REPO / "recipes" / "gan"
POSITIVE = click.FloatRange(min=0, min_open=True)
RECIPE_STAGES = (
    "download",
    "preprocess",
    "train_classifier",
    "train_gan",
    "train_vae",
    "evaluate_vae",
    "evaluate_samples",
)


def random_images(images: int) -> np.ndarray:
    return np.random.default_rng(0).random((images, 1, 28, 28), dtype=np.float32)


def ours(config: Config, images: int, device: torch.device) -> GanTrainer:
    """A GanTrainer on ``images`` random 28×28 images."""
    x = random_images(images)
    data = ProcessedData({"train": x, "valid": x[:64], "test": x[:64]}, None, "none", None, "random")
    return GanTrainer(config, data, DistContext(0, 1, device))


def classic_generator(latent_dim: int, width: int) -> nn.Sequential:
    """The example's generator at 28×28: 1×1 -> 7×7 -> 14×14 -> 28×28, batch norm and ReLU, sigmoid output."""
    return nn.Sequential(
        nn.Unflatten(1, (latent_dim, 1, 1)),
        nn.ConvTranspose2d(latent_dim, width * 4, 7, 1, 0, bias=False),
        nn.BatchNorm2d(width * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(width * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(True),
        nn.ConvTranspose2d(width, 1, 3, 1, 1, bias=False),
        nn.Sigmoid(),
    )


def classic_discriminator(width: int) -> nn.Sequential:
    """The example's discriminator at 28×28: 28 -> 14 -> 7, then a 3×3 stage and a 7×7 convolution to one sigmoid."""
    return nn.Sequential(
        nn.Conv2d(1, width, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(width * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(width * 2, width * 4, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(width * 4, 1, 7, 1, 0, bias=False),
        nn.Sigmoid(),
        nn.Flatten(0),
    )


def _classic_init(module: nn.Module) -> None:
    """The example's ``weights_init``: convolutions ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02), shifts 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class ClassicDcgan:
    """The classic example's networks, optimizers, loss, loader and step (see the module's docstring)."""

    def __init__(self, latent_dim: int, width: int, batch_size: int, images: int, device: torch.device) -> None:
        self.latent_dim, self.device = latent_dim, device
        self.generator = classic_generator(latent_dim, width).to(device)
        self.discriminator = classic_discriminator(width).to(device)
        self.generator.apply(_classic_init)
        self.discriminator.apply(_classic_init)
        self.criterion = nn.BCELoss()
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        data = TensorDataset(torch.from_numpy(random_images(images)))
        self.loader = DataLoader(data, batch_size=batch_size, shuffle=True)

    def step(self, real: torch.Tensor) -> None:
        real = real.to(self.device)
        batch = real.size(0)
        self.discriminator.zero_grad()
        label = torch.full((batch,), 1.0, device=self.device)
        self.criterion(self.discriminator(real), label).backward()
        fake = self.generator(torch.randn(batch, self.latent_dim, device=self.device))
        label.fill_(0.0)
        self.criterion(self.discriminator(fake.detach()), label).backward()
        self.optimizer_d.step()
        self.generator.zero_grad()
        label.fill_(1.0)
        self.criterion(self.discriminator(fake), label).backward()
        self.optimizer_g.step()

    def images_per_second(self, warmup_batches: int = 4) -> float:
        """Images/s of one epoch of the loader, after ``warmup_batches`` steps."""
        for i, (real,) in enumerate(self.loader):
            if i == warmup_batches:
                break
            self.step(real)
        synchronize(self.device)
        start = time.perf_counter()
        for (real,) in self.loader:
            self.step(real)
        synchronize(self.device)
        return len(self.loader.dataset) / (time.perf_counter() - start)


def flops_per_image(step: Callable[[], None], batch: int) -> float:
    """Floating-point operations of one training step (forward and backward) per real image."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def recipe_params(name: str, dataset: str, mirror: str | None, minutes: float, vae_minutes: float, device: str) -> dict:
    """The shipped params with GAN recipe ``name`` (recipes/gan/NAME.yaml), the dataset and both training budgets,
    checked against the params schema (a refused value is an option error before anything is timed)."""
    overlay = recipe_overlay(GAN_RECIPES, name)
    data = {"dataset": dataset, "binarize": "none"} | ({"mirror": mirror} if mirror else {})
    settings = {"device": device, "data": data, "gan": {"max_minutes": minutes}, "vae": {"max_minutes": vae_minutes}}
    return shipped_params_with(overlay, settings, param_hint="--recipe/--dataset/--mirror/--minutes/--vae-minutes")


def report_recipe(workdir: Path, seconds: dict[str, float]) -> None:
    """The evaluate_samples figures of both models, with their training times."""
    metrics = json.loads((workdir / "metrics" / "evaluate_samples.json").read_text())
    card = json.loads((workdir / "cards" / "evaluate_samples.json").read_text())
    for name in ("gan", "vae"):
        training = load_checkpoint(workdir / "checkpoints" / name / "last.pt")["training"]
        report = card[name]
        score = f", classifier score {report['classifier_score']:.2f}" if "classifier_score" in report else ""
        likelihood = metrics[name].get("gaussian_ais")
        ais = f", AIS log p(x) {likelihood:.1f} nats (Gaussian observation model)" if likelihood is not None else ""
        click.echo(
            f"  {name}: Fréchet distance {report['frechet_distance']:.2f} (floor {report['frechet_floor']:.2f}), "
            f"precision {report['precision']:.3f}, recall {report['recall']:.3f}{score}{ais}; "
            f"trained {training['seconds'] / 60:.1f} min, {training['epoch']} epochs"
        )
    click.echo("  stage minutes: " + ", ".join(f"{stage} {s / 60:.1f}" for stage, s in seconds.items()))


@click.command()
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--base-channels", type=COUNT, default=64, show_default=True, help="gan.base_channels of the dcgan")
@click.option("--lr", type=POSITIVE, default=2e-4, show_default=True, help="Adam learning rate of both networks")
@click.option("--spectral-norm/--no-spectral-norm", default=False, show_default=True)
@click.option(
    "--bf16/--no-bf16", default=False, show_default=True, help="gan.bf16 for ours (the classic step is float32)"
)
@click.option("--images", type=click.IntRange(min=2), default=4096, show_default=True, help="images in the timed epoch")
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--threads", type=THREADS, default=0, help="torch CPU threads (0: torch's default)")
@click.option("--repeats", type=COUNT, default=2, show_default=True, help="timed runs; the best is reported")
@click.option(
    "--recipe", default=None, help="also run a GAN recipe of recipes/gan/ through the pipeline (e.g. dcgan_fashion)"
)
@click.option("--dataset", default="fashion_mnist", show_default=True, help="data.dataset of the recipe run")
@click.option("--mirror", default=None,
              help=f"data.mirror of the recipe run (default: {DEBIAN_MIRROR} where it exists)")  # fmt: skip
@click.option(
    "--minutes", type=POSITIVE, default=30.0, show_default=True, help="the GAN's training budget (gan.max_minutes)"
)
@click.option("--vae-minutes", type=POSITIVE, default=10.0, show_default=True,
              help="the VAE's training budget (vae.max_minutes)")  # fmt: skip
@click.option("--workdir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="where the recipe run's files go (default bench-runs/RECIPE-DATASET)")  # fmt: skip
def main(
    batch_size: int,
    base_channels: int,
    lr: float,
    spectral_norm: bool,
    bf16: bool,
    images: int,
    device: str,
    threads: int,
    repeats: int,
    recipe: str | None,
    dataset: str,
    mirror: str | None,
    minutes: float,
    vae_minutes: float,
    workdir: Path | None,
) -> None:
    """Training images/s of the DCGAN at 28×28, ours and the classic example's; with --recipe, a GAN recipe's sample
    quality after its budget, beside the VAE's."""
    if threads:
        torch.set_num_threads(threads)
    torch_device = bench_device(device)
    if mirror is None and Path(DEBIAN_MIRROR).is_dir():
        mirror = DEBIAN_MIRROR
    params = None if recipe is None else recipe_params(recipe, dataset, mirror or None, minutes, vae_minutes, device)
    if params is not None:
        workdir = (workdir or Path("bench-runs") / f"{recipe}-{dataset}").resolve()
        check_workdir(workdir)  # before the minutes of timing
    gan = dataclasses.replace(
        GanParams(),
        arch="dcgan",
        base_channels=base_channels,
        batch_size=batch_size,
        lr_g=lr,
        lr_d=lr,
        spectral_norm=spectral_norm,
        bf16=bf16,
    )
    config = Config(device=device, gan=gan)
    click.echo(hardware(torch_device))
    trainer = ours(config, images, torch_device)
    classic = ClassicDcgan(config.latent_dim, base_channels, batch_size, images, torch_device)
    real = trainer.x["train"][:batch_size]  # fewer than batch_size when --images is smaller
    flops = {
        "ours": flops_per_image(lambda: trainer.train_step(real, None, 1, True), len(real)),
        "classic": flops_per_image(lambda: classic.step(real), len(real)),
    }
    rates = {"ours": 0.0, "classic": 0.0}
    for _ in range(repeats):  # alternated, so a neighbour's load falls on both
        rates["ours"] = max(rates["ours"], epoch_images_per_second(ours(config, images, torch_device)))
        rates["classic"] = max(rates["classic"], classic.images_per_second())
    peak = max(matmul_rate(torch_device, repeats=3, size=2048).values())
    precision = ", ours under bf16 autocast" if trainer.bf16 else ""
    click.echo(f"dcgan 28×28 (base_channels {base_channels}, batch {batch_size}{precision}):")
    for name, label in (("ours", "ours (train_gan's step)"), ("classic", "classic DCGAN example's step")):
        achieved = rates[name] * flops[name]
        click.echo(
            f"  {label}: {rates[name]:,.0f} images/s, {flops[name] / 1e9:.3f} GFLOP per image, "
            f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} of float32 matmul ({peak / 1e9:.1f} GFLOP/s)"
        )
    click.echo(f"  speed-up: {rates['ours'] / rates['classic']:.2f}x")
    if params is None:
        return
    seconds = run_stages(workdir, params, RECIPE_STAGES, threads or None)
    click.echo(f"recipe {recipe} on {dataset} (GAN budget {minutes:g} min, VAE {vae_minutes:g} min):")
    report_recipe(workdir, seconds)
