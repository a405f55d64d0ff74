"""Data-parallel GAN training: two Gloo processes under torchrun on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from ddp_launch import run_two_ranks

from pipeline.checkpoint import load_checkpoint

# Each rank runs train_gan (joining torchrun's process group itself) with a GanTrainer that keeps a handle on the
# trainer, and saves its final weights for comparison. An untrained feature classifier (the same on both ranks)
# makes rank 0 return a summary (the validation Fréchet distance), so writing once can be checked.
RANK_SCRIPT = """
import dataclasses, sys, torch
import pipeline.gan_trainer as gan_trainer
from pipeline.config import Config
from pipeline.data.processed import load_processed
from pipeline.models.classifier import Classifier, classifier_config

made = []


class Recorded(gan_trainer.GanTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(self)


gan_trainer.GanTrainer = Recorded
gan = dataclasses.replace(Config().gan, arch="dcgan", base_channels=4, batch_size=16, epochs=2, d_steps=2)
config = Config(latent_dim=4, device="cpu", gan=gan)
data = load_processed(sys.argv[1])
torch.manual_seed(0)
classifier = Classifier(classifier_config(data.image_shape, data.num_classes))
summary = gan_trainer.train_gan(config, data, classifier=classifier, progress=False)
(trainer,) = made
assert trainer.ctx.world_size == 2
for name in ("generator", "generator_ema", "discriminator"):
    torch.save(getattr(trainer, name).state_dict(), f"rank{trainer.ctx.rank}_{name}.pt")
assert bool(summary) == (trainer.ctx.rank == 0)
"""


def test_two_gloo_ranks_end_with_identical_weights_and_write_once(digits_processed_dir: Path, tmp_path: Path) -> None:
    run_two_ranks(RANK_SCRIPT, tmp_path, str(digits_processed_dir))
    last = load_checkpoint(tmp_path / "checkpoints/gan/last.pt")["models"]
    for name in ("generator", "generator_ema", "discriminator"):
        rank0 = torch.load(tmp_path / f"rank0_{name}.pt", weights_only=True)
        rank1 = torch.load(tmp_path / f"rank1_{name}.pt", weights_only=True)
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0 if "running" not in k), name
        assert all(torch.equal(last[name]["weights"][k], rank0[k]) for k in rank0), name
    assert sorted(p.name for p in (tmp_path / "checkpoints/gan").iterdir()) == ["best.pt", "last.pt"]
    card = json.loads((tmp_path / "cards/train_gan.json").read_text())
    assert card["world_size"] == 2 and card["effective_batch_size"] == 32
    assert card["best_by"] == "valid frechet_distance" and card["best_epoch"] == 2  # the one sample epoch, 1-based
    assert not (tmp_path / "metrics").exists()  # the GAN writes no metrics file
    assert (tmp_path / "outputs/gan/samples.png").exists()
