"""The VAE's training bounds: the ELBO (11.30) and the importance-weighted bound (Burda et al. 2015).

Both take any VAE family through its posterior q(z|x) (a map from noise), log p(z) and log p(x|z); the densities
are in ``pipeline/models/distributions.py``. Also KL warm-up and free bits, the images a VAE scores (dynamic
binarization, uniform dequantization) and bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.config import IwaeGradient
from pipeline.models.distributions import Posterior
from pipeline.models.vae import VAE
from pipeline.seeds import torch_generator


@dataclass
class BoundTerms:
    """Per-example terms of a bound (each B), and the scalar loss that training minimizes."""

    bound: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    loss: torch.Tensor
    mu: torch.Tensor


def _posterior_samples(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    generator: torch.Generator | None,
    full_precision: bool = False,
) -> tuple[Posterior, torch.Tensor, torch.Tensor]:
    """q(z|x), ``num_samples`` reparameterized draws z (11.37) and their log q(z|x); ``full_precision``: the noise,
    and so z, in at least float32 under bf16 autocast."""
    posterior = model.posterior(x, y)
    shape = (num_samples, posterior.mean.shape[0], model.latent_dim)
    dtype = torch.promote_types(posterior.mean.dtype, torch.float32) if full_precision else posterior.mean.dtype
    eps = torch.randn(shape, generator=generator, device=x.device, dtype=dtype)
    z, log_q = posterior.sample(eps)
    return posterior, z, log_q


def elbo(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_samples: int = 1,
    beta: float = 1.0,
    free_bits: float = 0.0,
    generator: torch.Generator | None = None,
) -> BoundTerms:
    """ELBO (11.30): an M-sample Monte Carlo reconstruction term (11.32-11.33) minus KL(q(z|x) || p(z)), analytic
    (11.36) where the family has it in closed form, else the M-sample estimate of E_q[log q(z|x) - log p(z)]
    (VampPrior, flows, two layers).

    ``bound`` is the true ELBO per example; ``loss`` is the batch mean of -(reconstruction - beta * KL),
    where with free bits each dimension's batch-averaged KL counts as at least ``free_bits`` nats.
    """
    posterior, z, log_q = _posterior_samples(model, x, y, num_samples, generator)
    reconstruction = model.log_likelihood(x, z, y).mean(0)
    if posterior.kl_per_dim is not None:
        kl = posterior.kl_per_dim.sum(-1)
        penalty = torch.clamp(posterior.kl_per_dim.mean(0), min=free_bits).sum() if free_bits > 0 else kl.mean()
    else:
        if free_bits > 0:
            raise ValueError("free bits need a closed-form KL: the standard normal prior without flows")
        kl = (log_q - model.log_prior(z)).mean(0)
        penalty = kl.mean()
    loss = -(reconstruction.mean() - beta * penalty)
    return BoundTerms(bound=reconstruction - kl, reconstruction=reconstruction, kl=kl, loss=loss, mu=posterior.mean)


def iwae_bound(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    k: int,
    num_samples: int = 1,
    beta: float = 1.0,
    gradient: IwaeGradient = "standard",
    generator: torch.Generator | None = None,
) -> BoundTerms:
    """Importance-weighted bound log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x) (Burda et al. 2015).

    Averaged over ``num_samples`` independent k-sample estimates; k = 1 is the ELBO with a sampled KL.
    ``loss`` uses weights p(x|z) (p(z) / q(z|x))^beta for the KL warm-up. ``gradient="dreg"`` gives ``loss`` the
    doubly reparameterized gradient for q (Tucker et al. 2018), see :func:`_doubly_reparameterize`; the bound's
    value and the gradient of p are those of ``standard``.
    """
    dreg = gradient == "dreg"
    posterior, z, log_q = _posterior_samples(model, x, y, num_samples * k, generator, full_precision=dreg)
    if dreg:
        if posterior.fixed_log_density is None:
            raise ValueError("the doubly reparameterized gradient needs a posterior without flows")
        # the value stays the sample's own log q (exact in the noise); only the gradient is the rescored density's
        # through z. Under bf16 a rescored value would be off by tenths of a nat (z and 1/sigma² rounded apart),
        # and z is drawn in float32 so that its gradient d log q / dz = -(z - mu) / sigma² is not off by ~10%.
        fixed = posterior.fixed_log_density(z)
        log_q = log_q.detach() + (fixed - fixed.detach())
    log_px = model.log_likelihood(x, z, y)
    log_prior_ratio = model.log_prior(z) - log_q
    batch = x.shape[0]

    def log_weights(weight: float) -> torch.Tensor:
        return (log_px + weight * log_prior_ratio).reshape(num_samples, k, batch)

    def bound_of(log_w: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(log_w, dim=1) - math.log(k)).mean(0)

    trained = log_weights(beta)
    bound = bound_of(trained) if beta == 1.0 else bound_of(log_weights(1.0))
    loss = -bound_of(trained).mean()
    if dreg and z.requires_grad:
        _doubly_reparameterize(z, trained.detach(), beta)
    kl = posterior.kl_per_dim.sum(-1) if posterior.kl_per_dim is not None else -log_prior_ratio.mean(0)
    return BoundTerms(bound=bound, reconstruction=log_px.mean(0), kl=kl, loss=loss, mu=posterior.mean)


def _doubly_reparameterize(z: torch.Tensor, log_w: torch.Tensor, beta: float) -> None:
    """Make the IWAE loss's gradient reaching q's parameters through z the doubly reparameterized one.

    With log q(z|x) scored at fixed parameters (``Posterior.fixed_log_density``), the loss's gradient through
    sample z_i is w~_i d(log w_i)/dz_i, w~ the normalized importance weights (``log_w``: num_samples×k×B); the
    score-function term it lacks, -beta sum_i w~_i d(log q(z_i))/d(phi), equals by reparameterization
    -beta sum_i w~_i (1 - w~_i) d(log w_i)/dz_i dz_i/d(phi) (Tucker et al. 2018, eq. 5-7). So the gradient at z_i is
    scaled by (1 - beta) + beta w~_i: w~_i² in all at beta = 1. Its expectation is the standard gradient's; its
    signal-to-noise ratio does not fade as k grows (Rainforth et al. 2018). The generative model's gradient is
    untouched: it does not pass through z.
    """
    weights = torch.softmax(log_w.float(), dim=1).reshape(-1, log_w.shape[-1], 1)
    scale = ((1.0 - beta) + beta * weights).to(z.dtype)
    z.register_hook(lambda grad: grad * scale)


def training_bound(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    iwae_k: int = 1,
    mc_samples: int = 1,
    beta: float = 1.0,
    free_bits: float = 0.0,
    iwae_gradient: IwaeGradient = "standard",
    generator: torch.Generator | None = None,
) -> BoundTerms:
    """The bound ``vae.iwae_k`` selects: the ELBO for k = 1, else the k-sample IWAE bound (with the gradient
    ``vae.iwae_gradient``)."""
    if iwae_k == 1:
        return elbo(model, x, y, num_samples=mc_samples, beta=beta, free_bits=free_bits, generator=generator)
    if free_bits > 0:
        raise ValueError("free bits apply to the ELBO only (iwae_k 1)")
    return iwae_bound(
        model, x, y, k=iwae_k, num_samples=mc_samples, beta=beta, gradient=iwae_gradient, generator=generator
    )


def kl_warmup_beta(step: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """KL weight rising linearly from 0 to 1 over ``warmup_epochs`` (1 throughout when it is 0)."""
    if warmup_epochs == 0:
        return 1.0
    return min(1.0, step / (warmup_epochs * steps_per_epoch))


def count_active_units(posterior_mean_variance: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose posterior mean varies across the data: Cov_x(E_q[z_d]) > threshold (Burda et al.)."""
    return int((posterior_mean_variance > threshold).sum().item())


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None, levels: int = 256) -> torch.Tensor:
    """Uniform dequantization of grey levels: x = k/(levels-1) becomes (k + u)/levels with u ~ U[0, 1)."""
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (k + u) / levels


def binarize_dynamically(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw of grey values in [0, 1] (dynamic binarization).

    A pixel is 1 when a uniform 16-bit integer u in [0, 65536) has u < 65536 x, so P(1) = ceil(65536 x) / 65536:
    x to within 2e-5, exact at 0 and 1. Four pixels share one 64-bit draw: 3x faster on CPU than ``torch.bernoulli``.
    """
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None, generator=generator)
    centred = bits.view(torch.int16)[:n].reshape(x.shape).to(x.dtype)  # u - 32768
    return (centred < x * 65536 - 32768).to(x.dtype)


def prepare_images(x: torch.Tensor, generator: torch.Generator, binarize: str, likelihood: str) -> torch.Tensor:
    """Images in [0, 1] as the VAE scores them: a fresh Bernoulli draw when ``binarize`` is "dynamic", uniform
    dequantization when ``likelihood`` is "gaussian" (so densities bound the discrete data), else unchanged."""
    if binarize == "dynamic":
        x = binarize_dynamically(x, generator)
    if likelihood == "gaussian":
        x = dequantize(x, generator)
    return x


def prepare_heldout(x: torch.Tensor, binarize: str, likelihood: str, seed: int, split: str) -> torch.Tensor:
    """Validation or test images with one fixed draw per split (the stream ``seed, "heldout", split``), the same
    in training, evaluation and every epoch, so numbers compare fairly."""
    return prepare_images(x, torch_generator(x.device, seed, "heldout", split), binarize, likelihood)


def discrete_log_likelihood(log_density: torch.Tensor, num_dims: int, levels: int = 256) -> torch.Tensor:
    """Lower bound on log P(discrete x) from a density on dequantized data in [0, 1]^D: subtract D log(levels)."""
    return log_density - num_dims * math.log(levels)


def bits_per_dim(log_likelihood: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """-log p(x) in nats converted to bits per dimension; pass a discrete log-likelihood for grey data."""
    return -log_likelihood / (num_dims * math.log(2))
