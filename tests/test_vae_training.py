"""Training the VAE: overfitting, exact resume, NaN handling, label checks, checkpoints and the train_vae stage."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from pipeline.config import Config, ConfigError
from pipeline.data.processed import ProcessedData, load_processed
from pipeline.distributed import DistContext
from pipeline.training import (
    TRAINING_ERRORS,
    MemoryExhaustedError,
    NonFiniteLossError,
    TrainingOutputs,
    adamw_parameter_groups,
    normalize_gradients_,
    run_progress,
    update_ema,
)
from pipeline.vae_trainer import OUTPUTS, PARAMS, VaeTrainer, build_vae, train_vae, vae_config

REPO = Path(__file__).resolve().parents[1]
CPU = DistContext(0, 1, torch.device("cpu"))


def _config(latent_dim: int = 4, **vae) -> Config:
    vae = {"hidden_sizes": [32], "batch_size": 32, "epochs": 2, "lr": 3e-3} | vae
    return Config(latent_dim=latent_dim, device="cpu", vae=dataclasses.replace(Config().vae, **vae))


def _outputs(root: Path) -> TrainingOutputs:
    return TrainingOutputs.for_model("vae", root)


def _grey(data: ProcessedData) -> ProcessedData:
    return dataclasses.replace(data, binarize="none")


def test_tiny_model_overfits_a_handful_of_images(digits_processed_dir: Path) -> None:
    x = (load_processed(digits_processed_dir).x["train"][:8] > 0.5).astype(np.float32)
    data = ProcessedData(
        x={s: x for s in ("train", "valid", "test")}, y=None, binarize="static", num_classes=None, dataset="d"
    )
    trainer = VaeTrainer(_config(latent_dim=8, hidden_sizes=[64], batch_size=8), data, CPU)
    before = trainer.evaluate("test")
    for epoch in range(300):
        trainer.train_epoch(epoch)
    after = trainer.evaluate("test")
    assert before["reconstruction"] < -40
    assert after["reconstruction"] > -4 and after["bound"] > -12, after


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["models"]["model"]["weights"]


def test_resumed_run_ends_with_bit_identical_weights(digits_processed_dir: Path, tmp_path: Path) -> None:
    data = load_processed(digits_processed_dir)
    straight = _outputs(tmp_path / "straight")
    train_vae(_config(epochs=4, kl_warmup_epochs=2, mc_samples=2), data, straight, progress=False)
    interrupted = _outputs(tmp_path / "interrupted")
    train_vae(_config(epochs=2, kl_warmup_epochs=2, mc_samples=2), data, interrupted, progress=False)
    resumed = _config(epochs=4, kl_warmup_epochs=2, mc_samples=2, resume=True)
    train_vae(resumed, data, interrupted, progress=False)
    a, b = _weights(straight.checkpoint_dir / "last.pt"), _weights(interrupted.checkpoint_dir / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(straight.metrics_path.read_text()) == json.loads(interrupted.metrics_path.read_text())
    assert json.loads(straight.card_path.read_text()) == json.loads(interrupted.card_path.read_text())
    steps = json.loads((interrupted.live_dir / "metrics.json").read_text())["step"]
    assert steps == 4  # epochs are logged 1-based


def test_update_ema_follows_the_model_at_first_then_averages_at_its_decay() -> None:
    model, average = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    for updates, d in ((0, 0.1), (10_000, 0.99)):  # d = min(decay, (1 + t) / (10 + t))
        before, target = average.weight.detach().clone(), model.weight.detach()
        update_ema(average, model, decay=0.99, updates=updates)
        assert torch.allclose(average.weight, d * before + (1 - d) * target)


@pytest.mark.parametrize("family", ["vae", "hvae"])
def test_he_init_redraws_the_layers_weights_and_nothing_else(family: str) -> None:
    """vae.init: he draws every linear weight from N(0, 2/fan_in); biases, the flow's gate bias and the
    pseudo-inputs are what the default initialization gives from the same seed."""
    vae = {"family": family, "arch": "gated_mlp", "hidden_sizes": [300], "prior": "vampprior", "pseudo_inputs": 5}
    vae |= {"flow_steps": 1, "flow_hidden": 300} if family == "vae" else {}
    models = {}
    for init in ("torch", "he"):
        torch.manual_seed(0)
        models[init] = dict(build_vae(_config(latent_dim=20, init=init, **vae), (1, 28, 28), None).named_parameters())
    redrawn = set()
    for name, he in models["he"].items():
        default = models["torch"][name]
        if name.endswith("weight") and he.dim() == 2:
            redrawn.add(name)
            expected = math.sqrt(2 / he.shape[1])
            assert abs(he.std().item() / expected - 1) < 0.1 and he.mean().abs() < 0.1 * expected, name
            assert abs(default.std().item() / (expected / math.sqrt(6)) - 1) < 0.1, name
        else:
            assert torch.equal(he, default), name
    assert len(redrawn) >= 6 and "pseudo_inputs_raw" in models["he"]


@pytest.mark.parametrize("family", ["vae", "hvae"])
def test_pseudo_init_data_starts_the_pseudo_inputs_at_training_images_and_they_train(
    family: str, digits_processed_dir: Path
) -> None:
    data = load_processed(digits_processed_dir)
    vae = {"family": family, "prior": "vampprior", "pseudo_inputs": 6, "pseudo_init": "data", "ema_decay": 0.99}
    trainer = VaeTrainer(_config(**vae), data, CPU)
    start = trainer.model.pseudo_inputs().detach().clone()
    assert torch.equal(trainer.average.pseudo_inputs(), start)
    train = torch.from_numpy(data.x["train"])
    for u in start:  # each is a training image pulled into [0.05, 0.95], where hardtanh passes gradient
        assert any(torch.allclose(u, 0.05 + 0.9 * x) for x in train)
    assert len({tuple(u.flatten().tolist()) for u in start}) == 6
    again = VaeTrainer(_config(**vae), data, CPU).model.pseudo_inputs()
    assert torch.equal(again, start)
    trainer.train_epoch(0)
    assert not torch.equal(trainer.model.pseudo_inputs(), start)
    constant = VaeTrainer(_config(**vae | {"pseudo_init": "constant"}), data, CPU).model.pseudo_inputs()
    assert abs(constant.mean().item() - 0.05) < 0.01


def test_normalize_gradients_gives_every_tensor_a_unit_gradient_in_the_same_direction() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    (model(torch.randn(5, 3)) ** 2).sum().mul(1e4).backward()
    before = [p.grad.clone() for p in model.parameters()]
    normalize_gradients_(model)
    for grad, old in zip((p.grad for p in model.parameters()), before, strict=True):
        assert torch.linalg.vector_norm(grad).item() == pytest.approx(1.0, rel=1e-5)
        assert torch.allclose(grad * torch.linalg.vector_norm(old), old, rtol=1e-5)


def test_vae_normalize_gradients_changes_training_and_stays_finite(digits_processed_dir: Path) -> None:
    """Adam's first step does not depend on the gradient's scale, its later ones do: the same seeded epoch ends
    elsewhere with vae.normalize_gradients, and still trains."""
    data = load_processed(digits_processed_dir)
    weights, bounds = {}, {}
    for normalize in (False, True):
        trainer = VaeTrainer(_config(normalize_gradients=normalize), data, CPU)
        bounds[normalize] = [trainer.train_epoch(epoch)["bound"] for epoch in range(2)]
        weights[normalize] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert not torch.allclose(weights[False], weights[True])
    assert all(math.isfinite(b) for b in bounds[True]) and bounds[True][1] > bounds[True][0]


def test_weight_decay_shrinks_the_layers_weights_and_nothing_else(digits_processed_dir: Path) -> None:
    """With zero gradients Adam's step is zero, so one AdamW step is the decay alone: w <- (1 - lr·λ) w on the
    linear layers' weights; biases and the VampPrior's pseudo-inputs stay where they are."""
    data = load_processed(digits_processed_dir)
    vampprior = {"arch": "gated_mlp", "prior": "vampprior", "pseudo_inputs": 3}
    plain = VaeTrainer(_config(**vampprior), data, CPU)
    assert len(plain.optimizer.param_groups) == 1 and plain.optimizer.param_groups[0]["weight_decay"] == 0
    trainer = VaeTrainer(_config(lr=0.01, weight_decay=0.5, **vampprior), data, CPU)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    for p in trainer.model.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    decayed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert decayed and all(name.endswith("weight") for name in decayed)
    assert "pseudo_inputs_raw" not in decayed and not any(name.endswith("bias") for name in decayed)
    for name in decayed:
        assert torch.allclose(dict(trainer.model.named_parameters())[name], (1 - 0.01 * 0.5) * before[name])
    groups = adamw_parameter_groups(trainer.model, 0.5)
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))
    assert len(decayed) == len(groups[0]["params"])


def test_polyak_average_is_the_validated_and_checkpointed_model_and_a_resume_is_exact(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    data = load_processed(digits_processed_dir)
    ema = {"ema_decay": 0.9, "kl_warmup_epochs": 2}
    straight = _outputs(tmp_path / "straight")
    train_vae(_config(epochs=3, **ema), data, straight, progress=False)
    interrupted = _outputs(tmp_path / "interrupted")
    train_vae(_config(epochs=2, **ema), data, interrupted, progress=False)
    train_vae(_config(epochs=3, resume=True, **ema), data, interrupted, progress=False)
    a, b = (load_checkpoint(o.checkpoint_dir / "last.pt") for o in (straight, interrupted))
    for name in ("model", "model_unaveraged"):
        weights = a["models"][name]["weights"]
        assert all(torch.equal(weights[k], b["models"][name]["weights"][k]) for k in weights)
    average, trained = a["models"]["model"]["weights"], a["models"]["model_unaveraged"]["weights"]
    assert any(not torch.equal(average[k], trained[k]) for k in average)
    # the logged valid/bound is the average's, valid/unaveraged_bound the trained weights'
    trainer = VaeTrainer(_config(**ema), data, CPU)
    trainer.average.load_state_dict(average)
    trainer.model.load_state_dict(trained)
    logged = a["training"]["history"][-1][1]
    assert trainer.evaluate("valid")["bound"] == pytest.approx(logged["valid/bound"], abs=1e-9)
    assert trainer.evaluate("valid", model=trainer.model)["bound"] == pytest.approx(
        logged["valid/unaveraged_bound"], abs=1e-9
    )
    assert logged["valid/bound"] != logged["valid/unaveraged_bound"]
    assert load_model(straight.checkpoint_dir / "best.pt").state_dict().keys() == average.keys()


def test_conv_vae_resumes_bit_identically_from_a_checkpoint_in_the_default_layout(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    """On the CPU conv weights train channels-last; a checkpoint written in the default layout (as on a GPU) must
    resume to the same weights: fused Adam reads its moments as flat memory, so they are laid out like the weights."""
    data = load_processed(digits_processed_dir)
    conv = {"arch": "conv", "conv_channels": [4, 8], "kl_warmup_epochs": 1}
    straight = _outputs(tmp_path / "straight")
    train_vae(_config(epochs=3, **conv), data, straight, progress=False)
    interrupted = _outputs(tmp_path / "interrupted")
    train_vae(_config(epochs=2, **conv), data, interrupted, progress=False)
    state = load_checkpoint(interrupted.checkpoint_dir / "last.pt")
    optimizer = state["training"]["state"]["optimizer"]
    moments = [v for s in optimizer["state"].values() for v in s.values() if v.dim() == 4]
    assert any(not v.is_contiguous() for v in moments)  # written channels-last
    weights = state["models"]["model"]["weights"]
    state["models"]["model"]["weights"] = {k: v.contiguous() for k, v in weights.items()}
    for per_param in optimizer["state"].values():
        per_param.update({k: v.contiguous() for k, v in per_param.items()})
    save_checkpoint(interrupted.checkpoint_dir / "last.pt", state)
    train_vae(_config(epochs=3, resume=True, **conv), data, interrupted, progress=False)
    a, b = _weights(straight.checkpoint_dir / "last.pt"), _weights(interrupted.checkpoint_dir / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_trained_with_other_params(digits_processed_dir: Path, tmp_path: Path) -> None:
    data, outputs = load_processed(digits_processed_dir), _outputs(tmp_path)
    train_vae(_config(epochs=1), data, outputs, progress=False)
    with pytest.raises(ConfigError, match="vae.lr"):
        train_vae(_config(epochs=2, lr=1e-4, resume=True), data, outputs, progress=False)


def test_resume_compares_only_what_the_training_depends_on(digits_processed_dir: Path, tmp_path: Path) -> None:
    """A changed GAN setting never blocks resuming the VAE; other data, fewer epochs than trained are refused."""
    data, outputs = load_processed(digits_processed_dir), _outputs(tmp_path)
    train_vae(_config(epochs=1), data, outputs, progress=False)
    other_gan = dataclasses.replace(_config(epochs=2, resume=True), gan=dataclasses.replace(Config().gan, epochs=7))
    assert train_vae(other_gan, data, outputs, progress=False)
    with pytest.raises(ConfigError, match="vae.epochs: 1 is below the 2 epochs last.pt has trained"):
        train_vae(_config(epochs=1, resume=True), data, outputs, progress=False)
    grey = _grey(data)
    with pytest.raises(ConfigError, match="vae.resume: last.pt was trained on other data"):
        train_vae(_config(epochs=3, resume=True), grey, outputs, progress=False)
    # a last.pt written before checkpoints recorded class names (none here) resumes on the same data with names
    named = dataclasses.replace(data, class_names=tuple("abcdefghij"))
    assert "class_names" not in load_checkpoint(outputs.last_path)["data"]
    assert train_vae(_config(epochs=3, resume=True), named, outputs, progress=False)
    assert load_checkpoint(outputs.last_path)["data"]["class_names"] == list("abcdefghij")


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    digits_processed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, outputs = _grey(load_processed(digits_processed_dir)), _outputs(tmp_path)
    config = _config(epochs=2, likelihood="gaussian")
    train_vae(config, data, outputs, progress=False)
    last = (outputs.checkpoint_dir / "last.pt").read_bytes()
    train_epoch = VaeTrainer.train_epoch

    def on_corrupted_images(self: VaeTrainer, epoch: int) -> dict:  # the resume checks the data: corrupted after it
        self.x["train"][:, 0, 3, 3] = math.inf
        return train_epoch(self, epoch)

    monkeypatch.setattr(VaeTrainer, "train_epoch", on_corrupted_images)
    steps_per_epoch = -(-200 // 32)
    resumed = dataclasses.replace(config, vae=dataclasses.replace(config.vae, epochs=3, resume=True))
    with pytest.raises(NonFiniteLossError, match=f"at step {2 * steps_per_epoch + 1};"):
        train_vae(resumed, data, outputs, progress=False)
    assert (outputs.checkpoint_dir / "last.pt").read_bytes() == last
    assert load_model(outputs.checkpoint_dir / "last.pt").latent_dim == 4


def test_a_run_that_fails_midway_leaves_no_card_metrics_or_figures_of_the_weights_it_replaced(
    digits_processed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, outputs = load_processed(digits_processed_dir), _outputs(tmp_path)
    train_vae(_config(epochs=2), data, outputs, progress=False)
    assert outputs.card_path.exists() and outputs.metrics_path.exists() and outputs.figures()
    train_epoch = VaeTrainer.train_epoch

    def fails_in_the_second_epoch(self: VaeTrainer, epoch: int) -> dict:
        if epoch == 1:
            raise OSError("No space left on device")
        return train_epoch(self, epoch)

    monkeypatch.setattr(VaeTrainer, "train_epoch", fails_in_the_second_epoch)
    with pytest.raises(OSError, match="No space left"):
        train_vae(_config(epochs=2, lr=1e-4), data, outputs, progress=False)
    assert load_checkpoint(outputs.last_path)["training"]["epoch"] == 1  # the new run's weights (the old had 2)
    assert not outputs.card_path.exists() and not outputs.metrics_path.exists() and not outputs.figures()


def test_stage_outputs_are_where_dvc_yaml_declares_them() -> None:
    paths = (OUTPUTS.checkpoint_dir, OUTPUTS.live_dir, OUTPUTS.image_dir, OUTPUTS.metrics_path, OUTPUTS.card_path)
    assert paths == (
        Path("checkpoints/vae"),
        Path("dvclive/vae"),
        Path("outputs/vae"),
        Path("metrics/train_vae.json"),
        Path("cards/train_vae.json"),
    )


def test_conditional_model_rejects_unlabelled_data(digits_processed_dir: Path, tmp_path: Path) -> None:
    data = dataclasses.replace(load_processed(digits_processed_dir), y=None, num_classes=None)
    with pytest.raises(ConfigError, match="vae.conditional is true but dataset 'digits' has no labels; set vae.cond"):
        train_vae(_config(conditional=True), data, _outputs(tmp_path), progress=False)
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_gaussian_decoder_on_binarized_data_is_rejected(digits_processed_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.binarize: none"):
        train_vae(
            _config(likelihood="gaussian"), load_processed(digits_processed_dir), _outputs(tmp_path), progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_conditional_gaussian_run_writes_weights_only_checkpoints_and_figures(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    data, outputs = _grey(load_processed(digits_processed_dir)), _outputs(tmp_path)
    config = _config(latent_dim=2, arch="conv", conv_channels=[8, 16], likelihood="gaussian", conditional=True)
    summary = train_vae(config, data, outputs, progress=False)
    state = torch.load(outputs.checkpoint_dir / "best.pt", weights_only=True)
    assert state["params"] == config.select(PARAMS)
    assert state["data"] == {"image_shape": [1, 8, 8], "num_classes": 10, "dataset": "digits", "binarize": "none"}
    assert state["models"]["model"]["family"] == "vae"
    assert state["models"]["model"]["config"] == dataclasses.asdict(vae_config(config, (1, 8, 8), 10))
    model = load_model(outputs.checkpoint_dir / "best.pt")
    assert (model.num_classes, model.likelihood, model.latent_dim) == (10, "gaussian", 2)
    names = sorted(p.name for p in outputs.image_dir.iterdir())
    assert names == ["interpolation.png", "manifold.png", "reconstructions.png", "samples.png"]
    from PIL import Image

    samples = Image.open(outputs.image_dir / "samples.png")
    assert samples.height == (10 * 9 + 1) * 7  # one row of 8×8 images per class, scaled 7×
    card = json.loads(outputs.card_path.read_text())
    assert set(summary) == {"train", "valid"} and json.loads(outputs.metrics_path.read_text()) == summary
    assert card["test"]["bits_per_dim"] > 0 and card["bound"] == "elbo"
    assert 1 <= card["best_epoch"] <= card["epochs"] == 2


def test_train_vae_stage_runs_as_a_subprocess(digits_processed_dir: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    params["vae"] |= {"epochs": 3, "iwae_k": 3, "hidden_sizes": [32]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stages", "train_vae", "--data-dir", str(digits_processed_dir)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train_vae: best epoch's bound" in done.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoints/vae").iterdir()) == ["best.pt", "last.pt"]
    metrics = json.loads((tmp_path / "metrics/train_vae.json").read_text())
    assert set(metrics) == {"train", "valid"}
    card = json.loads((tmp_path / "cards/train_vae.json").read_text())
    assert card["bound"] == "iwae_3" and card["test"]["bound"] >= card["test"]["elbo"] - 1.0
    live = json.loads((tmp_path / "dvclive/vae/metrics.json").read_text())
    assert set(live["valid"]) >= {"bound", "elbo", "reconstruction", "kl", "active_units"} and live["step"] == 3
    assert len((tmp_path / "dvclive/vae/plots/metrics/valid/elbo.tsv").read_text().splitlines()) == 4
    assert (tmp_path / "outputs/vae/samples.png").exists()

    params["vae"]["conditional"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    unlabelled = tmp_path / "unlabelled"
    data = load_processed(digits_processed_dir)
    from pipeline.data.processed import save_processed

    save_processed(unlabelled, data.x, None, binarize="dynamic", dataset="digits", num_classes=None, stats={})
    command[-1] = str(unlabelled)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "vae.conditional is true" in done.stderr and "Traceback" not in done.stderr


def test_patience_ends_training_early_and_a_resume_with_more_patience_continues(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    """With lr so small that nothing improves after the first epochs, patience 3 ends the run long before
    vae.epochs; the card says why; resuming with a larger patience trains on from last.pt."""
    data = load_processed(digits_processed_dir)
    outputs = _outputs(tmp_path)
    config = _config(epochs=50, patience=3, lr=1e-9, lr_schedule="plateau", lr_patience=1)
    train_vae(config, data, outputs, progress=False)
    card = json.loads(outputs.card_path.read_text())
    trained = load_checkpoint(outputs.last_path)["training"]
    assert trained["epoch"] < 20 and card["stopped"].startswith("early stopping: 3 epochs without")
    assert trained["epoch"] - card["best_epoch"] == 3
    lrs = [record["valid/lr"] for _, record in trained["history"]]
    assert lrs[0] == 1e-9 and lrs[-1] < lrs[0]  # the plateau schedule halved it
    resumed = dataclasses.replace(config, vae=dataclasses.replace(config.vae, patience=6, resume=True))
    train_vae(resumed, data, outputs, progress=False)
    assert load_checkpoint(outputs.last_path)["training"]["epoch"] > trained["epoch"]


def test_a_time_budget_ends_training_after_the_epoch_that_spends_it(digits_processed_dir: Path, tmp_path: Path) -> None:
    outputs = _outputs(tmp_path)
    train_vae(_config(epochs=1000, max_minutes=1e-6), load_processed(digits_processed_dir), outputs, progress=False)
    assert load_checkpoint(outputs.last_path)["training"]["epoch"] == 1
    assert json.loads(outputs.card_path.read_text())["stopped"].startswith("time budget")


def test_the_cosine_schedule_anneals_the_rate_over_the_epochs(digits_processed_dir: Path, tmp_path: Path) -> None:
    """Epoch e (from 0) trains at lr ½(1 + cos(π e / E)): the logged rates follow the cosine down from vae.lr."""
    outputs = _outputs(tmp_path)
    train_vae(_config(epochs=4, lr_schedule="cosine"), load_processed(digits_processed_dir), outputs, progress=False)
    lrs = [record["valid/lr"] for _, record in load_checkpoint(outputs.last_path)["training"]["history"]]
    assert lrs == pytest.approx([3e-3 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)], rel=1e-12)


def test_run_progress_follows_the_time_budget_when_it_ends_the_run_sooner() -> None:
    run = types.SimpleNamespace(epochs=100, max_minutes=2.0)
    assert run_progress(run, 10, seconds=60) == 0.5  # half the budget, a tenth of the epochs
    assert run_progress(run, 80, seconds=60) == 0.8  # the epochs run out first
    assert run_progress(run, 10, seconds=600) == 1.0
    assert run_progress(types.SimpleNamespace(epochs=100, max_minutes=None), 25, seconds=1e9) == 0.25


def test_a_budgeted_cosine_run_ends_annealed(digits_processed_dir: Path, tmp_path: Path) -> None:
    """The budget is spent in the first epoch: the rate after it is 0, though vae.epochs is far away."""
    outputs = _outputs(tmp_path)
    config = _config(epochs=1000, max_minutes=1e-6, lr_schedule="cosine")
    train_vae(config, load_processed(digits_processed_dir), outputs, progress=False)
    trained = load_checkpoint(outputs.last_path)["training"]
    assert trained["epoch"] == 1 and trained["state"]["optimizer"]["param_groups"][0]["lr"] == 0.0


def test_valid_samples_choose_the_checkpoint_and_stop_early_on_a_validation_likelihood_estimate(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    """With vae.valid_samples, valid/log_px (an importance-sampled log p(x) of the validation split, the same noise
    every epoch) is logged each epoch above the validation ELBO; best.pt is the first epoch where it peaks, early
    stopping counts from there, and the logged figure is best.pt's own estimate."""
    data = load_processed(digits_processed_dir)
    outputs = _outputs(tmp_path)
    config = _config(epochs=40, patience=2, lr=0.03, kl_warmup_epochs=0, valid_samples=16)  # a rate that overfits
    train_vae(config, data, outputs, progress=False)
    card = json.loads(outputs.card_path.read_text())
    history = [record for _, record in load_checkpoint(outputs.last_path)["training"]["history"]]
    log_px = [record["valid/log_px"] for record in history]
    assert all(record["valid/log_px"] > record["valid/bound"] for record in history)
    assert card["best_by"] == "valid log_px (K = 16)"
    assert card["best_epoch"] == 1 + log_px.index(max(log_px))
    assert card["stopped"] == f"early stopping: 2 epochs without a better valid/log_px (best {card['best_epoch']})"
    assert len(history) == card["best_epoch"] + 2 < 40
    assert json.loads(outputs.metrics_path.read_text())["valid_log_px"] == max(log_px)
    trainer = VaeTrainer(config, data, CPU)
    trainer.model.load_state_dict(load_model(outputs.best_path).state_dict())
    assert trainer.validation_log_px() == pytest.approx(max(log_px), abs=1e-9)


def test_resume_refuses_other_data_of_the_same_shape_and_accepts_a_last_pt_from_before_the_check(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    """Other images, labels or another split of the same dataset describe themselves alike: the split sizes and a
    hash of the training and validation arrays tell them apart. A last.pt without them resumes on the rest."""
    data, outputs = load_processed(digits_processed_dir), _outputs(tmp_path)
    train_vae(_config(epochs=1), data, outputs, progress=False)
    x, y = dict(data.x), dict(data.y)
    x["train"] = x["train"].copy()
    x["train"][0, 0, 0, 0] += 0.5
    y["valid"] = np.roll(y["valid"], 1)
    moved = {"train": data.x["train"][:180], "valid": np.concatenate([data.x["train"][180:], data.x["valid"]])}
    others = {
        "other images or labels in the training and validation splits": [{"x": x}, {"y": y}],
        "200/50 training/validation images, now 180/70": [{"x": data.x | moved, "y": None}],
    }
    for what, changes in others.items():
        for change in changes:
            with pytest.raises(ConfigError, match=f"vae.resume: last.pt was trained on other data \\({what}\\)"):
                train_vae(_config(epochs=2, resume=True), dataclasses.replace(data, **change), outputs, progress=False)
    state = load_checkpoint(outputs.last_path)
    del state["training"]["data_fingerprint"]
    save_checkpoint(outputs.last_path, state)
    assert train_vae(_config(epochs=2, resume=True), dataclasses.replace(data, x=x), outputs, progress=False)
    assert load_checkpoint(outputs.last_path)["training"]["data_fingerprint"]["train"] == 200


def test_a_resumed_cosine_schedule_follows_the_run_s_new_length(digits_processed_dir: Path, tmp_path: Path) -> None:
    """A finished 2-epoch run ends at rate 0; resumed for 4 epochs, epochs 3 and 4 train at the rates a 4-epoch run
    gives them (½ and ½(1 + cos ¾π) of vae.lr), not from 0."""
    outputs = _outputs(tmp_path)
    for epochs, resume in ((2, False), (4, True)):
        config = _config(epochs=epochs, lr_schedule="cosine", resume=resume)
        train_vae(config, load_processed(digits_processed_dir), outputs, progress=False)
    lrs = [record["valid/lr"] for _, record in load_checkpoint(outputs.last_path)["training"]["history"]]
    assert lrs == pytest.approx([3e-3, 3e-3 / 2, 3e-3 / 2, 3e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4))], rel=1e-12)


def test_a_resume_judges_the_budget_on_the_clock_the_last_epoch_was_judged_on(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    """The time budget and a budgeted cosine read the training time up to the end of each epoch's training (the
    clock validate sees); last.pt's total, which adds that epoch's validation, could stop a resume where the
    uninterrupted run goes on. With a last.pt whose total alone is past the budget, a resume trains on at the rate
    its clock gives."""
    outputs = _outputs(tmp_path)
    data = load_processed(digits_processed_dir)
    train_vae(_config(epochs=2, lr_schedule="cosine", max_minutes=1.0), data, outputs, progress=False)
    state = load_checkpoint(outputs.last_path)
    training = state["training"]
    assert 0 < training["clock"] <= training["seconds"] and training["epoch"] == 2
    training |= {"epoch": 1, "stopped": None, "history": training["history"][:1], "seconds": 61.0, "clock": 30.0}
    save_checkpoint(outputs.last_path, state)
    train_vae(_config(epochs=4, lr_schedule="cosine", max_minutes=1.0, resume=True), data, outputs, progress=False)
    resumed = load_checkpoint(outputs.last_path)["training"]
    assert resumed["epoch"] >= 2 and resumed["seconds"] > 61.0
    assert resumed["history"][1][1]["valid/lr"] == pytest.approx(3e-3 / 2, rel=1e-12)  # 30 s of 60: half way


def test_resume_refuses_a_last_pt_of_another_model_and_a_damaged_one_says_how_to_start_afresh(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    from pipeline.checkpoint import checkpoint_state
    from pipeline.models.classifier import Classifier, classifier_config

    data, outputs = load_processed(digits_processed_dir), _outputs(tmp_path)
    classifier = Classifier(classifier_config((1, 8, 8), 10))
    params = {"seed": 0, "device": "cpu", "evaluate": {"classifier_epochs": 1}}
    outputs.checkpoint_dir.mkdir(parents=True)
    save_checkpoint(outputs.last_path, checkpoint_state({"model": classifier}, data=data.describe(), params=params))
    with pytest.raises(CheckpointError, match=r"vae.resume: \S+last.pt is not a vae checkpoint \(its networks: cla"):
        train_vae(_config(resume=True), data, outputs, progress=False)
    outputs.last_path.write_bytes(outputs.last_path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"last.pt: not a readable checkpoint \(.*\); set vae.resume: false \("):
        train_vae(_config(resume=True), data, outputs, progress=False)
    # another family of the same kind, or a last.pt of an older version whose params had other sections: the
    # parameters that differ are named, not the kind of checkpoint
    outputs.last_path.unlink()
    train_vae(_config(epochs=1, family="hvae"), data, outputs, progress=False)
    with pytest.raises(ConfigError, match=r"vae.resume: last.pt was trained with different parameters \(vae.family"):
        train_vae(_config(epochs=2, resume=True), data, outputs, progress=False)
    state = load_checkpoint(outputs.last_path)
    state["params"]["retired_section"] = {"steps": 1}
    save_checkpoint(outputs.last_path, state)
    with pytest.raises(ConfigError, match=r"different parameters \(retired_section\)"):
        train_vae(_config(epochs=2, family="hvae", resume=True), data, outputs, progress=False)
    with pytest.raises(ConfigError, match=r"different parameters \(retired_section, vae.ema_decay\)"):
        train_vae(_config(epochs=2, family="hvae", ema_decay=0.9, resume=True), data, outputs, progress=False)


def test_running_out_of_memory_names_the_settings_that_size_a_step(
    digits_processed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU allocator's failure (a plain RuntimeError) and torch.OutOfMemoryError become one line; other
    RuntimeErrors pass unchanged."""
    data = load_processed(digits_processed_dir)

    def fail(err: RuntimeError | None) -> None:
        if err is None:
            torch.empty(1 << 52, dtype=torch.uint8)  # 4 PiB: the CPU allocator's real error
        raise err

    failures = {
        "cpu": None,
        "gpu": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB"),
        "other": RuntimeError("a bug"),
    }
    for name, err in failures.items():
        monkeypatch.setattr(VaeTrainer, "train_epoch", lambda self, epoch, err=err: fail(err))
        expected = (RuntimeError, "a bug") if name == "other" else (MemoryExhaustedError, "train_vae: out of memory")
        with pytest.raises(expected[0], match=expected[1]) as raised:
            train_vae(_config(valid_samples=4), data, _outputs(tmp_path / name), progress=False)
        if name != "other":
            assert str(raised.value) == (
                "train_vae: out of memory on cpu; lower vae.batch_size, vae.iwae_k, vae.mc_samples, vae.hidden_sizes, "
                "vae.valid_samples (they size each step), or free memory"
            )
    monkeypatch.undo()

    def data_too_large(self: VaeTrainer, *args: object) -> None:  # the trainer puts the splits on the device
        raise RuntimeError("MPS backend out of memory (MPS allocated: 9.00 GB)")

    monkeypatch.setattr(VaeTrainer, "__init__", data_too_large)
    with pytest.raises(MemoryExhaustedError, match=r"^train_vae: out of memory on cpu; use a smaller dataset, or free"):
        train_vae(_config(), data, _outputs(tmp_path / "building"), progress=False)
    assert MemoryExhaustedError in TRAINING_ERRORS


def test_labels_outside_the_classes_are_refused_naming_the_file_and_array(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    data = load_processed(digits_processed_dir)
    for split, labels, problem in (
        ("train", lambda y: np.where(np.arange(len(y)) == 0, 15, y), r"holds labels outside 0..9 \(stats.json's"),
        ("valid", lambda y: -y, "holds labels outside 0..9"),
        ("test", lambda y: y.astype(np.float32), "is not one integer label per image of x_test"),
        ("test", lambda y: y[:-1], "is not one integer label per image of x_test"),
    ):
        y = data.y | {split: labels(data.y[split])}
        arrays = {f"x_{s}": np.round(data.x[s] * 255).astype(np.uint8) for s in data.x}
        np.savez(tmp_path / "arrays.npz", **arrays, **{f"y_{s}": v for s, v in y.items()})
        (tmp_path / "stats.json").write_bytes((digits_processed_dir / "stats.json").read_bytes())
        with pytest.raises(ValueError, match=rf"arrays.npz: y_{split} {problem}.*dvc repro -f preprocess"):
            load_processed(tmp_path)
