"""The variational autoencoder of §11.1: prior N(0, I), Gaussian q(z|x) (11.18), Bernoulli or Gaussian p(x|z).

Networks only; the bounds that train them live in ``pipeline/objectives/vae.py`` and the
training procedure in ``pipeline/vae_trainer.py``. Two architectures adapt to any C×H×W:
``mlp`` (flattened pixels through ``hidden_sizes``) and ``conv`` (stride-2 convolutions
with ``conv_channels``, mirrored by transposed convolutions). A conditional model
(Fig. 11.2b) feeds the one-hot class label to both encoder and decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.base import check_labels, one_hot

LOG_2PI = math.log(2 * math.pi)
# Decoded rows the fused MLP log-likelihood holds at once (importance sampling, AIS, IWAE).
LOGIT_ROWS_PER_BLOCK = 2048


@dataclass(frozen=True)
class VAEConfig:
    """Exactly the constructor arguments of :class:`VAE`, as stored in its checkpoints."""

    image_shape: tuple[int, int, int]
    latent_dim: int
    arch: str = "mlp"
    hidden_sizes: tuple[int, ...] = (256, 256)
    conv_channels: tuple[int, ...] = (32, 64)
    likelihood: str = "bernoulli"
    gaussian_variance: str = "learned"
    gaussian_std: float = 0.1
    num_classes: int | None = None

    def __post_init__(self) -> None:
        for name in ("image_shape", "hidden_sizes", "conv_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.arch not in ("mlp", "conv"):
            raise ValueError(f"arch {self.arch!r} is not 'mlp' or 'conv'")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood {self.likelihood!r} is not 'bernoulli' or 'gaussian'")
        if self.arch == "mlp" and not self.hidden_sizes:
            raise ValueError("the mlp architecture needs at least one hidden layer (vae.hidden_sizes is empty)")
        if self.arch == "conv" and not self.conv_channels:
            raise ValueError("the conv architecture needs at least one block (vae.conv_channels is empty)")


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """K×B×D samples z = mu + sigma * eps with eps ~ N(0, I) (11.37), differentiable in mu and logvar."""
    eps = torch.randn((num_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _conv_shapes(height: int, width: int, depth: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 block (kernel 4, padding 1 halves a side, rounding down)."""
    shapes = [(height, width)]
    for _ in range(depth):
        h, w = shapes[-1]
        if h < 2 or w < 2:
            raise ValueError(
                f"vae.conv_channels has {depth} stride-2 blocks, too many for {height}×{width} images; "
                "use fewer conv_channels or arch: mlp"
            )
        shapes.append((h // 2, w // 2))
    return shapes


class VAE(nn.Module):
    """p(z) = N(0, I), q(z|x) = N(mu(x), diag exp(logvar(x))) (11.18), p(x|z) Bernoulli (11.1-11.3) or Gaussian (11.4).

    Shapes: ``x`` B×C×H×W in [0, 1], ``y`` B integer labels (conditional models only), ``z`` B×D or K×B×D.
    """

    family = "vae"
    Config = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.image_shape, self.latent_dim, self.num_classes = config.image_shape, config.latent_dim, config.num_classes
        self.likelihood, self.arch = config.likelihood, config.arch
        self.gaussian_variance, self.gaussian_std = config.gaussian_variance, config.gaussian_std
        latent_dim, num_classes, arch = config.latent_dim, config.num_classes, config.arch
        hidden_sizes, conv_channels, gaussian_std = config.hidden_sizes, config.conv_channels, config.gaussian_std
        c, h, w = self.image_shape
        n_labels = num_classes or 0
        if arch == "mlp":
            pixels = c * h * w
            hidden = list(hidden_sizes)
            self.encoder = nn.Sequential(_mlp([pixels + n_labels, *hidden]), nn.ReLU())
            self.encoder_head = nn.Linear(hidden[-1], 2 * latent_dim)
            self.decoder = _mlp([latent_dim + n_labels, *reversed(hidden), pixels])
        elif arch == "conv":
            channels = [c, *conv_channels]
            shapes = _conv_shapes(h, w, len(conv_channels))
            blocks: list[nn.Module] = []
            for n_in, n_out in zip(channels[:-1], channels[1:], strict=True):
                blocks += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), nn.ReLU()]
            self.encoder = nn.Sequential(*blocks, nn.Flatten())
            self._bottom = (channels[-1], *shapes[-1])
            features = math.prod(self._bottom)
            self.encoder_head = nn.Linear(features + n_labels, 2 * latent_dim)
            up: list[nn.Module] = [nn.Linear(latent_dim + n_labels, features), nn.ReLU(), nn.Unflatten(1, self._bottom)]
            for i in range(len(conv_channels), 0, -1):
                target_h, target_w = shapes[i - 1]
                source_h, source_w = shapes[i]
                pad = (target_h - 2 * source_h, target_w - 2 * source_w)
                up.append(nn.ConvTranspose2d(channels[i], channels[i - 1], 4, stride=2, padding=1, output_padding=pad))
                if i > 1:
                    up.append(nn.ReLU())
            self.decoder = nn.Sequential(*up)
        if config.likelihood == "gaussian" and config.gaussian_variance == "learned":
            # per-pixel std = floor + softplus(raw), starting at twice the floor (softplus(raw) = floor)
            start = math.log(math.expm1(gaussian_std))
            self.decoder_std_raw = nn.Parameter(torch.full(self.image_shape, start))

    def _labels(self, y: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        y = check_labels(y, self.num_classes, batch)
        return None if y is None else one_hot(y, self.num_classes, dtype)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters (mu, logvar) of q(z|x) (11.18), each B×D."""
        labels = self._labels(y, x.shape[0], x.dtype)
        if self.arch == "mlp":
            inputs = x.flatten(1)
            if labels is not None:
                inputs = torch.cat([inputs, labels], dim=1)
            features = self.encoder(inputs)
        else:
            features = self.encoder(x)
            if labels is not None:
                features = torch.cat([features, labels], dim=1)
        mu, logvar = self.encoder_head(features).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's raw output for B×D latents: Bernoulli logits or pre-sigmoid Gaussian means, B×C×H×W."""
        labels = self._labels(y, z.shape[0], z.dtype)
        if labels is not None:
            z = torch.cat([z, labels], dim=1)
        return self.decoder(z).reshape(z.shape[0], *self.image_shape)

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z] in [0, 1], B×C×H×W: Bernoulli probabilities (11.1) or Gaussian means (11.4)."""
        return torch.sigmoid(self.decode_logits(z, y))

    def decoder_std(self) -> torch.Tensor:
        """Per-pixel standard deviation of the Gaussian decoder, C×H×W (learned, floored at gaussian_std)."""
        if self.gaussian_variance == "learned":
            return self.gaussian_std + F.softplus(self.decoder_std_raw)
        return torch.full(self.image_shape, self.gaussian_std, device=self.encoder_head.weight.device)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z) summed over pixels, K×B, for x B×C×H×W and z K×B×D (11.3 or 11.4)."""
        k, b, d = z.shape
        y_rep = None if y is None else y.repeat(k)
        if self.arch == "mlp" and k > 1 and not torch.is_autocast_enabled(z.device.type):
            return self._mlp_log_likelihood(x.reshape(b, -1).to(z.dtype).contiguous(), z, y_rep)
        logits = self.decode_logits(z.reshape(k * b, d), y_rep).reshape(k, b, -1)
        return self.log_likelihood_from_logits(logits, x.reshape(b, -1).to(logits.dtype))

    def log_likelihood_from_logits(self, logits: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Σ_d log p(x_d | l_d) over the last axis of decoder outputs ``logits`` (…×B×P) for images ``pixels`` B×P."""
        if self.likelihood == "bernoulli":
            # x log sigma(l) + (1 - x) log(1 - sigma(l)) computed stably on the logits l (11.2-11.3)
            return -F.binary_cross_entropy_with_logits(logits, pixels.expand_as(logits), reduction="none").sum(-1)
        std = self.decoder_std().reshape(-1)
        return (-0.5 * ((pixels - torch.sigmoid(logits)) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI).sum(-1)

    def _mlp_log_likelihood(self, pixels: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """log p(x|z), K×B, of the MLP decoder for K > 1 samples of each of the B images ``pixels`` (B×P), fused.

        For importance sampling, AIS and IWAE: the decoder runs on blocks of whole samples × all B images, so its
        activations stay small whatever K is. Full precision only: under autocast the K×B sums would be rounded to
        bf16, so :meth:`log_likelihood` takes the per-pixel path there.
        """
        k, b, d = z.shape
        labels = self._labels(y, k * b, z.dtype)
        samples_per_block = max(1, LOGIT_ROWS_PER_BLOCK // b)
        block_log_likelihood = self._block_log_likelihood(pixels)
        out = []
        for start in range(0, k, samples_per_block):
            inputs = z[start : start + samples_per_block].reshape(-1, d)
            if labels is not None:
                inputs = torch.cat([inputs, labels[start * b : start * b + inputs.shape[0]]], dim=1)
            out.append(block_log_likelihood(inputs).reshape(-1, b))
        return torch.cat(out)

    def _block_log_likelihood(self, pixels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """log p(x|z) of a block of decoder inputs in torch ops. For a Bernoulli decoder x·l is h·(Wᵀx) + c·x, one
        product per image against the last hidden layer, and only the softplus runs over the logits."""
        last = self.decoder[-1]
        images = pixels.shape[0]
        if self.likelihood == "gaussian":
            return lambda inputs: self.log_likelihood_from_logits(
                self.decoder(inputs).reshape(-1, images, last.out_features), pixels
            )
        pixels_weight, pixels_bias = pixels @ last.weight, pixels @ last.bias

        def block_log_likelihood(inputs: torch.Tensor) -> torch.Tensor:
            hidden = self.decoder[:-1](inputs)
            x_dot_logits = (hidden.reshape(-1, images, hidden.shape[-1]) * pixels_weight).sum(-1) + pixels_bias
            return x_dot_logits.flatten() - F.softplus(last(hidden)).sum(-1)

        return block_log_likelihood
