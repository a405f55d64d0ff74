"""What every model family shares: the label checks of conditional models, the one one-hot, and the interfaces the
likelihood estimators need from a latent-variable model p(z) p(x|z).

Models import torch and ``pipeline.models`` only: they are networks, built from one config dataclass each
(``Model.Config``, stored in checkpoints beside the weights), and know nothing of params, stages or files.
"""

from __future__ import annotations

from typing import Protocol

import torch

from pipeline.models.distributions import Posterior


class LabelError(ValueError):
    """A conditional model was called without labels, or with labels it cannot use."""


def check_labels(y: torch.Tensor | None, num_classes: int | None, batch: int) -> torch.Tensor | None:
    """The labels a model of ``num_classes`` classes (None: unconditional) takes for a batch of ``batch``; raises
    :class:`LabelError` when a conditional model gets none, or labels of the wrong shape."""
    if num_classes is None:
        return None
    if y is None:
        raise LabelError(f"this model is conditional on {num_classes} classes and needs labels y (B integers)")
    if tuple(y.shape) != (batch,):
        raise LabelError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
    return y


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot rows from integer labels, with plain comparison ops (exported to ONNX as Equal and Cast)."""
    return (y[:, None] == torch.arange(num_classes, device=y.device)).to(dtype)


class LatentVariableModel(Protocol):
    """A model p(z) p(x|z) over ``latent_dim`` latent numbers with tractable densities.

    Shapes: ``x`` is B×C×H×W, ``y`` is B labels or None, ``z`` is K×B×D (K samples per data point).
    """

    latent_dim: int

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z) summed over the data dimensions, shape K×B (11.1-11.4)."""
        ...

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), shape K×B."""
        ...

    def prior_from_noise(self, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z ~ p(z) as a function of standard normal ``eps`` (K×B×D) and uniform ``u`` (K×B)."""
        ...


class AmortizedPosterior(Protocol):
    """An inference network: ``posterior(x, y)`` gives q(z|x) of a batch as a map from noise (11.37)."""

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Posterior:
        """q(z|x) for the B points of ``x``."""
        ...
