"""Marginal log-likelihood log p(x) = log ∫ p(x|z) p(z) dz (11.5-11.6) of latent-variable models.

Two estimators, both written against the protocols of ``pipeline/models/base.py``:

- :func:`importance_sampled_log_likelihood`: log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x)
  (the IWAE estimator, Burda et al. 2015). It is a stochastic lower bound that rises to log p(x) as K grows;
  the mean log weight is the ELBO (11.20), and the difference estimates the gap KL(q(z|x) || p(z|x)) (11.21-11.25).
- :func:`annealed_importance_sampling`: AIS from the prior p(z) to the posterior p(z|x) ∝ p(z) p(x|z) along the
  geometric path p(z) p(x|z)^β with HMC transitions (Neal 2001; Wu et al. 2017). It needs no encoder, so it
  also measures GAN generators through :class:`GaussianObservationModel`.

Both stream over chunks of points and samples sized by a memory budget, accumulate in float64, and draw
their noise in fixed tiles of (``NOISE_SAMPLES`` samples × ``NOISE_POINTS`` points) from generators seeded by
(seed, tile), so the numbers depend on the seed only, never on the budget or chunking; importance sampling also
splits its points across torchrun's ranks. With them, the observation model that makes a generator a density model
and the prior as a proposal. The procedures that apply them to trained models and data are in
``pipeline/evaluation.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.distributed import DistContext, gather_objects
from pipeline.models.base import AmortizedPosterior, LatentVariableModel
from pipeline.models.distributions import LOG_2PI, Posterior, gaussian_sample, standard_normal_log_density
from pipeline.seeds import stream_seed

NOISE_POINTS = 16  # points per noise tile: chunks over points are multiples of this
NOISE_SAMPLES = 256  # samples per noise tile
# float32 numbers alive per decoded (sample, point) row, in units of the data size: the decoder's output and
# the temporaries of its log-density. Rows per chunk = budget / (4 bytes * this * data size + latent terms).
ACTIVATIONS_PER_ROW = 8
# On CPU bigger chunks fall out of cache, smaller ones pay more thread synchronization (costly on shared
# cores); GPUs use the whole budget.
CPU_ROWS_PER_CHUNK = 8192


@dataclass
class ImportanceSampledLikelihood:
    """Per-point results (float64, on the CPU) of :func:`importance_sampled_log_likelihood`.

    ``log_px``: the K-sample estimate of log p(x); ``stderr``: its standard error per point (delta method over
    the K weights); ``elbo``: the mean log weight, an estimate of the ELBO (11.20); ``bounds``: k -> the IWAE
    bound from the first k of the same samples (the convergence curve).
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    elbo: torch.Tensor
    bounds: dict[int, torch.Tensor]
    num_samples: int


@dataclass
class AnnealedImportanceSampling:
    """Per-point results (float64, on the CPU) of :func:`annealed_importance_sampling`.

    ``log_px``: log of the mean AIS weight over chains; ``stderr``: its standard error per point (delta method);
    ``log_weights``: B×C log weights; ``chain_spread``: standard deviation of the log weights across chains;
    ``acceptance``: mean HMC acceptance rate; ``step_size``: mean final step size.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    log_weights: torch.Tensor
    chain_spread: torch.Tensor
    acceptance: float
    step_size: float


class _LogMeanExp:
    """Streaming log (1/n) Σ exp(w) over sample chunks per point: running max and rescaled sums, in float64."""

    def __init__(self, points: int, device: torch.device) -> None:
        self.max = torch.full((points,), -math.inf, dtype=torch.float64, device=device)
        self.sum = torch.zeros(points, dtype=torch.float64, device=device)  # Σ exp(w - max)
        self.sum_sq = torch.zeros(points, dtype=torch.float64, device=device)  # Σ exp(2 (w - max))
        self.sum_log = torch.zeros(points, dtype=torch.float64, device=device)  # Σ w
        self.count = 0

    def _merged(self, log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new_max = torch.maximum(self.max, log_w.max(0).values)
        scale = torch.exp(self.max - new_max).nan_to_num(0.0)  # 0 while nothing was seen (max = -inf)
        shifted = log_w - new_max
        total = self.sum * scale + torch.exp(shifted).sum(0)
        total_sq = self.sum_sq * scale**2 + torch.exp(2 * shifted).sum(0)
        return new_max, total, total_sq

    def peek(self, log_w: torch.Tensor) -> torch.Tensor:
        """log mean exp over everything seen plus ``log_w`` (n×B), without keeping ``log_w``."""
        new_max, total, _ = self._merged(log_w)
        return torch.log(total) + new_max - math.log(self.count + log_w.shape[0])

    def update(self, log_w: torch.Tensor) -> None:
        self.max, self.sum, self.sum_sq = self._merged(log_w)
        self.sum_log += log_w.sum(0)
        self.count += log_w.shape[0]

    def value(self) -> torch.Tensor:
        return torch.log(self.sum) + self.max - math.log(self.count)

    def stderr(self) -> torch.Tensor:
        """Delta-method standard error of the log of the mean weight: std(w) / (sqrt(n) mean(w))."""
        n = self.count
        mean, mean_sq = self.sum / n, self.sum_sq / n
        variance = (mean_sq - mean**2).clamp(min=0.0) * n / max(n - 1, 1)
        return torch.sqrt(variance / n) / mean


class _TileNoise:
    """Standard normal noise in tiles of NOISE_SAMPLES × NOISE_POINTS × ``shape``, one generator per point tile.

    The draws for point i come from generator (seed, i // NOISE_POINTS) in a fixed sequence of tiles, so
    they do not depend on how the caller chunks points (multiples of NOISE_POINTS) or samples.
    """

    def __init__(self, seed: int, first_point: int, points: int, device: torch.device, dtype: torch.dtype) -> None:
        tiles = range(first_point // NOISE_POINTS, math.ceil((first_point + points) / NOISE_POINTS))
        self.generators = [
            torch.Generator(device=device).manual_seed(stream_seed(seed, "tile", tile)) for tile in tiles
        ]
        self.points, self.device, self.dtype = points, device, dtype

    def draw(self, *shape: int) -> torch.Tensor:
        """A tensor ``shape[0]`` × points × ``shape[1:]`` (the sample axis first)."""
        parts = [
            torch.randn((shape[0], NOISE_POINTS, *shape[1:]), generator=g, device=self.device, dtype=self.dtype)
            for g in self.generators
        ]
        return torch.cat(parts, dim=1)[:, : self.points]

    def draw_uniform(self, n: int) -> torch.Tensor:
        """Uniform [0, 1) numbers, n × points."""
        parts = [
            torch.rand((n, NOISE_POINTS), generator=g, device=self.device, dtype=self.dtype) for g in self.generators
        ]
        return torch.cat(parts, dim=1)[:, : self.points]


def _accumulator_device(device: torch.device) -> torch.device:
    """Where float64 sums live: the data's device, or the CPU for Apple MPS (which has no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


def _rows_per_chunk(x: torch.Tensor, latent_dim: int, memory_budget_mb: float, activation_factor: int = 1) -> int:
    """Decoded (sample, point) rows that fit the memory budget (and, on CPU, the cache-friendly size)."""
    bytes_per_row = 4 * (ACTIVATIONS_PER_ROW * x[0].numel() + 8 * latent_dim) * activation_factor
    rows = max(1, int(memory_budget_mb * 2**20) // bytes_per_row)
    return min(rows, CPU_ROWS_PER_CHUNK) if x.device.type == "cpu" else rows


def _point_chunks(num_points: int, points_per_chunk: int) -> Iterator[slice]:
    for start in range(0, num_points, points_per_chunk):
        yield slice(start, min(start + points_per_chunk, num_points))


def _check_inputs(x: torch.Tensor, y: torch.Tensor | None, count: int, what: str) -> None:
    if count < 1:
        raise ValueError(f"{what} must be at least 1, got {count}")
    if x.shape[0] == 0:
        raise ValueError("no data points to evaluate (x is empty)")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} data points; pass one label per point")


@torch.no_grad()
def importance_sampled_log_likelihood(
    model: LatentVariableModel,
    posterior: AmortizedPosterior,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    curve_ks: Sequence[int] = (),
    *,
    seed: int = 0,
    memory_budget_mb: float = 512,
    progress: bool = False,
    first_point: int = 0,
) -> ImportanceSampledLikelihood:
    """Importance-sampled log p(x) (11.5-11.6) with the proposal q(z|x) of ``posterior`` (all its layers and flows).

    log p(x) ≈ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K, z_k = the posterior's map of eps_k.
    Its expectation is the K-sample IWAE bound, which never decreases in K and tends to log p(x); K = 1 gives
    the ELBO, whose distance to log p(x) is KL(q(z|x) || p(z|x)) (11.21-11.25). The encoder runs once per point;
    the decoder runs on chunks of (samples × points) rows sized by ``memory_budget_mb``; the logsumexp is
    accumulated in float64 with a running max, so any K fits and very negative log weights do not underflow.
    ``curve_ks``: extra K values whose bounds come from the first k of the same samples. ``first_point``: the
    index of ``x[0]`` in a larger set (a multiple of NOISE_POINTS), so a shard draws the same noise as the whole.
    """
    _check_inputs(x, y, num_samples, "num_samples")
    if first_point % NOISE_POINTS:
        raise ValueError(f"first_point must be a multiple of {NOISE_POINTS}, got {first_point}")
    ks = sorted({k for k in curve_ks if k <= num_samples} | {num_samples})
    num_points, latent_dim = x.shape[0], model.latent_dim
    rows = _rows_per_chunk(x, latent_dim, memory_budget_mb)
    tile_samples = min(num_samples, NOISE_SAMPLES)
    points_per_chunk = NOISE_POINTS * max(1, rows // (NOISE_POINTS * tile_samples))
    samples_per_call = max(1, min(tile_samples, rows // min(points_per_chunk, num_points)))
    log_px, stderr, elbo = [], [], []
    bounds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    bar = tqdm(
        total=num_points * num_samples, desc="importance sampling", unit="z", unit_scale=True, disable=not progress
    )
    for chunk in _point_chunks(num_points, points_per_chunk):
        x_c = x[chunk]
        y_c = None if y is None else y[chunk]
        q = posterior.posterior(x_c, y_c)
        noise = _TileNoise(seed, first_point + chunk.start, x_c.shape[0], x.device, q.mean.dtype)
        stream = _LogMeanExp(x_c.shape[0], _accumulator_device(x.device))
        for tile_start in range(0, num_samples, NOISE_SAMPLES):
            eps_tile = noise.draw(NOISE_SAMPLES, latent_dim)[: num_samples - tile_start]
            for start in range(0, eps_tile.shape[0], samples_per_call):
                z, log_q = q.sample(eps_tile[start : start + samples_per_call])
                log_w = model.log_likelihood(x_c, z, y_c) + model.log_prior(z) - log_q
                log_w = log_w.to(stream.sum.device, torch.float64)
                seen = stream.count
                for k in ks:
                    if seen < k < seen + log_w.shape[0]:
                        bounds[k].append(stream.peek(log_w[: k - seen]).cpu())
                stream.update(log_w)
                if stream.count in bounds:
                    bounds[stream.count].append(stream.value().cpu())
                bar.update(log_w.numel())
        log_px.append(stream.value().cpu())
        stderr.append(stream.stderr().cpu())
        elbo.append((stream.sum_log / stream.count).cpu())
    bar.close()
    return ImportanceSampledLikelihood(
        log_px=torch.cat(log_px),
        stderr=torch.cat(stderr),
        elbo=torch.cat(elbo),
        bounds={k: torch.cat(v) for k, v in bounds.items()},
        num_samples=num_samples,
    )


def sharded_importance_sampled_log_likelihood(
    model: LatentVariableModel,
    posterior: AmortizedPosterior,
    x: torch.Tensor,
    y: torch.Tensor | None,
    ctx: DistContext,
    **kwargs: Any,
) -> ImportanceSampledLikelihood:
    """:func:`importance_sampled_log_likelihood` with the points split across the ranks of ``ctx``.

    Each rank takes a contiguous block aligned to the noise tiles and the per-point results are gathered on every
    rank, so the numbers are the same as one process computing all points.
    """
    if not ctx.distributed:
        return importance_sampled_log_likelihood(model, posterior, x, y, **kwargs)
    tiles = math.ceil(x.shape[0] / NOISE_POINTS)
    per_rank = math.ceil(tiles / ctx.world_size) * NOISE_POINTS
    block = slice(min(ctx.rank * per_rank, x.shape[0]), min((ctx.rank + 1) * per_rank, x.shape[0]))
    part = None
    if block.stop > block.start:
        part = importance_sampled_log_likelihood(
            model, posterior, x[block], None if y is None else y[block], first_point=block.start, **kwargs
        )
    parts = [p for p in gather_objects(part, ctx) if p is not None]
    return ImportanceSampledLikelihood(
        log_px=torch.cat([p.log_px for p in parts]),
        stderr=torch.cat([p.stderr for p in parts]),
        elbo=torch.cat([p.elbo for p in parts]),
        bounds={k: torch.cat([p.bounds[k] for p in parts]) for k in parts[0].bounds},
        num_samples=parts[0].num_samples,
    )


def sigmoid_schedule(num_steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures 0 = β_0 < ... < β_T = 1 spaced by a sigmoid (Grosse et al. 2015; Wu et al. 2017)."""
    if num_steps == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.sigmoid(torch.linspace(-sharpness, sharpness, num_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def _densities_and_grads(
    model: LatentVariableModel, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x|z) and log p(z) (C×B each) and their gradients in z (C×B×D each)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_lik, log_prior = model.log_likelihood(x, z, y), model.log_prior(z)
        (grad_lik,) = torch.autograd.grad(log_lik.sum(), z, retain_graph=True)
        (grad_prior,) = torch.autograd.grad(log_prior.sum(), z)
    return log_lik.detach(), log_prior.detach(), grad_lik, grad_prior


def annealed_importance_sampling(
    model: LatentVariableModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_steps: int = 200,
    num_chains: int = 8,
    leapfrog_steps: int = 5,
    *,
    seed: int = 0,
    initial_step_size: float = 0.1,
    target_acceptance: float = 0.65,
    memory_budget_mb: float = 512,
    progress: bool = False,
) -> AnnealedImportanceSampling:
    """AIS estimate of log p(x) from the prior to p(z|x) ∝ p(z) p(x|z) (Neal 2001; Wu et al. 2017).

    Intermediate targets f_t(z) = p(z) p(x|z)^β_t on a sigmoid schedule of ``num_steps`` steps; each chain's
    log weight gains (β_t - β_{t-1}) log p(x|z_{t-1}), then one HMC transition (``leapfrog_steps`` leapfrog
    steps, Metropolis correction) leaves f_t invariant. Each chain adapts its own step size towards
    ``target_acceptance`` (as Wu et al. 2017 do). With fixed step sizes the mean weight over chains would be exactly
    unbiased for p(x); a kernel tuned on its own chain's past makes that hold only approximately, and on pPCA the
    mean weight of 1024 chains matches the exact p(x) within its standard error of ~2% (tests/test_estimators.py),
    so its log is a stochastic lower bound to that precision. The spread across chains shows how far the chains
    are from the posterior.
    """
    _check_inputs(x, y, num_chains, "num_chains")
    if num_steps < 1 or leapfrog_steps < 1:
        raise ValueError(f"num_steps and leapfrog_steps must be at least 1, got {num_steps} and {leapfrog_steps}")
    num_points, latent_dim = x.shape[0], model.latent_dim
    rows = _rows_per_chunk(x, latent_dim, memory_budget_mb, activation_factor=3)
    points_per_chunk = NOISE_POINTS * max(1, rows // (NOISE_POINTS * num_chains))
    betas = sigmoid_schedule(num_steps).tolist()
    results, accept_rates, step_sizes = [], [], []
    bar = tqdm(total=num_points * num_steps, desc="AIS", unit="point-step", unit_scale=True, disable=not progress)
    for chunk in _point_chunks(num_points, points_per_chunk):
        x_c = x[chunk]
        y_c = None if y is None else y[chunk]
        points = x_c.shape[0]
        noise = _TileNoise(seed, chunk.start, points, x.device, x.dtype)
        z = model.prior_from_noise(noise.draw(num_chains, latent_dim), noise.draw_uniform(num_chains))  # z_0 ~ p(z)
        log_lik, log_prior, grad_lik, grad_prior = _densities_and_grads(model, x_c, z, y_c)
        log_w = torch.zeros(num_chains, points, dtype=torch.float64, device=_accumulator_device(x.device))
        step = torch.full((num_chains, points, 1), initial_step_size, device=x.device, dtype=x.dtype)
        avg_accept = torch.full((num_chains, points), target_acceptance, device=x.device, dtype=x.dtype)
        accepted_total = torch.zeros(num_chains, points, device=x.device, dtype=x.dtype)
        for t in range(1, num_steps + 1):
            beta = betas[t]
            log_w += (beta - betas[t - 1]) * log_lik.to(log_w.device, torch.float64)
            if t == num_steps:
                bar.update(points)
                break
            # HMC on U(z) = -log p(z) - beta log p(x|z)
            momentum = noise.draw(num_chains, latent_dim)
            log_u = torch.log(noise.draw_uniform(num_chains))
            z_new, p_new = z, momentum + 0.5 * step * (grad_prior + beta * grad_lik)
            for i in range(leapfrog_steps):
                z_new = z_new + step * p_new
                new_log_lik, new_log_prior, new_grad, new_grad_prior = _densities_and_grads(model, x_c, z_new, y_c)
                scale = 0.5 if i == leapfrog_steps - 1 else 1.0
                p_new = p_new + scale * step * (new_grad_prior + beta * new_grad)
            energy_old = -log_prior - beta * log_lik + 0.5 * (momentum**2).sum(-1)
            energy_new = -new_log_prior - beta * new_log_lik + 0.5 * (p_new**2).sum(-1)
            log_accept = (energy_old - energy_new).nan_to_num(nan=-math.inf).clamp(max=0.0)
            accept = log_u < log_accept
            z = torch.where(accept[..., None], z_new, z)
            log_lik = torch.where(accept, new_log_lik, log_lik)
            log_prior = torch.where(accept, new_log_prior, log_prior)
            grad_lik = torch.where(accept[..., None], new_grad, grad_lik)
            grad_prior = torch.where(accept[..., None], new_grad_prior, grad_prior)
            accepted_total += accept
            avg_accept = 0.9 * avg_accept + 0.1 * accept
            step = step * torch.where(avg_accept > target_acceptance, 1.05, 0.95).to(step.dtype)[..., None]
            step = step.clamp(1e-4, 1.0)
            bar.update(points)
        results.append(log_w.T.cpu())
        accept_rates.append((accepted_total / max(num_steps - 1, 1)).mean().item() * points)
        step_sizes.append(step.mean().item() * points)
    bar.close()
    return _ais_summary(torch.cat(results), sum(accept_rates) / num_points, sum(step_sizes) / num_points)


def _ais_summary(log_weights: torch.Tensor, acceptance: float, step_size: float) -> AnnealedImportanceSampling:
    """The per-point estimate, its standard error and the chains' spread from B×C log weights."""
    num_chains = log_weights.shape[1]
    log_px = torch.logsumexp(log_weights, dim=1) - math.log(num_chains)
    normalized = torch.exp(log_weights - log_px[:, None])  # w / mean(w)
    stderr = normalized.std(dim=1, correction=1) / math.sqrt(num_chains) if num_chains > 1 else torch.zeros_like(log_px)
    spread = log_weights.std(dim=1, correction=1) if num_chains > 1 else torch.zeros_like(log_px)
    return AnnealedImportanceSampling(log_px, stderr, log_weights, spread, acceptance, step_size)


def _at_labels(per_class: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Each point's row of its own label from per-class tensors (each B×...)."""
    stacked = torch.stack(list(per_class))
    index = y.cpu().reshape(1, -1, *[1] * (stacked.dim() - 2)).expand(1, *stacked.shape[1:])
    return stacked.gather(0, index).squeeze(0)


def _joint(per_class: Sequence[torch.Tensor], class_log_prior: torch.Tensor) -> torch.Tensor:
    """log p(c) + log p(x|c), C×B×..., from per-class B×... tensors."""
    stacked = torch.stack(list(per_class))
    return class_log_prior.to(stacked).reshape(-1, *[1] * (stacked.dim() - 1)) + stacked


def label_marginal_importance_sampling(
    per_class: Sequence[ImportanceSampledLikelihood], y: torch.Tensor, class_log_prior: torch.Tensor
) -> tuple[ImportanceSampledLikelihood, ImportanceSampledLikelihood]:
    """log p(x) = log Σ_c p(c) p(x|c) of a class-conditional model, from importance sampling of log p(x|c) with
    every class c (``per_class[c]``); and log p(x|y) with each point's own label ``y``. Returns (marginal, given y).

    Each class's mean weight is unbiased for p(x|c), so their p(c)-weighted sum is unbiased for p(x) and its log
    is again a stochastic lower bound; its standard error is the delta method over the classes' independent
    estimates, and each k of the curve is marginalised alike. The marginal's ``elbo`` is log Σ_c p(c) exp ELBO(x|c),
    the ELBO of the proposal q(c, z|x) = q(c|x) q(z|x, c) with the best q(c|x) ∝ p(c) exp ELBO(x|c): a lower bound
    on log p(x) that, like log p(x), does not depend on the labels, its gap KL(q(c, z|x) || p(c, z|x)).
    """
    given = ImportanceSampledLikelihood(
        log_px=_at_labels([r.log_px for r in per_class], y),
        stderr=_at_labels([r.stderr for r in per_class], y),
        elbo=_at_labels([r.elbo for r in per_class], y),
        bounds={k: _at_labels([r.bounds[k] for r in per_class], y) for k in per_class[0].bounds},
        num_samples=per_class[0].num_samples,
    )
    joint = _joint([r.log_px for r in per_class], class_log_prior)
    log_px = torch.logsumexp(joint, 0)
    share = torch.exp(joint - log_px)  # p(c|x) as the estimates see it
    stderr = (share**2 * torch.stack([r.stderr for r in per_class]) ** 2).sum(0).sqrt()
    marginal = ImportanceSampledLikelihood(
        log_px=log_px,
        stderr=stderr,
        elbo=torch.logsumexp(_joint([r.elbo for r in per_class], class_log_prior), 0),
        bounds={k: torch.logsumexp(_joint([r.bounds[k] for r in per_class], class_log_prior), 0) for k in given.bounds},
        num_samples=given.num_samples,
    )
    return marginal, given


def label_marginal_ais(
    per_class: Sequence[AnnealedImportanceSampling], y: torch.Tensor, class_log_prior: torch.Tensor
) -> tuple[AnnealedImportanceSampling, AnnealedImportanceSampling]:
    """AIS's log p(x) = log Σ_c p(c) p(x|c) of a class-conditional model from chains run with every class c
    (``per_class[c]``), and log p(x|y) with each point's own label ``y``. Returns (marginal, given y).

    Chain j's weights for the classes combine into Σ_c p(c) w_cj, unbiased for p(x) as each w_cj is for p(x|c),
    so the marginal keeps one weight per chain and its standard error and spread are taken over those.
    """
    acceptance = sum(r.acceptance for r in per_class) / len(per_class)
    step_size = sum(r.step_size for r in per_class) / len(per_class)
    log_weights = [r.log_weights for r in per_class]
    marginal = _ais_summary(torch.logsumexp(_joint(log_weights, class_log_prior), 0), acceptance, step_size)
    given = _ais_summary(_at_labels(log_weights, y), acceptance, step_size)
    return marginal, given


class GaussianObservationModel(nn.Module):
    """p(x|z) = N(x; g(z), sigma² I) around a generator's output, making a GAN a density model (Wu et al. 2017).

    ``generator`` maps B×D latents (and labels, if conditional) to B×C×H×W images. The prior is N(0, I), or that of
    ``prior`` (a latent-variable model with ``log_prior`` and ``prior_from_noise``: a VAE whose decoder mean is the
    generator, so GAN and VAE are compared under one observation model).
    """

    def __init__(self, generator: nn.Module, sigma: float, prior: nn.Module | None = None) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.generator, self.prior = generator, prior
        self.sigma = float(sigma)
        self.latent_dim = generator.latent_dim

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log N(x; g(z), sigma² I) summed over pixels, K×B for z K×B×D."""
        k, b, d = z.shape
        y_rep = None if y is None else y.repeat(k)
        mean = self.generator(z.reshape(k * b, d), y_rep).reshape(k, b, -1)
        squared = ((x.reshape(1, b, -1) - mean) ** 2).sum(-1)
        pixels = mean.shape[-1]
        return -0.5 * squared / self.sigma**2 - pixels * (math.log(self.sigma) + 0.5 * LOG_2PI)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z): N(0, I), or the given prior's."""
        return standard_normal_log_density(z) if self.prior is None else self.prior.log_prior(z)

    def prior_from_noise(self, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return eps if self.prior is None else self.prior.prior_from_noise(eps, u)


class StandardNormalProposal:
    """q(z|x) = p(z) = N(0, I) for every x: importance sampling from the prior (no encoder needed)."""

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = latent_dim

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Posterior:
        zeros = torch.zeros(x.shape[0], self.latent_dim, device=x.device, dtype=x.dtype)
        return Posterior(lambda eps: gaussian_sample(zeros, zeros, eps), zeros)
