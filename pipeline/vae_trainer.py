"""Training the VAE: data on the device batched by index, Adam on the ELBO or IWAE bound, checkpoints, logs, figures.

Runs in one process or under ``torchrun`` (DistributedDataParallel; each rank trains on its
shard of every epoch with ``vae.batch_size`` examples per step, so the effective batch is
``batch_size × world_size``; metrics are summed over ranks; rank 0 alone logs and writes).
Every random draw (batch order, dynamic binarization, dequantization, z) comes from seeded
generators whose state is checkpointed, so a resumed run ends with the same weights as an
uninterrupted one on CPU.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.checkpoint import model_from_state
from pipeline.config import Config, VaeParams
from pipeline.data.processed import ProcessedData
from pipeline.device import autocast, resolve_bf16, to_device
from pipeline.distributed import DistContext, all_reduce_sum, wrap
from pipeline.estimators import sharded_importance_sampled_log_likelihood
from pipeline.images import save_image_grid
from pipeline.models import FAMILIES
from pipeline.models.hvae import HVAE
from pipeline.models.layers import he_init_
from pipeline.models.vae import VAE, VAEConfig
from pipeline.objectives.vae import (
    bits_per_dim,
    count_active_units,
    discrete_log_likelihood,
    kl_warmup_beta,
    prepare_heldout,
    prepare_images,
    training_bound,
)
from pipeline.seeds import stream_seed, torch_generator
from pipeline.training import (
    IndexBatches,
    TrainingOutputs,
    adamw_parameter_groups,
    check_finite,
    load_optimizer_state,
    normalize_gradients_,
    to_device_tensors,
    train,
    update_ema,
)

log = logging.getLogger(__name__)

# what train_vae's outputs depend on (dvc.yaml declares the same; a test checks both against what the stage reads)
PARAMS = ("seed", "latent_dim", "device", "vae")
OUTPUTS = TrainingOutputs.for_model("vae")


def vae_config(config: Config, image_shape: tuple[int, int, int], num_classes: int | None) -> VAEConfig:
    """The config of the VAE family ``config.vae.family`` describes for data of ``image_shape`` with
    ``num_classes`` labels (None: unlabelled)."""
    vae = config.vae
    family = FAMILIES[vae.family]
    settings = dict(
        image_shape=tuple(image_shape),
        latent_dim=config.latent_dim,
        arch=vae.arch,
        hidden_sizes=tuple(vae.hidden_sizes),
        conv_channels=tuple(vae.conv_channels),
        likelihood=vae.likelihood,
        gaussian_variance=vae.gaussian_variance,
        gaussian_std=vae.gaussian_std,
        num_classes=num_classes if vae.conditional else None,
        prior=vae.prior,
        pseudo_inputs=vae.pseudo_inputs,
        flow_steps=vae.flow_steps,
        flow_hidden=vae.flow_hidden,
        dropout=vae.dropout,
        clamp_logvar=vae.clamp_logvar,
    )
    if vae.family == HVAE.family:
        settings.update(top_latent_dim=vae.top_latent_dim, decoder_input=vae.decoder_input)
    return family.Config(**settings)


def build_vae(config: Config, image_shape: tuple[int, int, int], num_classes: int | None) -> VAE:
    """A fresh model of :func:`vae_config` (a :class:`VAE` or one of its subclasses), initialized as ``vae.init``
    says."""
    model = FAMILIES[config.vae.family](vae_config(config, image_shape, num_classes))
    return he_init_(model) if config.vae.init == "he" else model


@torch.no_grad()
def start_pseudo_inputs_at_data(model: VAE, images: np.ndarray, seed: int) -> None:
    """Start the VampPrior's M pseudo-inputs at M training images drawn at random (without replacement where there
    are M), pulled into [0.05, 0.95]: hardtanh, which keeps them in [0, 1], passes no gradient at exactly 0 or 1."""
    rng = np.random.default_rng(stream_seed(seed, "vae", "pseudo_inputs"))
    count = model.pseudo_inputs_raw.shape[0]
    chosen = rng.choice(len(images), size=count, replace=count > len(images))
    model.pseudo_inputs_raw.copy_(torch.from_numpy(0.05 + 0.9 * images[chosen]))


class _Objective(nn.Module):
    """The training bound as a module, so DistributedDataParallel can wrap it and synchronize gradients."""

    def __init__(self, model: VAE, vae: VaeParams) -> None:
        super().__init__()
        self.model, self.vae = model, vae

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None, beta: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        terms = training_bound(
            self.model,
            x,
            y,
            iwae_k=self.vae.iwae_k,
            mc_samples=self.vae.mc_samples,
            beta=beta,
            free_bits=self.vae.free_bits,
            iwae_gradient=self.vae.iwae_gradient,
            generator=generator,
        )
        return terms.loss, terms.bound, terms.reconstruction, terms.kl, terms.mu


class VaeTrainer:
    """One rank's VAE training (a :class:`pipeline.training.Trainer`): model, optimizer, generator, device tensors."""

    name = "vae"
    higher_is_better = True
    resumable = ("vae.epochs", "vae.patience", "vae.max_minutes", "vae.resume", "device")

    def __init__(self, config: Config, data: ProcessedData, ctx: DistContext, outputs: TrainingOutputs = OUTPUTS):
        if config.vae.likelihood == "bernoulli" and not data.binary:
            log.warning(
                "vae.likelihood bernoulli on grey data (data.binarize: none): the bound is not a likelihood of the "
                "data; set data.binarize: dynamic, or vae.likelihood: gaussian"
            )
        self.config, self.ctx, self.data, self.outputs = config, ctx, data, outputs
        # the validation metric that chooses best.pt and ends the run early: the bound, or with vae.valid_samples a
        # likelihood estimate, which can rank checkpoints otherwise than the ELBO does
        self.monitor = "log_px" if config.vae.valid_samples else "bound"
        self.epochs, self.patience, self.max_minutes = config.vae.epochs, config.vae.patience, config.vae.max_minutes
        widths = "vae.conv_channels" if config.vae.arch in ("conv", "resnet") else "vae.hidden_sizes"
        self.memory_settings = ("vae.batch_size", "vae.iwae_k", "vae.mc_samples", widths)
        self.memory_settings += ("vae.valid_samples",) if config.vae.valid_samples else ()
        self.device = ctx.device
        self.bf16 = resolve_bf16(self.device, config.vae.bf16, "vae.bf16")
        self.model = build_vae(config, data.image_shape, data.num_classes)
        if config.vae.prior == "vampprior" and config.vae.pseudo_init == "data":
            start_pseudo_inputs_at_data(self.model, data.x["train"], config.seed)
        self.model = to_device(self.model, self.device)
        # vae.ema_decay > 0: Polyak averaging (Kingma et al. 2016 average over about 10^4 steps). The average is the
        # model that is validated, checkpointed as "model" and evaluated; the weights Adam trains are checkpointed
        # beside it as "model_unaveraged", for a resume
        self.average = copy.deepcopy(self.model).requires_grad_(False) if config.vae.ema_decay > 0 else None
        self.conditional = self.model.num_classes is not None
        self.dequantized = config.vae.likelihood == "gaussian"
        self.optimizer = torch.optim.AdamW(
            adamw_parameter_groups(self.model, config.vae.weight_decay), lr=config.vae.lr, fused=True
        )
        self.schedule = plateau_schedule(self.optimizer, config.vae.lr_patience)
        self.objective = wrap(_Objective(self.model, config.vae), ctx)
        self.generator = torch_generator(self.device, config.seed, "vae", "training", ctx.rank)
        self.x = to_device_tensors(data.x, self.device)
        self.y = to_device_tensors(data.y, self.device) if self.conditional else None
        # validation and test sets get one fixed binarization / dequantization draw, so epochs compare fairly
        for split in ("valid", "test"):
            self.x[split] = prepare_heldout(self.x[split], data.binarize, config.vae.likelihood, config.seed, split)
        self.batches = IndexBatches(
            len(data.x["train"]),
            config.vae.batch_size,
            stream_seed(config.seed, "vae", "batches"),
            self.device,
            rank=ctx.rank,
            world_size=ctx.world_size,
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
            with autocast(self.device, self.bf16):
                loss, bound, reconstruction, kl, _ = self.objective(x, self._labels("train", idx), beta, self.generator)
            check_finite(loss, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if vae.normalize_gradients:
                normalize_gradients_(self.model)
            self.optimizer.step()
            if self.average is not None:
                update_ema(self.average, self.model, vae.ema_decay, updates=step - 1)
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

    def validate(self, epoch: int, progress: float) -> dict[str, float]:
        """The validation metrics (see :meth:`evaluate`; with Polyak averaging, of the average, and the trained
        weights' bound as ``unaveraged_bound``) and the rate this epoch trained at; then the rate of the next epoch
        from ``vae.lr_schedule``: plateau (on the validation bound) or cosine (on the run's ``progress``)."""
        metrics = self.evaluate("valid")
        if self.average is not None:
            metrics["unaveraged_bound"] = self.evaluate("valid", model=self.model)["bound"]
        if self.monitor == "log_px":
            metrics["log_px"] = self.validation_log_px()
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.config.vae.lr_schedule == "plateau":
            self.schedule.step(metrics[self.monitor])
        elif self.config.vae.lr_schedule == "cosine":
            self._anneal(progress)
        return metrics

    def _anneal(self, progress: float) -> None:
        """The cosine schedule's rate at ``progress`` of the run."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.vae.lr * cosine_factor(progress)

    @torch.no_grad()
    def evaluate(self, split: str, sharded: bool = True, model: VAE | None = None) -> dict[str, float]:
        """The bound (beta = 1), ELBO terms, active units and bits/dim on a split, with a fixed generator.

        ``sharded``: each rank takes its share and the sums are combined; else this rank does it all. ``model``:
        the model to evaluate (default: the weight average if there is one, else the trained weights).
        """
        vae = self.config.vae
        model = model if model is not None else self.evaluated_model
        model.eval()
        generator = torch_generator(self.device, self.config.seed, "vae", "evaluation", split)
        size = len(self.x[split])
        rank, world = (self.ctx.rank, self.ctx.world_size) if sharded else (0, 1)
        shard = torch.arange(rank, size, world, device=self.device)  # every example once, over all ranks
        d = model.latent_dim
        sums = torch.zeros(4 + 2 * d, dtype=torch.float64, device=self.device)
        for idx in shard.split(max(vae.batch_size, 256)):
            with autocast(self.device, self.bf16):
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

    @property
    def evaluated_model(self) -> VAE:
        """The model that is validated, checkpointed as ``model`` and evaluated: the weight average if there is one."""
        return self.average if self.average is not None else self.model

    def validation_log_px(self) -> float:
        """``valid/log_px``: the mean importance-sampled log p(x) of the validation split, with ``vae.valid_samples``
        samples of the evaluated model's full proposal per point and the same noise every epoch (the K-sample IWAE
        bound, in float32 as the evaluation stage computes it). For a class-conditional model it is log p(x|y) with
        the true labels, the evaluation's ``given_y``."""
        model = self.evaluated_model.eval()
        result = sharded_importance_sampled_log_likelihood(
            model,
            model,
            self.x["valid"],
            self.y["valid"] if self.y is not None else None,
            self.ctx,
            num_samples=self.config.vae.valid_samples,
            seed=stream_seed(self.config.seed, "vae", "validation importance sampling"),
        )
        log_px = result.log_px.mean().item()
        return discrete_log_likelihood(log_px, math.prod(model.image_shape)) if self.dequantized else log_px

    def networks(self) -> dict[str, nn.Module]:
        if self.average is None:
            return {"model": self.model}
        return {"model": self.average, "model_unaveraged": self.model}

    def state(self) -> dict[str, Any]:
        # the cosine schedule's rate rides in the optimizer's state; only the plateau schedule has its own
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def restore(self, state: dict[str, Any], progress: float) -> None:
        load_optimizer_state(self.optimizer, state["optimizer"])
        if state["schedule"] is not None:  # None: written before every run kept the plateau schedule's state
            self.schedule.load_state_dict(state["schedule"])
        if self.config.vae.lr_schedule == "cosine":  # the saved rate is of the run's old length (epochs, budget)
            self._anneal(progress)

    def rank_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def restore_rank(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def log_records(self, epoch: int, metrics: dict[str, float]) -> list[tuple[int, dict[str, float]]]:
        return [(epoch + 1, metrics)]

    def finish(self, best: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The best checkpoint's bounds on every split (the metrics) and the figures of its model."""
        best_model = to_device(model_from_state(best, "model"), self.device)
        test = self.evaluate("test", sharded=False, model=best_model)
        test_y = self.y["test"] if self.y is not None else None
        save_vae_figures(best_model, self.x["test"], test_y, self.outputs.image_dir, self.config.seed)
        metrics = best["training"]["best"]["metrics"]
        summary = {"train": metrics["train/bound"], "valid": metrics["valid/bound"]}
        if self.monitor == "log_px":
            summary["valid_log_px"] = metrics["valid/log_px"]
        card = {
            "bound": "elbo" if self.config.vae.iwae_k == 1 else f"iwae_{self.config.vae.iwae_k}",
            "best_by": f"valid {self.monitor}"
            + (f" (K = {self.config.vae.valid_samples})" if self.monitor == "log_px" else ""),
            "test": test,
            "effective_batch_size": self.config.vae.batch_size * self.ctx.world_size,
            "device": self.device.type,
            "autocast": "bf16" if self.bf16 else "float32",
        }
        return summary, card


def plateau_schedule(optimizer: torch.optim.Optimizer, patience: int) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """``vae.lr_schedule: plateau``: halve the rate after ``patience`` epochs without a better validation bound, down
    to 1/1000 of it. Built whatever the schedule (its state is part of every checkpoint); stepped only under plateau."""
    lr = optimizer.param_groups[0]["lr"]
    # "better" is strictly higher, as for best.pt: torch's default relative threshold would count a slightly lower
    # bound as better, the bound being negative
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=0.5,
        patience=patience,
        min_lr=lr / 1000,
        threshold=0.0,
        threshold_mode="abs",
        eps=0.0,
    )


def cosine_factor(progress: float) -> float:
    """``vae.lr_schedule: cosine``: the share ½(1 + cos(π p)) of the initial rate at progress p ∈ [0, 1] of the run
    (Loshchilov & Hutter 2017, one cycle). p follows the time budget when that ends the run before its epochs, so
    the rate reaches 0 as the budget runs out: a budgeted run ends annealed, not at its full rate."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


@torch.no_grad()
def save_vae_figures(model: VAE, x: torch.Tensor, y: torch.Tensor | None, image_dir: Path, seed: int) -> list[Path]:
    """PNGs: prior samples (one row per class if conditional), reconstructions under their inputs,
    latent interpolations between test images, and the 2-D latent manifold when latent_dim == 2."""
    model.eval()
    device = x.device
    generator = torch_generator(device, seed, "vae", "figures")
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
        save("samples.png", model.decode_mean(model.sample_prior(len(labels), generator), labels), per_class)
    else:
        save("samples.png", model.decode_mean(model.sample_prior(64, generator)), 8)

    inputs, labels = x[:32], (y[:32] if y is not None else None)
    recon = model.decode_mean(model.posterior(inputs, labels).mean, labels)
    rows = [torch.cat([inputs[r : r + 8], recon[r : r + 8]]) for r in range(0, len(inputs), 8)]
    save("reconstructions.png", torch.cat(rows), 8)

    steps, pairs = 10, min(8, len(x) // 2)
    mu = model.posterior(x[: 2 * pairs], y[: 2 * pairs] if y is not None else None).mean
    t = torch.linspace(0, 1, steps, device=device)[None, :, None]
    z = (mu[:pairs, None] * (1 - t) + mu[pairs:, None] * t).reshape(-1, d)
    row_labels = y[:pairs].repeat_interleave(steps) if y is not None else None
    save("interpolation.png", model.decode_mean(z, row_labels), steps)

    if d == 2 and model.config.prior == "standard_normal":
        side = 15
        grid = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side, device=device))
        z = torch.stack(torch.meshgrid(grid, grid.flip(0), indexing="xy"), -1).reshape(-1, 2)
        grid_labels = y[:1].expand(len(z)) if y is not None else None
        save("manifold.png", model.decode_mean(z, grid_labels), side)
    return written


def train_vae(config: Config, data: ProcessedData, outputs: TrainingOutputs = OUTPUTS, progress: bool = True) -> dict:
    """Train (or resume) the VAE in this process or under torchrun; returns rank 0's summary ({} on other ranks)."""
    return train(lambda ctx: VaeTrainer(config, data, ctx, outputs), outputs, config, data, PARAMS, "vae", progress)
