"""The variational autoencoder of §11.1 with one stochastic layer: prior N(0, I) or the VampPrior, Gaussian
q(z|x) (11.18), optionally refined by an inverse autoregressive flow, Bernoulli or Gaussian p(x|z).

Networks only; the bounds that train them live in ``pipeline/objectives/vae.py`` and the training procedure in
``pipeline/vae_trainer.py``. Four architectures adapt to any C×H×W: ``mlp`` (flattened pixels through
``hidden_sizes``), ``gated_mlp`` (the same with gated dense layers, as in the VampPrior code), ``conv`` (stride-2
convolutions with ``conv_channels``, mirrored by transposed convolutions) and ``resnet`` (the same with a residual
block after each). A conditional model (Fig. 11.2b) feeds the one-hot class label to both encoder and decoder.

Priors: ``standard_normal`` N(0, I), or ``vampprior``, the uniform mixture (1/M) Σ_m q(z|u_m) of the posteriors of
M learned pseudo-inputs u_m (Tomczak & Welling 2018). What the estimators use (``pipeline/models/base.py``):
``posterior(x)`` (the reparameterized q as a map from noise), ``log_prior(z)``, ``prior_from_noise(eps, u)`` and
``log_likelihood(x, z)``. The two-layer family in ``hvae.py`` extends this one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.base import check_labels, one_hot
from pipeline.models.distributions import (
    LOG_2PI,
    Posterior,
    gaussian_log_density,
    gaussian_mixture_log_density,
    gaussian_sample,
    kl_to_standard_normal,
    mixture_component_sample,
    standard_normal_log_density,
)
from pipeline.models.layers import InverseAutoregressiveFlow, ResidualBlock, dense_stack
from pipeline.vae_settings import DENSE_ARCHS, vae_settings_error

# Decoded rows the fused MLP log-likelihood holds at once (importance sampling, AIS, IWAE).
LOGIT_ROWS_PER_BLOCK = 2048
# The range the VampPrior code keeps its Gaussians' log-variances in (hardtanh): a unit can neither collapse to a
# point mass (a density without bound) nor explode. The hvae's conditional layers always use it, q(z|x) with
# ``clamp_logvar``.
LOGVAR_RANGE = (-6.0, 2.0)


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
    prior: str = "standard_normal"
    pseudo_inputs: int = 500
    flow_steps: int = 0
    flow_hidden: int = 256
    dropout: float = 0.0
    clamp_logvar: bool = False

    family: ClassVar[str] = "vae"

    def __post_init__(self) -> None:
        for name in ("image_shape", "hidden_sizes", "conv_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        error = vae_settings_error(self)
        if error:
            raise ValueError(error)
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood {self.likelihood!r} is not 'bernoulli' or 'gaussian'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"vae.dropout must be in [0, 1), got {self.dropout}")
        if self.prior == "vampprior" and self.pseudo_inputs < 1:
            raise ValueError("the vampprior needs at least one pseudo-input (vae.pseudo_inputs)")

    @property
    def gated(self) -> bool:
        return self.arch == "gated_mlp"

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def dense(self) -> bool:
        """An mlp architecture (flattened pixels through ``hidden_sizes``), not a convolutional one."""
        return self.arch in DENSE_ARCHS


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
    """p(z) N(0, I) or VampPrior, q(z|x) = N(mu(x), diag exp(logvar(x))) (11.18) [→ IAF], p(x|z) Bernoulli
    (11.1-11.3) or Gaussian (11.4).

    Shapes: ``x`` B×C×H×W in [0, 1], ``y`` B integer labels (conditional models only), ``z`` B×D or K×B×D.
    ``latent_dim`` is the size of the whole latent vector; ``top_dim`` that of the layer the encoder's Gaussian
    and the prior describe (the same here; the top layer in :class:`pipeline.models.hvae.HVAE`).
    """

    family = "vae"
    Config = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.image_shape, self.num_classes = config.image_shape, config.num_classes
        self.latent_dim, self.top_dim = self.latent_sizes(config)
        self.likelihood, self.arch = config.likelihood, config.arch
        self.gaussian_variance, self.gaussian_std = config.gaussian_variance, config.gaussian_std
        hidden_sizes, conv_channels, gaussian_std = config.hidden_sizes, config.conv_channels, config.gaussian_std
        c, h, w = self.image_shape
        n_labels = config.num_classes or 0
        self.context_dim = config.flow_hidden if config.flow_steps else 0
        head_size = 2 * self.top_dim + self.context_dim
        if config.dense:
            pixels = c * h * w
            hidden = list(hidden_sizes)
            if config.gated:
                self.encoder = dense_stack([pixels + n_labels, *hidden], True, True, config.dropout)
            else:  # the plain stack nested as in earlier checkpoints, its last ReLU (and dropout) after it
                last = [nn.ReLU(), nn.Dropout(config.dropout)] if config.dropout else [nn.ReLU()]
                self.encoder = nn.Sequential(
                    dense_stack([pixels + n_labels, *hidden], False, dropout=config.dropout), *last
                )
            self.feature_dim = hidden[-1]
            self.encoder_head = nn.Linear(hidden[-1], head_size)
            self.decoder = self._dense_decoder(config, pixels, n_labels)
        else:
            residual = config.arch == "resnet"
            channels = [c, *conv_channels]
            shapes = _conv_shapes(h, w, len(conv_channels))
            blocks: list[nn.Module] = []
            for n_in, n_out in zip(channels[:-1], channels[1:], strict=True):
                blocks += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), nn.ReLU()]
                blocks += [ResidualBlock(n_out), nn.ReLU()] if residual else []
            self.encoder = nn.Sequential(*blocks, nn.Flatten())
            self._bottom = (channels[-1], *shapes[-1])
            features = math.prod(self._bottom)
            self.feature_dim = features + n_labels
            self.encoder_head = nn.Linear(features + n_labels, head_size)
            up: list[nn.Module] = [nn.Linear(self.latent_dim + n_labels, features), nn.ReLU()]
            up.append(nn.Unflatten(1, self._bottom))
            for i in range(len(conv_channels), 0, -1):
                target_h, target_w = shapes[i - 1]
                source_h, source_w = shapes[i]
                pad = (target_h - 2 * source_h, target_w - 2 * source_w)
                up += [ResidualBlock(channels[i]), nn.ReLU()] if residual else []
                up.append(nn.ConvTranspose2d(channels[i], channels[i - 1], 4, stride=2, padding=1, output_padding=pad))
                if i > 1:
                    up.append(nn.ReLU())
            self.decoder = nn.Sequential(*up)
        if config.likelihood == "gaussian" and config.gaussian_variance == "learned":
            # per-pixel std = floor + softplus(raw), starting at twice the floor (softplus(raw) = floor)
            start = math.log(math.expm1(gaussian_std))
            self.decoder_std_raw = nn.Parameter(torch.full(self.image_shape, start))
        if config.flow_steps:
            self.flow = InverseAutoregressiveFlow(self.top_dim, self.context_dim, config.flow_hidden, config.flow_steps)
        if config.prior == "vampprior":
            # pseudo-inputs u_m = hardtanh(raw) in [0, 1], started near 0.05 as in the VampPrior code
            self.pseudo_inputs_raw = nn.Parameter(torch.randn(config.pseudo_inputs, *self.image_shape) * 0.01 + 0.05)

    def _dense_decoder(self, config: VAEConfig, pixels: int, n_labels: int) -> nn.Sequential:
        """p(x|z) of the mlp architectures: the latent vector (and label) through the hidden sizes reversed."""
        sizes = [self.latent_dim + n_labels, *reversed(config.hidden_sizes), pixels]
        return dense_stack(sizes, config.gated, dropout=config.dropout)

    @staticmethod
    def latent_sizes(config: VAEConfig) -> tuple[int, int]:
        """(size of the whole latent vector, size of the layer the encoder's Gaussian and the prior describe)."""
        return config.latent_dim, config.latent_dim

    def _labels(self, y: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        y = check_labels(y, self.num_classes, batch)
        return None if y is None else one_hot(y, self.num_classes, dtype)

    def _features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        labels = self._labels(y, x.shape[0], x.dtype)
        if self.config.dense:
            inputs = x.flatten(1)
            if labels is not None:
                inputs = torch.cat([inputs, labels], dim=1)
            return self.encoder(inputs)
        features = self.encoder(x)
        return features if labels is None else torch.cat([features, labels], dim=1)

    def _head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, logvar, flow context) of q(z|x); logvar in :data:`LOGVAR_RANGE` with ``clamp_logvar``, which also
        bounds the VampPrior's components q(z|u_m)."""
        out = self.encoder_head(features)
        d = self.top_dim
        logvar = out[:, d : 2 * d]
        if self.config.clamp_logvar:
            logvar = F.hardtanh(logvar, *LOGVAR_RANGE)
        return out[:, :d], logvar, out[:, 2 * d :]

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters (mu, logvar) of the encoder's Gaussian (11.18), each B×``top_dim`` (before any flow)."""
        mu, logvar, _ = self._head(self._features(x, y))
        return mu, logvar

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Posterior:
        """q(z|x): z0 = mu + sigma * eps, then the IAF steps if any (log q gains minus their log-determinants)."""
        mu, logvar, context = self._head(self._features(x, y))
        if self.config.flow_steps:

            def sample(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                z0, log_q0 = gaussian_sample(mu, logvar, eps)
                z, log_det = self.flow(z0, context)
                return z, log_q0 - log_det

            return Posterior(sample, mu)
        analytic = self.config.prior == "standard_normal"
        return Posterior(
            lambda eps: gaussian_sample(mu, logvar, eps),
            mu,
            kl_to_standard_normal(mu, logvar) if analytic else None,
            lambda z: gaussian_log_density(z, mu.detach(), logvar.detach()),
        )

    def pseudo_inputs(self) -> torch.Tensor:
        """The VampPrior's M pseudo-inputs, M×C×H×W in [0, 1]."""
        return F.hardtanh(self.pseudo_inputs_raw, 0.0, 1.0)

    def _top_prior_components(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(self.pseudo_inputs())

    def _top_log_prior(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.prior == "standard_normal":
            return standard_normal_log_density(z)
        return gaussian_mixture_log_density(z, *self._top_prior_components())

    def _top_from_noise(self, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.config.prior == "standard_normal":
            return eps
        return mixture_component_sample(*self._top_prior_components(), eps, u)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), K×B for z K×B×D: N(0, I), or the VampPrior (1/M) Σ_m q(z|u_m) (Tomczak & Welling, eq. 9)."""
        return self._top_log_prior(z)

    def prior_from_noise(self, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z ~ p(z) as a function of standard normal ``eps`` (…×D) and uniform ``u`` (…, picks a mixture component)."""
        return self._top_from_noise(eps, u)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z), n×D."""
        like = {"device": self.encoder_head.weight.device, "dtype": self.encoder_head.weight.dtype}
        eps = torch.randn(n, self.latent_dim, generator=generator, **like)
        return self.prior_from_noise(eps, torch.rand(n, generator=generator, **like))

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
        if self.config.dense and k > 1 and not torch.is_autocast_enabled(z.device.type):
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
