"""The feature classifier of the sample-quality metrics: a small CNN trained on the dataset's training split.

Two 3×3 conv blocks (each two convolutions, ReLU, 2×2 max pool) feed a fully connected
``feature_dim`` layer whose activations are the features of the Fréchet distance and of
precision/recall; ``head`` maps them to class logits. Images of any size from 8×8 up work.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.training import load_checkpoint


class Classifier(nn.Module):
    """x (B×C×H×W in [0, 1]) -> class logits; ``features`` is the penultimate layer."""

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, channels: int = 32, feature_dim: int = 128
    ) -> None:
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        c, h, w = self.image_shape
        self.trunk = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * channels * (h // 4) * (w // 4), feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations, B×feature_dim."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def build_classifier(image_shape: tuple[int, int, int], num_classes: int | None) -> Classifier:
    """The feature classifier for images of ``image_shape``; a clear error for unlabeled data."""
    if not num_classes:
        raise ValueError(
            "the sample-quality metrics need a classifier, and the dataset has no class labels; "
            "use a labelled dataset (digits, mnist, fashion_mnist, npz with y_*)"
        )
    if min(image_shape[1:]) < 4:
        raise ValueError(f"the feature classifier needs images of at least 4×4 pixels, got {tuple(image_shape)}")
    return Classifier(image_shape, num_classes)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The classifier of a checkpoint written by the train_classifier stage, in eval mode."""
    state = load_checkpoint(path)
    classifier = build_classifier(tuple(state["data"]["image_shape"]), state["data"]["num_classes"])
    classifier.load_state_dict(state["model"])
    return classifier.to(device).eval()
