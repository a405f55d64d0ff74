"""Adversarial objectives of the GAN (§11.2), written on the discriminator's logits.

With D(x) = sigmoid(logit), the value function of Goodfellow et al. (2014) is
V(D, G) = E_x[log D(x)] + E_z[log(1 - D(g(z)))]; the discriminator maximizes it.

- ``minimax``: the generator minimizes E_z[log(1 - D(g(z)))] (the original objective; its gradient
  vanishes while D rejects the samples confidently).
- ``non_saturating``: the generator maximizes E_z[log D(g(z))] instead (same fixed point, strong early gradients).
- ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D minimizes E[relu(1 - l_real)] + E[relu(1 + l_fake)],
  G minimizes -E[l_fake].

One-sided label smoothing (Salimans et al. 2016) replaces the real target 1 by 1 - s (fake targets stay 0).
Feature matching (Salimans et al. 2016) trains the generator to match the mean of the discriminator's
penultimate features on real data, ||E_x f(x) - E_z f(g(z))||^2, instead of fooling D directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("minimax", "non_saturating", "hinge")


def _check(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown GAN loss {loss!r}; use one of {', '.join(LOSSES)}")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, loss: str = "non_saturating", label_smoothing: float = 0.0
) -> torch.Tensor:
    """The discriminator's loss (minimized), averaged over each batch."""
    _check(loss)
    if loss == "hinge":
        if label_smoothing:
            raise ValueError("label smoothing applies to the minimax/non_saturating losses, not hinge; set it to 0")
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    # -[t log D(x) + (1 - t) log(1 - D(x))] - log(1 - D(g(z))), with log D = -softplus(-l), log(1 - D) = -softplus(l)
    real_target = 1.0 - label_smoothing
    real = real_target * F.softplus(-real_logits) + (1.0 - real_target) * F.softplus(real_logits)
    return real.mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, loss: str = "non_saturating") -> torch.Tensor:
    """The generator's adversarial loss (minimized), averaged over the batch."""
    _check(loss)
    if loss == "minimax":
        return -F.softplus(fake_logits).mean()  # E log(1 - D(g(z)))
    if loss == "non_saturating":
        return F.softplus(-fake_logits).mean()  # -E log D(g(z))
    return -fake_logits.mean()


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """||mean real features - mean generated features||^2 (real features are a fixed target)."""
    return (real_features.detach().mean(0) - fake_features.mean(0)).pow(2).sum()
