"""The likelihood estimators against probabilistic PCA, whose log p(x), posterior and gap are exact.

PPCA: z ~ N(0, I), x = W z + b_y + sigma * noise. With orthogonal columns of W the posterior p(z|x) is a
diagonal Gaussian, so it is an AmortizedPosterior too, and KL(q || p(z|x)) of any diagonal q is exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.estimators import (
    NOISE_POINTS,
    NOISE_SAMPLES,
    GaussianObservationModel,
    ImportanceSampledLikelihood,
    _LogMeanExp,
    annealed_importance_sampling,
    importance_sampled_log_likelihood,
    label_marginal_ais,
    label_marginal_importance_sampling,
)
from pipeline.evaluation import choose_observation_sigma
from pipeline.models.distributions import Posterior, gaussian_sample, standard_normal_log_density

DATA_SHAPE = (1, 2, 3)
LATENT = 2


class PPCA(nn.Module):
    """x = W z + b_y + sigma * noise in float64; b_y depends on the label when ``num_classes`` is given."""

    def __init__(self, sigma: float = 0.5, num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dims = math.prod(DATA_SHAPE)
        q, _ = torch.linalg.qr(torch.randn(dims, LATENT, generator=g, dtype=torch.float64))
        self.weight = q * torch.tensor([2.0, 0.7], dtype=torch.float64)  # orthogonal columns
        self.offsets = torch.randn(num_classes or 1, dims, generator=g, dtype=torch.float64)
        self.sigma = sigma
        self.latent_dim = LATENT

    def _offset(self, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        return self.offsets[y] if y is not None else self.offsets[0].expand(batch, -1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The generator view g(z) = W z + b_y, B×C×H×W."""
        return (z @ self.weight.T + self._offset(y, z.shape[0])).reshape(-1, *DATA_SHAPE)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mean = z @ self.weight.T + self._offset(y, x.shape[0])
        dims = mean.shape[-1]
        squared = ((x.flatten(1) - mean) ** 2).sum(-1)
        return -0.5 * squared / self.sigma**2 - dims * (math.log(self.sigma) + 0.5 * math.log(2 * math.pi))

    def exact_log_marginal(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log N(x; b_y, W W^T + sigma² I) (11.5-11.6 in closed form)."""
        cov = self.weight @ self.weight.T + self.sigma**2 * torch.eye(self.weight.shape[0], dtype=torch.float64)
        mvn = torch.distributions.MultivariateNormal(self._offset(y, x.shape[0]), covariance_matrix=cov)
        return mvn.log_prob(x.flatten(1))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_density(z)

    def prior_from_noise(self, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return eps

    def exact_posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact p(z|x) = N(M^-1 W^T (x - b), sigma² M^-1), M = W^T W + sigma² I (diagonal here)."""
        m_diag = (self.weight**2).sum(0) + self.sigma**2
        mean = (x.flatten(1) - self._offset(y, x.shape[0])) @ self.weight / m_diag
        return mean, torch.log(self.sigma**2 / m_diag).expand_as(mean)

    def sample(self, n: int, seed: int, y: torch.Tensor | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
        noise = torch.randn(n, *DATA_SHAPE, generator=g, dtype=torch.float64)
        return self(z, y) + self.sigma * noise


class ExactPosterior:
    def __init__(self, model: PPCA) -> None:
        self.model = model

    def gaussian(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.exact_posterior(x, y)

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Posterior:
        mean, logvar = self.gaussian(x, y)
        return Posterior(lambda eps: gaussian_sample(mean, logvar, eps), mean)


class WrongPosterior(ExactPosterior):
    """A deliberately wrong q: shifted mean, twice the variance (still a usable proposal)."""

    def gaussian(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.model.exact_posterior(x, y)
        return mean + 0.15, logvar + math.log(2.0)


def kl_diagonal_gaussians(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


@pytest.fixture(scope="module")
def ppca() -> PPCA:
    return PPCA()


@pytest.fixture(scope="module")
def data(ppca: PPCA) -> torch.Tensor:
    return ppca.sample(40, seed=1)


def test_exact_posterior_gives_exact_log_likelihood_for_any_k(ppca, data):
    exact = ppca.exact_log_marginal(data)
    result = importance_sampled_log_likelihood(ppca, ExactPosterior(ppca), data, num_samples=50, curve_ks=[1, 10])
    # with q = p(z|x) every weight p(x, z) / q(z|x) equals p(x): no variance, no gap (11.21-11.25)
    torch.testing.assert_close(result.log_px, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(result.bounds[1], exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(result.elbo, exact, rtol=0, atol=1e-9)
    assert result.stderr.max() < 1e-6


def test_wrong_posterior_converges_within_stated_error_and_gap_is_the_kl(ppca, data):
    exact = ppca.exact_log_marginal(data)
    q = WrongPosterior(ppca)
    result = importance_sampled_log_likelihood(ppca, q, data, num_samples=2000, curve_ks=[1, 10, 100], seed=3)
    error = (result.log_px - exact).mean().item()
    stated = result.stderr.pow(2).mean().sqrt().item() / math.sqrt(len(data))
    assert abs(error) < 4 * stated + result.stderr.pow(2).mean().item(), (error, stated)
    # the gap log p(x) - ELBO is KL(q(z|x) || p(z|x)) (11.21-11.25), known exactly here
    kl = kl_diagonal_gaussians(*q.gaussian(data), *ppca.exact_posterior(data))
    assert kl.mean() > 0.05
    torch.testing.assert_close((exact - result.elbo).mean(), kl.mean(), rtol=0.05, atol=0.01)
    # the bound rises with K in expectation: each step up in K is positive to within 3 standard errors of the
    # paired per-point difference (beyond K = 100 the bound is flat to within the estimate's own noise)
    means = [result.bounds[k].mean().item() for k in (1, 10, 100, 2000)]
    assert means[0] < means[1], means
    for low, high in ((10, 100), (100, 2000)):
        rise = result.bounds[high] - result.bounds[low]
        assert rise.mean() > -3 * rise.std() / math.sqrt(len(rise)), (low, high, means)
    assert (result.elbo <= result.log_px + 1e-12).all()
    assert result.elbo.mean() < means[1]


def test_chunking_and_memory_budget_do_not_change_the_numbers():
    model = PPCA(num_classes=3)
    y = torch.arange(NOISE_POINTS * 2 + 5) % 3
    x = model.sample(len(y), seed=2, y=y)
    q = WrongPosterior(model)
    k = NOISE_SAMPLES + 44
    big = importance_sampled_log_likelihood(model, q, x, y, k, curve_ks=[1, 7, 300], memory_budget_mb=512)
    small = importance_sampled_log_likelihood(model, q, x, y, k, curve_ks=[1, 7, 300], memory_budget_mb=0.005)
    for a, b in [(big.log_px, small.log_px), (big.elbo, small.elbo), (big.stderr, small.stderr)]:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for key in (1, 7, 300, k):
        torch.testing.assert_close(big.bounds[key], small.bounds[key], rtol=1e-12, atol=1e-12)
    # the labels reach each point's likelihood: with the exact posterior the estimate is exact per point
    exact = importance_sampled_log_likelihood(model, ExactPosterior(model), x, y, 3, memory_budget_mb=0.005)
    torch.testing.assert_close(exact.log_px, model.exact_log_marginal(x, y), rtol=0, atol=1e-9)
    # a different seed gives different numbers
    other = importance_sampled_log_likelihood(model, q, x, y, k, seed=1)
    assert (other.log_px - big.log_px).abs().min() > 1e-9


def test_a_conditional_models_log_px_sums_over_the_classes():
    """p(x) = Σ_c p(c) N(x; b_c, W W^T + sigma² I), a mixture known in closed form: with the exact posterior of
    every class the combined estimate is exact, AIS reaches it within its error, and log p(x|y) is kept beside."""
    model = PPCA(num_classes=3, seed=4)
    class_log_prior = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    y = torch.arange(2 * NOISE_POINTS) % 3
    x = model.sample(len(y), seed=2, y=y)
    per_class_exact = torch.stack([model.exact_log_marginal(x, torch.full_like(y, c)) for c in range(3)])
    exact = torch.logsumexp(class_log_prior[:, None] + per_class_exact, 0)
    assert (exact - model.exact_log_marginal(x, y)).abs().min() > 1e-3  # the sum differs from p(x|y) p(y)

    def importance(posterior: ExactPosterior, num_samples: int, c: int):
        return importance_sampled_log_likelihood(
            model, posterior, x, torch.full_like(y, c), num_samples, curve_ks=[1, 10], seed=c
        )

    marginal, given = label_marginal_importance_sampling(
        [importance(ExactPosterior(model), 20, c) for c in range(3)], y, class_log_prior
    )
    torch.testing.assert_close(marginal.log_px, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(marginal.bounds[1], exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(given.log_px, model.exact_log_marginal(x, y), rtol=0, atol=1e-9)
    # the marginal's ELBO takes the best q(c|x) ∝ p(c) exp ELBO(x|c): with exact posteriors q(c, z|x) = p(c, z|x)
    torch.testing.assert_close(marginal.elbo, exact, rtol=0, atol=1e-9)
    assert marginal.stderr.max() < 1e-6

    wrong_runs = [importance(WrongPosterior(model), 2000, c) for c in range(3)]
    wrong, _ = label_marginal_importance_sampling(wrong_runs, y, class_log_prior)
    error = (wrong.log_px - exact).mean().item()
    stated = wrong.stderr.pow(2).mean().sqrt().item() / math.sqrt(len(x))
    assert stated > 0 and abs(error) < 4 * stated + wrong.stderr.pow(2).mean().item(), (error, stated)
    assert (wrong.elbo < wrong.log_px).all()
    relabelled, _ = label_marginal_importance_sampling(wrong_runs, (y + 1) % 3, class_log_prior)
    for a, b in ((relabelled.log_px, wrong.log_px), (relabelled.elbo, wrong.elbo), (relabelled.stderr, wrong.stderr)):
        assert torch.equal(a, b)  # the marginal does not depend on the labels

    # the stated standard error is the spread of the estimate over independent noise
    # the stated standard error is the spread of the estimate over independent noise, here where the classes
    # overlap and each carries a part of p(x) (with one class dominating, any mix of the classes' errors would do)
    close = PPCA(num_classes=3, seed=4)
    close.offsets = 0.05 * close.offsets
    x_close = close.sample(len(y), seed=2, y=y)

    def marginal_run(num_samples: int, seed: int) -> ImportanceSampledLikelihood:
        runs = [
            importance_sampled_log_likelihood(
                close, WrongPosterior(close), x_close, torch.full_like(y, c), num_samples, seed=seed + c
            )
            for c in range(3)
        ]
        return label_marginal_importance_sampling(runs, y, class_log_prior)[0]

    spread = torch.stack([marginal_run(50, 100 * s).log_px for s in range(40)]).std(0)
    ratio = (spread / marginal_run(50, 0).stderr).median().item()
    assert 0.75 < ratio < 1.33, ratio

    runs = [
        annealed_importance_sampling(model, x, torch.full_like(y, c), num_steps=100, num_chains=8, seed=c)
        for c in range(3)
    ]
    ais, ais_given = label_marginal_ais(runs, y, class_log_prior)
    error = (ais.log_px - exact).mean().item()
    assert abs(error) < 4 * ais.stderr.pow(2).mean().sqrt().item() / math.sqrt(len(x)) + 0.02, error
    assert ais.log_weights.shape == (len(x), 8)
    torch.testing.assert_close(
        ais_given.log_weights[:, 0], torch.stack([r.log_weights[:, 0] for r in runs])[y, range(len(y))]
    )


class Shifted(nn.Module):
    """A model whose log-likelihood is PPCA's minus a huge constant: every weight underflows in float32."""

    def __init__(self, model: PPCA, shift: float) -> None:
        super().__init__()
        self.model, self.shift, self.latent_dim = model, shift, model.latent_dim

    def log_likelihood(self, x, z, y=None):
        return self.model.log_likelihood(x, z, y) - self.shift

    def log_prior(self, z):
        return self.model.log_prior(z)


def test_float64_accumulation_survives_very_negative_log_weights(ppca, data):
    q = WrongPosterior(ppca)
    plain = importance_sampled_log_likelihood(ppca, q, data, num_samples=300)
    shifted = importance_sampled_log_likelihood(Shifted(ppca, 1e5), q, data, num_samples=300)
    torch.testing.assert_close(shifted.log_px + 1e5, plain.log_px, rtol=0, atol=1e-8)
    torch.testing.assert_close(shifted.stderr, plain.stderr, rtol=1e-6, atol=1e-10)
    # streamed in chunks == one float64 logsumexp, for weights spread over hundreds of nats
    log_w = torch.randn(1000, 5, dtype=torch.float64) * 200 - 1e6
    stream = _LogMeanExp(5, torch.device("cpu"))
    for part in log_w.split(7):
        stream.update(part)
    torch.testing.assert_close(stream.value(), torch.logsumexp(log_w, 0) - math.log(1000), rtol=0, atol=1e-9)


def test_annealed_importance_sampling_converges_to_exact_value(ppca, data):
    x = data[:NOISE_POINTS]
    exact = ppca.exact_log_marginal(x)
    result = annealed_importance_sampling(ppca, x, num_steps=200, num_chains=8, leapfrog_steps=5, seed=0)
    error = (result.log_px - exact).mean().item()
    stated = result.stderr.pow(2).mean().sqrt().item() / math.sqrt(len(x))
    assert abs(error) < 4 * stated < 0.3, (error, stated)
    assert result.acceptance > 0.4 and result.step_size > 0.1, result  # step sizes adapted upwards
    assert result.log_weights.shape == (len(x), 8)
    # one step is plain importance sampling from the prior: far worse than annealing on the same budget
    crude = annealed_importance_sampling(ppca, x, num_steps=1, num_chains=8, seed=0)
    assert (crude.log_px - exact).abs().mean() > 5 * abs(error)


def test_annealed_importance_weights_average_to_the_exact_likelihood():
    """The mean AIS weight estimates p(x) itself (not only its log in the limit): with few annealing steps the
    ratio mean(w) / p(x) over 1024 chains is 1 within its standard error, though each chain adapts its step size."""
    model = PPCA(sigma=0.2)
    x = model.sample(2 * NOISE_POINTS, seed=3)
    result = annealed_importance_sampling(model, x, num_steps=10, num_chains=1024, leapfrog_steps=2, seed=0)
    ratio = torch.exp(result.log_px - model.exact_log_marginal(x))
    stderr = (ratio * result.stderr).pow(2).mean().sqrt().item() / math.sqrt(len(x))
    assert abs(ratio.mean().item() - 1) < 4 * stderr < 0.15, (ratio.mean().item(), stderr)
    assert result.chain_spread.mean() > 0.5  # ten steps leave the chains far from the posterior: a real test


def test_gan_view_gaussian_observation_model_and_sigma_choice(ppca):
    y = None
    x = ppca.sample(64, seed=5)
    model = GaussianObservationModel(ppca, ppca.sigma)
    torch.testing.assert_close(
        model.log_likelihood(x, torch.zeros(3, 64, LATENT, dtype=torch.float64), y),
        ppca.log_likelihood(x, torch.zeros(3, 64, LATENT, dtype=torch.float64), y),
    )
    ais = annealed_importance_sampling(model, x[:NOISE_POINTS], num_steps=100, num_chains=4, seed=1)
    error = (ais.log_px - ppca.exact_log_marginal(x[:NOISE_POINTS])).mean().item()
    assert abs(error) < 4 * ais.stderr.pow(2).mean().sqrt().item() / 4 + 0.02
    choice = choose_observation_sigma(ppca, x, [0.125, 0.5, 2.0], num_samples=2000)
    assert choice.sigma == 0.5, choice.log_px
    ais_choice = choose_observation_sigma(ppca, x[:NOISE_POINTS], [0.125, 0.5, 2.0], method="ais", ais_steps=30)
    assert ais_choice.sigma == 0.5, ais_choice.log_px


def test_bad_inputs_are_refused_with_a_clear_message(ppca, data):
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        importance_sampled_log_likelihood(ppca, ExactPosterior(ppca), data, num_samples=0)
    with pytest.raises(ValueError, match="labels for 40 data points"):
        importance_sampled_log_likelihood(ppca, ExactPosterior(ppca), data, torch.zeros(3, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="sigma must be positive"):
        GaussianObservationModel(ppca, 0.0)


def test_gaussian_observation_model_wraps_the_projects_conditional_generator():
    from pipeline.config import Config, GanParams
    from pipeline.gan_trainer import build_generator

    torch.manual_seed(0)
    config = Config(latent_dim=3, gan=GanParams(hidden_sizes=[16], conditional=True))
    generator = build_generator(config, (1, 4, 4), 3).eval()
    y = torch.arange(NOISE_POINTS) % 3
    x = torch.rand(NOISE_POINTS, 1, 4, 4)
    model = GaussianObservationModel(generator, 0.2)
    z = torch.randn(5, NOISE_POINTS, 3)
    expected = torch.stack([
        torch.distributions.Normal(generator(z[i], y), 0.2).log_prob(x).flatten(1).sum(-1) for i in range(5)
    ])  # fmt: skip
    torch.testing.assert_close(model.log_likelihood(x, z, y), expected)
    ais = annealed_importance_sampling(model, x, y, num_steps=10, num_chains=2)
    assert torch.isfinite(ais.log_px).all() and ais.acceptance > 0
    choice = choose_observation_sigma(generator, x, [0.01, 0.3, 10.0], y, num_samples=50)
    assert choice.sigma == 0.3 and set(choice.log_px) == {0.01, 0.3, 10.0}
