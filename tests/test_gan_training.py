"""A short real GAN run on digits: finite losses, loadable checkpoints, grids, logs, exact resume, NaN guard."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.classifier_trainer import ClassifierTrainer
from pipeline.config import Config, ConfigError, GanConfig
from pipeline.data.processed import ProcessedData, load_processed, save_processed
from pipeline.gan_trainer import OUTPUTS, train_gan
from pipeline.io import read_json
from pipeline.models.classifier import Classifier
from pipeline.models.gan import load_generator
from pipeline.training import LabelError, NonFiniteLossError, TrainingOutputs

CONTRACT_KEYS = {"config", "data", "generator", "generator_ema", "discriminator"}


def tiny_config(**gan: object) -> Config:
    settings = {
        "hidden_sizes": [32],
        "epochs": 4,
        "batch_size": 32,
        "lr_g": 1e-3,
        "lr_d": 1e-3,
        "sample_every_epochs": 2,
        "log_every_steps": 3,
    }
    return dataclasses.replace(Config(), gan=dataclasses.replace(GanConfig(), **(settings | gan)))


def outputs(root: Path) -> TrainingOutputs:
    return TrainingOutputs(root / "checkpoints", root / "dvclive", root / "images", root / "metrics.json")


@pytest.fixture(scope="module")
def digits(digits_processed_dir: Path) -> ProcessedData:
    return load_processed(digits_processed_dir)


@pytest.fixture(scope="module")
def classifier(digits: ProcessedData) -> Classifier:
    trainer = ClassifierTrainer(Config(), digits, torch.device("cpu"))
    for epoch in range(3):
        trainer.train_epoch(epoch)
    return trainer.model.eval()


def test_short_run_writes_everything_the_contract_promises(
    digits: ProcessedData, classifier: Classifier, tmp_path: Path
) -> None:
    config = tiny_config(arch="dcgan", base_channels=8, d_steps=2, conditional=True, spectral_norm=True)
    summary = train_gan(config, digits, outputs(tmp_path), classifier=classifier, progress=False)
    assert summary["best_by"] == "valid frechet_distance" and summary["best_epoch"] in (1, 3)
    losses = [v for k, v in summary.items() if k.startswith("best_epoch_train_")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(summary["valid_frechet_distance"]) and 0 <= summary["valid_precision"] <= 1
    assert read_json(tmp_path / "metrics.json") == summary
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert set(state) >= CONTRACT_KEYS
        data = {"image_shape": [1, 8, 8], "num_classes": 10, "dataset": "digits", "binarize": "dynamic"}
        assert state["data"] == data
    generator = load_generator(tmp_path / "checkpoints" / "last.pt")
    raw = load_generator(tmp_path / "checkpoints" / "last.pt", ema=False)
    z, y = torch.randn(10, config.latent_dim), torch.arange(10)
    with torch.no_grad():
        images = generator(z, y)
        assert not torch.equal(images, raw(z, y))  # the average differs from the last weights
    assert images.shape == (10, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    grids = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert grids == ["samples.png", "samples_epoch0002.png", "samples_epoch0004.png"]
    # one row of 10 per class: 10 rows of 8×8 images at scale 4 with 1-pixel padding
    assert Image.open(tmp_path / "images" / "samples.png").size == (4 * (10 * 9 + 1),) * 2
    metrics = tmp_path / "dvclive" / "plots" / "metrics"
    d_loss = np.loadtxt(metrics / "train" / "d_loss.tsv", skiprows=1, delimiter="\t")
    steps_per_epoch = math.ceil(200 / 32)
    assert list(d_loss[:, 0]) == list(range(3, 4 * steps_per_epoch + 1, 3)) and np.isfinite(d_loss[:, 1]).all()
    fd = np.loadtxt(metrics / "valid" / "frechet_distance.tsv", skiprows=1, delimiter="\t")
    assert list(fd[:, 0]) == [2 * steps_per_epoch, 4 * steps_per_epoch]


def test_without_a_classifier_best_is_the_last_epoch(digits: ProcessedData, tmp_path: Path) -> None:
    summary = train_gan(tiny_config(epochs=2, loss="hinge"), digits, outputs(tmp_path), progress=False)
    assert summary["best_epoch"] == 1 and summary["best_by"] == "last epoch"
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(best["generator_ema"][k], v) for k, v in last["generator_ema"].items())


@pytest.mark.parametrize("options", [{"feature_matching": True, "label_smoothing": 0.1}, {"loss": "minimax"}])
def test_resume_equals_an_uninterrupted_run(digits: ProcessedData, tmp_path: Path, options: dict) -> None:
    whole = tiny_config(**options)
    train_gan(whole, digits, outputs(tmp_path / "whole"), progress=False)
    train_gan(tiny_config(epochs=2, **options), digits, outputs(tmp_path / "split"), progress=False)
    train_gan(tiny_config(resume=True, **options), digits, outputs(tmp_path / "split"), progress=False)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("generator", "generator_ema", "discriminator"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    with pytest.raises(ConfigError, match=r"different parameters \(gan.lr_d\)"):
        train_gan(tiny_config(resume=True, lr_d=0.5, **options), digits, outputs(tmp_path / "split"), progress=False)


def test_stage_outputs_are_where_dvc_yaml_declares_them() -> None:
    paths = (OUTPUTS.checkpoint_dir, OUTPUTS.live_dir, OUTPUTS.image_dir, OUTPUTS.metrics_path)
    assert paths == (Path("checkpoints/gan"), Path("dvclive/gan"), Path("outputs/gan"), Path("metrics/gan_train.json"))


def test_conditional_gan_rejects_unlabeled_data(digits: ProcessedData, tmp_path: Path) -> None:
    unlabeled = dataclasses.replace(digits, y=None)
    with pytest.raises(LabelError, match="gan.conditional is true but dataset 'digits' has no labels; set gan.cond"):
        train_gan(tiny_config(conditional=True), unlabeled, outputs(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_non_finite_loss_stops_training_and_names_the_step(digits: ProcessedData, tmp_path: Path) -> None:
    x = {split: images.copy() for split, images in digits.x.items()}
    x["train"][:] = np.nan
    splits = {s: x[s] for s in x}
    save_processed(tmp_path / "bad", splits, digits.y, binarize="none", dataset="npz", num_classes=10, stats={})
    with pytest.raises(NonFiniteLossError, match="discriminator loss is nan at step 1"):
        train_gan(tiny_config(), load_processed(tmp_path / "bad"), outputs(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
