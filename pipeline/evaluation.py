"""Evaluation procedures: the estimators of ``pipeline/estimators.py`` and the metrics of ``pipeline/metrics.py``
applied to trained models and the processed data.

- :func:`evaluate_vae`: the VAE's log p(x) by importance sampling on the test split (and the validation split if
  asked), ELBO, gap and bits/dim, AIS on a subset with importance sampling on the same points beside it, the
  bound's convergence in K.
- :func:`evaluate_gaussian_likelihood`: log p(x) by AIS under a Gaussian observation model around a generator or a
  VAE's decoder mean (Wu et al. 2017), the same test points and the same choice of sigma for both.
- :func:`sample_quality_report`: Fréchet distance (with its floor), precision/recall and classifier score of a
  sampler's images.

Each returns two dicts: the numbers people compare (``metrics``, DVC metrics files) and the description of the run
(``card``: counts, settings, units, σ candidates), in the one shape of :func:`likelihood_summary`. The results
depend on the seed only (identical for identical runs on CPU); timings go to the log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from pipeline.config import EvaluateParams
from pipeline.data.processed import ProcessedData
from pipeline.distributed import DistContext
from pipeline.estimators import (
    AnnealedImportanceSampling,
    GaussianObservationModel,
    ImportanceSampledLikelihood,
    StandardNormalProposal,
    annealed_importance_sampling,
    importance_sampled_log_likelihood,
    label_marginal_ais,
    label_marginal_importance_sampling,
    sharded_importance_sampled_log_likelihood,
)
from pipeline.metrics import classifier_outputs, frechet_distance, inception_score, precision_recall
from pipeline.models.classifier import Classifier
from pipeline.models.vae import VAE  # the one-layer family; HVAE is a subclass
from pipeline.objectives.vae import bits_per_dim, dequantize, discrete_log_likelihood, prepare_heldout
from pipeline.seeds import stream_seed, torch_generator

log = logging.getLogger(__name__)

Sampler = Callable[[int], torch.Tensor]
Estimate = TypeVar("Estimate")
# observation noise candidates of the Gaussian observation model, in units of the [0, 1] pixel range
SIGMA_CANDIDATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
GAUSSIAN_COMPARISON = (
    "gaussian_ais: log p(x) by AIS under one observation model, p(x|z) = N(x; mean(z), sigma^2 I) around the GAN "
    "generator's output and around the VAE decoder's mean E[x|z], each under its own prior, sigma chosen for each "
    "among the same candidates by AIS on the same validation images, evaluated on the same dequantized test images "
    "(Wu et al. 2017): the two are comparable with each other, as lower bounds on the discrete data's likelihood, "
    "and both depend strongly on sigma. vae ais and is: the VAE's own decoder (its own likelihood, on test images "
    "prepared for it: binarized for a Bernoulli decoder), from the evaluate_vae stage: figures of a different "
    "density on different data, not comparable with gaussian_ais."
)


def likelihood_summary(
    log_px: torch.Tensor, sampling_stderr: torch.Tensor, dims: int, elbo: torch.Tensor | None = None
) -> dict[str, float]:
    """The one summary of a per-point log p(x) estimate (nats per image): mean, its standard error over points and
    from the sampling, bits/dim, and with ``elbo`` the ELBO and the gap log p(x) - ELBO = KL(q || p(z|x))."""
    n = len(log_px)
    summary = {
        "log_px": log_px.mean().item(),
        "log_px_stderr": (log_px.std(correction=1).item() / math.sqrt(n)) if n > 1 else 0.0,
        "sampling_stderr": sampling_stderr.pow(2).mean().sqrt().item() / math.sqrt(n),
        "bits_per_dim": bits_per_dim(log_px.mean().item(), dims),
        "points": n,
    }
    if elbo is not None:
        summary |= {"elbo": elbo.mean().item(), "gap": (log_px - elbo).mean().item()}
    return summary


@dataclass
class ObservationSigmaChoice:
    """The chosen sigma and the mean validation log-likelihood (nats) of each candidate."""

    sigma: float
    log_px: dict[float, float]


def choose_observation_sigma(
    generator: nn.Module,
    x_valid: torch.Tensor,
    candidates: Sequence[float],
    y_valid: torch.Tensor | None = None,
    *,
    prior: nn.Module | None = None,
    method: str = "prior",
    num_samples: int = 1000,
    ais_steps: int = 100,
    ais_chains: int = 4,
    leapfrog_steps: int = 5,
    seed: int = 0,
    memory_budget_mb: float = 512,
    progress: bool = False,
) -> ObservationSigmaChoice:
    """Pick the sigma of :class:`GaussianObservationModel` that maximizes validation log p(x) (Wu et al. 2017).

    ``method``: "ais" (annealed importance sampling, accurate) or "prior" (importance sampling from the N(0, I)
    prior with ``num_samples`` samples, fast; the same samples serve every candidate). ``prior``: the latent
    prior when not N(0, I) (AIS only).
    """
    if not candidates:
        raise ValueError("no sigma candidates given")
    if method not in ("ais", "prior"):
        raise ValueError(f"method {method!r} is not 'ais' or 'prior'")
    if method == "prior" and prior is not None:
        raise ValueError("method 'prior' samples N(0, I); use method 'ais' with another prior")
    scores = {}
    for sigma in candidates:
        model = GaussianObservationModel(generator, sigma, prior)
        if method == "ais":
            result = annealed_importance_sampling(
                model,
                x_valid,
                y_valid,
                ais_steps,
                ais_chains,
                leapfrog_steps,
                seed=seed,
                memory_budget_mb=memory_budget_mb,
                progress=progress,
            )
        else:
            result = importance_sampled_log_likelihood(
                model,
                StandardNormalProposal(model.latent_dim),
                x_valid,
                y_valid,
                num_samples,
                seed=seed,
                memory_budget_mb=memory_budget_mb,
                progress=progress,
            )
        scores[float(sigma)] = result.log_px.mean().item()
    best = max(scores, key=scores.get)
    return ObservationSigmaChoice(sigma=best, log_px=scores)


def check_fits_data(model: nn.Module, data: ProcessedData, name: str, *, shape_only: bool = False) -> None:
    """A ValueError saying what to retrain unless ``model`` (called ``name`` in the message) was trained on images of
    ``data``'s shape and, if it is conditional (and not ``shape_only``: the feature classifier, whose classes may be
    a pretext task's), ``data`` has labels of as many classes."""
    if tuple(model.image_shape) != tuple(data.image_shape):
        raise ValueError(
            f"the {name} was trained on {tuple(model.image_shape)} images but the data are {data.image_shape}; "
            "retrain it on these data (dvc repro)"
        )
    if shape_only or model.num_classes is None:
        return
    if data.y is None or data.num_classes != model.num_classes:
        labels = "no labels" if data.y is None else f"{data.num_classes} classes"
        raise ValueError(
            f"the {name} is conditional on {model.num_classes} classes but the data have {labels}; "
            "retrain it on these data (dvc repro)"
        )


def class_log_prior(data: ProcessedData, num_classes: int) -> torch.Tensor:
    """log p(y) of a class-conditional model: the training split's class frequencies (their maximum-likelihood
    estimate; the model itself learns only p(x|y))."""
    counts = np.bincount(data.y["train"], minlength=num_classes)
    return torch.log(torch.from_numpy(counts / counts.sum()))


def over_labels(
    estimate: Callable[[torch.Tensor | None, tuple], Estimate],
    y: torch.Tensor | None,
    num_classes: int | None,
    combine: Callable[[list[Estimate], torch.Tensor, torch.Tensor], tuple[Estimate, Estimate]],
    class_prior: torch.Tensor | None,
) -> tuple[Estimate, Estimate | None]:
    """log p(x) from ``estimate(labels, seed_tag)``: once for an unconditional model (labels None); for a
    class-conditional one with every class in turn (each with its own noise), combined into log Σ_c p(c) p(x|c)
    by ``combine``. Returns (log p(x), log p(x|y) with the true labels ``y``, or None when unconditional): so a
    conditional model's log p(x) compares with an unconditional one's, at ``num_classes`` times the cost."""
    if num_classes is None:
        return estimate(None, ()), None
    per_class = [estimate(torch.full_like(y, c), ("class", c)) for c in range(num_classes)]
    return combine(per_class, y, class_prior)


def evaluate_vae(
    model: VAE,
    data: ProcessedData,
    settings: EvaluateParams,
    seed: int,
    *,
    progress: bool = True,
    ctx: DistContext | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, float]]]:
    """Importance-sampled log p(x) on the test set (and the validation set if ``settings.splits`` names it), and AIS
    on ``settings.ais_points`` test points. Any VAE family: the proposal is its full q(z|x), the prior its own. A
    class-conditional model's log p(x) sums p(y) p(x|y) over the classes (:func:`over_labels`); its log p(x|y)
    with the true labels is reported beside it (``given_y``).

    Returns the metrics (test log p(x), ELBO, gap = KL(q || p(z|x)) (11.21-11.25), bits/dim and AIS), the run card
    (every summary in full, validation, importance sampling on the AIS points, K, the curve's ks, units)
    and the convergence curve rows {k, bound} of the test set. For grey data with a Gaussian decoder the numbers are
    lower bounds on the discrete data's likelihood (uniform dequantization). Under torchrun (``ctx``) the importance
    sampling is split across ranks; rank 0 alone runs AIS and returns the results, the other ranks empty ones.
    """
    ctx = ctx or DistContext(0, 1, next(model.parameters()).device)
    check_fits_data(model, data, "VAE")
    device = next(model.parameters()).device
    dims = math.prod(data.image_shape)
    class_prior = None if model.num_classes is None else class_log_prior(data, model.num_classes)
    # a Gaussian decoder's density on dequantized grey data bounds the discrete data's log-likelihood
    offset = discrete_log_likelihood(0.0, dims) if model.likelihood == "gaussian" and not data.binary else 0.0
    ks = sorted({k for k in settings.curve_ks if k <= settings.num_samples} | {settings.num_samples})
    dropped = sorted(k for k in settings.curve_ks if k > settings.num_samples)
    if dropped:
        log.warning("evaluate.curve_ks %s exceed evaluate.num_samples %d: left out", dropped, settings.num_samples)
    card: dict[str, Any] = {"num_samples": settings.num_samples, "curve_ks": ks, "likelihood": model.likelihood}
    card |= {"units": "nats per image" + (" (lower bound on the discrete data)" if offset else "")}
    if model.num_classes is not None:
        card["labels"] = (
            f"conditional on {model.num_classes} classes: log_px = log sum_y p(y) p(x|y) with p(y) the training "
            "split's class frequencies (one estimate per class); given_y: log p(x|y) with the true labels; elbo = "
            "log sum_y p(y) exp ELBO(x|y), the ELBO of q(y, z|x) with the best q(y|x), a lower bound on log p(x)"
        )
        card["class_prior"] = class_prior.exp().tolist()
    curve: list[dict[str, float]] = []
    heldout, results, given = {}, {}, {}
    for split in dict.fromkeys(["test", *settings.splits]):  # the test split always; the metrics are its figures
        count = min(len(data.x[split]), settings.max_points or len(data.x[split]))
        x = torch.from_numpy(data.x[split][:count]).to(device)
        x = prepare_heldout(x, data.binarize, model.likelihood, seed, split)
        y = torch.from_numpy(data.y[split][:count]).to(device) if model.num_classes is not None else None
        heldout[split] = (x, y)
        start = time.perf_counter()

        def importance_sample(
            labels: torch.Tensor | None, tag: tuple, x: torch.Tensor = x, split: str = split
        ) -> ImportanceSampledLikelihood:
            return sharded_importance_sampled_log_likelihood(
                model,
                model,
                x,
                labels,
                ctx,
                num_samples=settings.num_samples,
                curve_ks=ks,
                seed=stream_seed(seed, "evaluate_vae", "importance sampling", split, *tag),
                memory_budget_mb=settings.memory_budget_mb,
                progress=progress and ctx.is_writer,
            )

        result, given[split] = over_labels(
            importance_sample, y, model.num_classes, label_marginal_importance_sampling, class_prior
        )
        seconds = time.perf_counter() - start
        log.info(
            "importance sampling on %d %s points: %.1f s (%.0f decoder evaluations/s)",
            count,
            split,
            seconds,
            count * settings.num_samples * (model.num_classes or 1) / seconds,
        )
        results[split] = result
        card[split] = likelihood_summary(result.log_px + offset, result.stderr, dims, result.elbo + offset)
        if given[split] is not None:
            g = given[split]
            card[split]["given_y"] = likelihood_summary(g.log_px + offset, g.stderr, dims, g.elbo + offset)
    for k in ks:
        curve.append({"k": k, "bound": results["test"].bounds[k].mean().item() + offset})
    if not ctx.is_writer:
        return {}, {}, []
    x, y = heldout["test"]
    points = min(settings.ais_points, len(x))
    x, y = x[:points], None if y is None else y[:points]
    start = time.perf_counter()

    def run_ais(labels: torch.Tensor | None, tag: tuple) -> AnnealedImportanceSampling:
        return annealed_importance_sampling(
            model,
            x,
            labels,
            settings.ais_steps,
            settings.ais_chains,
            settings.ais_leapfrog_steps,
            seed=stream_seed(seed, "evaluate_vae", "ais", *tag),
            memory_budget_mb=settings.memory_budget_mb,
            progress=progress,
        )

    ais, ais_given = over_labels(run_ais, y, model.num_classes, label_marginal_ais, class_prior)
    log.info("AIS on %d test points: %.1f s", points, time.perf_counter() - start)
    is_on_ais_points = results["test"].log_px[:points] + offset
    card["ais"] = likelihood_summary(ais.log_px + offset, ais.stderr, dims) | {
        "importance_sampled_log_px": is_on_ais_points.mean().item(),
        "chain_spread": ais.chain_spread.mean().item(),
        "acceptance": ais.acceptance,
        "steps": settings.ais_steps,
        "chains": settings.ais_chains,
    }
    test = card["test"]
    metrics = {key: test[key] for key in ("log_px", "elbo", "gap")}
    # AIS runs on the first ais_points test points: beside it, importance sampling on those same points (the
    # whole split's log_px differs from it by the subset's luck, several nats on 100 images)
    metrics |= {"bpd": test["bits_per_dim"], "ais": card["ais"]["log_px"]}
    metrics["ais_is"] = card["ais"]["importance_sampled_log_px"]
    if ais_given is not None:
        card["ais"]["given_y"] = likelihood_summary(ais_given.log_px + offset, ais_given.stderr, dims) | {
            "importance_sampled_log_px": (given["test"].log_px[:points] + offset).mean().item()
        }
        metrics["given_y"] = {key: test["given_y"][key] for key in ("log_px", "elbo", "gap")}
        metrics["given_y"]["ais"] = card["ais"]["given_y"]["log_px"]
    return metrics, card, curve


class DecoderMean(nn.Module):
    """A VAE's decoder as a generator, z[, y] -> E[x|z] (with its ``latent_dim`` and ``num_classes``)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae, self.latent_dim, self.num_classes = vae, vae.latent_dim, vae.num_classes

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.vae.decode_mean(z, y)


@torch.no_grad()
def evaluate_gaussian_likelihood(
    generator: nn.Module,
    data: ProcessedData,
    settings: EvaluateParams,
    seed: int,
    prior: nn.Module | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """AIS estimate of log p(x) under p(x|z) = N(g(z), sigma² I) (Wu et al. 2017) on test images: ``generator`` is
    a GAN's generator (prior N(0, I)) or a VAE's :class:`DecoderMean` with the VAE as ``prior``.

    sigma is chosen among :data:`SIGMA_CANDIDATES` by AIS (a quarter of the steps) on validation images. A
    class-conditional generator's log p(x) sums p(y) p(x|y) over the classes (:func:`over_labels`). The test
    and validation images and their dequantization depend on the seed alone, not on the model, so two models
    evaluated with one seed see the same points (and the same chain noise unless one is conditional). The images
    are taken as stored, so grey levels are uniformly dequantized (256 levels; 2 after static binarization) and the
    density becomes a lower bound on the discrete data's log-likelihood. Returns the metrics (test log p(x),
    bits/dim) and the run card.
    """
    device = next(generator.parameters()).device
    levels = 2 if data.binary and data.binarize != "dynamic" else 256  # stored 0/1 images: two levels
    dims = math.prod(data.image_shape)
    heldout = {}
    for split in ("valid", "test"):
        count = min(len(data.x[split]), settings.ais_points)
        x = torch.from_numpy(data.x[split][:count]).to(device)
        x = dequantize(x, torch_generator(device, seed, "gaussian likelihood", "dequantize", split), levels)
        y = torch.from_numpy(data.y[split][:count]).to(device) if generator.num_classes is not None else None
        heldout[split] = (x, y)
    ais = {
        "num_chains": settings.ais_chains,
        "leapfrog_steps": settings.ais_leapfrog_steps,
        "memory_budget_mb": settings.memory_budget_mb,
        "progress": progress,
    }
    start = time.perf_counter()
    choice = choose_observation_sigma(
        generator,
        heldout["valid"][0],
        SIGMA_CANDIDATES,
        heldout["valid"][1],
        prior=prior,
        method="ais",
        ais_steps=max(1, settings.ais_steps // 4),
        ais_chains=ais["num_chains"],
        leapfrog_steps=ais["leapfrog_steps"],
        seed=stream_seed(seed, "gaussian likelihood", "sigma"),
        memory_budget_mb=ais["memory_budget_mb"],
    )
    x_test, y_test = heldout["test"]
    observation_model = GaussianObservationModel(generator, choice.sigma, prior)

    def run_ais(labels: torch.Tensor | None, tag: tuple) -> AnnealedImportanceSampling:
        return annealed_importance_sampling(
            observation_model,
            x_test,
            labels,
            settings.ais_steps,
            seed=stream_seed(seed, "gaussian likelihood", "ais", *tag),
            **ais,
        )

    class_prior = None if generator.num_classes is None else class_log_prior(data, generator.num_classes)
    result, given = over_labels(run_ais, y_test, generator.num_classes, label_marginal_ais, class_prior)
    log.info("gaussian likelihood: sigma choice and AIS: %.1f s", time.perf_counter() - start)
    summary = likelihood_summary(discrete_log_likelihood(result.log_px, dims, levels), result.stderr, dims)
    if given is not None:
        summary["given_y"] = likelihood_summary(discrete_log_likelihood(given.log_px, dims, levels), given.stderr, dims)
        summary["labels"] = (
            f"conditional on {generator.num_classes} classes: log_px sums p(y) p(x|y) over them, p(y) the training "
            "split's class frequencies; sigma chosen by log p(x|y) on validation images with their labels"
        )
    card = summary | {
        "chain_spread": result.chain_spread.mean().item(),
        "acceptance": result.acceptance,
        "sigma": choice.sigma,
        "sigma_candidates_valid_log_px": {
            str(s): discrete_log_likelihood(v, dims, levels) for s, v in choice.log_px.items()
        },
        "steps": settings.ais_steps,
        "chains": settings.ais_chains,
        "levels": levels,
        "units": "nats per image (lower bound on the discrete data)",
    }
    return {"log_px": summary["log_px"], "bits_per_dim": summary["bits_per_dim"]}, card


def fewest_images_for_sample_metrics(k: int) -> int:
    """Fewest images precision/recall with ``k`` nearest neighbours (and a Fréchet covariance) can use."""
    return max(k + 1, 2)


def check_enough_real_images(counts: dict[str, int], k: int = 3) -> None:
    """A ValueError naming the first split of ``counts`` (split -> its number of images) with too few images for the
    sample metrics (precision/recall compare each image with its ``k`` nearest neighbours) and what to do."""
    need = fewest_images_for_sample_metrics(k)
    for split, count in counts.items():
        if count < need:
            fix = "use a dataset with more images"
            if split == "valid":
                fix = f"raise data.validation_fraction and rerun preprocess (or give your x_valid more), or {fix}"
            raise ValueError(
                f"the {split} split has {count} image(s) but the sample metrics need at least {need}; {fix}"
            )


def sample_quality_report(
    sampler: Sampler,
    classifier: Classifier,
    real_test: torch.Tensor,
    real_train: torch.Tensor,
    n: int,
    seed: int = 0,
    k: int = 3,
    splits: int = 10,
    split: str = "test",
) -> dict[str, float]:
    """All sample metrics for ``sampler`` (n -> n×C×H×W images in [0, 1]) against held-out real images
    (``real_test``, of split ``split``).

    ``n`` is capped by the real sets so every Fréchet distance compares equally many images; the floor
    is the distance between that many training and held-out images (what a perfect sampler would get).
    The classifier score needs class probabilities, so a classifier of the transformations task (data
    without labels) leaves it out; the distances and precision/recall use its features all the same.
    """
    check_enough_real_images({split: len(real_test), "train": len(real_train)}, k)
    count = min(n, len(real_test), len(real_train))
    if count < (need := fewest_images_for_sample_metrics(k)):
        raise ValueError(f"sample metrics need at least {need} generated images, got n = {n}")
    pick = torch_generator("cpu", seed, "real images")
    test = real_test[torch.randperm(len(real_test), generator=pick)[:count]]
    train = real_train[torch.randperm(len(real_train), generator=pick)[:count]]
    generated = sampler(count)
    if generated.shape[1:] != test.shape[1:]:
        raise ValueError(f"sampler returned images of shape {tuple(generated.shape[1:])}, data are {test.shape[1:]}")
    test_features, _ = classifier_outputs(classifier, test)
    train_features, _ = classifier_outputs(classifier, train)
    fake_features, fake_probabilities = classifier_outputs(classifier, generated)
    precision, recall = precision_recall(test_features, fake_features, k)
    report = {
        "frechet_distance": frechet_distance(fake_features, test_features),
        "frechet_floor": frechet_distance(train_features, test_features),
        "precision": precision,
        "recall": recall,
        "num_images": count,
    }
    if classifier.task == "classes":
        report["classifier_score"], report["classifier_score_std"] = inception_score(fake_probabilities, splits)
    return report


def seeded_sampler(
    decode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    latent_dim: int,
    device: torch.device,
    labels: torch.Tensor | None,
    seed: int,
    latent_from_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Sampler:
    """n -> decode(z, y), the same n images for the same seed: z = latent_from_noise(eps, u) from standard normal eps
    (n×latent_dim) and uniform u (n; a VAE's ``prior_from_noise`` draws from its own prior, a VampPrior mixture or top
    down through its layers), or z = eps ~ N(0, I) without it; y drawn from ``labels`` (the real class mix) if given."""

    @torch.no_grad()
    def sample(n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, latent_dim, generator=generator).to(device)
        y = None
        if labels is not None:
            y = labels[torch.randint(len(labels), (n,), generator=generator)].to(device)
        if latent_from_noise is not None:
            z = latent_from_noise(z, torch.rand(n, generator=generator).to(device))
        return decode(z, y).float().cpu()

    return sample
