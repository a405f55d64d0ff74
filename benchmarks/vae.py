"""`python -m stages bench vae`: VAE training throughput (images/s) on this device, ours against the classic example.

The classic baseline is a faithful re-implementation of the PyTorch VAE example's training step
(MLP 784-400-20, Bernoulli BCE on sigmoid outputs, Adam 1e-3) fed by a DataLoader over a dataset
that converts each image on access like ToTensor. Ours is :class:`pipeline.vae_trainer.VaeTrainer`
(the code the train_vae stage runs) at the same architecture and batch size, including its dynamic
binarization of every batch. Both run in this process on the same data.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import COUNT, DEVICES, THREADS, bench_device, epoch_images_per_second, hardware
from pipeline.config import Config
from pipeline.data.processed import ProcessedData, load_processed
from pipeline.distributed import DistContext
from pipeline.vae_trainer import VaeTrainer


class ClassicVAE(nn.Module):
    """The PyTorch example's model: 784-400-(20, 20), 20-400-784, sigmoid output."""

    def __init__(self, pixels: int = 784, hidden: int = 400, latent: int = 20) -> None:
        super().__init__()
        self.pixels = pixels
        self.fc1, self.fc21, self.fc22 = nn.Linear(pixels, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, pixels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x.view(-1, self.pixels)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


class PerSampleImages(Dataset):
    """uint8 images converted one by one on access, as torchvision's ToTensor does."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0), 0


def classic_images_per_second(images: np.ndarray, batch_size: int, hidden: int, latent: int, device) -> float:
    """Train the classic example for one pass over ``images`` (after a few warm-up batches); images/s."""
    model = ClassicVAE(images[0].size, hidden, latent).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PerSampleImages(images), batch_size=batch_size, shuffle=True)

    def step(data: torch.Tensor) -> float:
        data = data.to(device)
        optimizer.zero_grad()
        recon, mu, logvar = model(data)
        bce = F.binary_cross_entropy(recon, data.view(-1, model.pixels), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        loss.backward()
        optimizer.step()
        return loss.item()

    for i, (data, _) in enumerate(loader):
        step(data)
        if i == 3:
            break
    start = time.perf_counter()
    for data, _ in loader:
        step(data)
    return len(images) / (time.perf_counter() - start)


def ours_images_per_second(data: ProcessedData, config: Config, device: torch.device) -> float:
    """Train VaeTrainer for one epoch (after a short warm-up epoch); images/s."""
    return epoch_images_per_second(VaeTrainer(config, data, DistContext(0, 1, device)))


def _images(count: int, seed: int) -> tuple[np.ndarray, str]:
    """count 1×28×28 uint8 images: real processed data if present, else random grey images."""
    processed = Path("data/processed")
    if (processed / "stats.json").exists():
        x = load_processed(processed).x["train"]
        if x.shape[1:] == (1, 28, 28):
            reps = -(-count // len(x))
            return np.round(np.concatenate([x] * reps)[:count] * 255).astype(np.uint8), "data/processed"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 1, 28, 28), dtype=np.uint8), "random"


@click.command()
@click.option("--arch", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True)
@click.option("--hidden", type=COUNT, default=400, show_default=True, help="hidden width (mlp: one layer)")
@click.option("--latent", type=COUNT, default=20, show_default=True)
@click.option("--batch-size", type=COUNT, default=128, show_default=True)
@click.option("--images", type=COUNT, default=20000, show_default=True, help="images per timed epoch")
@click.option("--device", type=DEVICES, default="auto", show_default=True)
@click.option("--threads", type=THREADS, default=0, help="torch CPU threads (0: torch's default)")
@click.option("--repeats", type=COUNT, default=3, show_default=True, help="timed runs of each; the best is reported")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="also time the classic example")
def main(
    arch: str,
    hidden: int,
    latent: int,
    batch_size: int,
    images: int,
    device: str,
    threads: int,
    repeats: int,
    baseline: bool,
) -> None:
    """Training throughput of the VAE on 28×28 images, and its ratio to the classic PyTorch example."""
    if threads:
        torch.set_num_threads(threads)
    torch_device = bench_device(device)
    grey, source = _images(images, 0)
    x = grey.astype(np.float32) / 255
    data = ProcessedData(
        x={"train": x, "valid": x[:256], "test": x[:256]}, y=None, binarize="dynamic", num_classes=None, dataset=source
    )
    vae = {"arch": arch, "hidden_sizes": [hidden], "batch_size": batch_size, "epochs": 1}
    config = Config(latent_dim=latent, vae=dataclasses.replace(Config().vae, **vae))
    click.echo(f"{hardware(torch_device)}; {images} {source} 28×28 images")
    ours = max(ours_images_per_second(data, config, torch_device) for _ in range(repeats))
    layers = f"hidden {hidden}" if arch == "mlp" else f"channels {config.vae.conv_channels}"
    click.echo(f"ours ({arch}, {layers}, latent {latent}, batch {batch_size}): {ours:,.0f} images/s")
    if baseline and arch == "mlp":
        classic = max(classic_images_per_second(grey, batch_size, hidden, latent, torch_device) for _ in range(repeats))
        click.echo(f"classic PyTorch example (DataLoader, per-sample conversion): {classic:,.0f} images/s")
        click.echo(f"speed-up: {ours / classic:.2f}x")
