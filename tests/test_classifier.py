"""The feature classifier: learns digits well above chance, writes checkpoint and metrics, rejects unlabeled data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.classifier_trainer import OUTPUTS, train_classifier
from pipeline.config import Config, EvaluateConfig
from pipeline.data.processed import load_processed, save_processed
from pipeline.io import read_json
from pipeline.models.classifier import load_classifier
from pipeline.training import LabelError, TrainingOutputs


def outputs(root: Path) -> TrainingOutputs:
    return TrainingOutputs(root / "checkpoints", root / "dvclive", root / "outputs", root / "metrics.json")


def test_stage_outputs_are_where_dvc_yaml_declares_them() -> None:
    paths = (OUTPUTS.checkpoint_dir, OUTPUTS.live_dir, OUTPUTS.metrics_path)
    assert paths == (Path("checkpoints/classifier"), Path("dvclive/classifier"), Path("metrics/classifier.json"))


def test_classifier_learns_digits_well_above_chance(digits_processed_dir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), evaluate=dataclasses.replace(EvaluateConfig(), classifier_epochs=25))
    data = load_processed(digits_processed_dir)
    summary = train_classifier(config, data, outputs(tmp_path), progress=False)
    assert summary["test_accuracy"] >= 0.8 > 0.1 == summary["chance_accuracy"]
    assert read_json(tmp_path / "metrics.json") == summary
    assert (tmp_path / "dvclive" / "plots" / "metrics" / "valid" / "accuracy.tsv").exists()
    state = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert state["data"]["num_classes"] == 10 and "model" in state
    classifier = load_classifier(tmp_path / "checkpoints" / "best.pt")
    x = torch.from_numpy(data.x["test"])
    with torch.no_grad():
        accuracy = (classifier(x).argmax(1).numpy() == data.y["test"]).mean()
        features = classifier.features(x)
    assert accuracy == pytest.approx(summary["test_accuracy"])
    assert features.shape == (len(x), 128)
    assert torch.allclose(classifier.head(features), classifier(x))


def test_unlabeled_data_is_rejected_before_training(tmp_path: Path) -> None:
    x = np.zeros((6, 1, 8, 8), np.uint8)
    splits = {"train": x, "valid": x[:2], "test": x[:2]}
    save_processed(tmp_path / "data", splits, None, binarize="none", dataset="npz", num_classes=None, stats={})
    with pytest.raises(LabelError, match="dataset 'npz' has none; use a labelled dataset"):
        train_classifier(Config(), load_processed(tmp_path / "data"), outputs(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
