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

InfoGAN (Chen et al. 2016): the generator also takes latent codes c, B×(K + C): a one-hot category over K
``categories`` and C ``continuous_codes`` uniform on [-1, 1]; the discriminator's auxiliary head Q maps its
penultimate features to the parameters of Q(c|x) (K logits and C means of a unit-variance Gaussian), sharing every
other layer with D as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
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
    categories: int = 0
    continuous_codes: int = 0

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
    categories: int = 0
    continuous_codes: int = 0

    def __post_init__(self) -> None:
        _normalize(self)


def _normalize(config: GeneratorConfig | DiscriminatorConfig) -> None:
    for name in ("image_shape", "hidden_sizes"):
        object.__setattr__(config, name, tuple(int(v) for v in getattr(config, name)))
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {config.arch!r}; use 'mlp' or 'dcgan'")


@torch.no_grad()
def dcgan_init_(module: nn.Module) -> nn.Module:
    """Radford et al. (2015)'s initialization, in place: convolution and linear weights ~ N(0, 0.02), batch-norm
    scales ~ N(1, 0.02), biases 0 (under spectral normalization, the unnormalized weights)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            weight = layer.parametrizations.weight.original if parametrize.is_parametrized(layer) else layer.weight
            weight.normal_(1.0 if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) else 0.0, 0.02)
            if layer.bias is not None:
                layer.bias.zero_()
    return module


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
    """g(z, y, c) -> B×C×H×W images in [0, 1] (sigmoid output)."""

    family = "gan_generator"
    Config = GeneratorConfig

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim, self.image_shape, self.num_classes = config.latent_dim, config.image_shape, config.num_classes
        self.categories, self.continuous_codes = config.categories, config.continuous_codes
        latent_dim, num_classes, arch = config.latent_dim, config.num_classes, config.arch
        hidden_sizes, base_channels = config.hidden_sizes, config.base_channels
        c, h, w = self.image_shape
        inputs = latent_dim + (num_classes or 0) + self.code_dim
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

    @property
    def code_dim(self) -> int:
        """Width of the InfoGAN code vector c (0 without codes)."""
        return self.categories + self.continuous_codes

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n codes from their prior, n×(K + C): a uniform category, one-hot, then continuous values ~ U[-1, 1]."""
        device = next(self.parameters()).device
        category = torch.randint(self.categories, (n,), generator=generator, device=device) if self.categories else None
        continuous = torch.rand(n, self.continuous_codes, generator=generator, device=device) * 2 - 1
        return make_codes(category, continuous, self.categories)

    def forward(
        self, z: torch.Tensor, y: torch.Tensor | None = None, codes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images of latents z (B×latent_dim), labels y when conditional, and InfoGAN codes c when the generator has
        them; codes not given are drawn from their prior with torch's global generator, so g(z, y) samples p(x|y)."""
        inputs = _with_labels(z, y, self.num_classes)
        if self.code_dim:
            if codes is None:
                codes = self.sample_codes(z.shape[0])
            if codes.shape != (z.shape[0], self.code_dim):
                raise ValueError(f"InfoGAN codes must be B×{self.code_dim}, got {tuple(codes.shape)}")
            inputs = torch.cat([inputs, codes.to(inputs.dtype)], dim=1)
        return torch.sigmoid(self.body(inputs))


def make_codes(category: torch.Tensor | None, continuous: torch.Tensor, categories: int) -> torch.Tensor:
    """The code vector c = [one_hot(category, K), continuous] (no category part when K = 0)."""
    if not categories:
        return continuous
    return torch.cat([one_hot(category, categories, continuous.dtype), continuous], dim=1)


class Discriminator(nn.Module):
    """D(x, y) -> B logits of "x is real"; ``features`` gives the penultimate layer (for feature matching), and
    ``forward(..., with_codes=True)`` InfoGAN's Q head too."""

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
        code_params = config.categories + config.continuous_codes
        self.code_head = nn.Linear(inputs, code_params) if code_params else None

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The penultimate layer's activations, B×F."""
        return self.trunk(_with_labels(x.flatten(1) if self.arch == "mlp" else x, y, self.num_classes))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, with_codes: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """B logits; with ``with_codes`` (InfoGAN), also Q(c|x)'s parameters, B×(K + C), from the same features."""
        features = self.features(x, y)
        logits = self.head(features).squeeze(1)
        if not with_codes:
            return logits
        if self.code_head is None:
            raise ValueError("this discriminator has no InfoGAN code head (categories and continuous_codes are 0)")
        return logits, self.code_head(features)
