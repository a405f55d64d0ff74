"""The VAE settings a family accepts: one list of rules, read by the params schema (``pipeline/config.py``, before
anything imports torch) and by the model configs (``pipeline/models/vae.py``, whatever builds them). Messages name
the params.yaml keys, since that is where a user sets them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

FAMILIES = ("vae", "hvae")
ARCHS = ("mlp", "gated_mlp", "conv", "resnet")
DENSE_ARCHS = ("mlp", "gated_mlp")
PRIORS = ("standard_normal", "vampprior")
DECODER_INPUTS = ("joint", "per_layer")


class VaeSettings(Protocol):
    """What the rules read: the params schema's ``vae`` section, or a model's config."""

    family: str
    arch: str
    hidden_sizes: Sequence[int]
    conv_channels: Sequence[int]
    prior: str
    dropout: float
    flow_steps: int

    @property
    def conditional(self) -> bool: ...


def vae_settings_error(vae: VaeSettings) -> str | None:
    """The first rule ``vae`` breaks, as one line naming the key and what to set; None if it breaks none. A
    ``decoder_input`` is read where it is set (the hvae's); elsewhere it is "joint"."""
    family, arch, hidden_sizes, prior = vae.family, vae.arch, vae.hidden_sizes, vae.prior
    decoder_input = getattr(vae, "decoder_input", "joint")
    for key, value, allowed in (
        ("family", family, FAMILIES),
        ("arch", arch, ARCHS),
        ("prior", prior, PRIORS),
        ("decoder_input", decoder_input, DECODER_INPUTS),
    ):
        if value not in allowed:
            return f"vae.{key}: {value!r} is not one of {', '.join(allowed)}"
    if arch in DENSE_ARCHS and not hidden_sizes:
        return f"vae.hidden_sizes: [] is not allowed with arch {arch}; give at least one width"
    if family == "hvae" and not hidden_sizes:
        return (
            "vae.hidden_sizes: [] is not allowed with family hvae (its z1 layers are hidden_sizes[-1] wide); give one"
        )
    if arch not in DENSE_ARCHS and not vae.conv_channels:
        return f"vae.conv_channels: [] is not allowed with arch {arch}; give at least one block's channels"
    if vae.conditional and (prior != "standard_normal" or family != "vae"):
        return "vae.conditional: true is for the one-layer vae with prior standard_normal; set vae.conditional: false"
    if family == "hvae" and vae.flow_steps:
        return "vae.flow_steps: flows refine the one-layer vae; set vae.flow_steps: 0 with family hvae"
    if decoder_input == "per_layer" and (family != "hvae" or arch not in DENSE_ARCHS):
        return "vae.decoder_input: per_layer is for family hvae with an mlp architecture; set vae.decoder_input: joint"
    if vae.dropout > 0 and arch not in DENSE_ARCHS:
        return f"vae.dropout applies to the mlp architectures; set vae.dropout: 0 with arch {arch}"
    return None
