"""Training the GAN (§11.2): alternating Adam updates of discriminator and generator, EMA, checkpoints, logs, grids.

Each batch of real images updates the discriminator once; every ``gan.d_steps``-th batch the
generator is updated too, on the same generated images (Radford et al. 2015's schedule when
d_steps = 1). Real and generated images go through the discriminator in one call (it has no
batch norm, so this equals two calls and halves the kernel launches). An exponential moving
average of the generator's weights (warmed up as (1 + t) / (10 + t) so early averages do not
remember the initialization) is what sampling, metrics and export use.

Runs in one process or under ``torchrun`` (DistributedDataParallel on both networks; each rank
trains on its shard with ``gan.batch_size`` examples per step; rank 0 alone logs and writes).
Every random draw comes from seeded generators whose state is checkpointed, so a resumed run
ends with the same weights as an uninterrupted one on CPU.

The GAN learns the images as stored (grey values, or 0/1 after static binarization); dynamic
binarization is a device of the likelihood models and is not applied here.
"""

from __future__ import annotations

import copy
import logging
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
from pipeline.metrics import sample_quality_report
from pipeline.models.classifier import Classifier
from pipeline.models.gan import build_discriminator, build_generator
from pipeline.objectives.gan import discriminator_loss, feature_matching_loss, generator_loss
from pipeline.training import (
    EpochLoop,
    IndexBatches,
    LiveLog,
    TrainingOutputs,
    check_finite,
    check_resumable,
    data_description,
    device_generator,
    load_optimizer_state,
    require_labels,
    to_device_tensors,
)

log = logging.getLogger(__name__)

# keys that may differ between the run that wrote last.pt and the run resuming from it ("evaluate.": that section)
RESUMABLE_CHANGES = (
    "gan.epochs",
    "gan.resume",
    "gan.sample_every_epochs",
    "gan.log_every_steps",
    "device",
    "evaluate.",
)
# the logged window statistics, in the order they are accumulated
WINDOW_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")
OUTPUTS = TrainingOutputs.for_model("gan")


def check_compatible(config: Config, data: ProcessedData) -> None:
    """Reject parameter combinations the data cannot support, before any work is done."""
    gan = config.gan
    if gan.conditional:
        require_labels(data, "gan.conditional")
    if gan.loss == "hinge" and gan.label_smoothing > 0:
        raise ConfigError("gan.label_smoothing applies to the minimax and non_saturating losses; set it to 0 for hinge")


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, updates: int) -> None:
    """ema <- d·ema + (1 - d)·model with d = min(decay, (1 + t) / (10 + t)); buffers (batch-norm statistics) copied."""
    d = min(decay, (1.0 + updates) / (10.0 + updates))
    for average, current in zip(ema.parameters(), model.parameters(), strict=True):
        average.lerp_(current, 1.0 - d)
    for average, current in zip(ema.buffers(), model.buffers(), strict=True):
        average.copy_(current)


class GanTrainer:
    """One rank's training state: both networks, their optimizers, the EMA, noise generator and device tensors."""

    def __init__(self, config: Config, data: ProcessedData, ctx: DistContext, classifier: Classifier | None = None):
        check_compatible(config, data)
        self.config, self.ctx, self.data = config, ctx, data
        self.device = ctx.device
        self.classifier = to_device(classifier, self.device).eval() if classifier is not None else None
        gan = config.gan
        seed_everything(config.seed)
        self.generator = to_device(build_generator(config, data.image_shape, data.num_classes), self.device)
        self.discriminator = to_device(build_discriminator(config, data.image_shape, data.num_classes), self.device)
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.conditional = self.generator.num_classes is not None
        betas = (gan.beta1, gan.beta2)
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=gan.lr_g, betas=betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=gan.lr_d, betas=betas)
        self.train_g, self.train_d = self.generator, self.discriminator
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_g = DistributedDataParallel(self.generator, device_ids=ids)
            self.train_d = DistributedDataParallel(self.discriminator, device_ids=ids)
        self.noise = device_generator(self.device, config.seed * 1009 + ctx.rank)
        self.x = to_device_tensors(data.x, self.device)
        self.y = to_device_tensors(data.y, self.device) if data.y is not None else None
        self.batches = IndexBatches(
            len(data.x["train"]), gan.batch_size, config.seed, self.device, True, ctx.rank, ctx.world_size
        )
        self.ema_updates = 0
        self.window_sums = torch.zeros(len(WINDOW_KEYS) + 2, dtype=torch.float64, device=self.device)
        self.window: list[tuple[int, dict[str, float]]] = []  # (step, window means) since the last log call
        self.fixed_z, self.fixed_y, self.grid_columns = self._fixed_noise()

    def _fixed_noise(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """The noise of every logged grid: 8×8 samples, or one row of 10 per class when conditional."""
        generator = torch.Generator().manual_seed(self.config.seed + 3)
        if self.conditional:
            columns = 10
            y = torch.arange(self.generator.num_classes).repeat_interleave(columns)
            z = torch.randn(len(y), self.config.latent_dim, generator=generator)
            return z.to(self.device), y.to(self.device), columns
        return torch.randn(64, self.config.latent_dim, generator=generator).to(self.device), None, 8

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, step: int, update_generator: bool) -> torch.Tensor:
        """One discriminator update (and a generator update if asked); returns the window statistics as a tensor."""
        gan = self.config.gan
        z = torch.randn(len(x), self.config.latent_dim, generator=self.noise, device=self.device)
        with autocast(self.device, gan.bf16):
            with torch.set_grad_enabled(update_generator):
                fake = self.train_g(z, y)
            both_y = torch.cat([y, y]) if y is not None else None
            logits = self.train_d(torch.cat([x, fake.detach()]), both_y).float()
            real_logits, fake_logits = logits.split(len(x))
            d_loss = discriminator_loss(real_logits, fake_logits, gan.loss, gan.label_smoothing)
        check_finite(d_loss, step, "discriminator loss")
        self.optimizer_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizer_d.step()
        g_loss = torch.full_like(d_loss, float("nan"))
        if update_generator:
            self.discriminator.requires_grad_(False)
            with autocast(self.device, gan.bf16):
                if gan.feature_matching:
                    with torch.no_grad():
                        real_features = self.discriminator.features(x, y)
                    g_loss = feature_matching_loss(real_features.float(), self.discriminator.features(fake, y).float())
                else:
                    g_loss = generator_loss(self.discriminator(fake, y).float(), gan.loss)
            check_finite(g_loss, step, "generator loss")
            self.optimizer_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.optimizer_g.step()
            self.discriminator.requires_grad_(True)
            update_ema(self.generator_ema, self.generator, gan.ema_decay, self.ema_updates)
            self.ema_updates += 1
        with torch.no_grad():
            return torch.stack(
                [d_loss, g_loss, torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()]
            ).double()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard; returns epoch means over all ranks and keeps the means of each
        completed window of ``gan.log_every_steps`` steps (windows run across epochs) to log."""
        gan = self.config.gan
        self.generator.train()
        self.discriminator.train()
        self.window.clear()
        steps = len(self.batches)
        total = torch.zeros_like(self.window_sums)
        for i, idx in enumerate(self.batches.epoch(epoch)):
            step = epoch * steps + i + 1
            y = self.y["train"][idx] if self.conditional else None
            update_generator = (i + 1) % gan.d_steps == 0
            stats = self.train_step(self.x["train"][idx], y, step, update_generator)
            row = torch.cat([stats.nan_to_num(0.0), stats.new_tensor([1.0, float(update_generator)])])
            self.window_sums += row
            total += row
            if step % gan.log_every_steps == 0:
                self.window.append((step, _means(all_reduce_sum(self.window_sums, self.ctx))))
                self.window_sums.zero_()
        return _means(all_reduce_sum(total, self.ctx))

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        """``n`` images from the weight-averaged generator (labels cycle through the classes if not given)."""
        generator = device_generator(self.device, seed)
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        if self.conditional and labels is None:
            labels = torch.arange(n, device=self.device) % self.generator.num_classes
        return self.generator_ema(z, labels.to(self.device) if labels is not None else None)

    def is_sample_epoch(self, epoch: int) -> bool:
        return (epoch + 1) % self.config.gan.sample_every_epochs == 0 or epoch == self.config.gan.epochs - 1

    @torch.no_grad()
    def evaluate(self, epoch: int, image_dir: Path | None) -> dict[str, float]:
        """On sample epochs: the fixed-noise grid (writer only) and, given a classifier, the sample metrics on the
        validation split (never the test split, which would leak into the choice of best.pt)."""
        if not self.is_sample_epoch(epoch):
            return {}
        if image_dir is not None and self.ctx.is_writer:
            save_fixed_noise_grid(self, image_dir / f"samples_epoch{epoch + 1:04d}.png")
        if self.classifier is None:
            return {}
        return self.sample_metrics("valid")

    def sample_metrics(self, split: str) -> dict[str, float]:
        """Sample-quality metrics of the EMA generator against ``split`` (labels drawn from that split's)."""
        seed = self.config.seed + 4

        def sampler(n: int) -> torch.Tensor:
            labels = None
            if self.conditional:
                pick = torch.randint(len(self.y[split]), (n,), generator=torch.Generator().manual_seed(seed))
                labels = self.y[split][pick.to(self.device)]
            return self.sample(n, labels, seed=seed)

        return sample_quality_report(
            sampler, self.classifier, self.x[split], self.x["train"], self.config.evaluate.num_generated, seed=seed
        )

    def state(self) -> dict[str, Any]:
        """The checkpoint: both networks, the EMA, exact config, data description, optimizers, noise generator."""
        return {
            "config": self.config.to_dict(),
            "data": data_description(self.data, self.generator.num_classes),
            "generator": self.generator.state_dict(),
            "generator_ema": self.generator_ema.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "noise": self.noise.get_state(),
            "ema_updates": self.ema_updates,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint written with the same parameters (gan.epochs may grow)."""
        check_resumable(saved["config"], self.config.to_dict(), "gan", RESUMABLE_CHANGES)
        self.generator.load_state_dict(saved["generator"])
        self.generator_ema.load_state_dict(saved["generator_ema"])
        self.discriminator.load_state_dict(saved["discriminator"])
        load_optimizer_state(self.optimizer_g, saved["optimizer_g"])
        load_optimizer_state(self.optimizer_d, saved["optimizer_d"])
        self.noise.set_state(saved["noise"])
        self.ema_updates = saved["ema_updates"]

    def fit(self, outputs: TrainingOutputs = OUTPUTS, progress: bool = True) -> dict:
        """Run the epochs (resuming if asked); rank 0 writes checkpoints, dvclive logs, PNGs and the metrics JSON.

        With a classifier the sample metrics are logged every ``gan.sample_every_epochs`` and best.pt is the
        epoch with the lowest validation Fréchet distance; without one, best.pt is the last epoch. Returns the
        summary written to ``outputs.metrics_path`` on rank 0, {} on other ranks.
        """
        config, ctx = self.config, self.ctx
        resume = config.gan.resume and (outputs.checkpoint_dir / "last.pt").exists()
        live = LiveLog(outputs.live_dir, resume, ctx.is_writer)

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            """Window losses at their step, then the epoch's validation metrics at the epoch's last step."""
            for step, window in self.window:
                live.record(step, {f"train/{name}": value for name, value in window.items()})
            valid = {name: value for name, value in metrics.items() if name.startswith("valid/")}
            live((epoch + 1) * len(self.batches), {"epoch": epoch + 1} | valid)

        loop = EpochLoop(
            epochs=config.gan.epochs,
            checkpoint_dir=outputs.checkpoint_dir,
            monitor="frechet_distance" if self.classifier is not None else None,
            higher_is_better=False,
            train_epoch=self.train_epoch,
            validate=lambda epoch: self.evaluate(epoch, outputs.image_dir),
            state=self.state,
            restore=self.restore,
            log=log_epoch,
            live=live,
            is_writer=ctx.is_writer,
            progress=progress,
        )
        best = loop.run(resume=resume)
        barrier(ctx)
        if not ctx.is_writer:
            return {}
        save_fixed_noise_grid(self, outputs.image_dir / "samples.png")
        summary = {
            "best_epoch": best["epoch"],
            "best_by": "valid frechet_distance" if self.classifier is not None else "last epoch",
            "epochs": config.gan.epochs,
            **{f"best_epoch_{k.replace('/', '_')}": v for k, v in best["metrics"].items() if k.startswith("train/")},
            **{k.replace("/", "_"): v for k, v in best["metrics"].items() if k.startswith("valid/")},
            "world_size": ctx.world_size,
            "effective_batch_size": config.gan.batch_size * ctx.world_size,
        }
        write_json(outputs.metrics_path, summary)
        live.end()
        log.info("train_gan: %.1f s training; best epoch %d", loop.seconds, best["epoch"])
        return summary


def _means(sums: torch.Tensor) -> dict[str, float]:
    """Window or epoch sums (d_loss, g_loss, D(x), D(g(z)), steps, generator steps) -> means."""
    d_loss, g_loss, d_real, d_fake, steps, g_steps = sums.tolist()
    means = {"d_loss": d_loss / steps, "d_real": d_real / steps, "d_fake": d_fake / steps}
    if g_steps:
        means["g_loss"] = g_loss / g_steps
    return means


def save_fixed_noise_grid(trainer: GanTrainer, path: Path) -> None:
    """The EMA generator's images of the fixed noise (one row per class when conditional) as a PNG."""
    images = trainer.generator_ema(trainer.fixed_z, trainer.fixed_y)
    scale = max(1, 32 // trainer.generator.image_shape[1])
    save_image_grid(images.float().cpu().numpy(), path, nrow=trainer.grid_columns, scale=scale)


def train_gan(
    config: Config,
    data: ProcessedData,
    outputs: TrainingOutputs = OUTPUTS,
    classifier: Classifier | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the GAN in this process or under torchrun; returns rank 0's summary ({} on other ranks)."""
    ctx = init_distributed(config.device)
    try:
        return GanTrainer(config, data, ctx, classifier).fit(outputs, progress)
    finally:
        shutdown(ctx)
