"""The interface the likelihood estimators need from a latent-variable model p(z) p(x|z)."""

from __future__ import annotations

from typing import Protocol

import torch


class LatentVariableModel(Protocol):
    """A model with prior N(0, I) over ``latent_dim`` dimensions and a tractable decoder density.

    Shapes: ``x`` is B×C×H×W, ``y`` is B labels or None, ``z`` is K×B×D (K samples per data point).
    """

    latent_dim: int

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z) summed over the data dimensions, shape K×B (11.1-11.4)."""
        ...


class AmortizedPosterior(Protocol):
    """An inference network q(z|x) = N(mu, diag exp(logvar)) (11.18)."""

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, logvar), each B×D."""
        ...
