"""pipeline/device.py: device selection and putting models on a device."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from pipeline import device
from pipeline.config import Config, ConfigError, GanParams, VaeParams
from pipeline.device import autocast, resolve_bf16, select_device, to_device
from pipeline.gan_trainer import build_generator
from pipeline.vae_trainer import build_vae


def test_select_device_names_the_missing_accelerator() -> None:
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: 'cuda' was asked for but torch sees no CUDA GPU"):
            select_device("cuda")


def test_to_device_stores_conv_weights_channels_last_on_cpu_and_computes_the_same() -> None:
    torch.manual_seed(0)
    config = Config(latent_dim=8, vae=VaeParams(arch="conv", conv_channels=[8, 16]))
    reference = build_vae(config, (1, 28, 28), None)
    model = to_device(copy.deepcopy(reference), "cpu")
    conv_weights = [p for p in model.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert all(p.is_contiguous() for p in model.parameters() if p.dim() != 4)

    x, z = torch.rand(5, 1, 28, 28), torch.randn(5, 8)
    for ours, theirs in zip(model.encode(x), reference.encode(x), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.decode_logits(z), reference.decode_logits(z), rtol=1e-5, atol=1e-5)
    model.decode_logits(z).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.decoder.parameters())

    # a checkpoint of the channels-last model loads into one in the default layout
    fresh = build_vae(config, (1, 28, 28), None)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.decode_logits(z), model.decode_logits(z), rtol=1e-5, atol=1e-5)

    # any other device gets the default layout back ("meta" stands in for a GPU: it keeps shapes and strides only)
    elsewhere = to_device(model, "meta")
    assert all(p.device.type == "meta" and p.is_contiguous() for p in elsewhere.parameters())


def test_to_device_leaves_models_without_conv_weights_exactly_as_they_were() -> None:
    """MLP models have no 4-D weights: to_device leaves their layout, and so their numbers, exactly as they were."""
    torch.manual_seed(0)
    generator = build_generator(Config(latent_dim=8, gan=GanParams(arch="mlp")), (1, 8, 8), None).eval()
    moved = to_device(copy.deepcopy(generator), "cpu")
    z = torch.randn(4, 8)
    assert torch.equal(moved(z), generator(z))


def test_bf16_autocast_runs_on_the_cpu_only_when_asked() -> None:
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    with autocast(torch.device("cpu"), True):
        assert layer(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert layer(x).dtype == torch.float32


@pytest.mark.parametrize(
    ("cpuinfo", "lacks"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n", True),  # AMD EPYC Zen 3
        ("flags\t\t: fpu avx2 avx512f avx512_bf16\n", False),  # Zen 4, Cooper Lake
        ("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n", False),  # Sapphire Rapids
        ("Features\t: fp asimd bf16 i8mm\n", False),  # Arm with BF16
        ("Features\t: fp asimd\n", True),
        ("processor\t: 0\n", False),  # no flags listed: cannot tell
        (None, False),  # no /proc/cpuinfo (macOS, Windows): cannot tell
    ],
)
def test_bf16_is_declined_only_on_a_cpu_known_to_lack_it(
    cpuinfo: str | None, lacks: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(device, "CPUINFO", path)
    assert device.cpu_lacks_native_bf16() is lacks
    with caplog.at_level(logging.WARNING, logger="pipeline.device"):
        assert resolve_bf16(torch.device("cpu"), True, "vae.bf16") is not lacks
    assert ("vae.bf16: true, but this CPU has no native bf16" in caplog.text) is lacks
    assert resolve_bf16(torch.device("cuda"), True, "gan.bf16") and not resolve_bf16(torch.device("cpu"), False, "x")


def test_select_device_cpu_flushes_denormals() -> None:
    """Denormal floats (below 1.2e-38) cost x86 cores a slow path; on the CPU they are computed as zero."""
    previous = torch.tensor([1e-39]) * 1.0 == 0
    try:
        select_device("cpu")
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(bool(previous))
