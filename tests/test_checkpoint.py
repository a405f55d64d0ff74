"""The model contract: checkpoints describe their networks, and load_model rebuilds them from that alone."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import (
    CheckpointError,
    checkpoint_state,
    load_checkpoint,
    load_model,
    model_from_state,
    save_checkpoint,
)
from pipeline.models import FAMILIES, build_model, describe_model
from pipeline.models.classifier import ClassifierConfig
from pipeline.models.gan import DiscriminatorConfig, GeneratorConfig
from pipeline.models.hvae import HVAEConfig
from pipeline.models.vae import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "vae": VAEConfig((1, 8, 8), 3, hidden_sizes=(16,), num_classes=10),
    "hvae": HVAEConfig((1, 8, 8), 3, arch="gated_mlp", hidden_sizes=(16,), prior="vampprior", pseudo_inputs=4),
    "gan_generator": GeneratorConfig(3, (1, 8, 8), arch="dcgan", base_channels=4),
    "gan_discriminator": DiscriminatorConfig((1, 8, 8), hidden_sizes=(8,), spectral_norm=True),
    "classifier": ClassifierConfig((1, 8, 8), 4, task="transformations", channels=4, feature_dim=8),
}


def test_every_family_has_an_example_and_rebuilds_from_its_description() -> None:
    assert set(EXAMPLES) == set(FAMILIES)
    for family, config in EXAMPLES.items():
        model = FAMILIES[family](config)
        described = describe_model(model)
        assert described == {"family": family, "config": dataclasses.asdict(config)}
        rebuilt = build_model(**described)
        assert type(rebuilt) is type(model) and rebuilt.config == config
        assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_load_model_needs_only_the_checkpoint(tmp_path: Path) -> None:
    """Weights, family and config come back without params: a params schema that changed (an unknown key here,
    a missing one there) does not matter to loading."""
    torch.manual_seed(0)
    model = FAMILIES["vae"](EXAMPLES["vae"])
    params = {"seed": 0, "vae": {"a_key_from_a_future_schema": 1}}
    save_checkpoint(tmp_path / "best.pt", checkpoint_state({"model": model}, data={"dataset": "x"}, params=params))
    loaded = load_model(tmp_path / "best.pt")
    assert not loaded.training and loaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


def test_unreadable_old_and_foreign_checkpoints_get_one_clear_error(tmp_path: Path) -> None:
    vae_dir = tmp_path / "checkpoints" / "vae"
    vae_dir.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint; train the model first"):
        load_checkpoint(vae_dir / "absent.pt")
    (vae_dir / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage.pt: not a readable checkpoint .*dvc repro -f train_vae"):
        load_checkpoint(vae_dir / "garbage.pt")
    (vae_dir / "text.pt").write_text("hi\n")  # the loader would fail with a KeyError (105) on this one
    with pytest.raises(CheckpointError, match=r"text.pt: not a readable checkpoint \(not a file torch.save wrote\)"):
        load_checkpoint(vae_dir / "text.pt")
    (tmp_path / "params.yaml").write_text("seed: 0\n")  # e.g. passed as --classifier
    with pytest.raises(CheckpointError, match=r"torch.save wrote\); pass a checkpoint this pipeline wrote$"):
        load_checkpoint(tmp_path / "params.yaml")
    model = FAMILIES["vae"](EXAMPLES["vae"])
    good = checkpoint_state({"model": model}, data={}, params={})
    save_checkpoint(vae_dir / "truncated.pt", good)
    data = (vae_dir / "truncated.pt").read_bytes()
    (vae_dir / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(vae_dir / "truncated.pt")
    # the format before the model contract: the whole params dict and bare state dicts
    save_checkpoint(vae_dir / "old.pt", {"config": {"seed": 0}, "data": {}, "model": model.state_dict()})
    with pytest.raises(CheckpointError, match="old.pt: written by an older version .*dvc repro -f train_vae"):
        load_checkpoint(vae_dir / "old.pt")
    save_checkpoint(vae_dir / "gan.pt", good)
    with pytest.raises(CheckpointError, match="holds no 'generator_ema' network .*; pass a checkpoint with a 'gen"):
        load_model(vae_dir / "gan.pt", "generator_ema")
    with pytest.raises(CheckpointError, match=r"holds no 'model' network \(it has model_x\); pass a vae checkpoint"):
        model_from_state({"models": {"model_x": {}}}, "model", "gan.pt", VAE)
    future = checkpoint_state({"model": model}, data={}, params={})
    future["models"]["model"]["config"]["flows"] = 2
    save_checkpoint(vae_dir / "future.pt", future)
    with pytest.raises(CheckpointError, match="keys this version does not know: flows"):
        load_model(vae_dir / "future.pt")


def test_models_import_torch_and_pipeline_models_only() -> None:
    """Networks know nothing of params, stages, training or files (the torch-free rules of which VAE settings go
    together are shared with the params schema)."""
    for path in sorted((REPO / "pipeline" / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert (
                    top
                    in (
                        "__future__",
                        "torch",
                        "dataclasses",
                        "math",
                        "typing",
                        "collections",
                    )
                    or name.startswith("pipeline.models")
                    or name == "pipeline.vae_settings"
                ), f"{path.name} imports {name}"


def test_a_damaged_checkpoint_s_reason_is_cut_at_a_word_and_the_remedy_can_be_the_caller_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state({}, data={}, params={}))

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("PytorchStreamReader failed reading zip archive: " + "failed finding central directory " * 9)

    monkeypatch.setattr(torch, "load", fails)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path, "set vae.resume: false to start afresh")
    reason = str(raised.value).split("(", 1)[1].split(")")[0]
    assert reason.endswith(" central directory ...") and len(reason) <= 120
    assert str(raised.value).endswith("); set vae.resume: false to start afresh")
