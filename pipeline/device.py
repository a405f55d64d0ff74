"""The one device-selection helper (CUDA, else Apple MPS, else CPU) and the one way models are put on a device."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from pipeline.config import ConfigError

Module = TypeVar("Module", bound=nn.Module)
log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name`` (auto|cpu|cuda|mps); error if the asked-for one is absent.

    For the CPU it also turns on flush-to-zero of denormal floats: trained networks make them (saturated gates and
    sigmoids, far-off prior components), and x86 cores compute on them through a slow path; a training step of the
    hvae_vampprior_iwae recipe's model at its trained weights took 47 ms with denormals, 37 ms without (33 ms at
    its initial weights). Numbers below 1.2e-38 become 0, far below what any bound or density here resolves.
    """
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cuda" and not cuda:
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA GPU; set device: auto or cpu")
    if name == "mps" and not mps:
        raise ConfigError("device: 'mps' was asked for but torch sees no Apple MPS; set device: auto or cpu")
    if name == "cpu":
        torch.set_flush_denormal(True)
    return torch.device(name)


def to_device(model: Module, device: str | torch.device) -> Module:
    """``model`` moved to ``device`` with its 4-D (conv) weights channels-last on the CPU, the default layout
    elsewhere. oneDNN runs channels-last convolutions faster (measured on two cores: conv VAE evaluation 1.5x and
    training 1.15x, DCGAN training 1.2x and generation 2x). Only the memory layout differs: values agree to float
    rounding, and weights load across layouts (optimizer state through
    :func:`pipeline.training.load_optimizer_state`).
    """
    layout = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    return model.to(device).to(memory_format=layout)


CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 and AMX; Arm's BF16


def cpu_flags() -> set[str]:
    """The cores' feature flags as /proc/cpuinfo lists them (x86 "flags", Arm "Features"); empty where it cannot
    tell (no such file: macOS, Windows)."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return set()
    return {flag for line in lines if line.startswith(("flags", "Features")) for flag in line.partition(":")[2].split()}


def cpu_lacks_native_bf16() -> bool:
    """True where the cores' flags are known and none multiplies bf16 natively; False where one does, or where the
    flags are unknown (the setting is then taken as it is)."""
    flags = cpu_flags()
    return bool(flags) and not flags & NATIVE_BF16_FLAGS


def resolve_bf16(device: torch.device, bf16: bool, key: str) -> bool:
    """Whether to autocast to bf16 (params ``key`` asked for it): not on a CPU whose cores lack native bf16, where
    oneDNN emulates it far slower than float32 (2 AMD EPYC Zen 3 cores: a 2000×300 by 300×600 product 276 ms
    against 25 ms; a training step of the iwae_two_layer recipe 10 s against 0.19 s). That case trains in float32,
    says so, and the training card records it (``autocast``)."""
    if bf16 and device.type == "cpu" and cpu_lacks_native_bf16():
        log.warning("%s: true, but this CPU has no native bf16 (AVX512-BF16, AMX, Arm BF16), where autocast runs "
                    "~10-50x slower than float32: training in float32", key)  # fmt: skip
        return False
    return bf16


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA or the CPU when asked for (see :func:`resolve_bf16`); a no-op context elsewhere (same
    code path)."""
    enabled = bf16 and device.type in ("cuda", "cpu")
    return torch.autocast(device.type if enabled else "cpu", dtype=torch.bfloat16, enabled=enabled)
