"""The feature classifier of the sample-quality metrics: a small CNN trained on the dataset's training split.

Two 3×3 conv blocks (each two convolutions, ReLU, 2×2 max pool) feed a fully connected
``feature_dim`` layer whose activations are the features of the Fréchet distance and of
precision/recall; ``head`` maps them to logits. Images of any size from 8×8 up work. ``task`` says what
the logits are: the dataset's ``classes``, or for a dataset without labels the ``transformations`` of
:data:`TRANSFORMATIONS` (a label-free pretext task, see ``pipeline/classifier_trainer.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.device import to_device
from pipeline.training import load_checkpoint

TASKS = ("classes", "transformations")
# The shape-preserving transformations a classifier learns to tell apart when the data have no labels.
TRANSFORMATIONS = ("identity", "rotate 180°", "flip left-right", "flip top-bottom")


def transform_images(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Image i of ``x`` (B×C×H×W) under TRANSFORMATIONS[which[i]]; rotating by 180° is both flips."""
    flip_left_right = ((which == 1) | (which == 2))[:, None, None, None]
    flip_top_bottom = ((which == 1) | (which == 3))[:, None, None, None]
    x = torch.where(flip_left_right, x.flip(-1), x)
    return torch.where(flip_top_bottom, x.flip(-2), x)


class Classifier(nn.Module):
    """x (B×C×H×W in [0, 1]) -> logits over ``num_classes`` classes or transformations (``task``); ``features`` is
    the penultimate layer."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        task: str = "classes",
        channels: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"classifier task {task!r} is not one of {TASKS}")
        self.image_shape, self.num_classes, self.task = tuple(image_shape), num_classes, task
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
    """The feature classifier for images of ``image_shape``: over the ``num_classes`` classes, or over
    TRANSFORMATIONS when the data have no labels (``num_classes`` None)."""
    if min(image_shape[1:]) < 4:
        raise ValueError(f"the feature classifier needs images of at least 4×4 pixels, got {tuple(image_shape)}")
    if num_classes:
        return Classifier(image_shape, num_classes)
    return Classifier(image_shape, len(TRANSFORMATIONS), task="transformations")


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The classifier of a checkpoint written by the train_classifier stage, in eval mode."""
    state = load_checkpoint(path)
    classifier = build_classifier(tuple(state["data"]["image_shape"]), state["data"]["num_classes"])
    classifier.load_state_dict(state["model"])
    return to_device(classifier, device).eval()
