"""Data-parallel VAE training: two Gloo processes under torchrun on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from ddp_launch import run_two_ranks

# Each rank trains through VaeTrainer.fit (what train_vae runs) and saves its final weights for comparison.
RANK_SCRIPT = """
import dataclasses, sys, torch
from pipeline.config import Config
from pipeline.data.processed import load_processed
from pipeline.distributed import init_distributed, shutdown
from pipeline.vae_trainer import VaeTrainer

vae = dataclasses.replace(Config().vae, hidden_sizes=[32], batch_size=16, epochs=2, mc_samples=2)
config = Config(latent_dim=4, device="cpu", vae=vae)
ctx = init_distributed(config.device)
trainer = VaeTrainer(config, load_processed(sys.argv[1]), ctx)
summary = trainer.fit(progress=False)
torch.save(trainer.model.state_dict(), f"rank{ctx.rank}_weights.pt")
assert bool(summary) == (ctx.rank == 0)
shutdown(ctx)
"""


def test_two_gloo_ranks_end_with_identical_weights_and_write_once(digits_processed_dir: Path, tmp_path: Path) -> None:
    run_two_ranks(RANK_SCRIPT, tmp_path, str(digits_processed_dir))
    rank0 = torch.load(tmp_path / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1_weights.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert sorted(p.name for p in (tmp_path / "checkpoints/vae").iterdir()) == ["best.pt", "last.pt"]
    last = torch.load(tmp_path / "checkpoints/vae/last.pt", weights_only=True)
    assert all(torch.equal(last["model"][k], rank0[k]) for k in rank0)
    metrics = json.loads((tmp_path / "metrics/vae_train.json").read_text())
    assert metrics["world_size"] == 2 and metrics["effective_batch_size"] == 32
    assert json.loads((tmp_path / "dvclive/vae/metrics.json").read_text())["step"] == 1
