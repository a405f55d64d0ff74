"""The feature classifier of the sample-quality metrics: a small CNN trained on the dataset's training split.

Two 3×3 conv blocks (each two convolutions, ReLU, 2×2 max pool) feed a fully connected
``feature_dim`` layer whose activations are the features of the Fréchet distance and of
precision/recall; ``head`` maps them to logits. Images of any size from 8×8 up work. ``task`` says what
the logits are: the dataset's ``classes``, or for a dataset without labels the ``transformations`` of
:data:`TRANSFORMATIONS` (a label-free pretext task, see ``pipeline/classifier_trainer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TASKS = ("classes", "transformations")
# The shape-preserving transformations a classifier learns to tell apart when the data have no labels.
TRANSFORMATIONS = ("identity", "rotate 180°", "flip left-right", "flip top-bottom")


def transform_images(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Image i of ``x`` (B×C×H×W) under TRANSFORMATIONS[which[i]]; rotating by 180° is both flips."""
    flip_left_right = ((which == 1) | (which == 2))[:, None, None, None]
    flip_top_bottom = ((which == 1) | (which == 3))[:, None, None, None]
    x = torch.where(flip_left_right, x.flip(-1), x)
    return torch.where(flip_top_bottom, x.flip(-2), x)


@dataclass(frozen=True)
class ClassifierConfig:
    """Exactly the constructor arguments of :class:`Classifier`, as stored in its checkpoints."""

    image_shape: tuple[int, int, int]
    num_classes: int
    task: str = "classes"
    channels: int = 32
    feature_dim: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        if self.task not in TASKS:
            raise ValueError(f"classifier task {self.task!r} is not one of {TASKS}")
        if min(self.image_shape[1:]) < 4:
            raise ValueError(f"the feature classifier needs images of at least 4×4 pixels, got {self.image_shape}")


class Classifier(nn.Module):
    """x (B×C×H×W in [0, 1]) -> logits over ``num_classes`` classes or transformations (``task``); ``features`` is
    the penultimate layer."""

    family = "classifier"
    Config = ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.image_shape, self.num_classes, self.task = config.image_shape, config.num_classes, config.task
        channels, feature_dim = config.channels, config.feature_dim
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
        self.head = nn.Linear(feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations, B×feature_dim."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def classifier_config(image_shape: tuple[int, int, int], num_classes: int | None) -> ClassifierConfig:
    """The feature classifier for images of ``image_shape``: over the ``num_classes`` classes, or over
    TRANSFORMATIONS when the data have no labels (``num_classes`` None)."""
    if num_classes:
        return ClassifierConfig(image_shape, num_classes)
    return ClassifierConfig(image_shape, len(TRANSFORMATIONS), task="transformations")
