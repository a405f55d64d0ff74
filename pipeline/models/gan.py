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
to the input (as constant channels, or features for ``mlp``) in the discriminator. The one-hot is a
row lookup in an identity buffer, so the exported ONNX graph needs only plain ops.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.config import Config, GanConfig, config_from_dict
from pipeline.device import to_device
from pipeline.training import load_checkpoint


def stride2_stages(height: int, width: int) -> int:
    """How many times both sides halve exactly while staying at least 4 (the dcgan's stride-2 stages)."""
    stages = 0
    while height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4:
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


class _OneHot(nn.Module):
    """Labels -> one-hot rows of an identity buffer (a Gather in ONNX); a clear error without labels."""

    def __init__(self, num_classes: int | None) -> None:
        super().__init__()
        self.num_classes = num_classes
        eye = torch.eye(num_classes) if num_classes else torch.zeros(0, 0)
        self.register_buffer("eye", eye, persistent=False)

    def forward(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError(f"this GAN is conditional on {self.num_classes} classes; pass labels y (B integers)")
        if y.shape != (batch,):
            raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
        return self.eye[y]


class Generator(nn.Module):
    """g(z, y) -> B×C×H×W images in [0, 1] (sigmoid output)."""

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        num_classes: int | None,
        arch: str,
        hidden_sizes: list[int],
        base_channels: int,
    ) -> None:
        super().__init__()
        self.latent_dim, self.image_shape, self.num_classes = latent_dim, tuple(image_shape), num_classes
        self.one_hot = _OneHot(num_classes)
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
        else:
            raise ValueError(f"unknown GAN architecture {arch!r}; use 'mlp' or 'dcgan'")

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        code = self.one_hot(y, z.shape[0])
        if code is not None:
            z = torch.cat([z, code.to(z.dtype)], dim=1)
        return torch.sigmoid(self.body(z))


class Discriminator(nn.Module):
    """D(x, y) -> B logits of "x is real"; ``features`` gives the penultimate layer (for feature matching)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int | None,
        arch: str,
        hidden_sizes: list[int],
        base_channels: int,
        spectral_normalization: bool,
    ) -> None:
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        self.one_hot = _OneHot(num_classes)
        norm = spectral_norm if spectral_normalization else (lambda layer: layer)
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
        else:
            raise ValueError(f"unknown GAN architecture {arch!r}; use 'mlp' or 'dcgan'")
        self.arch = arch
        self.head = norm(nn.Linear(inputs, 1))

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The penultimate layer's activations, B×F."""
        code = self.one_hot(y, x.shape[0])
        if self.arch == "mlp":
            x = x.flatten(1)
            if code is not None:
                x = torch.cat([x, code.to(x.dtype)], dim=1)
        elif code is not None:
            x = torch.cat([x, code.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        return self.trunk(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, y)).squeeze(1)


def build_generator(config: Config, image_shape: tuple[int, int, int], num_classes: int | None) -> Generator:
    """The generator ``config.gan`` describes; ``num_classes`` is used only when ``gan.conditional``."""
    gan: GanConfig = config.gan
    return Generator(
        config.latent_dim,
        image_shape,
        _classes(gan, num_classes),
        gan.arch,
        gan.hidden_sizes,
        gan.base_channels,
    )


def build_discriminator(config: Config, image_shape: tuple[int, int, int], num_classes: int | None) -> Discriminator:
    """The discriminator ``config.gan`` describes."""
    gan: GanConfig = config.gan
    return Discriminator(
        image_shape, _classes(gan, num_classes), gan.arch, gan.hidden_sizes, gan.base_channels, gan.spectral_norm
    )


def _classes(gan: GanConfig, num_classes: int | None) -> int | None:
    if not gan.conditional:
        return None
    if not num_classes:
        raise ValueError(
            "gan.conditional is true but the dataset has no class labels; set gan.conditional: false "
            "or use a labelled dataset"
        )
    return num_classes


def load_generator(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> Generator:
    """The generator of a GAN checkpoint in eval mode: its weight average (``ema``) or the raw weights."""
    state = load_checkpoint(path)
    data = state["data"]
    generator = build_generator(config_from_dict(state["config"]), tuple(data["image_shape"]), data["num_classes"])
    generator.load_state_dict(state["generator_ema" if ema else "generator"])
    return to_device(generator, device).eval()
