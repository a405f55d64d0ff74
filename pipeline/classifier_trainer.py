"""Training the feature classifier of the sample-quality metrics on the dataset's training split.

Adam (lr 1e-3, batch 32) on the cross-entropy of the images for ``evaluate.classifier_epochs``
epochs; best.pt is the epoch with the highest validation accuracy, and its test accuracy is reported
(a classifier that cannot tell the classes apart gives features that cannot tell samples apart).
A dataset without labels (an image folder without class subfolders, an npz without y_*) gets a
label-free pretext task instead: tell which of four shape-preserving transformations (identity, 180°
rotation, either flip) was applied, as in RotNet (Gidaris et al. 2018) with flips so that any H×W works.
Training draws a transformation per image and step; validation and test use a fixed one per image.
Single process: the classifier trains in seconds on every dataset here.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import model_from_state
from pipeline.config import Config
from pipeline.data.processed import ProcessedData
from pipeline.device import to_device
from pipeline.models.classifier import TRANSFORMATIONS, Classifier, classifier_config, transform_images
from pipeline.seeds import stream_seed, torch_generator
from pipeline.training import (
    IndexBatches,
    TrainingOutputs,
    check_finite,
    load_optimizer_state,
    to_device_tensors,
    train,
)

log = logging.getLogger(__name__)

# what train_classifier's outputs depend on (dvc.yaml declares the same; a test checks both against what it reads)
PARAMS = ("seed", "device", "evaluate.classifier_epochs")
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
OUTPUTS = TrainingOutputs.for_model("classifier", images=False)


class ClassifierTrainer:
    """The classifier, its optimizer and the device tensors of every split (a :class:`pipeline.training.Trainer`)."""

    name = "classifier"
    monitor = "accuracy"
    higher_is_better = True
    resumable = ()
    patience = None
    max_minutes = None
    memory_settings = ()  # a fixed batch size and network for the data's image shape

    def __init__(self, config: Config, data: ProcessedData, device: torch.device) -> None:
        self.config, self.data, self.device = config, data, device
        self.epochs = config.evaluate.classifier_epochs
        self.model: Classifier = to_device(Classifier(classifier_config(data.image_shape, data.num_classes)), device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.x = to_device_tensors(data.x, device)
        self.y = to_device_tensors(data.y, device) if data.y is not None else None
        self.batches = IndexBatches(
            len(data.x["train"]), BATCH_SIZE, stream_seed(config.seed, "classifier", "batches"), device
        )

    def _inputs_and_targets(
        self, x: torch.Tensor, y: torch.Tensor | None, which: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets): the labels, or for the transformations task the images under ``which``."""
        if self.model.task == "classes":
            return x, y
        return transform_images(x, which), which

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        # the transformations drawn in an epoch depend on the seed and the epoch alone, so resuming repeats them
        draws = torch_generator(self.device, self.config.seed, "classifier", "transformations", epoch)
        for i, idx in enumerate(self.batches.epoch(epoch)):
            which = torch.randint(len(TRANSFORMATIONS), idx.shape, generator=draws, device=self.device)
            labels = None if self.y is None else self.y["train"][idx]
            inputs, targets = self._inputs_and_targets(self.x["train"][idx], labels, which)
            loss = F.cross_entropy(self.model(inputs), targets)
            check_finite(loss, epoch * len(self.batches) + i + 1)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sums += torch.stack([loss.detach().double() * len(idx), loss.new_tensor(len(idx)).double()])
        return {"loss": (sums[0] / sums[1]).item()}

    def validate(self, epoch: int, progress: float) -> dict[str, float]:
        return self.evaluate("valid")

    @torch.no_grad()
    def evaluate(self, split: str, model: Classifier | None = None) -> dict[str, float]:
        """Cross-entropy and accuracy on a split (for the transformations task, image i under transformation i % 4)."""
        model = model or self.model
        model.eval()
        which = torch.arange(len(self.x[split]), device=self.device) % len(TRANSFORMATIONS)
        x, y = self._inputs_and_targets(self.x[split], None if self.y is None else self.y[split], which)
        logits = torch.cat([model(batch) for batch in x.split(500)])
        return {
            "loss": F.cross_entropy(logits, y).item(),
            "accuracy": (logits.argmax(1) == y).double().mean().item(),
        }

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict[str, Any], progress: float) -> None:
        load_optimizer_state(self.optimizer, state["optimizer"])

    def rank_state(self) -> dict[str, Any]:
        return {}

    def restore_rank(self, state: dict[str, Any]) -> None:
        """Nothing: the classifier's draws depend on the seed and epoch alone."""

    def log_records(self, epoch: int, metrics: dict[str, float]) -> list[tuple[int, dict[str, float]]]:
        return [(epoch + 1, metrics)]

    def finish(self, best: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The best epoch's test accuracy (the metric); its task, loss and chance level (the card)."""
        test = self.evaluate("test", to_device(model_from_state(best, "model"), self.device))
        card = {"task": self.model.task, "test": test, "chance_accuracy": 1.0 / self.model.num_classes}
        return {"accuracy": test["accuracy"]}, card


def train_classifier(
    config: Config, data: ProcessedData, outputs: TrainingOutputs = OUTPUTS, progress: bool = True
) -> dict:
    """Train the feature classifier (single process); writes checkpoints, dvclive logs, the metrics JSON it returns
    and the run card."""
    return train(lambda ctx: ClassifierTrainer(config, data, ctx.device), outputs, config, data, PARAMS, None, progress)
