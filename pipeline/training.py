"""What every training stage shares: output paths, data on the device, batching, checkpoints, resume, NaN guard,
label checks and the one logging path (dvclive).

One checkpoint format for every model: a dict of state dicts, tensors and plain
values plus the exact config, saved atomically with ``torch.save`` and loadable
with ``torch.load(weights_only=True)`` (no arbitrary pickle).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.config import ConfigError
from pipeline.data.processed import ProcessedData
from pipeline.io import atomic_path


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class LabelError(ValueError):
    """A conditional model or the classifier was given no labels, or labels it cannot use."""


@dataclass(frozen=True)
class TrainingOutputs:
    """Where a training stage writes: checkpoints (last.pt, best.pt), dvclive logs, images and the metrics JSON."""

    checkpoint_dir: Path
    live_dir: Path
    image_dir: Path
    metrics_path: Path

    @classmethod
    def for_model(cls, name: str, root: str | Path = ".", metrics_path: str | Path | None = None) -> TrainingOutputs:
        """checkpoints/<name>, dvclive/<name>, outputs/<name> and metrics/<name>_train.json (or ``metrics_path``,
        relative to ``root``) below ``root``: the paths dvc.yaml declares for the train_<name> stage."""
        root = Path(root)
        metrics = root / (metrics_path or f"metrics/{name}_train.json")
        return cls(root / "checkpoints" / name, root / "dvclive" / name, root / "outputs" / name, metrics)


def require_labels(data: ProcessedData, param: str) -> None:
    """Raise :class:`LabelError` before any work when ``data`` has no class labels but ``param`` (a boolean
    parameter such as "vae.conditional") asks for them; the message names the parameter and the fix."""
    if data.y is None:
        raise LabelError(
            f"{param} is true but dataset {data.dataset!r} has no labels; set {param}: false or use a labelled dataset"
        )


def data_description(data: ProcessedData, num_classes: int | None) -> dict[str, Any]:
    """The "data" entry of every checkpoint: what the model was trained on (``num_classes`` as the model uses it)."""
    return {
        "image_shape": list(data.image_shape),
        "num_classes": num_classes,
        "dataset": data.dataset,
        "binarize": data.binarize,
    }


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (state dicts, tensors, plain values, the config dict) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, without unpickling arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint; train the model first (dvc repro)")
    return torch.load(path, map_location=map_location, weights_only=True)


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


def check_finite(loss: torch.Tensor, step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming the step if ``loss`` is NaN or infinite."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{what} is {loss.detach().float().mean().item()} at step {step}; training stopped and the last good "
            "checkpoint is kept. Lower the learning rate, enable a KL warm-up or check the data for bad values."
        )


def changed_config_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``Config.to_dict()`` dicts (to refuse an unsafe resume)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_config_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def to_device_tensors(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Move whole splits to the device once; batches are then taken by index (no per-sample Python work)."""
    return {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in arrays.items()}


@dataclass
class IndexBatches:
    """Shuffled index batches whose order depends only on (seed, epoch), so a resumed run sees the same batches."""

    size: int
    batch_size: int
    seed: int
    device: torch.device
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def _used(self) -> int:
        """Examples used per epoch: a multiple of world_size, so every rank runs the same number of steps."""
        return self.size - self.size % self.world_size

    def _shard_size(self) -> int:
        return self._used() // self.world_size

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        else:
            order = torch.arange(self.size)
        order = order[: self._used()][self.rank :: self.world_size].to(self.device)
        yield from order.split(self.batch_size)


def binarize_dynamically(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw of grey values in [0, 1] (dynamic binarization).

    A pixel is 1 when a uniform 16-bit integer u in [0, 65536) has u < 65536 x, so P(1) = ceil(65536 x) / 65536:
    x to within 2e-5, exact at 0 and 1. Four pixels share one 64-bit draw: 3x faster on CPU than ``torch.bernoulli``.
    """
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None, generator=generator)
    centred = bits.view(torch.int16)[:n].reshape(x.shape).to(x.dtype)  # u - 32768
    return (centred < x * 65536 - 32768).to(x.dtype)


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator living on ``device`` (its state goes into checkpoints for exact resume)."""
    return torch.Generator(device=device).manual_seed(seed)


def check_resumable(saved: dict[str, Any], config: dict[str, Any], section: str, allowed: Iterable[str]) -> None:
    """Refuse to resume from a checkpoint whose config differs from ``config`` in keys outside ``allowed``
    (dotted keys, or prefixes ending in "."); the message names the keys and ``<section>.resume``."""
    allowed = tuple(allowed)
    changed = [
        key
        for key in changed_config_keys(saved, config)
        if not any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)
    ]
    if changed:
        raise ConfigError(
            f"{section}.resume: last.pt was trained with different parameters ({', '.join(changed)}); "
            f"set {section}.resume: false to start afresh, or restore those parameters"
        )


def _summary_json(summary: dict[str, Any], indent: int | None = None) -> str:
    """dvclive's summary as JSON, numpy scalars included, as dvclive itself serializes it."""
    from dvclive.plots import NumpyEncoder

    return json.dumps(summary, indent=indent, cls=NumpyEncoder)


class LiveLog:
    """The one logging path of training: dvclive metrics and plots under ``live_dir``, written by the writer rank.

    Called as :class:`EpochLoop`'s ``log``, it records every metric at step = epoch and advances the step.
    """

    def __init__(self, live_dir: Path, resume: bool = False, is_writer: bool = True) -> None:
        self.live = None
        if is_writer:
            from dvclive import Live

            class AtomicSummaryLive(Live):
                """dvclive writes its summary (metrics.json) in place: interrupted mid-write, it was left empty and
                the resumed run failed to read it back. This one writes the same JSON and renames it into place."""

                def make_summary(self) -> None:
                    self.summary["step"] = self.step
                    with atomic_path(self.metrics_file) as tmp:
                        tmp.write_text(_summary_json(self.summary, indent=4) + "\n")

            self.live = AtomicSummaryLive(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None)

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Log ``metrics`` at ``step`` without advancing (several records may precede one advance)."""
        self.live.step = step
        for name, value in metrics.items():
            self.live.log_metric(name, value)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        """Log ``metrics`` at ``step``, then write the summary and advance."""
        self.record(step, metrics)
        self.live.next_step()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()

    def snapshot(self) -> dict[str, Any]:
        """What has been logged so far (the summary and each metric file's length), for a checkpoint to keep."""
        root = Path(self.live.dir)
        rows = {str(path.relative_to(root)): path.stat().st_size for path in sorted(root.rglob("*.tsv"))}
        return {"summary": json.loads(_summary_json(self.live.summary)), "rows": rows}

    def rewind(self, snapshot: dict[str, Any]) -> None:
        """Forget what was logged after ``snapshot`` was taken: a run interrupted after logging an epoch but before
        checkpointing it would otherwise log that epoch twice once resumed."""
        if self.live is None:
            return
        root = Path(self.live.dir)
        for path in root.rglob("*.tsv"):
            size = snapshot["rows"].get(str(path.relative_to(root)))
            if size is None:
                path.unlink()
            elif path.stat().st_size > size:
                with atomic_path(path) as tmp, path.open("rb") as logged:
                    tmp.write_bytes(logged.read(size))
        self.live.summary = dict(snapshot["summary"])
        self.live.step = self.live.summary.get("step", 0)
        self.live.make_summary()


@dataclass
class EpochLoop:
    """Runs epochs with per-epoch logging, last/best checkpoints and resume.

    ``train_epoch(epoch)`` trains one epoch and returns metrics; ``validate(epoch)`` returns
    validation metrics including ``monitor``; ``state()`` returns the checkpoint dict and
    ``restore(state)`` loads it back. The last checkpoint is written after every epoch, the
    best (by ``monitor``, higher is better unless ``higher_is_better`` is false) beside it.
    An epoch whose validation metrics lack ``monitor`` (not evaluated that epoch) does not
    compete for best; with ``monitor`` None the latest epoch is always the best. With ``live``
    (the :class:`LiveLog` that ``log`` writes to) each checkpoint keeps a snapshot of the log,
    and resuming rewinds the log to it.
    """

    epochs: int
    checkpoint_dir: Path
    monitor: str | None
    train_epoch: Callable[[int], dict[str, float]]
    validate: Callable[[int], dict[str, float]]
    state: Callable[[], dict[str, Any]]
    restore: Callable[[dict[str, Any]], None]
    log: Callable[[int, dict[str, float]], None]
    live: LiveLog | None = None  # where ``log`` writes: checkpoints keep its snapshot, resuming rewinds it there
    is_writer: bool = True
    progress: bool = True
    higher_is_better: bool = True
    seconds: float = field(default=0.0, init=False)  # wall time of the last run(), for the log (never in metrics)

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``epochs``; returns a summary with the best epoch and its metrics."""
        began = time.perf_counter()
        start, best = 0, {"epoch": -1, "value": -math.inf, "metrics": {}}
        if resume and self.last_path.exists():
            saved = torch.load(self.last_path, map_location="cpu", weights_only=True)
            self.restore(saved)
            start, best = saved["epoch"] + 1, saved["best"]
            if self.live is not None and "live" in saved:
                self.live.rewind(saved["live"])
        bar = tqdm(
            range(start, self.epochs), desc=self.checkpoint_dir.name, disable=not (self.progress and self.is_writer)
        )
        for epoch in bar:
            metrics = {f"train/{k}": v for k, v in self.train_epoch(epoch).items()}
            metrics |= {f"valid/{k}": v for k, v in self.validate(epoch).items()}
            value = metrics.get(f"valid/{self.monitor}")
            improved = self._improves(value, best)
            if improved:
                best = {"epoch": epoch, "value": value, "metrics": metrics}
            if value is not None:
                bar.set_postfix({self.monitor: f"{value:.3f}"})
            if self.is_writer:
                self.log(epoch, metrics)
                state = self.state() | {"epoch": epoch, "best": best}
                if self.live is not None:
                    state["live"] = self.live.snapshot()
                save_checkpoint(self.last_path, state)
                if improved:
                    save_checkpoint(self.best_path, state)
        self.seconds = time.perf_counter() - began
        return best

    def _improves(self, value: float | None, best: dict[str, Any]) -> bool:
        if self.monitor is None:
            return True
        if value is None:
            return False
        if best["epoch"] < 0:
            return True
        return value > best["value"] if self.higher_is_better else value < best["value"]
