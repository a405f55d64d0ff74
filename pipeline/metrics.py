"""Sample-quality metrics for implicit models, in the features of the dataset's own classifier.

Inception networks cannot be downloaded here and are the wrong features for digits, so the
feature extractor is the small classifier of :mod:`pipeline.models.classifier`, trained on the
training split. In its penultimate-layer features:

- Fréchet distance (Heusel et al. 2017) between generated and held-out real images, reported with its
  floor: the distance between as many training and held-out real images (finite-sample bias included).
- Inception-Score-style score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)) over splits.
- Precision and recall (Kynkäänniemi et al. 2019): the share of generated samples inside the real
  manifold (union of k-NN balls of real features) and of real samples inside the generated one.

And the GAN's log-likelihood by annealed importance sampling under a Gaussian observation model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pipeline.config import EvaluateConfig
from pipeline.data.processed import ProcessedData
from pipeline.likelihood import GaussianObservationModel, annealed_importance_sampling, choose_observation_sigma
from pipeline.models.classifier import Classifier
from pipeline.models.gan import Generator
from pipeline.objectives.vae import bits_per_dim, dequantize, discrete_log_likelihood
from pipeline.training import device_generator

log = logging.getLogger(__name__)

Sampler = Callable[[int], torch.Tensor]


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative round-off -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_moments(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the 2-Wasserstein distance squared of two Gaussians.

    Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2), whose argument is symmetric PSD, so both roots are
    taken by eigendecomposition in float64 (no complex parts, unlike a general ``sqrtm``).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    root1 = _sqrt_psd(cov1)
    cross = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    trace_root = np.sqrt(np.clip(cross, 0.0, None)).sum()
    distance = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root)
    return max(distance, 0.0)


def frechet_distance(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two N×F feature sets."""
    a, b = (np.asarray(torch.as_tensor(f).double().cpu()) for f in (features1, features2))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two N×F feature sets with N >= 2, got {a.shape} and {b.shape}")
    return frechet_distance_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def inception_score(probabilities: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and std over ``splits`` of exp E_x KL(p(y|x) || p(y)) for N×K class probabilities."""
    p = probabilities.double().clamp_min(1e-12)
    splits = max(1, min(splits, len(p)))
    scores = []
    for part in p.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        scores.append(math.exp((part * (part.log() - marginal.log())).sum(1).mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    radii = [torch.cdist(part, features).kthvalue(k + 1, dim=1).values for part in features.split(chunk)]
    return torch.cat(radii)  # k + 1: each point is its own nearest neighbour


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    inside = [(torch.cdist(part, centres) <= radii).any(1) for part in points.split(chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN ball manifolds."""
    real, fake = real_features.double(), fake_features.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and generated samples")
    precision = _coverage(fake, real, _kth_neighbour_radii(real, k, chunk), chunk)
    recall = _coverage(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return precision, recall


@torch.no_grad()
def classifier_outputs(
    classifier: Classifier, images: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and class probabilities of ``images`` (on the classifier's device), both on CPU."""
    device = next(classifier.parameters()).device
    features, probabilities = [], []
    for batch in images.split(batch_size):
        f = classifier.features(batch.to(device, torch.float32))
        features.append(f.cpu())
        probabilities.append(classifier.head(f).softmax(1).cpu())
    return torch.cat(features), torch.cat(probabilities)


def sample_quality_report(
    sampler: Sampler,
    classifier: Classifier,
    real_test: torch.Tensor,
    real_train: torch.Tensor,
    n: int,
    seed: int = 0,
    k: int = 3,
    splits: int = 10,
) -> dict[str, float]:
    """All sample metrics for ``sampler`` (n -> n×C×H×W images in [0, 1]) against held-out real images.

    ``n`` is capped by the real sets so every Fréchet distance compares equally many images; the floor
    is the distance between that many training and held-out images (what a perfect sampler would get).
    The classifier score needs class probabilities, so a classifier of the transformations task (data
    without labels) leaves it out; the distances and precision/recall use its features all the same.
    """
    count = min(n, len(real_test), len(real_train))
    if count < max(k + 1, 2):
        raise ValueError(f"sample metrics need at least {max(k + 1, 2)} real images per split, got {count}")
    pick = torch.Generator().manual_seed(seed)
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


def conditional_sampler(
    decode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    latent_dim: int,
    device: torch.device,
    labels: torch.Tensor | None,
    seed: int,
) -> Sampler:
    """n -> decode(z, y) with z ~ N(0, I) seeded, and y drawn from ``labels`` (the real class mix) if given."""

    @torch.no_grad()
    def sample(n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, latent_dim, generator=generator).to(device)
        y = None
        if labels is not None:
            y = labels[torch.randint(len(labels), (n,), generator=generator)].to(device)
        return decode(z, y).float().cpu()

    return sample


# observation noise candidates of the GAN's Gaussian observation model, in units of the [0, 1] pixel range
SIGMA_CANDIDATES = (0.01, 0.02, 0.05, 0.1, 0.2)


@torch.no_grad()
def gan_log_likelihood(
    generator: Generator, data: ProcessedData, settings: EvaluateConfig, seed: int, progress: bool = False
) -> dict[str, Any]:
    """AIS estimate of the GAN's log p(x) under p(x|z) = N(g(z), sigma² I) (Wu et al. 2017) on test images.

    sigma is chosen among :data:`SIGMA_CANDIDATES` by AIS (a quarter of the steps) on validation images.
    The GAN models the stored images, so grey levels are uniformly dequantized (256 levels; 2 after static
    binarization) and the density becomes a lower bound on the discrete data's log-likelihood. The result depends
    on the seed only (timings go to the log).
    """
    device = next(generator.parameters()).device
    levels = 2 if data.binarize == "static" else 256
    dims = math.prod(data.image_shape)
    heldout = {}
    for split in ("valid", "test"):
        count = min(len(data.x[split]), settings.ais_points)
        x = torch.from_numpy(data.x[split][:count]).to(device)
        x = dequantize(x, device_generator(device, seed + 1), levels)
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
        method="ais",
        ais_steps=max(1, settings.ais_steps // 4),
        ais_chains=ais["num_chains"],
        leapfrog_steps=ais["leapfrog_steps"],
        seed=seed,
        memory_budget_mb=ais["memory_budget_mb"],
    )
    result = annealed_importance_sampling(
        GaussianObservationModel(generator, choice.sigma), *heldout["test"], settings.ais_steps, seed=seed + 1, **ais
    )
    log.info("gan likelihood: sigma choice and AIS: %.1f s", time.perf_counter() - start)
    log_px = discrete_log_likelihood(result.log_px, dims, levels)
    n = len(log_px)
    return {
        "log_px": log_px.mean().item(),
        "log_px_stderr": log_px.std(correction=1).item() / math.sqrt(n) if n > 1 else 0.0,
        "sampling_stderr": result.stderr.pow(2).mean().sqrt().item() / math.sqrt(n),
        "bits_per_dim": bits_per_dim(log_px.mean().item(), dims),
        "chain_spread": result.chain_spread.mean().item(),
        "acceptance": result.acceptance,
        "sigma": choice.sigma,
        "sigma_candidates_valid_log_px": {
            str(s): discrete_log_likelihood(v, dims, levels) for s, v in choice.log_px.items()
        },
        "points": n,
        "steps": settings.ais_steps,
        "chains": settings.ais_chains,
        "levels": levels,
        "units": "nats per image (lower bound on the discrete data)",
    }
