"""The hierarchical VAE with two stochastic layers of the VampPrior paper (Tomczak & Welling 2018, §3.2; compare
the two-layer model of Burda et al. 2015, App. C).

Generative model: z2 ~ p(z2) (N(0, I) or the VampPrior over q(z2|u_m)), z1 ~ p(z1|z2), x ~ p(x|z1, z2).
Inference model: z2 ~ q(z2|x), z1 ~ q(z1|x, z2). The latent vector is z = [z1, z2] (``latent_dim`` + ``top_latent_dim``
numbers), so the decoder, the likelihood, the estimators and the export treat it like any other VAE's; only the
posterior and the prior know the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.models.distributions import Posterior, gaussian_log_density, gaussian_sample
from pipeline.models.layers import dense_stack
from pipeline.models.vae import VAE, VAEConfig

# log-variances of the conditional layers are kept in [-6, 2], as in the VampPrior code, so a unit cannot collapse
# to a point mass (a density without bound) nor explode during training
LOGVAR_RANGE = (-6.0, 2.0)


@dataclass(frozen=True)
class HVAEConfig(VAEConfig):
    """A :class:`VAEConfig` plus the size of the top layer z2 (``latent_dim`` is the size of z1)."""

    top_latent_dim: int = 40

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flow_steps:
            raise ValueError("flows refine the one-layer vae only: set vae.flow_steps: 0 with vae.family: hvae")
        if self.num_classes is not None:
            raise ValueError("the two-layer hvae is unconditional: set vae.conditional: false")
        if self.top_latent_dim < 1:
            raise ValueError(f"vae.top_latent_dim must be at least 1, got {self.top_latent_dim}")


class HVAE(VAE):
    """Two stochastic layers; z = [z1, z2]. ``encode`` gives q(z2|x), the layer the prior describes."""

    family = "hvae"
    Config = HVAEConfig

    def __init__(self, config: HVAEConfig) -> None:
        super().__init__(config)
        hidden, d1 = config.hidden_sizes[-1], config.latent_dim
        self.lower_posterior = dense_stack(
            [self.feature_dim + self.top_dim, hidden, 2 * d1], config.gated, dropout=config.dropout
        )
        self.lower_prior = dense_stack([self.top_dim, hidden, 2 * d1], config.gated, dropout=config.dropout)

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

    def _lower_posterior(self, features: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z1|x, z2) for features B×F and z2 …×B×D2."""
        return self._gaussian(self.lower_posterior(torch.cat([features.expand(*z2.shape[:-1], -1), z2], dim=-1)))

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Posterior:
        """z2 = mu2(x) + sigma2(x) eps2, then z1 = mu1(x, z2) + sigma1(x, z2) eps1; log q(z2|x) + log q(z1|x, z2)."""
        features = self._features(x, y)
        mu2, logvar2, _ = self._head(features)

        def sample(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            eps1, eps2 = self._split(eps)
            z2, log_q2 = gaussian_sample(mu2, logvar2, eps2)
            z1, log_q1 = gaussian_sample(*self._lower_posterior(features, z2), eps1)
            return torch.cat([z1, z2], dim=-1), log_q1 + log_q2

        return Posterior(sample, torch.cat([self._lower_posterior(features, mu2)[0], mu2], dim=-1))

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
