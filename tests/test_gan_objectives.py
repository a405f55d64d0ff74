"""The adversarial losses on hand-computed cases (logit log 3 means D = 0.75, -log 3 means D = 0.25)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.objectives.gan import (
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    gradient_penalty,
    information_loss,
    r1_penalty,
)

LOG3 = math.log(3.0)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("loss", ["minimax", "non_saturating"])
def test_discriminator_cross_entropy(loss: str) -> None:
    # -log D(x) - log(1 - D(g(z))) at D = 1/2 everywhere is 2 log 2
    assert discriminator_loss(t(0.0, 0.0), t(0.0), loss).item() == pytest.approx(2 * math.log(2))
    # D(x) = 0.75, D(g(z)) = 0.25: -log 0.75 - log 0.75
    assert discriminator_loss(t(LOG3), t(-LOG3), loss).item() == pytest.approx(-2 * math.log(0.75))


def test_one_sided_label_smoothing_changes_only_the_real_target() -> None:
    # target 0.9 for real: -(0.9 log 0.75 + 0.1 log 0.25); the fake term keeps target 0: -log 0.75
    expected = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25)) - math.log(0.75)
    assert discriminator_loss(t(LOG3), t(-LOG3), label_smoothing=0.1).item() == pytest.approx(expected)
    # the smoothed loss is minimal where D(x) = 0.9, i.e. at the real logit log 9, not at +infinity
    logit = torch.tensor([math.log(9.0)], dtype=torch.float64, requires_grad=True)
    discriminator_loss(logit, t(0.0), label_smoothing=0.1).backward()
    assert logit.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_generator_losses() -> None:
    fake = t(LOG3, LOG3)  # D(g(z)) = 0.75
    assert generator_loss(fake, "minimax").item() == pytest.approx(math.log(0.25))  # E log(1 - D)
    assert generator_loss(fake, "non_saturating").item() == pytest.approx(-math.log(0.75))  # -E log D
    assert generator_loss(t(0.5, -1.5), "hinge").item() == pytest.approx(0.5)  # -E logit


def test_non_saturating_keeps_its_gradient_where_minimax_vanishes() -> None:
    grads = {}
    for loss in ("minimax", "non_saturating"):
        logit = torch.tensor([-10.0], requires_grad=True)  # D confidently rejects the sample
        generator_loss(logit, loss).backward()
        grads[loss] = logit.grad.abs().item()
    assert grads["minimax"] < 1e-4 < 0.9 < grads["non_saturating"]


def test_hinge_discriminator_loss() -> None:
    assert discriminator_loss(t(0.5), t(-0.5), "hinge").item() == pytest.approx(1.0)
    assert discriminator_loss(t(2.0, 1.0), t(-3.0, -1.0), "hinge").item() == 0.0
    assert discriminator_loss(t(-1.0), t(1.0), "hinge").item() == pytest.approx(4.0)


def test_feature_matching_matches_batch_means_and_treats_real_features_as_fixed() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)  # mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]], requires_grad=True)  # mean (1, 1)
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(1.0 + 4.0)
    loss.backward()
    assert real.grad is None
    assert torch.allclose(fake.grad, torch.tensor([[-1.0, -2.0], [-1.0, -2.0]]))


def test_wasserstein_losses_are_critic_differences() -> None:
    assert discriminator_loss(t(3.0, 1.0), t(-1.0, 0.0), "wgan_gp").item() == pytest.approx(-0.5 - 2.0)
    assert generator_loss(t(-1.0, 0.0), "wgan_gp").item() == pytest.approx(0.5)


def linear_critic(w: torch.Tensor) -> object:
    return lambda images: images.flatten(1) @ w.flatten()


def test_gradient_penalty_of_a_linear_critic_is_its_slope_minus_one_squared() -> None:
    """f(x) = w.x has gradient w everywhere: the penalty is (||w|| - 1)^2 and its gradient 2 (||w|| - 1) w/||w||."""
    w = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64, requires_grad=True)  # ||w|| = 5
    real, fake = torch.rand(6, 1, 1, 2, dtype=torch.float64), torch.rand(6, 1, 1, 2, dtype=torch.float64)
    penalty = gradient_penalty(linear_critic(w), real, fake, torch.rand(6, 1, 1, 1, dtype=torch.float64))
    assert penalty.item() == pytest.approx(16.0)
    penalty.backward()
    assert torch.allclose(w.grad, 2 * 4.0 * w.detach() / 5.0)


def test_gradient_penalty_interpolates_between_real_and_fake() -> None:
    """A critic whose slope is |x|·c sees x_hat: epsilon 1 puts it on the real images, 0 on the generated ones."""
    real, fake = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), 0.5)
    critic = lambda images: images.flatten(1).pow(2).sum(1)  # noqa: E731 (gradient 2x)
    assert gradient_penalty(critic, real, fake, torch.ones(2, 1, 1, 1)).item() == pytest.approx((4.0 - 1) ** 2)
    assert gradient_penalty(critic, real, fake, torch.zeros(2, 1, 1, 1)).item() == pytest.approx(0.0)


def test_r1_penalty_is_the_squared_input_gradient_on_real_images() -> None:
    w = torch.tensor([[[1.0, 2.0, 2.0]]], requires_grad=True)  # ||w||^2 = 9
    real = torch.rand(5, 1, 1, 3, requires_grad=True)
    penalty = r1_penalty(linear_critic(w)(real), real)
    assert penalty.item() == pytest.approx(9.0)
    penalty.backward()
    assert torch.allclose(w.grad, 2 * w.detach())  # it trains the critic's slope down


def test_information_loss_is_the_negative_log_likelihood_of_the_codes_under_q() -> None:
    """-log Q(c|x) with Q = softmax over 3 categories and a unit-variance Gaussian over 2 continuous codes, by hand."""
    category_logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    mean = torch.tensor([[0.5, -0.5], [0.0, 0.0]])
    continuous = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    codes = torch.cat([torch.eye(3)[[0, 2]], continuous], dim=1)
    params = torch.cat([category_logits, mean], dim=1)
    ce = -(torch.log_softmax(category_logits, 1)[[0, 1], [0, 2]]).mean()
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    nll = torch.tensor([0.125 + 0.5 + 2 * half_log_2pi, 2 * half_log_2pi]).mean()
    assert information_loss(params, codes, 3).item() == pytest.approx((ce + nll).item(), rel=1e-6)
    assert information_loss(mean, continuous, 0).item() == pytest.approx(nll.item())
    assert information_loss(category_logits, codes[:, :3], 3).item() == pytest.approx(ce.item())


def test_bad_combinations_are_rejected() -> None:
    with pytest.raises(ValueError, match="label smoothing"):
        discriminator_loss(t(0.0), t(0.0), "hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="not wgan_gp"):
        discriminator_loss(t(0.0), t(0.0), "wgan_gp", label_smoothing=0.1)
    with pytest.raises(ValueError, match="unknown GAN loss 'wasserstein'"):
        generator_loss(t(0.0), "wasserstein")
