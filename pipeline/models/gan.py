"""The GAN's networks (§11.2): an implicit generator g: Z -> X and a discriminator.

The generator maps z ~ N(0, I) (``latent_dim``) to an image in [0, 1] without modelling
p(x|z) itself; the discriminator maps an image to one logit (real vs generated) and
exposes its penultimate features for feature matching (Salimans et al. 2016).

Architectures (``gan.arch``):
- ``mlp``: fully connected layers (batch norm and ReLU in the generator, LeakyReLU in the discriminator).
- ``dcgan`` (Radford et al. 2015): the generator projects z to a small feature map and doubles its size
  with stride-2 transposed convolutions (batch norm, ReLU); the discriminator halves it with stride-2
  convolutions and one 3×3 convolution (LeakyReLU 0.2), no batch norm (each image is judged on its own,
  as spectral normalization and feature matching assume). The number of stride-2 stages adapts to the
  image size: 8×8 -> 1 (from 4×4), 28×28 -> 2 (from 7×7), 32×32 -> 3 (from 4×4).

Conditional GAN (Mirza & Osindero 2014): the one-hot label is concatenated to z in the generator and
to the input (as constant channels, or features for ``mlp``) in the discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.models.base import check_labels, one_hot


def stride2_stages(height: int, width: int) -> int:
    """How many times both sides halve exactly while staying at least 4 (the dcgan's stride-2 stages)."""
    stages = 0
    while height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4:
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


ARCHITECTURES = ("mlp", "dcgan")


@dataclass(frozen=True)
class GeneratorConfig:
    """Exactly the constructor arguments of :class:`Generator`, as stored in its checkpoints."""

    latent_dim: int
    image_shape: tuple[int, int, int]
    arch: str = "mlp"
    hidden_sizes: tuple[int, ...] = (256, 256)
    base_channels: int = 64
    num_classes: int | None = None

    def __post_init__(self) -> None:
        _normalize(self)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Exactly the constructor arguments of :class:`Discriminator`, as stored in its checkpoints."""

    image_shape: tuple[int, int, int]
    arch: str = "mlp"
    hidden_sizes: tuple[int, ...] = (256, 256)
    base_channels: int = 64
    spectral_norm: bool = False
    num_classes: int | None = None

    def __post_init__(self) -> None:
        _normalize(self)


def _normalize(config: GeneratorConfig | DiscriminatorConfig) -> None:
    for name in ("image_shape", "hidden_sizes"):
        object.__setattr__(config, name, tuple(int(v) for v in getattr(config, name)))
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {config.arch!r}; use 'mlp' or 'dcgan'")


def _with_labels(inputs: torch.Tensor, y: torch.Tensor | None, num_classes: int | None) -> torch.Tensor:
    """``inputs`` (B×F, or B×C×H×W) with the one-hot label appended as features (or constant channels)."""
    y = check_labels(y, num_classes, inputs.shape[0])
    if y is None:
        return inputs
    code = one_hot(y, num_classes, inputs.dtype)
    if inputs.dim() == 4:
        code = code[:, :, None, None].expand(-1, -1, *inputs.shape[2:])
    return torch.cat([inputs, code], dim=1)


class Generator(nn.Module):
    """g(z, y) -> B×C×H×W images in [0, 1] (sigmoid output)."""

    family = "gan_generator"
    Config = GeneratorConfig

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim, self.image_shape, self.num_classes = config.latent_dim, config.image_shape, config.num_classes
        latent_dim, num_classes, arch = config.latent_dim, config.num_classes, config.arch
        hidden_sizes, base_channels = config.hidden_sizes, config.base_channels
        c, h, w = self.image_shape
        inputs = latent_dim + (num_classes or 0)
        if arch == "mlp":
            layers: list[nn.Module] = []
            for width in hidden_sizes:
                layers += [nn.Linear(inputs, width), nn.BatchNorm1d(width), nn.ReLU()]
                inputs = width
            self.body = nn.Sequential(*layers, nn.Linear(inputs, c * h * w), nn.Unflatten(1, (c, h, w)))
        elif arch == "dcgan":
            stages = stride2_stages(h, w)
            h0, w0, channels = h >> stages, w >> stages, base_channels << stages
            layers = [
                nn.Linear(inputs, channels * h0 * w0, bias=False),
                nn.Unflatten(1, (channels, h0, w0)),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
            for _ in range(stages):
                layers += [
                    nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(channels // 2),
                    nn.ReLU(),
                ]
                channels //= 2
            self.body = nn.Sequential(*layers, nn.Conv2d(channels, c, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.body(_with_labels(z, y, self.num_classes)))


class Discriminator(nn.Module):
    """D(x, y) -> B logits of "x is real"; ``features`` gives the penultimate layer (for feature matching)."""

    family = "gan_discriminator"
    Config = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.image_shape, self.num_classes, arch = config.image_shape, config.num_classes, config.arch
        num_classes, hidden_sizes, base_channels = config.num_classes, config.hidden_sizes, config.base_channels
        norm = spectral_norm if config.spectral_norm else (lambda layer: layer)
        c, h, w = self.image_shape
        extra = num_classes or 0
        if arch == "mlp":
            layers: list[nn.Module] = []
            inputs = c * h * w + extra
            for width in hidden_sizes:
                layers += [norm(nn.Linear(inputs, width)), nn.LeakyReLU(0.2)]
                inputs = width
            self.trunk = nn.Sequential(*layers)
        elif arch == "dcgan":
            channels, inputs, layers = base_channels, c + extra, []
            for _ in range(stride2_stages(h, w)):
                layers += [norm(nn.Conv2d(inputs, channels, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
                inputs, channels = channels, channels * 2
            layers += [norm(nn.Conv2d(inputs, channels, 3, padding=1)), nn.LeakyReLU(0.2), nn.Flatten()]
            self.trunk = nn.Sequential(*layers)
            with torch.no_grad():
                inputs = self.trunk(torch.zeros(1, c + extra, h, w)).shape[1]
        self.arch = arch
        self.head = norm(nn.Linear(inputs, 1))

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The penultimate layer's activations, B×F."""
        return self.trunk(_with_labels(x.flatten(1) if self.arch == "mlp" else x, y, self.num_classes))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, y)).squeeze(1)
