"""Densities every VAE family uses: diagonal Gaussians, the standard normal prior, mixtures of Gaussians (the
VampPrior), and the reparameterized Gaussian posterior as a map from noise.

All densities sum over the last axis and broadcast over leading sample axes (K×B×D → K×B).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dimension (z may carry extra leading sample dims)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per latent dimension, B×D, in closed form (11.36)."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar)


def gaussian_mixture_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log (1/M) Σ_m N(z; mu_m, diag exp(logvar_m)) for components ``mu``, ``logvar`` M×D; z …×D → ….

    The quadratic form is expanded into matrix products, Σ_d z²/σ² - 2 z·(μ/σ²) + Σ_d μ²/σ², so the cost is two
    (rows × D) @ (D × M) products instead of a rows × M × D tensor: with K = 5000 importance samples this keeps the
    VampPrior's 500 components a few percent of the decoder's cost. The expansion cancels terms of size z²/σ², so it
    runs in (at least) float32 whatever autocast is on: in bf16 its error is nats, and the logsumexp over components
    turns that noise into an optimistic bias which training learns to exploit.
    """
    dtype = torch.promote_types(torch.promote_types(z.dtype, mu.dtype), torch.float32)
    with torch.autocast(z.device.type, enabled=False):
        return _mixture_log_density(z.to(dtype), mu.to(dtype), logvar.to(dtype))


def _mixture_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    precision = torch.exp(-logvar)  # M×D
    flat = z.reshape(-1, z.shape[-1])
    quadratic = (flat**2) @ precision.T - 2 * flat @ (mu * precision).T + (mu**2 * precision).sum(-1)
    log_components = -0.5 * (quadratic + logvar.sum(-1) + z.shape[-1] * LOG_2PI)
    return (_logsumexp_floored(log_components) - math.log(mu.shape[0])).reshape(z.shape[:-1])


def _logsumexp_floored(values: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dimension with the terms below e^-80 of the largest set to e^-80.

    A trained VampPrior's far components lie hundreds of nats below the near ones, and exp of anything below -87
    underflows to float32 denormals through a slow path (30x slower: 8 ms of a 43 ms training step of the
    hvae_vampprior_iwae recipe, forward and backward). Relative to the largest term (1), e^-80 is far below float32
    resolution even summed over thousands of components, so the floor changes no digit of the result; the floored
    terms get no gradient, where theirs was as negligible.
    """
    top = values.amax(dim=-1, keepdim=True).detach()
    return top.squeeze(-1) + (values - top).clamp(min=-80.0).exp().sum(-1).log()


@dataclass
class Posterior:
    """q(z|x) of a batch of B points as a map from standard normal noise (the reparameterization, 11.37).

    ``sample(eps)``: noise K×B×D → (z K×B×D, log q(z|x) K×B); ``mean``: a B×D summary of the posterior (its base
    Gaussian's mean), for reconstructions and active units; ``kl_per_dim``: KL(q || p(z)) per dimension (B×D) where
    it has a closed form (11.36), else None (the bounds then estimate it from the samples);
    ``fixed_log_density(z)``: log q(z|x) as a function of z alone, q's parameters held constant (no gradient
    reaches them), for the doubly reparameterized gradient; None where z cannot be scored so (a flow's inverse).
    """

    sample: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    mean: torch.Tensor
    kl_per_dim: torch.Tensor | None = None
    fixed_log_density: Callable[[torch.Tensor], torch.Tensor] | None = None


def gaussian_sample(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z = mu + sigma * eps (11.37) and log N(z; mu, sigma²), written on eps so that (z - mu) / sigma is exact."""
    z = mu + torch.exp(0.5 * logvar) * eps
    return z, -0.5 * (LOG_2PI + eps**2).sum(-1) - 0.5 * logvar.sum(-1)


def mixture_component_sample(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Draws from the uniform mixture of N(mu_m, diag exp(logvar_m)) (M×D): component floor(u M) for uniform u
    (K×B), then mu + sigma * eps (K×B×D)."""
    m = (u * mu.shape[0]).long().clamp(max=mu.shape[0] - 1)
    return mu[m] + torch.exp(0.5 * logvar[m]) * eps
