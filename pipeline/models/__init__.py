"""Model families: networks only, each built from one config dataclass (``Model.Config``).

A checkpoint stores, per network, its family's name, that config and the weights (``pipeline/checkpoint.py``);
:func:`build_model` rebuilds a network from the first two alone. A new family is one module here with a
``family`` name and a ``Config``, and one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from pipeline.models.classifier import Classifier
from pipeline.models.gan import Discriminator, Generator
from pipeline.models.hvae import HVAE
from pipeline.models.vae import VAE

FAMILIES: dict[str, type[nn.Module]] = {
    VAE.family: VAE,
    HVAE.family: HVAE,
    Generator.family: Generator,
    Discriminator.family: Discriminator,
    Classifier.family: Classifier,
}


def describe_model(model: nn.Module) -> dict[str, Any]:
    """{"family", "config"}: what rebuilds ``model`` without its weights (plain values, loadable weights-only)."""
    return {"family": model.family, "config": dataclasses.asdict(model.config)}


def build_model(family: str, config: dict[str, Any]) -> nn.Module:
    """A fresh network of ``family`` from its stored config; ValueError naming what does not fit."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    cls = FAMILIES[family]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"{family} config has keys this version does not know: {', '.join(unknown)}")
    return cls(cls.Config(**config))
