"""The VAE's bounds and densities against closed forms, torch.distributions and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from pipeline.models.distributions import (
    gaussian_log_density,
    gaussian_sample,
    kl_to_standard_normal,
    standard_normal_log_density,
)
from pipeline.models.vae import VAE, VAEConfig
from pipeline.objectives.vae import (
    bits_per_dim,
    count_active_units,
    dequantize,
    discrete_log_likelihood,
    elbo,
    iwae_bound,
    kl_warmup_beta,
    training_bound,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    eps = torch.randn((n, *mu.shape), generator=generator, dtype=mu.dtype)
    return gaussian_sample(mu, logvar, eps)[0]


def test_gaussian_log_densities_match_torch_distributions() -> None:
    g = _generator()
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z = torch.randn(5, 4, 3, generator=g)
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), expected)
    torch.testing.assert_close(standard_normal_log_density(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_analytic_kl_matches_monte_carlo_estimate() -> None:
    g = _generator(1)
    mu, logvar = (
        torch.randn(3, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 4, generator=g, dtype=torch.float64),
    )
    z = reparameterize(mu, logvar, 200_000, g)
    log_ratio = gaussian_log_density(z, mu, logvar) - standard_normal_log_density(z)
    estimate, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
    closed_form = kl_to_standard_normal(mu, logvar).sum(-1)
    assert torch.all((estimate - closed_form).abs() < 4 * stderr + 1e-3), (estimate, closed_form)
    assert torch.all(kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_reparameterized_samples_have_the_posterior_moments() -> None:
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(0.25)]])
    z = reparameterize(mu, logvar, 100_000, _generator(2))
    assert z.shape == (100_000, 1, 2)
    torch.testing.assert_close(z.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([[1.0, 0.5]]), atol=0.02, rtol=0)


@pytest.mark.parametrize("bias", [0.0, 60.0, -60.0])
def test_bernoulli_log_likelihood_matches_torch_distributions_even_at_saturated_logits(bias: float) -> None:
    torch.manual_seed(0)
    model = VAE(VAEConfig((1, 8, 8), 3, hidden_sizes=[16]))
    with torch.no_grad():
        model.decoder[-1].bias.fill_(bias)
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.5), generator=_generator(3))
    z = torch.randn(2, 6, 3, generator=_generator(4))
    logits = model.decode_logits(z.reshape(12, 3)).reshape(2, 6, 1, 8, 8)
    expected = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(2).sum(-1)
    got = model.log_likelihood(x, z)
    assert got.shape == (2, 6) and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variance", ["learned", "fixed"])
def test_gaussian_log_likelihood_matches_torch_distributions(variance: str) -> None:
    torch.manual_seed(0)
    model = VAE(
        VAEConfig((3, 4, 4), 2, hidden_sizes=[16], likelihood="gaussian", gaussian_variance=variance, gaussian_std=0.2)
    )
    x = torch.rand(5, 3, 4, 4, generator=_generator(5))
    z = torch.randn(3, 5, 2, generator=_generator(6))
    mean = model.decode_mean(z.reshape(15, 2)).reshape(3, 5, 3, 4, 4)
    expected = Normal(mean, model.decoder_std()).log_prob(x.expand_as(mean)).flatten(2).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, z), expected)


def test_learned_gaussian_std_cannot_fall_below_its_floor() -> None:
    model = VAE(VAEConfig((1, 4, 4), 2, hidden_sizes=[8], likelihood="gaussian", gaussian_std=0.05))
    torch.testing.assert_close(model.decoder_std(), torch.full((1, 4, 4), 0.1))
    with torch.no_grad():
        model.decoder_std_raw.fill_(-1e4)
    assert torch.all(model.decoder_std() >= 0.05)


def _untrained_model_and_data() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    model = VAE(VAEConfig((1, 8, 8), 4, hidden_sizes=[32]))
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3), generator=_generator(7))
    return model, x


@torch.no_grad()
def test_iwae_bound_is_above_the_elbo_and_increases_with_k() -> None:
    model, x = _untrained_model_and_data()
    g = _generator(8)
    bounds = [iwae_bound(model, x, k=k, num_samples=8, generator=g).bound.mean().item() for k in (1, 5, 50)]
    elbo_value = elbo(model, x, num_samples=8, generator=g).bound.mean().item()
    assert bounds[0] < bounds[1] < bounds[2], bounds
    assert elbo_value < bounds[1]


@torch.no_grad()
def test_iwae_with_one_sample_estimates_the_elbo() -> None:
    model, x = _untrained_model_and_data()
    g = _generator(9)
    one = iwae_bound(model, x, k=1, num_samples=4000, generator=g).bound
    reference = elbo(model, x, num_samples=4000, generator=g).bound
    assert (one.mean() - reference.mean()).abs() < 0.02
    torch.testing.assert_close(one, reference, atol=0.2, rtol=0)
    assert training_bound(model, x, iwae_k=1, generator=_generator(10)).bound.equal(
        elbo(model, x, generator=_generator(10)).bound
    )


def test_elbo_loss_applies_kl_weight_and_free_bits() -> None:
    model, x = _untrained_model_and_data()
    plain = elbo(model, x, generator=_generator(11))
    assert plain.loss.item() == pytest.approx(-plain.bound.mean().item(), rel=1e-6)
    no_kl = elbo(model, x, beta=0.0, generator=_generator(11))
    assert no_kl.loss.item() == pytest.approx(-plain.reconstruction.mean().item(), rel=1e-6)
    floor = elbo(model, x, free_bits=100.0, generator=_generator(11))
    assert floor.loss.item() == pytest.approx(-plain.reconstruction.mean().item() + 100.0 * 4, rel=1e-6)
    with pytest.raises(ValueError, match="free bits apply to the ELBO only"):
        training_bound(model, x, iwae_k=2, free_bits=0.5)


def test_kl_warmup_rises_linearly_to_one() -> None:
    assert [kl_warmup_beta(s, 10, 2) for s in (0, 5, 10, 20, 35)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert kl_warmup_beta(0, 10, 0) == 1.0


def test_dequantization_stays_within_each_grey_level_bin() -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255
    x = levels.repeat(50)
    noisy = dequantize(x, _generator(12))
    k = torch.round(x * 255)
    assert torch.all(noisy >= k / 256) and torch.all(noisy < (k + 1) / 256)
    assert noisy.std() > 0


def test_bits_per_dim_of_the_uniform_density_is_eight_bits() -> None:
    dims = 784
    discrete = discrete_log_likelihood(torch.tensor(0.0), dims)
    assert bits_per_dim(discrete, dims).item() == pytest.approx(8.0)
    assert bits_per_dim(-dims * math.log(2), dims) == pytest.approx(1.0)


def test_active_units_count_dimensions_whose_posterior_mean_varies() -> None:
    assert count_active_units(torch.tensor([0.5, 0.011, 0.009, 0.0])) == 2
