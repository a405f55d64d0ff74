"""The GAN's networks: shapes, range, determinism, conditioning, spectral norm and ONNX export."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.config import Config, GanParams
from pipeline.export import InputSpec, to_onnx
from pipeline.gan_trainer import build_discriminator, build_generator
from pipeline.models.base import LabelError
from pipeline.models.gan import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    make_codes,
    stride2_stages,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def gan_config(**gan: object) -> Config:
    base = {"hidden_sizes": [32, 32], "base_channels": 8}
    return dataclasses.replace(Config(), gan=dataclasses.replace(GanParams(), **(base | gan)))


def test_stride2_stages_adapt_to_the_image_size() -> None:
    assert [stride2_stages(h, w) for h, w in [(8, 8), (28, 28), (32, 32), (7, 7), (64, 48)]] == [1, 2, 3, 0, 3]


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("shape", SHAPES)
def test_generator_shape_range_and_determinism(arch: str, shape: tuple[int, int, int]) -> None:
    config = gan_config(arch=arch)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        generator = build_generator(config, shape, None).eval()
        z = torch.randn(5, config.latent_dim, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            outputs.append(generator(z))
    images = outputs[0]
    assert images.shape == (5, *shape)
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0  # not a constant image
    assert torch.equal(outputs[0], outputs[1])
    discriminator = build_discriminator(config, shape, None)
    assert discriminator(images).shape == (5,)
    assert discriminator.features(images).shape[0] == 5


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_conditional_networks_use_the_label_and_need_it(arch: str) -> None:
    config = gan_config(arch=arch, conditional=True)
    torch.manual_seed(0)
    generator = build_generator(config, (1, 8, 8), 10).eval()
    discriminator = build_discriminator(config, (1, 8, 8), 10)
    z = torch.randn(1, config.latent_dim).expand(3, -1)
    with torch.no_grad():
        images = generator(z, torch.tensor([0, 1, 1]))
        logits = discriminator(images, torch.tensor([3, 3, 4]))
    assert not torch.allclose(images[0], images[1]) and torch.allclose(images[1], images[2])
    assert logits[0] != logits[2] or logits[1] != logits[2]
    with pytest.raises(LabelError, match="conditional on 10 classes and needs labels y"):
        generator(z)
    with pytest.raises(LabelError, match="conditional on 10 classes and needs labels y"):
        discriminator(images)
    with pytest.raises(LabelError, match=r"labels y must have shape \(3,\), got \(2,\)"):
        generator(z, torch.tensor([0, 1]))


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_spectral_norm_makes_each_layer_1_lipschitz(arch: str) -> None:
    shape = (1, 28, 28)
    torch.manual_seed(0)
    normalized = build_discriminator(gan_config(arch=arch, spectral_norm=True), shape, None)
    plain = build_discriminator(gan_config(arch=arch, spectral_norm=False), shape, None)
    for _ in range(30):  # each training-mode forward runs one power iteration per layer
        normalized(torch.rand(4, *shape))
    normalized.eval()

    def norms(model: torch.nn.Module) -> list[float]:
        weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        return [torch.linalg.matrix_norm(w.detach().flatten(1), ord=2).item() for w in weights]

    assert norms(normalized) == pytest.approx([1.0] * len(norms(normalized)), abs=0.02)
    assert max(abs(n - 1.0) for n in norms(plain)) > 0.1


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_generator_exports_to_onnx_with_plain_ops(arch: str) -> None:
    config = gan_config(arch=arch, conditional=True)
    torch.manual_seed(0)
    generator = build_generator(config, (1, 8, 8), 10).eval()
    inputs = [InputSpec("z", (config.latent_dim,), "normal"), InputSpec("label", (), "label", 10)]
    model = to_onnx(generator, inputs, ["image"], opset=18)
    session = ort.InferenceSession(model.SerializeToString())
    z, y = torch.randn(7, config.latent_dim), torch.arange(7)
    (onnx_images,) = session.run(None, {"z": z.numpy(), "label": y.numpy()})
    with torch.no_grad():
        torch_images = generator(z, y).numpy()
    np.testing.assert_allclose(onnx_images, torch_images, atol=1e-5)


@pytest.mark.parametrize("spectral", [False, True])
def test_dcgan_initialization_draws_weights_from_n_0_002(spectral: bool) -> None:
    config = gan_config(arch="dcgan", base_channels=32, spectral_norm=spectral)
    networks = [build_generator(config, (1, 28, 28), None), build_discriminator(config, (1, 28, 28), None)]
    for network in networks:
        for name, value in network.named_parameters():
            if "bias" in name:
                assert not value.any(), name
            elif value.dim() > 1 and value.numel() > 2000:
                assert value.mean().abs() < 0.002 and abs(value.std().item() - 0.02) < 0.002, name
            elif value.dim() == 1:  # batch-norm scales
                assert abs(value.mean().item() - 1.0) < 0.01 and value.std() < 0.04, name
    torch_default = build_generator(gan_config(arch="dcgan", base_channels=32, init="torch"), (1, 28, 28), None)
    projection = next(p for p in torch_default.parameters() if p.dim() == 2)  # z -> feature map, fan-in 16
    assert projection.std() > 0.1  # PyTorch's own scheme, U(±1/sqrt(fan-in)), is left alone


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_infogan_codes_enter_the_generator_and_come_back_from_q(arch: str) -> None:
    shape = (1, 28, 28)
    common = {"arch": arch, "hidden_sizes": (32,), "base_channels": 8, "categories": 4, "continuous_codes": 2}
    generator = Generator(GeneratorConfig(8, shape, **common)).eval()
    discriminator = Discriminator(DiscriminatorConfig(shape, **common))
    codes = generator.sample_codes(500, torch.Generator().manual_seed(0))
    assert codes.shape == (500, 6) and torch.equal(codes[:, :4].sum(1), torch.ones(500))
    assert set(codes[:, :4].argmax(1).tolist()) == {0, 1, 2, 3}
    assert codes[:, 4:].min() >= -1 and codes[:, 4:].max() <= 1 and codes[:, 4:].std() > 0.5
    z = torch.randn(3, 8)
    with torch.no_grad():
        one = make_codes(torch.tensor([0, 0, 0]), torch.zeros(3, 2), 4)
        other = make_codes(torch.tensor([3, 3, 3]), torch.zeros(3, 2), 4)
        assert not torch.allclose(generator(z, None, one), generator(z, None, other))  # the code matters
        assert torch.equal(generator(z, None, one), generator(z, None, one))
        logits, params = discriminator(generator(z, None, one), with_codes=True)
    assert logits.shape == (3,) and params.shape == (3, 4 + 2)
    with pytest.raises(ValueError, match=r"codes must be B×6"):
        generator(z, None, torch.zeros(3, 5))
    plain = Discriminator(DiscriminatorConfig(shape, arch=arch, hidden_sizes=(32,), base_channels=8))
    with pytest.raises(ValueError, match="no InfoGAN code head"):
        plain(torch.rand(2, *shape), with_codes=True)
