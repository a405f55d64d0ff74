"""`python -m stages bench gan`: DCGAN training throughput at 28×28 on this device, optionally a short
Fashion-MNIST run with its sample-quality metrics.

Throughput: :class:`pipeline.gan_trainer.GanTrainer` (the code the train_gan stage runs), dcgan
architecture, one discriminator and one generator update per batch, timed over one epoch of
``--images`` random 28×28 images after a short warm-up epoch; images/s counts real images consumed
(each step also generates as many).

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
from pathlib import Path

import click
import numpy as np
import torch
import yaml

from benchmarks.common import epoch_images_per_second
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


def images_per_second(config: Config, images: int, device: torch.device) -> float:
    """Train GanTrainer for one epoch over ``images`` random 28×28 images (after a 4-batch warm-up); images/s."""
    x = np.random.default_rng(0).random((images, 1, 28, 28), dtype=np.float32)
    data = ProcessedData({"train": x, "valid": x[:64], "test": x[:64]}, None, "none", None, "random")
    return epoch_images_per_second(GanTrainer(config, data, DistContext(0, 1, device)))


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
    rate = max(images_per_second(config, images, torch_device) for _ in range(repeats))
    click.echo(f"dcgan 28×28 (base_channels {base_channels}, batch {batch_size}): {rate:,.0f} images/s")
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
