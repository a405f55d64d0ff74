"""Data-parallel GAN training: two Gloo processes under torchrun on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from ddp_launch import run_two_ranks

# Each rank trains through GanTrainer.fit (what train_gan runs) and saves its final weights for comparison.
RANK_SCRIPT = """
import dataclasses, sys, torch
from pipeline.config import Config
from pipeline.data.processed import load_processed
from pipeline.distributed import init_distributed, shutdown
from pipeline.gan_trainer import GanTrainer

gan = dataclasses.replace(Config().gan, arch="dcgan", base_channels=4, batch_size=16, epochs=2, d_steps=2)
config = Config(latent_dim=4, device="cpu", gan=gan)
ctx = init_distributed(config.device)
trainer = GanTrainer(config, load_processed(sys.argv[1]), ctx)
summary = trainer.fit(progress=False)
for name in ("generator", "generator_ema", "discriminator"):
    torch.save(getattr(trainer, name).state_dict(), f"rank{ctx.rank}_{name}.pt")
assert bool(summary) == (ctx.rank == 0)
shutdown(ctx)
"""


def test_two_gloo_ranks_end_with_identical_weights_and_write_once(digits_processed_dir: Path, tmp_path: Path) -> None:
    run_two_ranks(RANK_SCRIPT, tmp_path, str(digits_processed_dir))
    last = torch.load(tmp_path / "checkpoints/gan/last.pt", weights_only=True)
    for name in ("generator", "generator_ema", "discriminator"):
        rank0 = torch.load(tmp_path / f"rank0_{name}.pt", weights_only=True)
        rank1 = torch.load(tmp_path / f"rank1_{name}.pt", weights_only=True)
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0 if "running" not in k), name
        assert all(torch.equal(last[name][k], rank0[k]) for k in rank0), name
    assert sorted(p.name for p in (tmp_path / "checkpoints/gan").iterdir()) == ["best.pt", "last.pt"]
    metrics = json.loads((tmp_path / "metrics/gan_train.json").read_text())
    assert metrics["world_size"] == 2 and metrics["effective_batch_size"] == 32
    assert (tmp_path / "outputs/gan/samples.png").exists()
