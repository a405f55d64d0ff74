"""Sample-quality metrics for implicit models, in the features of the dataset's own classifier.

Inception networks cannot be downloaded here and are the wrong features for digits, so the
feature extractor is the small classifier of :mod:`pipeline.models.classifier`, trained on the
training split. In its penultimate-layer features:

- Fréchet distance (Heusel et al. 2017) between generated and held-out real images, reported with its
  floor: the distance between as many training and held-out real images (finite-sample bias included).
- Inception-Score-style score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)) over splits.
- Precision and recall (Kynkäänniemi et al. 2019): the share of generated samples inside the real
  manifold (union of k-NN balls of real features) and of real samples inside the generated one.

The procedure that applies them to a sampler is :func:`pipeline.evaluation.sample_quality_report`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.models.classifier import Classifier


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
