"""The native decoder log-likelihood kernel (an MLP's last layers fused with the Bernoulli or Gaussian density):
built here by the real compiler, held to float64 arithmetic, and replaced by torch's path when disabled."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from pipeline import kernels
from pipeline.models.vae import VAE

HAS_COMPILER = any(shutil.which(name) for name in ("cc", "gcc", "clang"))


@pytest.fixture
def fresh_kernels(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[pytest.MonkeyPatch]:
    """Kernels built into an empty cache under tmp_path, and the module's caches forgotten before and after."""
    monkeypatch.setenv("DGM_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernels.load.cache_clear()
    kernels._decoder_kernels.cache_clear()
    yield monkeypatch
    kernels.load.cache_clear()
    kernels._decoder_kernels.cache_clear()


X86 = platform.machine() in ("x86_64", "AMD64")
CPU_FLAGS = set(kernels._machine_fingerprint().split())  # the /proc/cpuinfo flags the kernel cache is keyed by
NATIVE_LANES = 16 if "avx512f" in CPU_FLAGS else 8 if "avx2" in CPU_FLAGS else 4
# build -> (flags, vector width); each one this CPU can run is tested
BUILDS = {
    "native": (None, NATIVE_LANES),
    "portable": (["-O3"], 4),  # SSE2 on x86-64, NEON on arm64
    "avx2": (["-O3", "-mavx2", "-mfma"], 8),
    "avx512": (["-O3", "-mavx512f", "-mfma"], 16),
}


@pytest.fixture(params=list(BUILDS))
def kernel_build(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """The decoder kernels compiled with one build's flags (each once per session, in a cache of its own); yields
    the vector width that build should run at."""
    if not HAS_COMPILER:
        pytest.skip("no C compiler on this machine")
    flags, lanes = BUILDS[request.param]
    if request.param in ("avx2", "avx512") and not (X86 and lanes <= NATIVE_LANES):
        pytest.skip(f"this CPU does not run {request.param}")
    if flags is not None:
        monkeypatch.setattr(kernels, "FLAG_SETS", (flags,))
    monkeypatch.setenv("DGM_KERNEL_CACHE", str(tmp_path_factory.getbasetemp() / f"kernels-{request.param}"))
    kernels.load.cache_clear()
    kernels._decoder_kernels.cache_clear()
    yield lanes
    kernels.load.cache_clear()
    kernels._decoder_kernels.cache_clear()


def test_kernels_run_at_the_vector_width_of_their_build(kernel_build: int) -> None:
    """A build runs vectors of its own instruction set's width (native: the CPU's widest), not wider ones that the
    compiler would split into scalar comparisons."""
    assert kernels.decoder_kernel_lanes() == kernel_build


def _reference(logits: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_d x v - softplus(v) for v = logits + bias (rounded to float32, as the kernel's logits are), in float64, row
    r using image r % B; and Σ_d |x v| + softplus(v), the scale of float32 rounding in that sum."""
    v = (logits + bias).double()
    images = x.double().repeat(logits.shape[0] // x.shape[0], 1)
    return (images * v - F.softplus(v)).sum(-1), ((images * v).abs() + F.softplus(v)).sum(-1)


def _gaussian_reference(
    logits: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, inv_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-½ Σ_d r_d² with r = (x - sigmoid(v)) inv_std, in float64, row r using image r % B; and Σ_d r_d² + |r_d|
    inv_std_d, the scale of float32 rounding in that sum (a rounding of x - sigmoid(v), both in [0, 1], moves r_d²
    by about 2^-24 |r_d| inv_std_d)."""
    v = (logits + bias).double()
    images = x.double().repeat(logits.shape[0] // x.shape[0], 1)
    residuals = (images - torch.sigmoid(v)) * inv_std.double()
    return -0.5 * residuals.square().sum(-1), (residuals.square() + residuals.abs() * inv_std).sum(-1)


def _identity_layer(bias: torch.Tensor) -> torch.nn.Linear:
    """An output layer whose logits are its inputs plus ``bias`` exactly: the density alone is then under test."""
    layer = torch.nn.Linear(len(bias), len(bias))
    with torch.no_grad():
        layer.weight.copy_(torch.eye(len(bias)))
        layer.bias.copy_(bias)
    return layer


def _native(
    inputs: torch.Tensor,
    hidden: torch.nn.Linear | None,
    output: torch.nn.Linear,
    x: torch.Tensor,
    inv_std: torch.Tensor | None = None,
    offset: float = 0.0,
) -> torch.Tensor:
    out = torch.empty(inputs.shape[0])
    with torch.no_grad():
        kernels.mlp_log_likelihood(inputs, hidden, output, x, out, inv_std, offset)
    return out


def _tail_logits(rows: int, pixels: int) -> torch.Tensor:
    """Logits from the far tails (|v| up to 120, where e^-|v| underflows and sigmoid is 0 or 1 in float32) to 0."""
    logits = 6 * torch.randn(rows, pixels)
    logits[:3] = torch.tensor([-120.0, -88.0, -30.0, -17.0, 0.0, 17.0, 30.0, 88.0, 120.0]).repeat(pixels)[:pixels]
    return logits


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_kernel_is_built_once_into_the_cache(fresh_kernels: pytest.MonkeyPatch, tmp_path) -> None:
    assert kernels.load("decoder_log_likelihood") is not None
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary files left beside it
    modified = built[0].stat().st_mtime_ns
    kernels.load.cache_clear()
    assert kernels.load("decoder_log_likelihood") is not None
    assert built[0].stat().st_mtime_ns == modified  # loaded, not rebuilt


@pytest.mark.parametrize("pixels", [784, 64, 5, 16 * 97 + 3])  # MNIST, digits, below one tile, many tiles
def test_bernoulli_density_matches_float64_arithmetic(kernel_build: int, pixels: int) -> None:
    """Within a few float32 roundings (2^-24 = 6e-8) of the terms' magnitude of a float64 evaluation, as torch's
    float32 path is, with logits from the far tails to zero, and fractional pixels. A less accurate exponential
    (a degree-4 polynomial, 4e-6) would fail."""
    torch.manual_seed(0)
    images, rows = 7, 7 * 40
    logits, bias = _tail_logits(rows, pixels), torch.randn(pixels)
    x = torch.bernoulli(torch.rand(images, pixels))
    x[0] = torch.rand(pixels)
    expected, scale = _reference(logits, bias, x)
    actual = _native(logits, None, _identity_layer(bias), x)
    assert ((actual.double() - expected).abs() / scale).max() < 2e-7


@pytest.mark.parametrize("pixels", [784, 64, 5, 16 * 97 + 3])
def test_gaussian_density_matches_float64_arithmetic(kernel_build: int, pixels: int) -> None:
    """The Gaussian density (11.4) within float32 rounding of float64 (torch's float32 path: up to 6e-8 here), from
    saturated means to v = 0, with per-pixel standard deviations, and the offset added in double."""
    torch.manual_seed(0)
    images, rows = 7, 7 * 40
    logits, bias, x = _tail_logits(rows, pixels), torch.randn(pixels), torch.rand(images, pixels)
    inv_std = 1 / (0.05 + torch.rand(pixels))
    expected, scale = _gaussian_reference(logits, bias, x, inv_std)
    out = _native(logits, None, _identity_layer(bias), x, inv_std)
    shifted = _native(logits, None, _identity_layer(bias), x, inv_std, 1234.5)
    assert ((out.double() - expected).abs() / scale).max() < 1e-7  # a degree-4 exp polynomial (4e-6) would fail
    torch.testing.assert_close(shifted, out + 1234.5)


# rows, inputs, hidden units, pixels, images: rows past a whole tile of rows, units and pixels past whole tiles of 6,
# images that do not divide a tile's rows; and the evaluation's shape
MLP_SHAPES = [(7 * 37, 5, 13, 29, 7), (40, 3, 0, 11, 8), (512, 20, 400, 784, 32)]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize(("rows", "inputs", "hidden", "pixels", "images"), MLP_SHAPES)
def test_fused_layers_are_as_accurate_as_torchs_float32(
    kernel_build: int, likelihood: str, rows: int, inputs: int, hidden: int, pixels: int, images: int
) -> None:
    """The whole fused evaluation, products included (with a hidden layer and without), against float64: no
    further from it than twice torch's float32 evaluation of the same layers and density is."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(inputs, hidden), torch.nn.Linear(hidden, pixels)] if hidden else []
    layers = layers or [torch.nn.Linear(inputs, pixels)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(4)  # logits of a few units, out into softplus's and sigmoid's curved parts
    u = torch.randn(rows, inputs)
    x = torch.bernoulli(torch.rand(images, pixels)) if likelihood == "bernoulli" else torch.rand(images, pixels)
    inv_std = 1 / (0.05 + torch.rand(pixels)) if likelihood == "gaussian" else None

    def torch_path(dtype: torch.dtype) -> torch.Tensor:
        v = u.to(dtype)
        for i, layer in enumerate(layers):
            v = F.linear(v, layer.weight.to(dtype), layer.bias.to(dtype))
            v = v.relu() if i < len(layers) - 1 else v
        pixels = x.to(dtype).repeat(rows // images, 1)
        if inv_std is None:
            return (pixels * v - F.softplus(v)).sum(-1)
        return -0.5 * ((pixels - torch.sigmoid(v)) * inv_std.to(dtype)).square().sum(-1)

    with torch.no_grad():
        expected, torch_float32 = torch_path(torch.float64), torch_path(torch.float32)
        actual = _native(u, layers[0] if hidden else None, layers[-1], x, inv_std)
    torch_error = (torch_float32.double() - expected).abs().max()
    assert (actual.double() - expected).abs().max() <= 2 * torch_error + 1e-6 * expected.abs().mean()


def test_kernel_propagates_nan_to_its_row_only(kernel_build: int) -> None:
    """A NaN logit, or a NaN input through the hidden layer's ReLU, spoils its own row and no other of its tile."""
    bias, x = torch.zeros(40), torch.ones(2, 40)
    logits = torch.zeros(4, 40)
    logits[1, 7] = float("nan")
    assert _native(logits, None, _identity_layer(bias), x).isnan().tolist() == [False, True, False, False]
    gaussian = _native(logits, None, _identity_layer(bias), x, torch.ones(40))
    assert gaussian.isnan().tolist() == [False, True, False, False]
    inputs = torch.zeros(4, 3)
    inputs[2, 1] = float("nan")
    hidden = torch.nn.Linear(3, 5)
    assert _native(inputs, hidden, torch.nn.Linear(5, 40), x).isnan().tolist() == [False, False, True, False]


def test_infinite_logits_give_the_saturated_gaussian_means(kernel_build: int) -> None:
    """Logits of ±inf (an input of ±inf times weights ±1), in a last tile of pixels only partly filled (5 of 6,
    where the padding's zero weights times inf are NaN), give torch's finite density."""
    output = torch.nn.Linear(1, 5)
    with torch.no_grad():
        output.weight.copy_(torch.tensor([[1.0], [-1.0], [1.0], [-1.0], [1.0]]))
    inputs = torch.tensor([[0.0], [float("inf")], [-float("inf")], [1.0]])
    x, inv_std = torch.rand(2, 5), torch.full((5,), 2.0)
    with torch.no_grad():
        expected, _ = _gaussian_reference(inputs @ output.weight.t(), output.bias, x, inv_std)
    actual = _native(inputs, None, output, x, inv_std)
    assert expected.isfinite().all()
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-6)


def test_kernel_rejects_shapes_that_do_not_fit() -> None:
    hidden, output = torch.nn.Linear(3, 5), torch.nn.Linear(5, 8)
    with pytest.raises(ValueError, match="multiple of the images"):
        kernels.mlp_log_likelihood(torch.zeros(5, 3), hidden, output, torch.zeros(2, 8), torch.empty(5))
    with pytest.raises(ValueError, match="x \\(0, 8\\)"):
        kernels.mlp_log_likelihood(torch.zeros(5, 3), hidden, output, torch.zeros(0, 8), torch.empty(5))
    with pytest.raises(ValueError, match="3 -> 5 -> 8"):
        kernels.mlp_log_likelihood(torch.zeros(4, 4), hidden, output, torch.zeros(2, 8), torch.empty(4))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.mlp_log_likelihood(torch.zeros(3, 4).t(), hidden, output, torch.zeros(2, 8), torch.empty(4))
    with pytest.raises(ValueError, match="float32 CPU"):
        kernels.mlp_log_likelihood(torch.zeros(4, 3), hidden, output, torch.zeros(2, 8), torch.empty(4).double())
    with pytest.raises(ValueError, match="float32 CPU"):
        kernels.mlp_log_likelihood(
            torch.zeros(4, 3), torch.nn.Linear(3, 5).double(), output, torch.zeros(2, 8), torch.empty(4)
        )
    with pytest.raises(ValueError, match="matrices"):
        kernels.mlp_log_likelihood(torch.zeros(3), hidden, output, torch.zeros(2, 8), torch.empty(4))
    with pytest.raises(ValueError, match="inv_std"):
        kernels.mlp_log_likelihood(torch.zeros(4, 3), hidden, output, torch.zeros(2, 8), torch.empty(4), torch.ones(7))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_disabled_kernels_leave_torch_computing_the_same_likelihood(
    fresh_kernels: pytest.MonkeyPatch, likelihood: str
) -> None:
    """DGM_NATIVE_KERNELS=0 (what a machine without a compiler gets): the VAE takes torch's path, same numbers."""
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 4, hidden_sizes=(32,), likelihood=likelihood).eval()
    x = torch.rand(6, 1, 28, 28)
    z = 3 * torch.randn(50, 6, 4)
    with torch.no_grad():
        native = model.log_likelihood(x, z)
        native_used = kernels.decoder_kernels_apply(z)
        fresh_kernels.setenv("DGM_NATIVE_KERNELS", "0")
        kernels.load.cache_clear()
        kernels._decoder_kernels.cache_clear()
        assert not kernels.decoder_kernels_apply(z)
        fallback = model.log_likelihood(x, z)
    assert native_used == HAS_COMPILER
    torch.testing.assert_close(native, fallback, rtol=1e-6, atol=1e-4)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_an_unusable_cache_warns_and_leaves_torch_computing(
    fresh_kernels: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    fresh_kernels.setenv("DGM_KERNEL_CACHE", str(blocker / "kernels"))
    torch.manual_seed(0)
    model = VAE((1, 8, 8), 2, hidden_sizes=(8,)).eval()
    with torch.no_grad():
        log_px = model.log_likelihood(torch.bernoulli(torch.rand(3, 1, 8, 8)), torch.randn(4, 3, 2))
    assert log_px.shape == (4, 3) and log_px.isfinite().all()
    assert "unavailable" in caplog.text and "DGM_KERNEL_CACHE" in caplog.text
    assert not kernels.decoder_kernels_apply(log_px)


def test_kernel_does_not_apply_where_torch_must_run() -> None:
    """Gradients (AIS), float64 and non-CPU tensors keep torch's path."""
    weight = torch.zeros(3, requires_grad=True)
    assert not kernels.decoder_kernels_apply(torch.zeros(3), weight)
    assert not kernels.decoder_kernels_apply(torch.zeros(3, dtype=torch.float64))
    assert not kernels.decoder_kernels_apply(torch.zeros(3, device="meta"))
    with torch.no_grad():
        assert kernels.decoder_kernels_apply(torch.zeros(3), weight) == HAS_COMPILER


@pytest.mark.skipif(not kernels.packed_linear_available(), reason="torch without oneDNN")
def test_packed_linear_is_the_layer_for_any_row_count() -> None:
    """layer(x), with ReLU fused or without the bias, for row counts other than the one packed for."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 37)
    packed = kernels.pack_linear_weight(layer.weight, 64)
    with torch.no_grad():
        for rows in (1, 7, 300):
            x = torch.randn(rows, 20)
            torch.testing.assert_close(kernels.packed_linear(x, packed, layer.bias), layer(x), rtol=1e-5, atol=1e-5)
            relu = kernels.packed_linear(x, packed, layer.bias, relu=True)
            torch.testing.assert_close(relu, layer(x).relu(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(kernels.packed_linear(x, packed), x @ layer.weight.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not kernels.packed_linear_available(), reason="torch without oneDNN")
def test_weights_are_packed_once_only_within_frozen_weights() -> None:
    """Outside frozen_weights each call packs afresh (fused Adam changes weights without a version bump); within,
    the pack is reused, in nested blocks too, and forgotten when the outer block ends."""
    weight = torch.randn(37, 20)
    assert kernels.pack_linear_weight(weight, 8) is not kernels.pack_linear_weight(weight, 8)
    with kernels.frozen_weights():
        packed = kernels.pack_linear_weight(weight, 8)
        with kernels.frozen_weights():
            assert kernels.pack_linear_weight(weight, 8) is packed
        assert kernels.pack_linear_weight(weight, 8) is packed
        assert kernels.pack_linear_weight(weight.clone(), 8) is not packed
    assert not kernels._FROZEN.packed
    with kernels.frozen_weights():
        assert kernels.pack_linear_weight(weight, 8) is not packed


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_tile_packs_are_kept_only_within_frozen_weights() -> None:
    """The fused kernel's weight packs follow the same rule as oneDNN's, in a layout of their own."""
    weight = torch.randn(37, 20)
    assert kernels._pack_tile_weight(weight) is not kernels._pack_tile_weight(weight)
    with kernels.frozen_weights():
        packed = kernels._pack_tile_weight(weight)
        assert kernels._pack_tile_weight(weight) is packed
        assert kernels.pack_linear_weight(weight, 8) is not packed
    assert not kernels._FROZEN.packed


def test_packed_linear_is_off_with_the_native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGM_NATIVE_KERNELS", "0")
    assert not kernels.packed_linear_available()


def test_a_broken_onednn_warns_and_leaves_torch_computing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A torch build whose packed product raises is found out once, with a warning, and evaluation still works."""

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no oneDNN in this build")

    torch.manual_seed(0)
    model = VAE((1, 8, 8), 2, hidden_sizes=(8, 8)).eval()  # its first layer needs oneDNN
    x, z = torch.bernoulli(torch.rand(3, 1, 8, 8)), torch.randn(4, 3, 2)
    with torch.no_grad():
        expected = model.log_likelihood(x, z)
        monkeypatch.setattr(kernels, "packed_linear", broken)
        kernels._packed_linear_works.cache_clear()
        try:
            assert not kernels.packed_linear_available()
            actual = model.log_likelihood(x, z)
        finally:
            kernels._packed_linear_works.cache_clear()
    assert "unavailable (no oneDNN in this build)" in caplog.text
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-4)
