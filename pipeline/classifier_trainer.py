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

from pipeline.config import Config
from pipeline.data.processed import ProcessedData
from pipeline.device import seed_everything, select_device, to_device
from pipeline.io import write_json
from pipeline.models.classifier import TRANSFORMATIONS, Classifier, build_classifier, transform_images
from pipeline.training import (
    EpochLoop,
    IndexBatches,
    LiveLog,
    TrainingOutputs,
    check_finite,
    data_description,
    device_generator,
    load_checkpoint,
    load_optimizer_state,
    to_device_tensors,
)

log = logging.getLogger(__name__)

BATCH_SIZE = 32
LEARNING_RATE = 1e-3
OUTPUTS = TrainingOutputs.for_model("classifier", metrics_path="metrics/classifier.json")  # no images written


class ClassifierTrainer:
    """The classifier, its optimizer and the device tensors of every split."""

    def __init__(self, config: Config, data: ProcessedData, device: torch.device) -> None:
        self.config, self.data, self.device = config, data, device
        seed_everything(config.seed)
        self.model: Classifier = to_device(build_classifier(data.image_shape, data.num_classes), device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.x = to_device_tensors(data.x, device)
        self.y = to_device_tensors(data.y, device) if data.y is not None else None
        self.batches = IndexBatches(len(data.x["train"]), BATCH_SIZE, config.seed, device)

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
        draws = device_generator(self.device, self.config.seed * 1_000_003 + epoch)
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

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Cross-entropy and accuracy on a split (for the transformations task, image i under transformation i % 4)."""
        self.model.eval()
        which = torch.arange(len(self.x[split]), device=self.device) % len(TRANSFORMATIONS)
        x, y = self._inputs_and_targets(self.x[split], None if self.y is None else self.y[split], which)
        logits = torch.cat([self.model(batch) for batch in x.split(500)])
        return {
            "loss": F.cross_entropy(logits, y).item(),
            "accuracy": (logits.argmax(1) == y).double().mean().item(),
        }

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "data": data_description(self.data, self.data.num_classes),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        load_optimizer_state(self.optimizer, saved["optimizer"])


def train_classifier(
    config: Config, data: ProcessedData, outputs: TrainingOutputs = OUTPUTS, progress: bool = True
) -> dict:
    """Train the feature classifier; writes checkpoints, dvclive logs and the metrics JSON it returns."""
    trainer = ClassifierTrainer(config, data, select_device(config.device))
    live = LiveLog(outputs.live_dir)
    loop = EpochLoop(
        epochs=config.evaluate.classifier_epochs,
        checkpoint_dir=outputs.checkpoint_dir,
        monitor="accuracy",
        train_epoch=trainer.train_epoch,
        validate=lambda epoch: trainer.evaluate("valid"),
        state=trainer.state,
        restore=trainer.restore,
        log=live,
        live=live,
        progress=progress,
    )
    best = loop.run()
    trainer.model.load_state_dict(load_checkpoint(loop.best_path, trainer.device)["model"])
    test = trainer.evaluate("test")
    summary = {
        "task": trainer.model.task,
        "best_epoch": best["epoch"],
        "epochs": config.evaluate.classifier_epochs,
        "valid_accuracy": best["value"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "chance_accuracy": 1.0 / trainer.model.num_classes,
    }
    write_json(outputs.metrics_path, summary)
    live.end()
    log.info(
        "train_classifier: %s, best epoch %d, test accuracy %.4f", trainer.model.task, best["epoch"], test["accuracy"]
    )
    return summary
