"""Training the GAN (§11.2): alternating Adam updates of discriminator and generator, EMA, checkpoints, logs, grids.

Each batch of real images updates the discriminator once; every ``gan.d_steps``-th step (counted
over the whole run, across epochs) the generator is updated too, on the same generated images
(Radford et al. 2015's schedule when d_steps = 1). Real and generated images go through the
discriminator in one call (it has no batch norm, so this equals two calls and halves the kernel
launches). An exponential moving
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
import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import Config, ConfigError, GanParams
from pipeline.data.processed import ProcessedData
from pipeline.device import autocast, resolve_bf16, to_device
from pipeline.distributed import DistContext, all_reduce_sum, wrap
from pipeline.evaluation import check_enough_real_images, sample_quality_report
from pipeline.images import save_image_grid
from pipeline.models.classifier import Classifier
from pipeline.models.gan import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    dcgan_init_,
    make_codes,
)
from pipeline.objectives.gan import (
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    gradient_penalty,
    information_loss,
    r1_penalty,
)
from pipeline.seeds import stream_seed, torch_generator
from pipeline.training import (
    IndexBatches,
    TrainingOutputs,
    check_finite,
    load_optimizer_state,
    to_device_tensors,
    train,
    update_ema,
)

log = logging.getLogger(__name__)

# what train_gan's outputs depend on (dvc.yaml declares the same; a test checks both against what the stage reads)
PARAMS = ("seed", "latent_dim", "device", "gan", "evaluate.num_generated")
# the logged window statistics, in the order they are accumulated
WINDOW_KEYS = ("d_loss", "g_loss", "d_real", "d_fake")
OUTPUTS = TrainingOutputs.for_model("gan", metrics=False)  # the samples' metrics are evaluate_samples'


def gan_configs(
    config: Config, image_shape: tuple[int, int, int], num_classes: int | None
) -> tuple[GeneratorConfig, DiscriminatorConfig]:
    """The generator and discriminator ``config.gan`` describes (``num_classes`` used only when conditional)."""
    gan = config.gan
    classes = num_classes if gan.conditional else None
    common = {"arch": gan.arch, "hidden_sizes": tuple(gan.hidden_sizes), "base_channels": gan.base_channels}
    common |= {"categories": gan.info_categories, "continuous_codes": gan.info_continuous}
    return (
        GeneratorConfig(config.latent_dim, tuple(image_shape), num_classes=classes, **common),
        DiscriminatorConfig(tuple(image_shape), spectral_norm=gan.spectral_norm, num_classes=classes, **common),
    )


def _initialized(network: nn.Module, config: Config) -> nn.Module:
    return dcgan_init_(network) if config.gan.init == "dcgan" else network


def build_generator(config: Config, image_shape: tuple[int, int, int], num_classes: int | None) -> Generator:
    """A fresh generator of :func:`gan_configs`, initialized as ``gan.init`` says."""
    return _initialized(Generator(gan_configs(config, image_shape, num_classes)[0]), config)


def build_discriminator(config: Config, image_shape: tuple[int, int, int], num_classes: int | None) -> Discriminator:
    """A fresh discriminator of :func:`gan_configs`, initialized as ``gan.init`` says."""
    return _initialized(Discriminator(gan_configs(config, image_shape, num_classes)[1]), config)


class GanTrainer:
    """One rank's GAN training (a :class:`pipeline.training.Trainer`): both networks, their optimizers, the EMA,
    the noise generator and device tensors. With a classifier, best.pt is the epoch of the lowest validation Fréchet
    distance (sample metrics every ``gan.sample_every_epochs``); without one, the last epoch."""

    name = "gan"
    higher_is_better = False
    patience = None
    resumable = (
        "gan.epochs",
        "gan.max_minutes",
        "gan.resume",
        "gan.sample_every_epochs",
        "gan.log_every_steps",
        "device",
        "evaluate.",
    )

    def __init__(
        self,
        config: Config,
        data: ProcessedData,
        ctx: DistContext,
        classifier: Classifier | None = None,
        outputs: TrainingOutputs = OUTPUTS,
    ) -> None:
        if config.gan.loss != "wgan_gp" and config.gan.gp_weight != GanParams().gp_weight:
            log.warning("gan.gp_weight %g has no effect with gan.loss %s: only wgan_gp has a gradient penalty",
                        config.gan.gp_weight, config.gan.loss)  # fmt: skip
        self.config, self.ctx, self.data, self.outputs = config, ctx, data, outputs
        self.device = ctx.device
        self.bf16 = resolve_bf16(self.device, config.gan.bf16, "gan.bf16")
        self.epochs, self.max_minutes = config.gan.epochs, config.gan.max_minutes
        widths = "gan.base_channels" if config.gan.arch == "dcgan" else "gan.hidden_sizes"
        self.memory_settings = ("gan.batch_size", widths)
        self.classifier = to_device(classifier, self.device).eval() if classifier is not None else None
        self.monitor = "frechet_distance" if classifier is not None else None
        gan = config.gan
        self.generator = to_device(build_generator(config, data.image_shape, data.num_classes), self.device)
        self.discriminator = to_device(build_discriminator(config, data.image_shape, data.num_classes), self.device)
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.conditional = self.generator.num_classes is not None
        betas = (gan.beta1, gan.beta2)
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=gan.lr_g, betas=betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=gan.lr_d, betas=betas)
        self.train_g, self.train_d = wrap(self.generator, ctx), wrap(self.discriminator, ctx)
        self.noise = torch_generator(self.device, config.seed, "gan", "noise", ctx.rank)
        self.x = to_device_tensors(data.x, self.device)
        self.y = to_device_tensors(data.y, self.device) if data.y is not None else None
        # batch norm (mlp and dcgan generators) cannot train on a batch of one image: a last batch of one is left out
        self.batches = IndexBatches(
            len(data.x["train"]),
            gan.batch_size,
            stream_seed(config.seed, "gan", "batches"),
            self.device,
            rank=ctx.rank,
            world_size=ctx.world_size,
            min_batch=2,
        )
        steps = gan.epochs * len(self.batches)  # a time budget can only shorten the run
        if gan.d_steps > steps:
            per_epoch = f"{len(self.batches)} batches an epoch" + (" per process" if ctx.world_size > 1 else "")
            raise ConfigError(
                f"gan.d_steps {gan.d_steps} is more than the run's {steps} steps (gan.epochs {gan.epochs} × "
                f"{per_epoch}), so the generator would never be updated; lower gan.d_steps or raise gan.epochs"
            )
        if classifier is not None:  # the sample metrics of validate(), before an epoch is spent on training
            check_enough_real_images({"valid": len(data.x["valid"]), "train": len(data.x["train"])})
        self.ema_updates = 0
        self.window_sums = torch.zeros(len(WINDOW_KEYS) + 2, dtype=torch.float64, device=self.device)
        self.window: list[tuple[int, dict[str, float]]] = []  # (step, window means) since the last log call
        self.fixed_z, self.fixed_y, self.grid_columns = self._fixed_noise()

    def _fixed_noise(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """The noise of every logged grid: 8×8 samples, or one row of 10 per class when conditional."""
        generator = torch_generator("cpu", self.config.seed, "gan", "fixed noise")
        if self.conditional:
            columns = 10
            y = torch.arange(self.generator.num_classes).repeat_interleave(columns)
            z = torch.randn(len(y), self.config.latent_dim, generator=generator)
            return z.to(self.device), y.to(self.device), columns
        return torch.randn(64, self.config.latent_dim, generator=generator).to(self.device), None, 8

    def _fixed_codes(self, n: int) -> torch.Tensor | None:
        """The InfoGAN codes of the fixed-noise grid (None without codes)."""
        if not self.generator.code_dim:
            return None
        return self.generator.sample_codes(n, torch_generator(self.device, self.config.seed, "gan", "fixed codes"))

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, step: int, update_generator: bool) -> torch.Tensor:
        """One discriminator update (and a generator update if asked); returns the window statistics as a tensor.

        The discriminator's loss gains the WGAN-GP penalty (loss wgan_gp), the R1 penalty (r1_gamma > 0) and, for
        InfoGAN, lambda times -log Q(c|g(z, c)) of the detached samples (training Q); the generator's gains the same
        information term through its samples."""
        gan = self.config.gan
        info = self.generator.code_dim > 0
        z = torch.randn(len(x), self.config.latent_dim, generator=self.noise, device=self.device)
        codes = self.generator.sample_codes(len(x), self.noise) if info else None
        if gan.r1_gamma:
            x = x.detach().requires_grad_(True)
        with autocast(self.device, self.bf16):
            with torch.set_grad_enabled(update_generator):
                fake = self.train_g(z, y, codes)
            both_y = torch.cat([y, y]) if y is not None else None
            out = self.train_d(torch.cat([x, fake.detach()]), both_y, with_codes=info)
            logits, code_params = out if info else (out, None)
            real_logits, fake_logits = logits.float().split(len(x))
            d_loss = discriminator_loss(real_logits, fake_logits, gan.loss, gan.label_smoothing)
            if gan.loss == "wgan_gp":
                epsilon = torch.rand(len(x), 1, 1, 1, generator=self.noise, device=self.device)
                critic = functools.partial(self.discriminator, y=y)  # the module itself: DDP allows one forward
                d_loss = d_loss + gan.gp_weight * gradient_penalty(critic, x, fake, epsilon)
            if gan.r1_gamma:
                d_loss = d_loss + 0.5 * gan.r1_gamma * r1_penalty(real_logits, x)
            if info:
                q_loss = information_loss(code_params[len(x) :].float(), codes, self.generator.categories)
                d_loss = d_loss + gan.info_weight * q_loss
        check_finite(d_loss, step, "discriminator loss")
        self.optimizer_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizer_d.step()
        g_loss = torch.full_like(d_loss, float("nan"))
        if update_generator:
            self.discriminator.requires_grad_(False)
            with autocast(self.device, self.bf16):
                if gan.feature_matching:
                    with torch.no_grad():
                        real_features = self.discriminator.features(x, y)
                    fake_features = self.discriminator.features(fake, y)
                    g_loss = feature_matching_loss(real_features.float(), fake_features.float())
                    if info:
                        code_params = self.discriminator.code_head(fake_features)
                else:
                    out = self.discriminator(fake, y, with_codes=info)
                    fake_logits_g, code_params = out if info else (out, None)
                    g_loss = generator_loss(fake_logits_g.float(), gan.loss)
                if info:
                    q_loss = information_loss(code_params.float(), codes, self.generator.categories)
                    g_loss = g_loss + gan.info_weight * q_loss
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
            update_generator = step % gan.d_steps == 0  # global: a d_steps above the epoch length still trains g
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
        generator = torch_generator(self.device, seed, "gan", "samples")
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        codes = self.generator_ema.sample_codes(n, generator) if self.generator.code_dim else None
        if self.conditional and labels is None:
            labels = torch.arange(n, device=self.device) % self.generator.num_classes
        return self.generator_ema(z, labels.to(self.device) if labels is not None else None, codes)

    def is_sample_epoch(self, epoch: int) -> bool:
        return (epoch + 1) % self.config.gan.sample_every_epochs == 0 or epoch == self.config.gan.epochs - 1

    @torch.no_grad()
    def validate(self, epoch: int, progress: float) -> dict[str, float]:
        """On sample epochs, and on the epoch that spends the time budget (``progress`` 1): the fixed-noise grid
        (writer only) and, given a classifier, the sample metrics on the validation split (never the test split,
        which would leak into the choice of best.pt)."""
        if not (self.is_sample_epoch(epoch) or progress >= 1.0):
            return {}
        if self.ctx.is_writer:
            save_fixed_noise_grid(self, self.outputs.image_dir / f"samples_epoch{epoch + 1:04d}.png")
        if self.classifier is None:
            return {}
        return self.sample_metrics("valid")

    def sample_metrics(self, split: str) -> dict[str, float]:
        """Sample-quality metrics of the EMA generator against ``split`` (labels drawn from that split's)."""
        seed = stream_seed(self.config.seed, "gan", "sample metrics")

        def sampler(n: int) -> torch.Tensor:
            labels = None
            if self.conditional:
                pick = torch.randint(len(self.y[split]), (n,), generator=torch_generator("cpu", seed, "labels"))
                labels = self.y[split][pick.to(self.device)]
            return self.sample(n, labels, seed=seed)

        return sample_quality_report(
            sampler,
            self.classifier,
            self.x[split],
            self.x["train"],
            self.config.evaluate.num_generated,
            seed=seed,
            split=split,
        )

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "generator_ema": self.generator_ema, "discriminator": self.discriminator}

    def state(self) -> dict[str, Any]:
        return {
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "ema_updates": self.ema_updates,
        }

    def restore(self, state: dict[str, Any], progress: float) -> None:
        load_optimizer_state(self.optimizer_g, state["optimizer_g"])
        load_optimizer_state(self.optimizer_d, state["optimizer_d"])
        self.ema_updates = state["ema_updates"]

    def rank_state(self) -> dict[str, Any]:
        # a logging window may span the interruption: its partial sums go with the rank's noise
        return {"noise": self.noise.get_state(), "window_sums": self.window_sums.cpu()}

    def restore_rank(self, state: dict[str, Any]) -> None:
        self.noise.set_state(state["noise"])
        self.window_sums.copy_(state["window_sums"])

    def log_records(self, epoch: int, metrics: dict[str, float]) -> list[tuple[int, dict[str, float]]]:
        """Window losses at their step, then the epoch's validation metrics at the epoch's last step."""
        records = [(step, {f"train/{name}": value for name, value in window.items()}) for step, window in self.window]
        valid = {name: value for name, value in metrics.items() if name.startswith("valid/")}
        return [*records, ((epoch + 1) * len(self.batches), {"epoch": epoch + 1} | valid)]

    def finish(self, best: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The best epoch's metrics (in the card: the samples' metrics are evaluate_samples') and the final grid."""
        if not self.ema_updates:  # gan.max_minutes ended the run before step gan.d_steps
            log.warning(
                "gan.d_steps %d: the time budget ended the run before the generator's first update, so its samples "
                "are untrained; lower gan.d_steps or raise gan.max_minutes",
                self.config.gan.d_steps,
            )
        save_fixed_noise_grid(self, self.outputs.image_dir / "samples.png")
        save_code_grids(self, self.outputs.image_dir)
        metrics = best["training"]["best"]["metrics"]
        scored = "valid/frechet_distance" in metrics  # not when no epoch was scored (all trained without a classifier)
        summary = {"valid_fd": metrics["valid/frechet_distance"]} if scored else {}
        card = {
            "best_by": "valid frechet_distance" if scored else "last epoch",
            "best_epoch_metrics": metrics,
            "effective_batch_size": self.config.gan.batch_size * self.ctx.world_size,
            "device": self.device.type,
            "autocast": "bf16" if self.bf16 else "float32",
        }
        return summary, card


def _means(sums: torch.Tensor) -> dict[str, float]:
    """Window or epoch sums (d_loss, g_loss, D(x), D(g(z)), steps, generator steps) -> means."""
    d_loss, g_loss, d_real, d_fake, steps, g_steps = sums.tolist()
    means = {"d_loss": d_loss / steps, "d_real": d_real / steps, "d_fake": d_fake / steps}
    if g_steps:
        means["g_loss"] = g_loss / g_steps
    return means


def save_fixed_noise_grid(trainer: GanTrainer, path: Path) -> None:
    """The EMA generator's images of the fixed noise (one row per class when conditional) as a PNG."""
    images = trainer.generator_ema(trainer.fixed_z, trainer.fixed_y, trainer._fixed_codes(len(trainer.fixed_z)))
    scale = max(1, 32 // trainer.generator.image_shape[1])
    save_image_grid(images.float().cpu().numpy(), path, nrow=trainer.grid_columns, scale=scale)


def code_grid_rows(
    fixed_z: torch.Tensor, fixed_y: torch.Tensor | None, columns: int, rows: int = 8
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise (and labels) of the code grids' rows: the fixed grid's first ``rows`` samples, or when conditional
    (a row of ``columns`` samples per class) the first sample of each of the first ``rows`` classes."""
    if fixed_y is None:
        return fixed_z[:rows], None
    return fixed_z[::columns][:rows], fixed_y[::columns][:rows]


@torch.no_grad()
def save_code_grids(trainer: GanTrainer, image_dir: Path, steps: int = 10) -> list[Path]:
    """InfoGAN: grids that vary one code at a time with the noise and the other codes fixed per row (Chen et al.
    2016, fig. 2): ``code_category.png`` (row: one z, column: each category) and ``code_continuous_{j}.png``
    (column: c_j from -1 to 1). Returns the paths written (none without codes)."""
    generator = trainer.generator_ema
    k, c = generator.categories, generator.continuous_codes
    if not k + c:
        return []
    z, y = code_grid_rows(trainer.fixed_z, trainer.fixed_y, trainer.grid_columns)
    rows = len(z)
    base = trainer._fixed_codes(rows)
    scale = max(1, 32 // generator.image_shape[1])
    grids = {}
    if k:
        category = torch.arange(k, device=z.device).repeat(rows)
        grids["code_category.png"] = (category, base[:, k:].repeat_interleave(k, 0), k)
    for j in range(c):
        continuous = base[:, k:].repeat_interleave(steps, 0).clone()
        continuous[:, j] = torch.linspace(-1.0, 1.0, steps, device=z.device).repeat(rows)
        category = base[:, :k].argmax(1).repeat_interleave(steps, 0) if k else None
        grids[f"code_continuous_{j}.png"] = (category, continuous, steps)
    paths = []
    for name, (category, continuous, columns) in grids.items():
        codes = make_codes(category, continuous, k)
        labels = y.repeat_interleave(columns, 0) if y is not None else None
        images = generator(z.repeat_interleave(columns, 0), labels, codes)
        save_image_grid(images.float().cpu().numpy(), image_dir / name, nrow=columns, scale=scale)
        paths.append(image_dir / name)
    return paths


def train_gan(
    config: Config,
    data: ProcessedData,
    outputs: TrainingOutputs = OUTPUTS,
    classifier: Classifier | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the GAN in this process or under torchrun; returns rank 0's summary ({} on other ranks)."""

    def make_trainer(ctx: DistContext) -> GanTrainer:
        return GanTrainer(config, data, ctx, classifier, outputs)

    return train(make_trainer, outputs, config, data, PARAMS, "gan", progress)
