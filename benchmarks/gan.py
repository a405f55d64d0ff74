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

``--fashion-mnist-epochs N``: in ``--workdir`` (a temporary directory by default) the download and
preprocess stages build Fashion-MNIST (grey, 54000/6000/10000) from the local mirror
(``--mirror``, Debian's dataset-fashion-mnist by default), the feature classifier trains for
``--classifier-epochs``, the DCGAN for N epochs with the options given here, and the metrics of
``pipeline.metrics.sample_quality_report`` are printed for ``--num-generated`` samples against the
test split, with the path of the final sample grid.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import epoch_images_per_second, matmul_rate, synchronize
from pipeline.checkpoint import load_model
from pipeline.classifier_trainer import train_classifier
from pipeline.config import Config, EvaluateParams, GanParams
from pipeline.data.processed import ProcessedData, load_processed
from pipeline.device import select_device
from pipeline.distributed import DistContext
from pipeline.evaluation import conditional_sampler, sample_quality_report
from pipeline.gan_trainer import GanTrainer, train_gan
from pipeline.training import TrainingOutputs

REPO = Path(__file__).resolve().parents[1]


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


def build_fashion_mnist(workdir: Path, mirror: Path, config: Config) -> Path:
    """data/processed under ``workdir`` via the project's download and preprocess stages (reused if present)."""
    processed = workdir / "data" / "processed"
    if (processed / "stats.json").exists():
        return processed
    raw = config.to_dict()
    raw["data"] |= {"dataset": "fashion_mnist", "mirror": str(mirror), "binarize": "none"}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    for stage in ("download", "preprocess"):
        done = subprocess.run([sys.executable, "-m", "stages", stage], cwd=workdir, env=env, text=True)
        if done.returncode != 0:
            raise click.ClickException(f"the {stage} stage failed for Fashion-MNIST from {mirror}")
    return processed


@click.command()
@click.option("--batch-size", default=64, show_default=True)
@click.option("--base-channels", default=64, show_default=True, help="gan.base_channels of the dcgan")
@click.option("--lr", default=2e-4, show_default=True, help="Adam learning rate of both networks")
@click.option("--spectral-norm/--no-spectral-norm", default=False, show_default=True)
@click.option("--images", default=4096, show_default=True, help="images in the timed epoch")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", default=0, help="torch CPU threads (0: torch's default)")
@click.option("--repeats", default=2, show_default=True, help="timed runs; the best is reported")
@click.option("--fashion-mnist-epochs", default=0, show_default=True, help="also train on Fashion-MNIST (0: skip)")
@click.option("--train-images", default=0, help="use only the first N training images (0: all 54000)")
@click.option("--classifier-epochs", default=3, show_default=True)
@click.option("--num-generated", default=5000, show_default=True)
@click.option("--mirror", default="/usr/share/datasets/fashion-mnist", show_default=True, type=click.Path())
@click.option("--workdir", default=None, type=click.Path(file_okay=False), help="default: a temporary directory")
def main(
    batch_size: int,
    base_channels: int,
    lr: float,
    spectral_norm: bool,
    images: int,
    device: str,
    threads: int,
    repeats: int,
    fashion_mnist_epochs: int,
    train_images: int,
    classifier_epochs: int,
    num_generated: int,
    mirror: str,
    workdir: str | None,
) -> None:
    """Training throughput of the DCGAN at 28×28 (and optionally Fashion-MNIST sample quality after a short budget)."""
    if threads:
        torch.set_num_threads(threads)
    torch_device = select_device(device)
    gan = dataclasses.replace(
        GanParams(),
        arch="dcgan",
        base_channels=base_channels,
        batch_size=batch_size,
        lr_g=lr,
        lr_d=lr,
        spectral_norm=spectral_norm,
    )
    config = Config(device=device, gan=gan)
    click.echo(f"device {torch_device}, {torch.get_num_threads()} threads")
    trainer = ours(config, images, torch_device)
    classic = ClassicDcgan(config.latent_dim, base_channels, batch_size, images, torch_device)
    real = trainer.x["train"][:batch_size]
    flops = {
        "ours": flops_per_image(lambda: trainer.train_step(real, None, 1, True), batch_size),
        "classic": flops_per_image(lambda: classic.step(real), batch_size),
    }
    rates = {"ours": 0.0, "classic": 0.0}
    for _ in range(repeats):  # alternated, so a neighbour's load falls on both
        rates["ours"] = max(rates["ours"], epoch_images_per_second(ours(config, images, torch_device)))
        rates["classic"] = max(rates["classic"], classic.images_per_second())
    peak = max(matmul_rate(torch_device, repeats=3, size=2048).values())
    click.echo(f"dcgan 28×28 (base_channels {base_channels}, batch {batch_size}):")
    for name, label in (("ours", "ours (train_gan's step)"), ("classic", "classic DCGAN example's step")):
        achieved = rates[name] * flops[name]
        click.echo(
            f"  {label}: {rates[name]:,.0f} images/s, {flops[name] / 1e9:.3f} GFLOP per image, "
            f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} of float32 matmul ({peak / 1e9:.1f} GFLOP/s)"
        )
    click.echo(f"  speed-up: {rates['ours'] / rates['classic']:.2f}x")
    if not fashion_mnist_epochs:
        return
    root = Path(workdir or tempfile.mkdtemp(prefix="bench_gan_"))
    root.mkdir(parents=True, exist_ok=True)
    data = load_processed(build_fashion_mnist(root, Path(mirror), config))
    if train_images:
        x = data.x | {"train": data.x["train"][:train_images]}
        data = dataclasses.replace(data, x=x, y=data.y | {"train": data.y["train"][:train_images]})
    settings = dataclasses.replace(EvaluateParams(), classifier_epochs=classifier_epochs, num_generated=num_generated)
    config = dataclasses.replace(
        config, gan=dataclasses.replace(gan, epochs=fashion_mnist_epochs, sample_every_epochs=10**5), evaluate=settings
    )
    start = time.perf_counter()
    classifier_outputs = TrainingOutputs.for_model("classifier", root)
    accuracy = train_classifier(config, data, classifier_outputs)["accuracy"]
    click.echo(f"classifier: test accuracy {accuracy:.4f} after {classifier_epochs} epochs")
    outputs = TrainingOutputs.for_model("gan", root)
    train_gan(config, data, outputs)
    minutes = (time.perf_counter() - start) / 60
    classifier = load_model(classifier_outputs.best_path, "model", torch_device)
    generator = load_model(outputs.last_path, "generator_ema", torch_device)
    sampler = conditional_sampler(generator, generator.latent_dim, torch_device, None, config.seed)
    test, train = torch.from_numpy(data.x["test"]), torch.from_numpy(data.x["train"])
    report = sample_quality_report(sampler, classifier, test, train, num_generated, seed=config.seed)
    click.echo(
        f"Fashion-MNIST, {fashion_mnist_epochs} epoch(s) over {len(train)} images, lr {lr}, spectral norm "
        f"{spectral_norm}, {minutes:.1f} min (classifier and GAN training):"
    )
    for name, value in report.items():
        click.echo(f"  {name}: {value:.4g}")
    click.echo(f"  sample grid: {outputs.image_dir / 'samples.png'}")
