"""Training the VAE: data on the device batched by index, Adam on the ELBO or IWAE bound, checkpoints, logs, figures.

Runs in one process or under ``torchrun`` (DistributedDataParallel; each rank trains on its
shard of every epoch with ``vae.batch_size`` examples per step, so the effective batch is
``batch_size × world_size``; metrics are summed over ranks; rank 0 alone logs and writes).
Every random draw (batch order, dynamic binarization, dequantization, z) comes from seeded
generators whose state is checkpointed, so a resumed run ends with the same weights as an
uninterrupted one on CPU.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import Config, ConfigError
from pipeline.data.processed import ProcessedData
from pipeline.device import autocast, seed_everything, to_device
from pipeline.distributed import DistContext, all_reduce_sum, barrier, init_distributed, shutdown
from pipeline.images import save_image_grid
from pipeline.io import write_json
from pipeline.models.vae import VAE, build_vae
from pipeline.objectives.vae import (
    bits_per_dim,
    count_active_units,
    discrete_log_likelihood,
    kl_warmup_beta,
    prepare_heldout,
    prepare_images,
    training_bound,
)
from pipeline.training import (
    EpochLoop,
    IndexBatches,
    LiveLog,
    TrainingOutputs,
    check_finite,
    check_resumable,
    data_description,
    device_generator,
    load_checkpoint,
    load_optimizer_state,
    require_labels,
    to_device_tensors,
)

log = logging.getLogger(__name__)

# keys that may differ between the run that wrote last.pt and the run resuming from it
RESUMABLE_CHANGES = ("vae.epochs", "vae.resume", "device")
OUTPUTS = TrainingOutputs.for_model("vae")


def check_compatible(config: Config, data: ProcessedData) -> None:
    """Reject parameter combinations the data cannot support, before any work is done."""
    vae = config.vae
    if vae.conditional:
        require_labels(data, "vae.conditional")
    if vae.likelihood == "gaussian" and data.binary:
        raise ConfigError(
            f"vae.likelihood: 'gaussian' models grey values but data.binarize is {data.binarize!r}; "
            "set data.binarize: none, or vae.likelihood: bernoulli"
        )
    if vae.free_bits > 0 and vae.iwae_k > 1:
        raise ConfigError("vae.free_bits applies to the ELBO only; set vae.iwae_k: 1 or vae.free_bits: 0")


class _Objective(nn.Module):
    """The training bound as a module, so DistributedDataParallel can wrap it and synchronize gradients."""

    def __init__(self, model: VAE, iwae_k: int, mc_samples: int, free_bits: float) -> None:
        super().__init__()
        self.model, self.iwae_k, self.mc_samples, self.free_bits = model, iwae_k, mc_samples, free_bits

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None, beta: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        terms = training_bound(
            self.model,
            x,
            y,
            iwae_k=self.iwae_k,
            mc_samples=self.mc_samples,
            beta=beta,
            free_bits=self.free_bits,
            generator=generator,
        )
        return terms.loss, terms.bound, terms.reconstruction, terms.kl, terms.mu


class VaeTrainer:
    """One rank's training state: model, optimizer, generator, device tensors; epochs, evaluation, checkpoints."""

    def __init__(self, config: Config, data: ProcessedData, ctx: DistContext) -> None:
        check_compatible(config, data)
        if config.vae.likelihood == "bernoulli" and not data.binary:
            log.warning(
                "vae.likelihood bernoulli on grey data (data.binarize: none): the bound is not a likelihood of the "
                "data; set data.binarize: dynamic, or vae.likelihood: gaussian"
            )
        self.config, self.ctx, self.data = config, ctx, data
        self.device = ctx.device
        seed_everything(config.seed)
        self.model = to_device(build_vae(config, data.image_shape, data.num_classes), self.device)
        self.conditional = self.model.num_classes is not None
        self.dequantized = config.vae.likelihood == "gaussian"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.vae.lr, fused=True)
        objective = _Objective(self.model, config.vae.iwae_k, config.vae.mc_samples, config.vae.free_bits)
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            objective = DistributedDataParallel(objective, device_ids=ids)
        self.objective = objective
        self.generator = device_generator(self.device, config.seed * 1009 + ctx.rank)
        self.x = to_device_tensors(data.x, self.device)
        self.y = to_device_tensors(data.y, self.device) if self.conditional else None
        # validation and test sets get one fixed binarization / dequantization draw, so epochs compare fairly
        for split in ("valid", "test"):
            self.x[split] = prepare_heldout(self.x[split], data.binarize, config.vae.likelihood, config.seed)
        self.batches = IndexBatches(
            len(data.x["train"]), config.vae.batch_size, config.seed, self.device, True, ctx.rank, ctx.world_size
        )

    def _labels(self, split: str, idx: torch.Tensor) -> torch.Tensor | None:
        return self.y[split][idx] if self.y is not None else None

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard; returns metrics averaged over all ranks' examples."""
        vae = self.config.vae
        self.model.train()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        steps = len(self.batches)
        for i, idx in enumerate(self.batches.epoch(epoch)):
            step = epoch * steps + i + 1
            x = self.x["train"].index_select(0, idx)
            x = prepare_images(x, self.generator, self.data.binarize, vae.likelihood)
            beta = kl_warmup_beta(step - 1, steps, vae.kl_warmup_epochs)
            with autocast(self.device, vae.bf16):
                loss, bound, reconstruction, kl, _ = self.objective(x, self._labels("train", idx), beta, self.generator)
            check_finite(loss, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                sums += torch.stack([bound.sum(), reconstruction.sum(), kl.sum(), bound.new_tensor(len(idx))]).double()
        total = all_reduce_sum(sums, self.ctx).tolist()
        n = total[3]
        return {
            "bound": total[0] / n,
            "elbo": (total[1] - total[2]) / n,
            "reconstruction": total[1] / n,
            "kl": total[2] / n,
            "beta": kl_warmup_beta(steps * (epoch + 1) - 1, steps, vae.kl_warmup_epochs),
        }

    @torch.no_grad()
    def evaluate(self, split: str, sharded: bool = True, model: VAE | None = None) -> dict[str, float]:
        """The bound (beta = 1), ELBO terms, active units and bits/dim on a split, with a fixed generator.

        ``sharded``: each rank takes its share and the sums are combined; else this rank does it all.
        """
        vae = self.config.vae
        model = model or self.model
        model.eval()
        generator = device_generator(self.device, self.config.seed + 2)
        size = len(self.x[split])
        rank, world = (self.ctx.rank, self.ctx.world_size) if sharded else (0, 1)
        shard = torch.arange(rank, size, world, device=self.device)  # every example once, over all ranks
        d = model.latent_dim
        sums = torch.zeros(4 + 2 * d, dtype=torch.float64, device=self.device)
        for idx in shard.split(max(vae.batch_size, 256)):
            with autocast(self.device, vae.bf16):
                terms = training_bound(
                    model,
                    self.x[split][idx],
                    self._labels(split, idx),
                    iwae_k=vae.iwae_k,
                    mc_samples=vae.mc_samples,
                    generator=generator,
                )
            mu = terms.mu.double()
            sums += torch.cat(
                [
                    torch.stack([terms.bound.sum(), terms.reconstruction.sum(), terms.kl.sum()]).double(),
                    mu.new_tensor([len(idx)]),
                    mu.sum(0),
                    (mu**2).sum(0),
                ]
            )
        if sharded:
            sums = all_reduce_sum(sums, self.ctx)
        n = sums[3].item()
        mean_mu = sums[4 : 4 + d] / n
        variance = sums[4 + d :] / n - mean_mu**2
        bound = sums[0].item() / n
        num_dims = math.prod(model.image_shape)
        log_p = discrete_log_likelihood(bound, num_dims) if self.dequantized else bound
        return {
            "bound": bound,
            "elbo": (sums[1] - sums[2]).item() / n,
            "reconstruction": sums[1].item() / n,
            "kl": sums[2].item() / n,
            "active_units": count_active_units(variance),
            "bits_per_dim": bits_per_dim(log_p, num_dims),
        }

    def state(self) -> dict[str, Any]:
        """The checkpoint: weights, exact config, data description, optimizer and generator state."""
        return {
            "config": self.config.to_dict(),
            "data": data_description(self.data, self.data.num_classes),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint written with the same parameters (vae.epochs may grow)."""
        check_resumable(saved["config"], self.config.to_dict(), "vae", RESUMABLE_CHANGES)
        self.model.load_state_dict(saved["model"])
        load_optimizer_state(self.optimizer, saved["optimizer"])
        self.generator.set_state(saved["generator"])

    def fit(self, outputs: TrainingOutputs = OUTPUTS, progress: bool = True) -> dict:
        """Run the epochs (resuming if asked); rank 0 writes checkpoints, dvclive logs, PNGs and the metrics JSON.

        Returns the summary written to ``outputs.metrics_path`` on rank 0, {} on other ranks.
        """
        config, ctx = self.config, self.ctx
        resume = config.vae.resume and (outputs.checkpoint_dir / "last.pt").exists()
        live = LiveLog(outputs.live_dir, resume, ctx.is_writer)
        loop = EpochLoop(
            epochs=config.vae.epochs,
            checkpoint_dir=outputs.checkpoint_dir,
            monitor="bound",
            train_epoch=self.train_epoch,
            validate=lambda epoch: self.evaluate("valid"),
            state=self.state,
            restore=self.restore,
            log=live,
            live=live,
            is_writer=ctx.is_writer,
            progress=progress,
        )
        best = loop.run(resume=resume)
        barrier(ctx)
        if not ctx.is_writer:
            return {}
        best_model = to_device(build_vae(config, self.data.image_shape, self.data.num_classes), self.device)
        best_model.load_state_dict(load_checkpoint(loop.best_path, self.device)["model"])
        test = self.evaluate("test", sharded=False, model=best_model)
        test_y = self.y["test"] if self.y is not None else None
        save_vae_figures(best_model, self.x["test"], test_y, outputs.image_dir, config.seed)
        summary = {
            "best_epoch": best["epoch"],
            "epochs": config.vae.epochs,
            "bound": "elbo" if config.vae.iwae_k == 1 else f"iwae_{config.vae.iwae_k}",
            "valid_bound": best["value"],
            **{f"test_{k}": v for k, v in test.items()},
            "world_size": ctx.world_size,
            "effective_batch_size": config.vae.batch_size * ctx.world_size,
        }
        write_json(outputs.metrics_path, summary)
        live.end()
        log.info(
            "train_vae: %.1f s training; best epoch %d, test bound %.3f", loop.seconds, best["epoch"], test["bound"]
        )
        return summary


@torch.no_grad()
def save_vae_figures(model: VAE, x: torch.Tensor, y: torch.Tensor | None, image_dir: Path, seed: int) -> list[Path]:
    """PNGs: prior samples (one row per class if conditional), reconstructions under their inputs,
    latent interpolations between test images, and the 2-D latent manifold when latent_dim == 2."""
    model.eval()
    device = x.device
    generator = device_generator(device, seed + 3)
    d, (_, h, _) = model.latent_dim, model.image_shape
    scale = max(1, 56 // h)
    written = []

    def save(name: str, images: torch.Tensor, nrow: int) -> None:
        path = image_dir / name
        save_image_grid(images.float().cpu().numpy(), path, nrow=nrow, scale=scale)
        written.append(path)

    if model.num_classes is not None:
        per_class = 10
        labels = torch.arange(model.num_classes, device=device).repeat_interleave(per_class)
        z = torch.randn(len(labels), d, generator=generator, device=device)
        save("samples.png", model.decode_mean(z, labels), per_class)
    else:
        z = torch.randn(64, d, generator=generator, device=device)
        save("samples.png", model.decode_mean(z), 8)

    inputs, labels = x[:32], (y[:32] if y is not None else None)
    recon = model.decode_mean(model.encode(inputs, labels)[0], labels)
    rows = [torch.cat([inputs[r : r + 8], recon[r : r + 8]]) for r in range(0, len(inputs), 8)]
    save("reconstructions.png", torch.cat(rows), 8)

    steps, pairs = 10, min(8, len(x) // 2)
    mu = model.encode(x[: 2 * pairs], y[: 2 * pairs] if y is not None else None)[0]
    t = torch.linspace(0, 1, steps, device=device)[None, :, None]
    z = (mu[:pairs, None] * (1 - t) + mu[pairs:, None] * t).reshape(-1, d)
    row_labels = y[:pairs].repeat_interleave(steps) if y is not None else None
    save("interpolation.png", model.decode_mean(z, row_labels), steps)

    if d == 2:
        side = 15
        grid = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side, device=device))
        z = torch.stack(torch.meshgrid(grid, grid.flip(0), indexing="xy"), -1).reshape(-1, 2)
        grid_labels = y[:1].expand(len(z)) if y is not None else None
        save("manifold.png", model.decode_mean(z, grid_labels), side)
    return written


def train_vae(config: Config, data: ProcessedData, outputs: TrainingOutputs = OUTPUTS, progress: bool = True) -> dict:
    """Train (or resume) the VAE in this process or under torchrun; returns rank 0's summary ({} on other ranks)."""
    ctx = init_distributed(config.device)
    try:
        return VaeTrainer(config, data, ctx).fit(outputs, progress)
    finally:
        shutdown(ctx)
