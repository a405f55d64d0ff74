"""The one training loop, :func:`fit`, and what it is made of: batching, the NaN guard, dvclive, resume.

Each model's trainer (``pipeline/*_trainer.py``) supplies a :class:`Trainer`: its epoch, its validation, its
networks and the rest of its state, and its final summary. :func:`train` does the rest once for all of them:
joining torchrun's process group, seeding, the epochs with per-epoch logging, the last and best checkpoints
(``pipeline/checkpoint.py``), resume, and the metrics and run-card files. Epochs are counted from 1 wherever a
person reads them (logs, metrics, messages).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.checkpoint import CheckpointError, checkpoint_state, load_checkpoint, save_checkpoint
from pipeline.config import Config, ConfigError, check_compatible
from pipeline.data.processed import ProcessedData
from pipeline.distributed import (
    DistContext,
    PeerLostError,
    barrier,
    gather_objects,
    init_distributed,
    peer_loss_explained,
    shutdown,
)
from pipeline.io import OutputLockedError, check_writable, exclusive_lock, write_json
from pipeline.models import FAMILIES
from pipeline.models.base import LabelError
from pipeline.seeds import seed_everything, stream_seed

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class MemoryExhaustedError(RuntimeError):
    """A training step did not fit in the device's memory; the message names the settings that size it."""


# how torch's allocators say they failed where they raise a plain RuntimeError: the CPU's, MPS's, cuBLAS's and cuDNN's
ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "ALLOC_FAILED")


# what a training stage reports as one line: bad params for the data, unreadable checkpoints or data, a diverged run,
# a step too large for the device's memory, another torchrun rank that stopped
TRAINING_ERRORS = (
    ConfigError,
    CheckpointError,
    LabelError,
    NonFiniteLossError,
    MemoryExhaustedError,
    PeerLostError,
    OutputLockedError,
    ValueError,
    OSError,
)


def check_finite(loss: torch.Tensor, step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming the step if ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{what} is {loss.detach().float().mean().item()} at step {step}; training stopped and the last good "
            "checkpoint is kept. Lower the learning rate, enable a KL warm-up or check the data for bad values."
        )


@dataclass(frozen=True)
class TrainingOutputs:
    """Where a training stage writes: checkpoints (last.pt, best.pt), dvclive logs, images, the metrics JSON (the
    numbers people compare) and the run card (what the run was: counts, settings, devices)."""

    checkpoint_dir: Path
    live_dir: Path
    image_dir: Path | None  # None: the training draws no figures
    metrics_path: Path | None  # None: the training's figures live in the run card and dvclive only
    card_path: Path

    @classmethod
    def for_model(cls, name: str, root: str | Path = ".", metrics: bool = True, images: bool = True) -> TrainingOutputs:
        """checkpoints/<name>, dvclive/<name>, outputs/<name> (if ``images``), metrics/train_<name>.json (if
        ``metrics``) and cards/train_<name>.json below ``root``: the paths dvc.yaml declares for train_<name>."""
        root = Path(root)
        return cls(
            root / "checkpoints" / name,
            root / "dvclive" / name,
            root / "outputs" / name if images else None,
            root / "metrics" / f"train_{name}.json" if metrics else None,
            root / "cards" / f"train_{name}.json",
        )

    def figures(self) -> list[Path]:
        """The figures drawn so far (none where the training draws none)."""
        return sorted(self.image_dir.glob("*.png")) if self.image_dir else []

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.pt"


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, then each per-parameter state tensor laid out like its parameter.

    load_state_dict keeps the saved memory layout, but a checkpoint may come from a model in another layout (written
    on a GPU, resumed on the CPU, where :func:`pipeline.device.to_device` stores conv weights channels-last), and
    fused Adam reads parameters, gradients and moments as flat memory: mismatched layouts would corrupt its updates.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for name, value in moments.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    moments[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def adamw_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's parameter groups for decoupled weight decay (Loshchilov & Hutter 2019): the weights of the linear and
    convolutional layers decay by ``weight_decay``; biases, decoder scales and the VampPrior's pseudo-inputs (which
    decay would pull towards black pixels, not towards a simpler model) do not. One group when nothing decays, so
    the optimizer is plain Adam."""
    params = list(model.parameters())
    if weight_decay == 0:
        return [{"params": params, "weight_decay": 0.0}]
    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, layers)}
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


@torch.no_grad()
def normalize_gradients_(model: nn.Module) -> None:
    """Divide each parameter tensor's gradient by its L2 norm (+1e-7), as the VampPrior code's AdamNormGrad does
    before its Adam step (Tomczak & Welling 2018): every step then moves each tensor by Adam's rate whatever the
    batch's gradient scale, so the rare large-gradient batches weigh no more than the others."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(torch.linalg.vector_norm(p.grad) + 1e-7)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, updates: int) -> None:
    """Polyak averaging of the weights as an exponential moving average, after ``updates`` earlier updates:
    ema <- d·ema + (1 - d)·model with d = min(decay, (1 + t) / (10 + t)), so the first updates follow the model
    closely; buffers (batch-norm statistics) are copied."""
    d = min(decay, (1.0 + updates) / (10.0 + updates))
    for average, current in zip(ema.parameters(), model.parameters(), strict=True):
        average.lerp_(current, 1.0 - d)
    for average, current in zip(ema.buffers(), model.buffers(), strict=True):
        average.copy_(current)


def to_device_tensors(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Move whole splits to the device once; batches are then taken by index (no per-sample Python work)."""
    return {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in arrays.items()}


@dataclass
class IndexBatches:
    """Shuffled index batches whose order depends only on (seed, epoch), so a resumed run sees the same batches.

    ``min_batch``: a last batch smaller than this is left out of the epoch (batch norm cannot train on one image).
    """

    size: int
    batch_size: int
    seed: int
    device: torch.device
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1
    min_batch: int = 1

    def __post_init__(self) -> None:
        if len(self) == 0:
            ranks = f" on each of {self.world_size} ranks" if self.world_size > 1 else ""
            raise ValueError(
                f"{self.size} training image(s) make no batch of at least {self.min_batch}{ranks}; "
                "give the dataset more training images"
            )

    def _shard_size(self) -> int:
        """Examples per rank and epoch: a multiple of world_size is used, so every rank runs the same steps."""
        return (self.size - self.size % self.world_size) // self.world_size

    def __len__(self) -> int:
        full, rest = divmod(self._shard_size(), self.batch_size)
        return full + (rest >= self.min_batch and rest > 0)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(stream_seed(self.seed, epoch)))
        else:
            order = torch.arange(self.size)
        order = order[: self._shard_size() * self.world_size][self.rank :: self.world_size].to(self.device)
        yield from order.split(self.batch_size)[: len(self)]


class LiveLog:
    """The one logging path of training: dvclive metrics and plots under ``live_dir``, written by the writer rank,
    through dvclive's public API only. Every record is also kept in ``history`` (which checkpoints store): a resumed
    run starts the log afresh and replays the history, so it holds exactly the epochs the checkpoint has."""

    def __init__(self, live_dir: Path, is_writer: bool = True, history: list | None = None) -> None:
        self.history: list[list] = []
        self.live = None
        if is_writer:
            from dvclive import Live

            self.live = Live(dir=str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        for step, metrics in history or []:
            self.log(step, metrics)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Log ``metrics`` at ``step`` (and write dvclive's summary)."""
        self.history.append([int(step), {name: float(value) for name, value in metrics.items()}])
        if self.live is not None:
            self.live.step = step
            for name, value in metrics.items():
                self.live.log_metric(name, float(value))
            self.live.next_step()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


class Trainer(Protocol):
    """What one model's training supplies to :func:`fit`.

    ``validate(epoch, progress)``: the validation metrics after an epoch; ``progress`` (see :func:`run_progress`) is
    how far the run is through its length, for schedules that follow it. ``networks()``: the modules a checkpoint
    stores (name -> network); ``state()`` / ``restore(state, progress)``: the rest of what a resume needs that all
    ranks share (optimizers), and how far the resumed run is through its length, which a resume may have changed
    (more epochs, a larger budget), for schedules that follow it; ``rank_state()`` /
    ``restore_rank(state)``: what differs per rank (random generators), kept for every rank; ``log_records(epoch,
    metrics)``: the (step, metrics) rows to log for an epoch; ``finish(best)``: the summary metrics and the run card,
    from the best checkpoint; ``memory_settings``: the params that size a training step, named when it runs out of
    memory.
    """

    name: str
    epochs: int
    monitor: str | None  # validation metric choosing best.pt (None: the last epoch)
    higher_is_better: bool
    resumable: tuple[str, ...]  # params keys that may differ when resuming (dotted, or a prefix ending in ".")
    patience: int | None  # early stopping: epochs without a better monitored value (None: never)
    max_minutes: float | None  # wall-clock training budget over all runs of a resumed training (None: none)
    memory_settings: tuple[str, ...]  # dotted params keys, e.g. vae.batch_size

    def train_epoch(self, epoch: int) -> dict[str, float]: ...

    def validate(self, epoch: int, progress: float) -> dict[str, float]: ...

    def networks(self) -> dict[str, nn.Module]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any], progress: float) -> None: ...

    def rank_state(self) -> dict[str, Any]: ...

    def restore_rank(self, state: dict[str, Any]) -> None: ...

    def log_records(self, epoch: int, metrics: dict[str, float]) -> list[tuple[int, dict[str, float]]]: ...

    def finish(self, best: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]: ...


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested params dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def check_resumable(saved: dict[str, Any], params: dict[str, Any], section: str, allowed: tuple[str, ...]) -> None:
    """Refuse to resume from a checkpoint whose params (only those its training depends on) differ from ``params``
    outside ``allowed``; the message names the keys and ``<section>.resume``."""
    changed = [
        key
        for key in changed_keys(saved, params)
        if not any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)
    ]
    if changed:
        raise ConfigError(
            f"{section}.resume: last.pt was trained with different parameters ({', '.join(changed)}); "
            f"set {section}.resume: false to start afresh, or restore those parameters"
        )


def _check_same_training(saved: dict[str, Any], trainer: Trainer, path: Path) -> None:
    """Refuse to resume from a checkpoint another kind of training wrote (a GAN's or classifier's last.pt in the
    VAE's folder), naming the networks it holds. Another family of the same kind (an hvae's last.pt for a vae) is
    left to :func:`check_resumable`, which names the parameter that changed."""
    networks = trainer.networks()

    def same_kind(name: str) -> bool:
        held = FAMILIES.get(str(saved["models"][name].get("family")))
        wanted = type(networks[name])
        return held is not None and (issubclass(held, wanted) or issubclass(wanted, held))

    shared = set(saved["models"]) & set(networks)  # Polyak averaging on or off adds or drops one
    if not shared or not all(same_kind(name) for name in shared):
        key = f"{trainer.name}.resume"
        families = sorted({str(entry.get("family")) for entry in saved["models"].values()})
        raise CheckpointError(
            f"{key}: {path} is not a {trainer.name} checkpoint (its networks: {', '.join(families)}); set {key}: "
            f"false to start afresh, or put the {trainer.name}'s last.pt back"
        )


def _check_same_run(saved: dict[str, Any], run: dict[str, Any], trainer: Trainer) -> None:
    """Refuse a resume on other data, another kind of device (generator states differ), another number of
    processes, or with fewer epochs than last.pt has trained."""
    key = f"{trainer.name}.resume"
    # on the keys last.pt recorded: a checkpoint from before a key was added (class_names) still resumes
    if saved["data"] != {name: run["data"].get(name) for name in saved["data"]}:
        raise ConfigError(
            f"{key}: last.pt was trained on other data ({saved['data']}, now {run['data']}); "
            f"set {key}: false to start afresh"
        )
    # likewise a last.pt from before checkpoints recorded the data's fingerprint resumes on its description alone
    old, new = saved["training"].get("data_fingerprint"), run["data_fingerprint"]
    if old is not None and old != new:
        what = "other images or labels in the training and validation splits"
        if (old["train"], old["valid"]) != (new["train"], new["valid"]):
            what = f"{old['train']}/{old['valid']} training/validation images, now {new['train']}/{new['valid']}"
        raise ConfigError(f"{key}: last.pt was trained on other data ({what}); set {key}: false to start afresh")
    for name, what in (("device_type", "kind of device"), ("world_size", "number of processes")):
        if saved["training"][name] != run[name]:
            raise ConfigError(
                f"{key}: last.pt was written with another {what} ({saved['training'][name]}, now {run[name]}); "
                f"resume with the same, or set {key}: false"
            )
    if saved["training"]["epoch"] > trainer.epochs:
        raise ConfigError(
            f"{trainer.name}.epochs: {trainer.epochs} is below the {saved['training']['epoch']} epochs last.pt has "
            f"trained; raise it, or set {key}: false"
        )


def _load_weights(networks: dict[str, nn.Module], saved: dict[str, Any]) -> None:
    for name, network in networks.items():
        network.load_state_dict(saved["models"][name]["weights"])


def _improves(monitor: str | None, higher_is_better: bool, value: float | None, best: dict[str, Any]) -> bool:
    if monitor is None:
        return True
    if value is None:
        return False
    if best["epoch"] < 1 or best["value"] is None:  # None: scored by no metric so far (e.g. a classifier came later)
        return True
    return value > best["value"] if higher_is_better else value < best["value"]


def run_progress(trainer: Trainer, epochs_done: int, seconds: float) -> float:
    """How far a run is through its length, in [0, 1]: the share of its epochs done, or of its time budget spent
    (``seconds`` of training), whichever is larger: the budget ends a run sooner than its epochs would."""
    share = epochs_done / trainer.epochs
    if trainer.max_minutes is not None:
        share = max(share, seconds / (60 * trainer.max_minutes))
    return min(share, 1.0)


def _stop_reason(trainer: Trainer, epochs_done: int, best_epoch: int, seconds: float) -> str | None:
    """Why training ends after this epoch, besides reaching its last: early stopping or the time budget."""
    if trainer.patience is not None and trainer.monitor is not None and epochs_done - best_epoch >= trainer.patience:
        return f"early stopping: {trainer.patience} epochs without a better valid/{trainer.monitor} (best {best_epoch})"
    if trainer.max_minutes is not None and seconds >= 60 * trainer.max_minutes:
        return f"time budget: {trainer.max_minutes:g} minutes spent after epoch {epochs_done}"
    return None


def _claim_outputs(outputs: TrainingOutputs, ctx: DistContext, stack: contextlib.ExitStack) -> None:
    """On the writer rank, lock the checkpoint directory for ``stack``'s block and check every output folder can be
    written; under torchrun every rank then raises the writer's error, so each exits with its line (none is left
    waiting for a rank that is gone)."""
    error = None
    if ctx.is_writer:
        try:
            stack.enter_context(exclusive_lock(outputs.checkpoint_dir))
            folders = [outputs.checkpoint_dir, outputs.live_dir, outputs.image_dir, outputs.card_path.parent]
            folders.append(None if outputs.metrics_path is None else outputs.metrics_path.parent)
            check_writable(*(folder for folder in folders if folder is not None))
        except (OutputLockedError, OSError) as err:
            error = err
    error = gather_objects(error, ctx)[0]
    if error is not None:
        raise error


@contextlib.contextmanager
def _explain_out_of_memory(stage: str, device: torch.device, settings: tuple[str, ...] = ()) -> Iterator[None]:
    """A failed allocation in the block becomes a :class:`MemoryExhaustedError` naming ``settings``, the params
    that size a training step (none: the data and networks did not fit); other errors pass unchanged."""
    try:
        yield
    except RuntimeError as err:  # torch.OutOfMemoryError on CUDA; the CPU allocator, MPS, cuBLAS raise RuntimeError
        if not (isinstance(err, torch.OutOfMemoryError) or any(sign in str(err) for sign in ALLOCATION_FAILURES)):
            raise
        lower = f"lower {', '.join(settings)} (they size each step)" if settings else "use a smaller dataset"
        raise MemoryExhaustedError(f"{stage}: out of memory on {device}; {lower}, or free memory") from None


def _unchanged(files: dict[Path, int]) -> list[Path]:
    """Those of ``files`` (path -> inode) still in place as they were: an atomic rewrite gives a file a new inode."""
    return [path for path, inode in files.items() if path.exists() and path.stat().st_ino == inode]


def fit(
    trainer: Trainer,
    outputs: TrainingOutputs,
    *,
    params: dict[str, Any],
    data: dict[str, Any],
    data_fingerprint: dict[str, Any],
    resume: bool,
    ctx: DistContext,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``trainer`` to its last epoch, or until its patience or time budget ends it (resuming from ``last.pt``
    if asked and present); the writer rank saves last.pt every epoch and best.pt when the monitored validation
    metric improves, logs to dvclive, and at the end writes the summary metrics and the run card (an earlier run's
    are removed with the first checkpoint this run writes, so a run that fails midway leaves none that describe other
    weights). ``params``: what the training depends on (stored as provenance, compared on resume); ``data``: the
    description of the training data, ``data_fingerprint``: their split sizes and hash (compared on resume). Returns
    the summary ({} on other ranks). The writer rank holds the checkpoint directory's lock throughout: a second
    trainer is refused."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(peer_loss_explained(f"train_{trainer.name}", ctx))
        _claim_outputs(outputs, ctx, stack)
        stack.enter_context(_explain_out_of_memory(f"train_{trainer.name}", ctx.device, trainer.memory_settings))
        began = time.perf_counter()
        start, best, history = 0, {"epoch": 0, "value": -math.inf, "metrics": {}}, []
        trained_seconds, stopped = 0.0, None
        run = {"data": data, "data_fingerprint": data_fingerprint}
        run |= {"device_type": ctx.device.type, "world_size": ctx.world_size}
        if resume and outputs.last_path.exists():
            key = f"{trainer.name}.resume"
            saved = load_checkpoint(outputs.last_path, f"set {key}: false (or delete last.pt) to start afresh")
            _check_same_training(saved, trainer, outputs.last_path)
            check_resumable(saved["params"], params, trainer.name, trainer.resumable)
            _check_same_run(saved, run, trainer)
            start, best = saved["training"]["epoch"], saved["training"]["best"]
            history = saved["training"]["history"]
            trained_seconds = saved["training"].get("seconds", 0.0)
            clock = saved["training"].get("clock", trained_seconds)  # what the last epoch's validate and stop saw
            _load_weights(trainer.networks(), saved)
            trainer.restore(saved["training"]["state"], run_progress(trainer, start, clock))
            trainer.restore_rank(saved["training"]["ranks"][ctx.rank])
            # judged again under this run's patience and budget: raising either continues a stopped training
            stopped = _stop_reason(trainer, start, best["epoch"], clock)
        earlier_figures = {path: path.stat().st_ino for path in outputs.figures()} if start == 0 else {}
        live = LiveLog(outputs.live_dir, ctx.is_writer, history)
        epochs = range(start, start if stopped else trainer.epochs)
        bar = tqdm(epochs, desc=trainer.name, disable=not (progress and ctx.is_writer))
        for epoch in bar:
            epoch_began = time.perf_counter()
            metrics = {f"train/{k}": v for k, v in trainer.train_epoch(epoch).items()}
            seconds_so_far = trained_seconds + time.perf_counter() - epoch_began
            progress = gather_objects(run_progress(trainer, epoch + 1, seconds_so_far), ctx)[0]  # rank 0's clock
            metrics |= {f"valid/{k}": v for k, v in trainer.validate(epoch, progress).items()}
            value = metrics.get(f"valid/{trainer.monitor}")
            improved = _improves(trainer.monitor, trainer.higher_is_better, value, best)
            if improved:
                best = {"epoch": epoch + 1, "value": value, "metrics": metrics}
            if value is not None:
                bar.set_postfix({trainer.monitor: f"{value:.3f}"})
            for step, record in trainer.log_records(epoch, metrics):
                live.log(step, record)
            trained_seconds += time.perf_counter() - epoch_began
            # rank 0's decision for all: the clocks of the ranks differ. The budget is judged on the clock validate
            # saw (its progress reached 1), so the epoch that spends it was validated as the last one
            stopped = gather_objects(_stop_reason(trainer, epoch + 1, best["epoch"], seconds_so_far), ctx)[0]
            ranks = gather_objects(trainer.rank_state(), ctx)  # every rank's generators, for an exact resume
            if ctx.is_writer:
                if epoch == start:  # the checkpoints change: an earlier card and metrics no longer describe them
                    stale = [outputs.card_path, outputs.metrics_path]
                    if start == 0:  # a fresh run's best.pt (written below when it improves) and figures are its own
                        stale += [outputs.best_path, *_unchanged(earlier_figures)]
                    for path in stale:
                        if path is not None:
                            path.unlink(missing_ok=True)
                training = {"state": trainer.state(), "ranks": ranks, "epoch": epoch + 1, "best": best}
                training |= {"history": live.history, "seconds": trained_seconds, "clock": seconds_so_far}
                training |= {"stopped": stopped}
                training |= {key: value for key, value in run.items() if key != "data"}  # compared on resume
                state = checkpoint_state(trainer.networks(), data=data, params=params, training=training)
                save_checkpoint(outputs.last_path, state)
                if improved:
                    save_checkpoint(outputs.best_path, state)
            if stopped:
                log.info("train_%s: %s", trainer.name, stopped)
                break
        seconds = time.perf_counter() - began
        barrier(ctx)
        if not ctx.is_writer:
            return {}
        summary, card = trainer.finish(load_checkpoint(outputs.best_path))
        card = {"best_epoch": best["epoch"], "epochs": trainer.epochs, "world_size": ctx.world_size, **card}
        card["stopped"] = stopped or "epochs"  # seconds stay in last.pt and the log: a card depends on the seed only
        write_json(outputs.card_path, card)
        if outputs.metrics_path is not None:
            write_json(outputs.metrics_path, summary)
        live.end()
        log.info("train_%s: %.1f s training; best epoch %d of %d", trainer.name, seconds, best["epoch"], trainer.epochs)
        return summary


def train(
    make_trainer: Callable[[DistContext], Trainer],
    outputs: TrainingOutputs,
    config: Config,
    data: ProcessedData,
    param_keys: tuple[str, ...],
    section: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Check the params of model ``section`` ("vae", "gan"; None: no such check and no resume) against ``data``,
    join torchrun's process group (if any), seed, build the trainer on this rank's device and :func:`fit` it.
    ``param_keys``: what the training depends on (as dvc.yaml declares), stored and compared on resume."""
    if section is not None:
        check_compatible(config, section, data)
    resume = section is not None and getattr(config, section).resume
    ctx = init_distributed(config.device)
    try:
        seed_everything(config.seed)
        with _explain_out_of_memory(f"train_{outputs.checkpoint_dir.name}", ctx.device):  # the data, the networks
            trainer = make_trainer(ctx)
        params = config.select(param_keys)
        return fit(
            trainer,
            outputs,
            params=params,
            data=data.describe(),
            data_fingerprint=data.fingerprint,
            resume=resume,
            ctx=ctx,
            progress=progress,
        )
    finally:
        shutdown(ctx)
