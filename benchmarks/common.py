"""What the benchmarks share: timing on a device, the float32 matmul rate, and a trainer's epoch throughput."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def matmul_rate(device: torch.device, repeats: int = 5, size: int = 4096) -> dict[str, float]:
    """Float32 ``torch.mm`` rates (FLOP/s) on a size³ product and a (2 size)×(size/4)² one, each the best of
    ``repeats`` runs."""
    rates = {}
    for m, k, n in ((size, size, size), (2 * size, size // 4, size // 4)):
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        products = {f"torch.mm {m}x{k}x{n}": functools.partial(torch.mm, a, b)}
        for name, product in products.items():
            product()
            best = math.inf
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                product()
                synchronize(device)
                best = min(best, time.perf_counter() - start)
            rates[name] = 2 * m * k * n / best
    return rates


def epoch_images_per_second(trainer: Any, warmup_batches: int = 4) -> float:
    """Images/s of one training epoch of a VaeTrainer or GanTrainer, after a warm-up epoch of a few batches."""
    full = trainer.batches
    trainer.batches = dataclasses.replace(full, size=min(full.size, warmup_batches * full.batch_size))
    trainer.train_epoch(0)
    trainer.batches = full
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_epoch(1)
    synchronize(trainer.device)
    return full.size / (time.perf_counter() - start)
