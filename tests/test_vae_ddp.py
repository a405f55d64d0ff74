"""Data-parallel VAE training: two Gloo processes under torchrun on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ddp_launch import run_two_ranks

from pipeline.checkpoint import load_checkpoint, load_model
from pipeline.config import config_from_dict
from pipeline.data.processed import load_processed
from pipeline.distributed import DistContext
from pipeline.vae_trainer import VaeTrainer

# Each rank runs train_vae (joining torchrun's process group itself) with a VaeTrainer that keeps a handle on the
# trainer, and saves its final weights for comparison.
RANK_SCRIPT = """
import dataclasses, sys, torch
import pipeline.vae_trainer as vae_trainer
from pipeline.config import Config
from pipeline.data.processed import load_processed

made = []


class Recorded(vae_trainer.VaeTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(self)


vae_trainer.VaeTrainer = Recorded
epochs, resume = (int(sys.argv[2]), sys.argv[3] == "resume") if len(sys.argv) > 2 else (2, False)
vae = dataclasses.replace(
    Config().vae,
    hidden_sizes=[32],
    batch_size=16,
    epochs=epochs,
    mc_samples=2,
    kl_warmup_epochs=3,
    valid_samples=8,  # the validation likelihood estimate is sharded across the ranks too
    resume=resume,
)
config = Config(latent_dim=4, device="cpu", vae=vae)
summary = vae_trainer.train_vae(config, load_processed(sys.argv[1]), progress=False)
(trainer,) = made
assert trainer.ctx.world_size == 2
torch.save(trainer.model.state_dict(), f"rank{trainer.ctx.rank}_weights.pt")
assert bool(summary) == (trainer.ctx.rank == 0)
"""


def test_two_gloo_ranks_end_with_identical_weights_and_write_once(digits_processed_dir: Path, tmp_path: Path) -> None:
    run_two_ranks(RANK_SCRIPT, tmp_path, str(digits_processed_dir))
    rank0 = torch.load(tmp_path / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1_weights.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert sorted(p.name for p in (tmp_path / "checkpoints/vae").iterdir()) == ["best.pt", "last.pt"]
    last = torch.load(tmp_path / "checkpoints/vae/last.pt", weights_only=True)
    assert all(torch.equal(last["models"]["model"]["weights"][k], rank0[k]) for k in rank0)
    card = json.loads((tmp_path / "cards/train_vae.json").read_text())
    assert card["world_size"] == 2 and card["effective_batch_size"] == 32
    metrics = json.loads((tmp_path / "metrics/train_vae.json").read_text())
    assert set(metrics) == {"train", "valid", "valid_log_px"}
    best = tmp_path / "checkpoints/vae/best.pt"
    config = config_from_dict(load_checkpoint(best)["params"])
    alone = VaeTrainer(config, load_processed(digits_processed_dir), DistContext(0, 1, torch.device("cpu")))
    alone.model.load_state_dict(load_model(best).state_dict())
    assert alone.validation_log_px() == pytest.approx(metrics["valid_log_px"], abs=1e-4)
    assert json.loads((tmp_path / "dvclive/vae/metrics.json").read_text())["step"] == 2  # epochs logged 1-based


def test_two_ranks_resume_to_the_weights_of_an_uninterrupted_run(digits_processed_dir: Path, tmp_path: Path) -> None:
    """Each rank's own random generator is checkpointed (gathered from every rank), so two ranks interrupted after
    epoch 1 and resumed reach the weights of two ranks that never stopped."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    run_two_ranks(RANK_SCRIPT, whole, str(digits_processed_dir), "2", "fresh")
    run_two_ranks(RANK_SCRIPT, parts, str(digits_processed_dir), "1", "fresh")
    run_two_ranks(RANK_SCRIPT, parts, str(digits_processed_dir), "2", "resume")
    want = torch.load(whole / "rank0_weights.pt", weights_only=True)
    got = torch.load(parts / "rank0_weights.pt", weights_only=True)
    assert all(torch.equal(want[k], got[k]) for k in want)


REFUSED_SCRIPT = """
import os, sys
from pipeline.config import Config
from pipeline.data.processed import load_processed
from pipeline.vae_trainer import train_vae

try:
    train_vae(Config(device="cpu"), load_processed(sys.argv[1]), progress=False)
except PermissionError as err:
    print(f"rank {os.environ['RANK']}: {err}")
"""


def test_every_rank_gets_the_writer_s_one_line_when_an_output_cannot_be_written(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    """Rank 0 alone checks the outputs (and takes the lock); the other rank raises its error too instead of dying
    in the next collective with a closed connection."""
    (tmp_path / "cards").write_text("a file where the cards folder goes")
    done = run_two_ranks(REFUSED_SCRIPT, tmp_path, str(digits_processed_dir))
    for rank in (0, 1):
        assert f"rank {rank}: cards: cannot write there" in done.stdout
    assert not (tmp_path / "checkpoints/vae/last.pt").exists()


FAILING_SCRIPT = """
import os, sys
import pipeline.vae_trainer as vae_trainer
from pipeline.config import Config
from pipeline.data.processed import load_processed
from pipeline.training import TRAINING_ERRORS


class FailsOnRank1(vae_trainer.VaeTrainer):
    def train_epoch(self, epoch):
        if epoch == 1 and self.ctx.rank == 1:  # what torch's CPU allocator raises
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")
        return super().train_epoch(epoch)


vae_trainer.VaeTrainer = FailsOnRank1
try:
    vae_trainer.train_vae(Config(latent_dim=4, device="cpu"), load_processed(sys.argv[1]), progress=False)
except TRAINING_ERRORS as err:
    print(f"rank {os.environ['RANK']}: {err}")
"""


def test_a_rank_that_stops_mid_training_leaves_the_other_one_line_not_a_transport_traceback(
    digits_processed_dir: Path, tmp_path: Path
) -> None:
    """Rank 1 runs out of memory in epoch 2 and says so; rank 0, waiting for it in a collective, says that another
    process stopped instead of Gloo's "Connection closed by peer" traceback. Epoch 1's last.pt stays."""
    done = run_two_ranks(FAILING_SCRIPT, tmp_path, str(digits_processed_dir))
    assert "rank 1: train_vae: out of memory on cpu; lower vae.batch_size" in done.stdout
    assert "rank 0: train_vae: another process of this torchrun run stopped (its own message says why)" in done.stdout
    assert "Connection closed by peer" in done.stdout
    assert "Traceback" not in done.stderr
    assert load_checkpoint(tmp_path / "checkpoints/vae/last.pt")["training"]["epoch"] == 1
