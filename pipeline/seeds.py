"""The one seed helper: independent named random streams derived from the run's ``seed``.

Every random draw of the pipeline comes from a stream named by what it is for, e.g.
``stream_seed(seed, "vae", "batches", epoch)``: the names are hashed together with the seed through
numpy's ``SeedSequence``, so two different names, or the same name under two different seeds, give
unrelated streams (unlike ``seed + k``, where seed 0's stream k is seed k's stream 0).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def _word(part: str | int) -> int:
    """A 64-bit entropy word for one part of a stream name (strings hashed, non-negative integers as they are)."""
    if isinstance(part, bool) or not isinstance(part, (str, int)):
        raise TypeError(f"stream names are strings and integers, got {part!r}")
    if isinstance(part, int):
        if part < 0:
            raise ValueError(f"stream indices are non-negative, got {part}")
        return part
    return int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")


def stream_seed(seed: int, *name: str | int) -> int:
    """A 63-bit seed for the stream ``name`` of run ``seed`` (positive, so torch and numpy both take it)."""
    # a string part is tagged so that ("a", 1) and ("a1",) or (1, "a") never share entropy words
    words = [int(seed)] + [w for part in name for w in (0 if isinstance(part, str) else 1, _word(part))]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def torch_generator(device: torch.device | str, seed: int, *name: str | int) -> torch.Generator:
    """A torch generator on ``device`` for the stream ``name`` of run ``seed``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, *name))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (what layer initialization draws from) and make
    CPU kernels deterministic."""
    random.seed(stream_seed(seed, "python"))
    np.random.seed(stream_seed(seed, "numpy") % 2**32)
    torch.manual_seed(stream_seed(seed, "torch"))
    torch.use_deterministic_algorithms(True, warn_only=True)
