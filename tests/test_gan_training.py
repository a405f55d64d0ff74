"""A short real GAN run on digits: finite losses, loadable checkpoints, grids, logs, exact resume, NaN guard."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import device
from pipeline.checkpoint import load_checkpoint, load_model
from pipeline.classifier_trainer import ClassifierTrainer
from pipeline.config import Config, ConfigError, GanParams
from pipeline.data.processed import ProcessedData, load_processed, save_processed
from pipeline.gan_trainer import OUTPUTS, code_grid_rows, train_gan
from pipeline.io import read_json
from pipeline.models.classifier import Classifier
from pipeline.seeds import seed_everything
from pipeline.training import NonFiniteLossError, TrainingOutputs

CONTRACT_KEYS = {"format", "models", "data", "params", "training"}
NETWORKS = {"generator", "generator_ema", "discriminator"}


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
    return dataclasses.replace(Config(), gan=dataclasses.replace(GanParams(), **(settings | gan)))


def outputs(root: Path) -> TrainingOutputs:
    return TrainingOutputs.for_model("gan", root=root, metrics=False)


def weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["models"][name]["weights"]


@pytest.fixture(scope="module")
def digits(digits_processed_dir: Path) -> ProcessedData:
    return load_processed(digits_processed_dir)


@pytest.fixture(scope="module")
def classifier(digits: ProcessedData) -> Classifier:
    seed_everything(0)  # its initial weights (train() seeds them; here the trainer is built directly)
    trainer = ClassifierTrainer(Config(), digits, torch.device("cpu"))
    for epoch in range(3):
        trainer.train_epoch(epoch)
    return trainer.model.eval()


def test_short_run_writes_everything_the_contract_promises(
    digits: ProcessedData, classifier: Classifier, tmp_path: Path
) -> None:
    config = tiny_config(arch="dcgan", base_channels=8, d_steps=2, conditional=True, spectral_norm=True)
    summary = train_gan(config, digits, outputs(tmp_path), classifier=classifier, progress=False)
    card = read_json(tmp_path / "cards" / "train_gan.json")
    assert card["best_by"] == "valid frechet_distance" and card["best_epoch"] in (2, 4)  # the sample epochs
    assert (card["epochs"], card["world_size"], card["effective_batch_size"], card["device"]) == (4, 1, 32, "cpu")
    best = card["best_epoch_metrics"]
    losses = [v for k, v in best.items() if k.startswith("train/")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(best["valid/frechet_distance"]) and 0 <= best["valid/precision"] <= 1
    assert summary == {"valid_fd": best["valid/frechet_distance"]}
    assert not (tmp_path / "metrics").exists()  # the samples' metrics are evaluate_samples'
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(tmp_path / "checkpoints" / "gan" / name)
        assert set(state) >= CONTRACT_KEYS and set(state["models"]) == NETWORKS
        data = {"image_shape": [1, 8, 8], "num_classes": 10, "dataset": "digits", "binarize": "dynamic"}
        assert state["data"] == data
        assert set(state["params"]) == {"seed", "latent_dim", "device", "gan", "evaluate"}
    generator = load_model(tmp_path / "checkpoints" / "gan" / "last.pt", "generator_ema")
    raw = load_model(tmp_path / "checkpoints" / "gan" / "last.pt", "generator")
    z, y = torch.randn(10, config.latent_dim), torch.arange(10)
    with torch.no_grad():
        images = generator(z, y)
        assert not torch.equal(images, raw(z, y))  # the average differs from the last weights
    assert images.shape == (10, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    grids = sorted(p.name for p in (tmp_path / "outputs" / "gan").iterdir())
    assert grids == ["samples.png", "samples_epoch0002.png", "samples_epoch0004.png"]
    # one row of 10 per class: 10 rows of 8×8 images at scale 4 with 1-pixel padding
    assert Image.open(tmp_path / "outputs" / "gan" / "samples.png").size == (4 * (10 * 9 + 1),) * 2
    metrics = tmp_path / "dvclive" / "gan" / "plots" / "metrics"
    d_loss = np.loadtxt(metrics / "train" / "d_loss.tsv", skiprows=1, delimiter="\t")
    steps_per_epoch = math.ceil(200 / 32)
    assert list(d_loss[:, 0]) == list(range(3, 4 * steps_per_epoch + 1, 3)) and np.isfinite(d_loss[:, 1]).all()
    fd = np.loadtxt(metrics / "valid" / "frechet_distance.tsv", skiprows=1, delimiter="\t")
    assert list(fd[:, 0]) == [2 * steps_per_epoch, 4 * steps_per_epoch]


def test_without_a_classifier_best_is_the_last_epoch(digits: ProcessedData, tmp_path: Path) -> None:
    summary = train_gan(tiny_config(epochs=2, loss="hinge"), digits, outputs(tmp_path), progress=False)
    card = read_json(tmp_path / "cards" / "train_gan.json")
    assert summary == {} and card["best_epoch"] == 2 and card["best_by"] == "last epoch"
    best = weights(tmp_path / "checkpoints" / "gan" / "best.pt", "generator_ema")
    last = weights(tmp_path / "checkpoints" / "gan" / "last.pt", "generator_ema")
    assert all(torch.equal(best[k], v) for k, v in last.items())


def test_a_fresh_run_replaces_the_earlier_runs_figures_and_keeps_its_own_first_grid(
    digits: ProcessedData, tmp_path: Path
) -> None:
    image_dir = outputs(tmp_path).image_dir
    image_dir.mkdir(parents=True)
    for name in ("samples_epoch0001.png", "code_category.png"):  # an earlier run's, one of them by the same name
        (image_dir / name).write_bytes(b"an earlier run's figure")
    train_gan(tiny_config(epochs=1, sample_every_epochs=1), digits, outputs(tmp_path), progress=False)
    assert sorted(path.name for path in image_dir.iterdir()) == ["samples.png", "samples_epoch0001.png"]
    assert (image_dir / "samples_epoch0001.png").read_bytes().startswith(b"\x89PNG")


def test_a_budget_that_ends_before_a_sample_epoch_still_scores_and_saves_best(
    digits: ProcessedData, classifier: Classifier, tmp_path: Path
) -> None:
    """The epoch that spends gan.max_minutes is scored like a sample epoch, so best.pt is this run's, not missing
    (or left over from an earlier run)."""
    config = tiny_config(epochs=4, sample_every_epochs=3, max_minutes=1e-6)
    summary = train_gan(config, digits, outputs(tmp_path), classifier=classifier, progress=False)
    card = read_json(tmp_path / "cards" / "train_gan.json")
    assert (
        card["best_epoch"] == 1 and card["best_by"] == "valid frechet_distance" and card["stopped"].startswith("time")
    )
    assert summary == {"valid_fd": card["best_epoch_metrics"]["valid/frechet_distance"]}
    assert load_checkpoint(tmp_path / "checkpoints" / "gan" / "best.pt")["training"]["epoch"] == 1


def test_resuming_with_a_classifier_that_came_later(
    digits: ProcessedData, classifier: Classifier, tmp_path: Path
) -> None:
    """Epochs trained without a classifier were scored by nothing; once one is there, the first scored epoch is best."""
    train_gan(tiny_config(epochs=2), digits, outputs(tmp_path), progress=False)
    train_gan(tiny_config(resume=True), digits, outputs(tmp_path), classifier=classifier, progress=False)
    card = read_json(tmp_path / "cards" / "train_gan.json")
    assert card["best_epoch"] == 4 and card["best_by"] == "valid frechet_distance"


def test_d_steps_count_across_epochs(digits: ProcessedData, tmp_path: Path) -> None:
    """With 7 batches an epoch, d_steps = 10 updates the generator once in two epochs (at step 10, in epoch 2); in
    one epoch it never would, and that run is refused before any work."""
    assert math.ceil(len(digits.x["train"]) / 32) == 7  # batches an epoch at tiny_config's batch size
    train_gan(tiny_config(epochs=2, d_steps=10), digits, outputs(tmp_path), progress=False)
    assert load_checkpoint(tmp_path / "checkpoints" / "gan" / "last.pt")["training"]["state"]["ema_updates"] == 1
    message = r"^gan.d_steps 10 is more than the run's 7 steps \(gan.epochs 1 × 7 batches an epoch\), so the gen"
    with pytest.raises(ConfigError, match=message):
        train_gan(tiny_config(epochs=1, d_steps=10), digits, outputs(tmp_path / "short"), progress=False)
    assert not (tmp_path / "short").exists()


def test_a_budget_spent_before_the_first_generator_update_is_said(
    digits: ProcessedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """gan.max_minutes may end a run that gan.d_steps allows before its first generator update: not refused (the
    settings cannot tell), but said."""
    train_gan(tiny_config(epochs=2, d_steps=10, max_minutes=1e-6), digits, outputs(tmp_path), progress=False)
    assert "gan.d_steps 10: the time budget ended the run before the generator's first update" in caplog.text


def test_too_few_validation_images_for_the_sample_metrics_are_refused_before_training(
    digits: ProcessedData, classifier: Classifier, tmp_path: Path
) -> None:
    few = dataclasses.replace(
        digits, x=digits.x | {"valid": digits.x["valid"][:1]}, y=digits.y | {"valid": digits.y["valid"][:1]}
    )
    with pytest.raises(ValueError, match=r"^the valid split has 1 image\(s\) but the sample metrics need at least 4; "):
        train_gan(tiny_config(), few, outputs(tmp_path), classifier=classifier, progress=False)
    assert not (tmp_path / "checkpoints").exists()
    train_gan(tiny_config(epochs=1), few, outputs(tmp_path), progress=False)  # without a classifier: no metrics


def test_dcgan_trains_under_bf16_autocast_and_keeps_float32_weights(
    digits: ProcessedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device, "CPUINFO", tmp_path / "absent")  # bf16 as asked, whatever this CPU's flags
    config = tiny_config(epochs=1, arch="dcgan", base_channels=4, bf16=True)
    train_gan(config, digits, outputs(tmp_path), progress=False)  # raises NonFiniteLossError on a NaN loss
    generator = weights(tmp_path / "checkpoints" / "gan" / "last.pt", "generator")
    assert all(
        w.dtype == torch.float32 and torch.isfinite(w).all() for w in generator.values() if w.is_floating_point()
    )
    assert read_json(tmp_path / "cards" / "train_gan.json")["autocast"] == "bf16"
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu avx2\n")  # a CPU without native bf16 trains in float32
    monkeypatch.setattr(device, "CPUINFO", tmp_path / "cpuinfo")
    train_gan(config, digits, outputs(tmp_path / "declined"), progress=False)
    assert read_json(tmp_path / "declined" / "cards" / "train_gan.json")["autocast"] == "float32"


@pytest.mark.parametrize(
    "options",
    [
        {"feature_matching": True, "label_smoothing": 0.1, "info_continuous": 1},
        {"loss": "minimax"},
        {"loss": "wgan_gp", "r1_gamma": 1.0, "info_categories": 3, "info_continuous": 1},
    ],
)
def test_resume_equals_an_uninterrupted_run(digits: ProcessedData, tmp_path: Path, options: dict) -> None:
    whole = tiny_config(**options)
    train_gan(whole, digits, outputs(tmp_path / "whole"), progress=False)
    train_gan(tiny_config(epochs=2, **options), digits, outputs(tmp_path / "split"), progress=False)
    train_gan(tiny_config(resume=True, **options), digits, outputs(tmp_path / "split"), progress=False)
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "gan" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "gan" / "last.pt")
    assert a["training"]["epoch"] == b["training"]["epoch"] == 4
    for key in NETWORKS:
        wa, wb = a["models"][key]["weights"], b["models"][key]["weights"]
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), key
    with pytest.raises(ConfigError, match=r"different parameters \(gan.lr_d\)"):
        train_gan(tiny_config(resume=True, lr_d=0.5, **options), digits, outputs(tmp_path / "split"), progress=False)


def test_infogan_learns_codes_its_q_head_recovers_and_draws_one_grid_per_code(
    digits: ProcessedData, tmp_path: Path
) -> None:
    """After a short run, Q(c|g(z, c)) names the category far above chance and tracks the continuous codes; the
    final grids vary one code at a time."""
    config = tiny_config(epochs=40, info_categories=5, info_continuous=2, hidden_sizes=[64], sample_every_epochs=40)
    train_gan(config, digits, outputs(tmp_path), progress=False)
    last = tmp_path / "checkpoints" / "gan" / "last.pt"
    generator, discriminator = load_model(last, "generator"), load_model(last, "discriminator")
    codes = generator.sample_codes(1000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, params = discriminator(
            generator.eval()(torch.randn(1000, generator.latent_dim), None, codes), with_codes=True
        )
    accuracy = (params[:, :5].argmax(1) == codes[:, :5].argmax(1)).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance: 0.2
    correlation = torch.corrcoef(torch.stack([params[:, 5], codes[:, 5]]))[0, 1].item()
    assert correlation > 0.25, correlation  # independent codes: |r| < 0.1 at n = 1000
    image_dir = tmp_path / "outputs" / "gan"
    for name, (width, height) in {"code_category.png": (5, 8), "code_continuous_1.png": (10, 8)}.items():
        with Image.open(image_dir / name) as grid:
            assert (grid.size[0] > grid.size[1]) == (width > height)  # columns: the code's values
    assert sorted(p.name for p in image_dir.glob("code_*.png")) == [
        "code_category.png",
        "code_continuous_0.png",
        "code_continuous_1.png",
    ]


def test_a_conditional_gans_code_grids_show_one_class_per_row() -> None:
    """The fixed grid of a conditional GAN has a row of 10 per class; the code grids take one sample of each class
    (they took the first 8 samples, all of class 0)."""
    fixed_y = torch.arange(10).repeat_interleave(10)
    fixed_z = torch.arange(100.0)[:, None]
    z, y = code_grid_rows(fixed_z, fixed_y, columns=10)
    assert y.tolist() == list(range(8)) and z.flatten().tolist() == [10.0 * k for k in range(8)]
    z, y = code_grid_rows(fixed_z[:20], fixed_y[:20], columns=10)  # two classes: two rows
    assert y.tolist() == [0, 1] and len(z) == 2
    z, y = code_grid_rows(fixed_z[:64], None, columns=8)
    assert y is None and z.flatten().tolist() == list(range(8))


def test_stage_outputs_are_where_dvc_yaml_declares_them() -> None:
    paths = (OUTPUTS.checkpoint_dir, OUTPUTS.live_dir, OUTPUTS.image_dir, OUTPUTS.card_path)
    assert paths == (Path("checkpoints/gan"), Path("dvclive/gan"), Path("outputs/gan"), Path("cards/train_gan.json"))
    assert OUTPUTS.metrics_path is None  # the GAN writes no metrics file


def test_conditional_gan_rejects_unlabeled_data(digits: ProcessedData, tmp_path: Path) -> None:
    unlabeled = dataclasses.replace(digits, y=None)
    with pytest.raises(ConfigError, match="gan.conditional is true but dataset 'digits' has no labels; set gan.cond"):
        train_gan(tiny_config(conditional=True), unlabeled, outputs(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_a_gradient_penalty_weight_without_wgan_gp_is_said_to_do_nothing(
    digits: ProcessedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_gan(tiny_config(loss="hinge", gp_weight=5.0, epochs=1), digits, outputs(tmp_path), progress=False)
    assert "gan.gp_weight 5 has no effect with gan.loss hinge: only wgan_gp has a gradient penalty" in caplog.text
    caplog.clear()
    train_gan(tiny_config(loss="wgan_gp", gp_weight=5.0, epochs=1), digits, outputs(tmp_path / "gp"), progress=False)
    assert "gp_weight" not in caplog.text


def test_non_finite_loss_stops_training_and_names_the_step(digits: ProcessedData, tmp_path: Path) -> None:
    x = {split: images.copy() for split, images in digits.x.items()}
    x["train"][:] = np.nan
    splits = {s: x[s] for s in x}
    save_processed(tmp_path / "bad", splits, digits.y, binarize="none", dataset="npz", num_classes=10, stats={})
    with pytest.raises(NonFiniteLossError, match="discriminator loss is nan at step 1"):
        train_gan(tiny_config(), load_processed(tmp_path / "bad"), outputs(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints" / "gan" / "last.pt").exists()
