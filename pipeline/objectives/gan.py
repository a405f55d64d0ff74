"""Adversarial objectives of the GAN (§11.2), written on the discriminator's logits.

With D(x) = sigmoid(logit), the value function of Goodfellow et al. (2014) is
V(D, G) = E_x[log D(x)] + E_z[log(1 - D(g(z)))]; the discriminator maximizes it.

- ``minimax``: the generator minimizes E_z[log(1 - D(g(z)))] (the original objective; its gradient
  vanishes while D rejects the samples confidently).
- ``non_saturating``: the generator maximizes E_z[log D(g(z))] instead (same fixed point, strong early gradients).
- ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D minimizes E[relu(1 - l_real)] + E[relu(1 + l_fake)],
  G minimizes -E[l_fake].
- ``wgan_gp`` (Gulrajani et al. 2017): the logit is a critic f; f minimizes E[f(g(z))] - E[f(x)] plus
  lambda E[(||grad f(x_hat)||_2 - 1)^2] on random interpolates x_hat of real and generated images
  (:func:`gradient_penalty`), G minimizes -E[f(g(z))].

The R1 penalty (Mescheder et al. 2018), (gamma / 2) E_x[||grad D(x)||^2] on real images, can be added to the
discriminator's loss of any of them (:func:`r1_penalty`).

One-sided label smoothing (Salimans et al. 2016) replaces the real target 1 by 1 - s (fake targets stay 0).
Feature matching (Salimans et al. 2016) trains the generator to match the mean of the discriminator's
penultimate features on real data, ||E_x f(x) - E_z f(g(z))||^2, instead of fooling D directly.

InfoGAN (Chen et al. 2016) adds latent codes c to the generator's input and maximizes a variational lower bound
on the mutual information I(c; g(z, c)) through an auxiliary head Q(c|x) on the discriminator's features:
:func:`information_loss` is -E[log Q(c|g(z, c))] (the bound up to the constant entropy H(c)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSSES = ("minimax", "non_saturating", "hinge", "wgan_gp")


def _check(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown GAN loss {loss!r}; use one of {', '.join(LOSSES)}")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, loss: str = "non_saturating", label_smoothing: float = 0.0
) -> torch.Tensor:
    """The discriminator's loss (minimized), averaged over each batch."""
    _check(loss)
    if loss in ("hinge", "wgan_gp") and label_smoothing:
        raise ValueError(f"label smoothing applies to the minimax/non_saturating losses, not {loss}; set it to 0")
    if loss == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if loss == "wgan_gp":  # the penalty is added by the caller (it needs the critic itself)
        return fake_logits.mean() - real_logits.mean()
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
    return -fake_logits.mean()  # hinge and wgan_gp


def _input_gradient_norms(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """||d outputs_i / d inputs_i||_2 per example, differentiable (a graph is kept for the penalty's own gradient)."""
    (grad,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return grad.flatten(1).norm(dim=1)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, epsilon: torch.Tensor
) -> torch.Tensor:
    """E[(||grad critic(x_hat)||_2 - 1)^2] at x_hat = epsilon real + (1 - epsilon) fake (epsilon B×1×1×1 in [0, 1])."""
    x_hat = torch.lerp(fake.detach(), real.detach(), epsilon).requires_grad_(True)
    return (_input_gradient_norms(critic(x_hat), x_hat) - 1.0).pow(2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """E[||grad D(x)||^2] over real images ``real`` (which must require grad) from their logits; times gamma / 2."""
    return _input_gradient_norms(real_logits, real).pow(2).mean()


def information_loss(code_params: torch.Tensor, codes: torch.Tensor, categories: int) -> torch.Tensor:
    """-E[log Q(c|x)] for InfoGAN's codes ``codes`` B×(K + C): a one-hot category over K = ``categories`` (0: none)
    then C continuous values. ``code_params`` B×(K + C) holds Q's category logits, then the means of its factored
    Gaussian over the continuous codes, whose standard deviation is fixed at 1 (Chen et al. 2016, sec. 5, note that
    a factored Gaussian suffices). A learned deviation lets the continuous term grow without bound as it shrinks and
    drown the categorical one: on digits the category then stays at chance for hundreds of steps."""
    k = categories
    loss = code_params.new_zeros(())
    if k:
        loss = loss + F.cross_entropy(code_params[:, :k], codes[:, :k].argmax(1))
    if codes.shape[1] > k:
        squared = (codes[:, k:] - code_params[:, k:]).pow(2)
        loss = loss + (0.5 * squared + 0.5 * math.log(2 * math.pi)).sum(1).mean()
    return loss


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """||mean real features - mean generated features||^2 (real features are a fixed target)."""
    return (real_features.detach().mean(0) - fake_features.mean(0)).pow(2).sum()
