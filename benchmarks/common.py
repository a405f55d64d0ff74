"""What the training benchmarks share: the throughput of one training epoch of a trainer."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_images_per_second(trainer: Any, warmup_batches: int = 4) -> float:
    """Images/s of one training epoch of a VaeTrainer or GanTrainer, after a warm-up epoch of a few batches."""
    full = trainer.batches
    trainer.batches = dataclasses.replace(full, size=min(full.size, warmup_batches * full.batch_size))
    trainer.train_epoch(0)
    trainer.batches = full
    _synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_epoch(1)
    _synchronize(trainer.device)
    return full.size / (time.perf_counter() - start)
