"""The VAE network: shapes on every architecture and image size, the Bernoulli and Gaussian log-likelihoods against
torch.distributions, conditioning, checkpoint loading, ONNX export."""

from __future__ import annotations

import copy
import dataclasses
import threading

import numpy as np
import onnxruntime
import pytest
import torch

from pipeline.checkpoint import checkpoint_state, load_model, save_checkpoint
from pipeline.config import Config, ConfigError, check_compatible
from pipeline.data.processed import ProcessedData
from pipeline.models.base import LabelError
from pipeline.models.vae import LOGIT_ROWS_PER_BLOCK, VAE, VAEConfig
from pipeline.vae_trainer import PARAMS, build_vae


def _config(**vae) -> Config:
    vae = {"hidden_sizes": [16], "conv_channels": [4, 8]} | vae
    return Config(latent_dim=3, vae=dataclasses.replace(Config().vae, **vae))


def _vae(image_shape: tuple[int, int, int], latent_dim: int, **options) -> VAE:
    return VAE(VAEConfig(image_shape, latent_dim, **options))


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 7, 9)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_every_architecture_adapts_to_the_image_shape(arch: str, shape: tuple, likelihood: str) -> None:
    model = build_vae(_config(arch=arch, likelihood=likelihood), shape, None)
    x = torch.rand(5, *shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    mean = model.decode_mean(torch.randn(5, 3))
    assert mean.shape == (5, *shape) and mean.min() >= 0 and mean.max() <= 1
    assert model.log_likelihood(x, torch.randn(4, 5, 3)).shape == (4, 5)
    assert (model.latent_dim, model.image_shape, model.num_classes, model.likelihood) == (3, shape, None, likelihood)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("num_classes", [None, 10])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 4])
def test_bernoulli_log_likelihood_matches_torch_distributions(
    arch: str, num_classes: int | None, dtype: torch.dtype, k: int
) -> None:
    """log p(x|z) (11.3) from the model (per pixel for K = 1, the fused h·(Wᵀx) path for MLPs with K > 1) equals
    Bernoulli(logits).log_prob, summed over pixels, with its gradient in z (what AIS uses), on logits spread wide
    enough to reach softplus's tails."""
    torch.manual_seed(0)
    model = _vae((1, 7, 9), 3, arch=arch, hidden_sizes=(16, 12), conv_channels=(4,), num_classes=num_classes)
    model = model.to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4)
    b = 5
    x = torch.bernoulli(torch.rand(b, 1, 7, 9, dtype=dtype))
    z = (5 * torch.randn(k, b, 3, dtype=dtype)).requires_grad_(True)
    y = torch.randint(10, (b,)) if num_classes else None
    logits = model.decode_logits(z.reshape(k * b, 3), None if y is None else y.repeat(k)).reshape(k, b, 1, 7, 9)
    assert logits.abs().max() > 20  # the tails, where a naive log(sigmoid) would lose everything
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(2).sum(-1)
    actual = model.log_likelihood(x, z, y)
    tolerance = {"rtol": 1e-10, "atol": 1e-8} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-3}
    assert actual.shape == (k, b) and actual.dtype == dtype
    torch.testing.assert_close(actual, expected, **tolerance)
    (grad_expected,) = torch.autograd.grad(expected.sum(), z)
    (grad_actual,) = torch.autograd.grad(actual.sum(), z)
    torch.testing.assert_close(grad_actual, grad_expected, **tolerance)


def test_fused_bernoulli_log_likelihood_over_several_blocks_of_rows() -> None:
    """More K×B rows than LOGIT_ROWS_PER_BLOCK: the blocks give Bernoulli(logits).log_prob and its z-gradient."""
    torch.manual_seed(0)
    model = _vae((1, 7, 9), 3, hidden_sizes=(16,), num_classes=10).double()
    k, b = 2 * LOGIT_ROWS_PER_BLOCK // 5 + 3, 5
    x = torch.bernoulli(torch.rand(b, 1, 7, 9, dtype=torch.float64))
    z = torch.randn(k, b, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(10, (b,))
    logits = model.decode_logits(z.reshape(k * b, 3), y.repeat(k)).reshape(k, b, 1, 7, 9)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(2).sum(-1)
    actual = model.log_likelihood(x, z, y)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-10)
    (grad_expected,) = torch.autograd.grad(expected.sum(), z)
    (grad_actual,) = torch.autograd.grad(actual.sum(), z)
    torch.testing.assert_close(grad_actual, grad_expected, rtol=1e-10, atol=1e-10)


def test_evaluation_path_of_the_fused_log_likelihood_matches_torch_distributions() -> None:
    """Without gradients in float32 on the CPU (importance sampling) the fused path, over several blocks of rows of
    a conditional model with two hidden layers, equals Bernoulli(logits).log_prob in float64, a result stays intact
    across the next call, and weights changed in place by a fused Adam step between calls are the ones used next."""
    torch.manual_seed(0)
    model = _vae((1, 7, 9), 3, hidden_sizes=(16, 12), num_classes=10).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    k, b = 2 * LOGIT_ROWS_PER_BLOCK // 5 + 3, 5
    x = torch.bernoulli(torch.rand(b, 1, 7, 9))
    z, y = 2 * torch.randn(k, b, 3), torch.randint(10, (b,))
    with torch.no_grad():
        actual = model.log_likelihood(x, z, y)
        kept = actual.clone()
        model.log_likelihood(x, z + 1, y)
        logits = copy.deepcopy(model).double().decode_logits(z.reshape(k * b, 3).double(), y.repeat(k))
    expected = torch.distributions.Bernoulli(logits=logits.reshape(k, b, 1, 7, 9)).log_prob(x.double())
    assert actual.dtype == torch.float32 and torch.equal(actual, kept)
    torch.testing.assert_close(actual.double(), expected.flatten(2).sum(-1), rtol=1e-5, atol=1e-4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)  # in place, with no version bump
    model.decode_logits(z[0], y).sum().backward()
    optimizer.step()
    with torch.no_grad():
        changed = model.log_likelihood(x, z, y)
        logits = copy.deepcopy(model).double().decode_logits(z.reshape(k * b, 3).double(), y.repeat(k))
    expected = torch.distributions.Bernoulli(logits=logits.reshape(k, b, 1, 7, 9)).log_prob(x.double())
    torch.testing.assert_close(changed.double(), expected.flatten(2).sum(-1), rtol=1e-5, atol=1e-4)


def test_evaluation_path_under_a_float64_default_dtype() -> None:
    """A float32 model evaluated while torch's default dtype is float64 still gets float32 results of the right
    value."""
    torch.manual_seed(0)
    model = _vae((1, 8, 8), 2, hidden_sizes=(8,)).eval()
    x, z = torch.bernoulli(torch.rand(3, 1, 8, 8)), torch.randn(4, 3, 2)
    with torch.no_grad():
        expected = model.log_likelihood(x, z)
        torch.set_default_dtype(torch.float64)
        try:
            actual = model.log_likelihood(x, z)
        finally:
            torch.set_default_dtype(torch.float32)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected)


def test_fused_gaussian_log_likelihood_matches_torch_distributions() -> None:
    """The fused MLP path for a Gaussian decoder (11.4), over several blocks of rows of a conditional model with two
    hidden layers: with autograd (torch's blocks, which AIS and M-sample training take) it equals
    Normal(sigmoid(l), s).log_prob in float64, with its gradients in z and in the learned s; without gradients in
    float32 (importance sampling) it equals it too."""
    torch.manual_seed(0)
    model = _vae((1, 7, 9), 3, hidden_sizes=(16, 12), num_classes=10, likelihood="gaussian", gaussian_std=0.05)
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.mul_(3)  # logits out to the tails, where the means are 0 or 1 in float32
    k, b = 2 * LOGIT_ROWS_PER_BLOCK // 5 + 3, 5
    x, y = torch.rand(b, 1, 7, 9, dtype=torch.float64), torch.randint(10, (b,))
    z = 2 * torch.randn(k, b, 3, dtype=torch.float64)

    def reference(model: VAE, z: torch.Tensor) -> torch.Tensor:
        mean = model.decode_mean(z.reshape(k * b, 3), y.repeat(k)).reshape(k, b, 1, 7, 9)
        return torch.distributions.Normal(mean, model.decoder_std()).log_prob(x.to(z.dtype)).flatten(2).sum(-1)

    model64 = copy.deepcopy(model).double()
    z64 = z.clone().requires_grad_(True)
    expected, actual = reference(model64, z64), model64.log_likelihood(x, z64, y)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-9)
    wrt = (z64, model64.decoder_std_raw)
    for grad_actual, grad_expected in zip(
        torch.autograd.grad(actual.sum(), wrt), torch.autograd.grad(expected.sum(), wrt), strict=True
    ):
        torch.testing.assert_close(grad_actual, grad_expected, rtol=1e-10, atol=1e-8)
    with torch.no_grad():
        channel = torch.cat([x, x], dim=1).float()[:, :1]  # a view whose rows are not contiguous
        evaluated = model.eval().log_likelihood(channel, z.float(), y)
        expected = reference(copy.deepcopy(model).double(), z.float().double())
    assert evaluated.dtype == torch.float32
    torch.testing.assert_close(evaluated.double(), expected, rtol=1e-5, atol=1e-3)


def test_evaluation_path_serves_inference_mode_and_no_grad_in_either_order() -> None:
    """A call under torch.inference_mode, then one under no_grad, in a thread of their own, give the same numbers."""
    model = _vae((1, 8, 8), 2, hidden_sizes=(8,)).eval()
    x, z = torch.bernoulli(torch.rand(3, 1, 8, 8)), torch.randn(4, 3, 2)
    results: list[torch.Tensor] = []

    def evaluate() -> None:
        with torch.inference_mode():
            results.append(model.log_likelihood(x, z))
        with torch.no_grad():
            results.append(model.log_likelihood(x, z))

    thread = threading.Thread(target=evaluate)
    thread.start()
    thread.join()
    assert len(results) == 2 and torch.equal(results[0], results[1])


def test_too_many_conv_blocks_for_the_image_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too many for 4×4"):
        build_vae(_config(arch="conv", conv_channels=[4, 4, 4]), (1, 4, 4), None)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_conditional_model_uses_the_label_in_encoder_and_decoder(arch: str) -> None:
    torch.manual_seed(0)
    model = build_vae(_config(arch=arch, conditional=True), (1, 8, 8), 10)
    assert model.num_classes == 10
    x, z = torch.rand(2, 1, 8, 8), torch.randn(2, 3)
    zeros, ones = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    assert not torch.equal(model.encode(x, zeros)[0], model.encode(x, ones)[0])
    assert not torch.equal(model.decode_mean(z, zeros), model.decode_mean(z, ones))
    assert model.log_likelihood(x, torch.randn(3, 2, 3), ones).shape == (3, 2)
    with pytest.raises(LabelError, match="conditional on 10 classes and needs labels y"):
        model.encode(x)
    with pytest.raises(LabelError, match=r"labels y must have shape \(2,\), got \(3,\)"):
        model.decode_mean(z, torch.zeros(3, dtype=torch.long))


def test_conditional_config_without_labels_is_rejected() -> None:
    """vae.conditional on unlabelled data is refused by the params check (train_vae runs it before any work); the
    conditional model itself refuses to run without labels."""
    x = np.zeros((4, 1, 8, 8), np.float32)
    unlabelled = ProcessedData(
        x={s: x for s in ("train", "valid", "test")}, y=None, binarize="dynamic", num_classes=None, dataset="digits"
    )
    with pytest.raises(ConfigError, match="vae.conditional is true but dataset 'digits' has no labels"):
        check_compatible(_config(conditional=True), "vae", unlabelled)
    check_compatible(_config(conditional=False), "vae", unlabelled)
    with pytest.raises(LabelError, match="needs labels"):
        build_vae(_config(conditional=True), (1, 8, 8), 10).encode(torch.from_numpy(x))
    assert build_vae(_config(conditional=False), (1, 8, 8), 10).num_classes is None


@pytest.mark.parametrize("family", ["vae", "hvae"])
@pytest.mark.parametrize("arch", ["mlp", "gated_mlp"])
def test_dropout_acts_in_training_only_and_adds_no_parameters(family: str, arch: str) -> None:
    """With vae.dropout the train-mode networks are stochastic; in eval mode they are the dropout-free networks with
    the same weights, on the per-pixel and the fused log-likelihood paths."""
    options = {"family": family, "arch": arch, "hidden_sizes": [32, 32], "top_latent_dim": 2}
    torch.manual_seed(0)
    model = build_vae(_config(**options, dropout=0.5), (1, 8, 8), None)
    plain = build_vae(_config(**options), (1, 8, 8), None)
    assert any(isinstance(module, torch.nn.Dropout) for module in model.modules())
    for source, target in zip(model.parameters(), plain.parameters(), strict=True):
        target.data.copy_(source.data)
    x, z = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3)), torch.randn(4, 6, model.latent_dim)
    model.train()
    assert not torch.equal(model.decode_logits(z[0]), model.decode_logits(z[0]))
    assert not torch.equal(model.encode(x)[0], model.encode(x)[0])
    model.eval()
    torch.testing.assert_close(model.decode_logits(z[0]), plain.decode_logits(z[0]), rtol=0, atol=0)
    torch.testing.assert_close(model.encode(x), plain.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(model.log_likelihood(x, z), plain.log_likelihood(x, z), rtol=0, atol=0)
    torch.testing.assert_close(model.log_prior(z), plain.log_prior(z), rtol=0, atol=0)


def test_load_model_restores_a_checkpoint_in_eval_mode(tmp_path) -> None:
    config = _config(arch="conv", likelihood="gaussian", conditional=True)
    model = build_vae(config, (1, 8, 8), 10)
    data = {"image_shape": [1, 8, 8], "num_classes": 10, "dataset": "digits", "binarize": "none"}
    save_checkpoint(tmp_path / "best.pt", checkpoint_state({"model": model}, data=data, params=config.select(PARAMS)))
    loaded = load_model(tmp_path / "best.pt")
    assert isinstance(loaded, VAE) and loaded.config == model.config
    assert not loaded.training and loaded.num_classes == 10
    z, y = torch.randn(4, 3), torch.arange(4)
    torch.testing.assert_close(loaded.decode_mean(z, y), model.decode_mean(z, y), rtol=0, atol=0)


def test_conditional_conv_decoder_exports_to_onnx_and_matches_onnxruntime(tmp_path) -> None:
    class DecodeMean(torch.nn.Module):
        def __init__(self, vae: VAE) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.vae.decode_mean(z, y)

    model = build_vae(_config(arch="conv", conditional=True), (1, 28, 28), 10).eval()
    z, y = torch.randn(3, 3), torch.tensor([0, 4, 9])
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        DecodeMean(model).eval(), (z, y), input_names=["z", "y"], dynamo=True, dynamic_shapes=({0: batch}, {0: batch})
    )
    program.save(str(tmp_path / "decoder.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"z": z.numpy(), "y": y.numpy()})
    np.testing.assert_allclose(got, model.decode_mean(z, y).detach().numpy(), atol=1e-5)
