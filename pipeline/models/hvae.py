"""The hierarchical VAE with two stochastic layers of the VampPrior paper (Tomczak & Welling 2018, §3.2; compare
the two-layer model of Burda et al. 2015, App. C).

Generative model: z2 ~ p(z2) (N(0, I) or the VampPrior over q(z2|u_m)), z1 ~ p(z1|z2), x ~ p(x|z1, z2).
Inference model: z2 ~ q(z2|x), z1 ~ q(z1|x, z2). As in the paper's code, q(z1|x, z2) reads x through a layer of its
own (not the features of q(z2|x)) and joins it with a layer on z2, and p(z1|z2) has two hidden layers. The decoder
reads z = [z1, z2] through one joint first layer, or (``decoder_input: per_layer``, the paper's code) through a layer
for each of z1 and z2 joined by the next one. The latent
vector is z = [z1, z2] (``latent_dim`` + ``top_latent_dim`` numbers), so the decoder, the likelihood, the estimators
and the export treat it like any other VAE's; only the posterior and the prior know the layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.distributions import Posterior, gaussian_log_density, gaussian_sample
from pipeline.models.layers import SplitDense, dense_stack, with_fixed_parameters
from pipeline.models.vae import LOGVAR_RANGE, VAE, VAEConfig


@dataclass(frozen=True)
class HVAEConfig(VAEConfig):
    """A :class:`VAEConfig` plus the size of the top layer z2 (``latent_dim`` is the size of z1) and how the
    decoder's first layer reads [z1, z2]: ``joint`` (one layer) or ``per_layer`` (one for each)."""

    top_latent_dim: int = 40
    decoder_input: str = "joint"

    family: ClassVar[str] = "hvae"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_latent_dim < 1:
            raise ValueError(f"vae.top_latent_dim must be at least 1, got {self.top_latent_dim}")


class HVAE(VAE):
    """Two stochastic layers; z = [z1, z2]. ``encode`` gives q(z2|x), the layer the prior describes."""

    family = "hvae"
    Config = HVAEConfig

    def __init__(self, config: HVAEConfig) -> None:
        super().__init__(config)
        hidden, d1, gated, dropout = config.hidden_sizes[-1], config.latent_dim, config.gated, config.dropout
        pixels = math.prod(config.image_shape)
        self.lower_posterior_x = dense_stack([pixels, hidden], gated, last_activation=True, dropout=dropout)
        self.lower_posterior_z2 = dense_stack([self.top_dim, hidden], gated, last_activation=True, dropout=dropout)
        self.lower_posterior = dense_stack([2 * hidden, hidden, 2 * d1], gated, dropout=dropout)
        self.lower_prior = dense_stack([self.top_dim, hidden, hidden, 2 * d1], gated, dropout=dropout)

    def _dense_decoder(self, config: HVAEConfig, pixels: int, n_labels: int) -> nn.Sequential:
        """``per_layer``: z1 and z2 each through a dense layer of its own, joined by the rest of the stack."""
        if config.decoder_input == "joint":
            return super()._dense_decoder(config, pixels, n_labels)
        first, *rest = reversed(config.hidden_sizes)
        d1 = self.latent_dim - self.top_dim
        return nn.Sequential(
            SplitDense([d1, self.top_dim], first, config.gated, config.dropout),
            *dense_stack([2 * first, *rest, pixels], config.gated, dropout=config.dropout),
        )

    @staticmethod
    def latent_sizes(config: HVAEConfig) -> tuple[int, int]:
        return config.latent_dim + config.top_latent_dim, config.top_latent_dim

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d1 = self.latent_dim - self.top_dim
        return z[..., :d1], z[..., d1:]

    @staticmethod
    def _gaussian(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = out.chunk(2, dim=-1)
        return mu, F.hardtanh(logvar, *LOGVAR_RANGE)

    def _lower_posterior(
        self, x_hidden: torch.Tensor, z2: torch.Tensor, fixed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z1|x, z2) for the x layer's output B×H and z2 …×B×D2; ``fixed``: with the layers' parameters as
        constants (:func:`with_fixed_parameters`)."""
        run = with_fixed_parameters if fixed else (lambda module, inputs: module(inputs))
        joint = torch.cat([x_hidden.expand(*z2.shape[:-1], -1), run(self.lower_posterior_z2, z2)], dim=-1)
        return self._gaussian(run(self.lower_posterior, joint))

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Posterior:
        """z2 = mu2(x) + sigma2(x) eps2, then z1 = mu1(x, z2) + sigma1(x, z2) eps1; log q(z2|x) + log q(z1|x, z2)."""
        mu2, logvar2, _ = self._head(self._features(x, y))
        x_hidden = self.lower_posterior_x(x.flatten(1))

        def sample(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            eps1, eps2 = self._split(eps)
            z2, log_q2 = gaussian_sample(mu2, logvar2, eps2)
            z1, log_q1 = gaussian_sample(*self._lower_posterior(x_hidden, z2), eps1)
            return torch.cat([z1, z2], dim=-1), log_q1 + log_q2

        def fixed_log_density(z: torch.Tensor) -> torch.Tensor:
            z1, z2 = self._split(z)
            lower = gaussian_log_density(z1, *self._lower_posterior(x_hidden.detach(), z2, fixed=True))
            return lower + gaussian_log_density(z2, mu2.detach(), logvar2.detach())

        mean = torch.cat([self._lower_posterior(x_hidden, mu2)[0], mu2], dim=-1)
        return Posterior(sample, mean, fixed_log_density=fixed_log_density)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z1, z2) = log p(z1|z2) + log p(z2)."""
        z1, z2 = self._split(z)
        return gaussian_log_density(z1, *self._gaussian(self.lower_prior(z2))) + self._top_log_prior(z2)

    def prior_from_noise(self, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Top-down: z2 from p(z2), then z1 = mu(z2) + sigma(z2) eps1."""
        eps1, eps2 = self._split(eps)
        z2 = self._top_from_noise(eps2, u)
        z1, _ = gaussian_sample(*self._gaussian(self.lower_prior(z2)), eps1)
        return torch.cat([z1, z2], dim=-1)
