"""The one checkpoint format: self-describing networks, training state, and the run's params as provenance.

A checkpoint is a dict saved atomically with ``torch.save`` and loaded with ``torch.load(weights_only=True)``
(no arbitrary pickle)::

    {"format": 2,
     "models": {name: {"family": ..., "config": {...}, "weights": state_dict}},   # e.g. "model", "generator_ema"
     "data": {...},        # what the networks were trained on (image shape, classes, dataset, binarization)
     "params": {...},      # the params the training depended on: provenance and the resume check, never a rebuild
     "training": {...}}    # optimizer and generator states, epoch, best, metric history: what a resume needs

:func:`load_model` rebuilds a network from its family and config alone (``pipeline.models.build_model``), so a
change to ``params.yaml``'s schema never breaks loading an older checkpoint.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.device import to_device
from pipeline.io import atomic_path
from pipeline.models import build_model, describe_model

FORMAT = 2
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive: a damaged checkpoint still starts so, a foreign file not


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of an older format, or lacks what is asked of it."""


def _retrain_hint(path: Path, saved_by_torch: bool = True) -> str:
    """What to do about an unusable checkpoint: retrain it where a stage writes it, else retrain the model that wrote
    it, or for a file torch.save did not write, pass a checkpoint."""
    if path.parent.name in ("vae", "gan", "classifier"):
        return f"retrain it (dvc repro -f train_{path.parent.name})"
    return "retrain the model that wrote it" if saved_by_torch else "pass a checkpoint this pipeline wrote"


def checkpoint_state(
    models: dict[str, nn.Module],
    *,
    data: dict[str, Any],
    params: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of ``models`` (name -> network) and what they were trained on and with."""
    return {
        "format": FORMAT,
        "models": {name: {**describe_model(m), "weights": m.state_dict()} for name, m in models.items()},
        "data": data,
        "params": params,
        "training": training or {},
    }


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a :func:`checkpoint_state` dict atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, remedy: str | None = None) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; FileNotFoundError or :class:`CheckpointError` saying what to do: ``remedy``
    if given (e.g. how to start afresh instead of resuming), else to retrain the model or pass a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; train the model first (dvc repro)")
    hint = remedy or _retrain_hint(path)
    try:
        with path.open("rb") as file:
            if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                raise CheckpointError(
                    f"{path}: not a readable checkpoint (not a file torch.save wrote); "
                    f"{remedy or _retrain_hint(path, saved_by_torch=False)}"
                )
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, CheckpointError):
        raise
    except Exception as err:  # a corrupt file fails in many ways (EOFError, a zip reader's RuntimeError, ...)
        first_line = next(iter(str(err).splitlines()), "")
        reason = textwrap.shorten(first_line, 120, placeholder=" ...") or type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); {hint}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "models" not in state:
        raise CheckpointError(
            f"{path}: written by an older version of this pipeline (no self-describing model); {hint}"
        )
    return state


def model_from_state(
    state: dict[str, Any], name: str, source: str = "checkpoint", kind: type[nn.Module] = nn.Module
) -> nn.Module:
    """The network ``name`` of a loaded checkpoint, rebuilt from its family and config, weights loaded, eval mode;
    a CheckpointError unless it is a ``kind`` (e.g. VAE: a vae or an hvae)."""
    if name not in state["models"]:
        wanted = f"a {kind.family} checkpoint" if hasattr(kind, "family") else f"a checkpoint with a {name!r} network"
        raise CheckpointError(
            f"{source}: holds no {name!r} network (it has {', '.join(state['models'])}); pass {wanted}"
        )
    entry = state["models"][name]
    try:
        model = build_model(entry["family"], entry["config"])
        model.load_state_dict(entry["weights"])
    except KeyError as err:
        raise CheckpointError(
            f"{source}: its {name!r} network has no {err} entry; pass a checkpoint this pipeline wrote"
        ) from None
    except (ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{source}: its {name!r} network cannot be rebuilt: {err}") from None
    if not isinstance(model, kind):
        raise CheckpointError(
            f"{source}: holds a {model.family} network where a {kind.family} is expected; pass a {kind.family} "
            "checkpoint"
        )
    return model.eval()


def load_model(
    path: str | Path, name: str = "model", device: str | torch.device = "cpu", kind: type[nn.Module] = nn.Module
) -> nn.Module:
    """The network ``name`` of the checkpoint at ``path`` (e.g. "model", or a GAN's "generator_ema"), in eval mode
    on ``device``; a CheckpointError unless it is a ``kind`` (e.g. VAE: a vae or an hvae)."""
    return to_device(model_from_state(load_checkpoint(path), name, str(path), kind), device).eval()
