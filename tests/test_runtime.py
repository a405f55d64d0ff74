"""The torch-free runtime: sampling, decode/encode/reconstruct/interpolate, bad input, threads, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pipeline.config import config_from_dict
from pipeline.export import export_generator, export_vae, write_exported
from pipeline.gan_trainer import build_generator
from pipeline.runtime import (
    GenerativeModel,
    ModelFileError,
    default_providers,
    full_float32,
    portable_normal,
    portable_stream,
)
from pipeline.vae_trainer import build_vae

REPO = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (1, 8, 8)
DATA = {"image_shape": list(IMAGE_SHAPE), "num_classes": 10, "dataset": "digits", "binarize": "dynamic"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conditional VAE (decoder + encoder) and an unconditional GAN generator, float32 only."""
    torch.manual_seed(0)
    vae_config = config_from_dict({"latent_dim": 4, "vae": {"hidden_sizes": [32], "conditional": True}})
    gan_config = config_from_dict({"latent_dim": 4, "gan": {"hidden_sizes": [32]}})
    vae = build_vae(vae_config, IMAGE_SHAPE, 10)
    generator = build_generator(gan_config, IMAGE_SHAPE, 10)
    out = tmp_path_factory.mktemp("export")
    models = export_vae(vae, DATA, vae_config.to_dict(), vae_config.export)
    write_exported(models + export_generator(generator, DATA, gan_config.to_dict(), gan_config.export), out)
    return out


@pytest.fixture(scope="module")
def vae(export_dir: Path) -> GenerativeModel:
    return GenerativeModel(export_dir / "vae_decoder.onnx", encoder_path=export_dir / "vae_encoder.onnx")


@pytest.fixture(scope="module")
def gan(export_dir: Path) -> GenerativeModel:
    return GenerativeModel(export_dir / "gan_generator.onnx")


def test_sample_is_seeded_and_tempered(gan: GenerativeModel) -> None:
    images = gan.sample(6, seed=3)
    assert images.shape == (6, *IMAGE_SHAPE) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, gan.sample(6, seed=3))
    assert not np.array_equal(images, gan.sample(6, seed=4))
    z = portable_normal(portable_stream(3, "noise"), (6, 4))  # the explorer page's stream of seed 3
    np.testing.assert_array_equal(images, gan.decode(z))
    np.testing.assert_allclose(gan.sample(6, seed=3, temperature=0.5), gan.decode(z * 0.5), atol=1e-7)
    assert gan.providers == ["CPUExecutionProvider"]  # this machine has no CUDA


def test_conditional_sampling_uses_labels(vae: GenerativeModel) -> None:
    z = portable_normal(portable_stream(0, "noise"), (10, 4))
    np.testing.assert_array_equal(vae.sample(10, seed=0), vae.decode(z, np.arange(10)))  # cycles the classes
    np.testing.assert_array_equal(vae.sample(10, seed=0, labels=7), vae.decode(z, np.full(10, 7)))
    assert not np.allclose(vae.decode(z, np.full(10, 7)), vae.decode(z, np.full(10, 2)), atol=1e-4)


def test_encode_reconstruct_interpolate(vae: GenerativeModel) -> None:
    x = np.random.default_rng(1).random((5, *IMAGE_SHAPE), dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    mu, logvar = vae.encode(x, labels)
    assert mu.shape == logvar.shape == (5, 4)
    np.testing.assert_array_equal(vae.reconstruct(x, labels), vae.decode(mu, labels))
    path = vae.interpolate(mu[0], mu[1], steps=4, labels=3)
    assert path.shape == (4, *IMAGE_SHAPE)
    np.testing.assert_allclose(path[[0, -1]], vae.decode(mu[:2], np.array([3, 3])), atol=1e-6)


def test_bad_input_is_a_clear_value_error(vae: GenerativeModel, gan: GenerativeModel, export_dir: Path) -> None:
    z = np.zeros((2, 4), np.float32)
    cases = [
        (lambda: gan.sample(0), "n must be a positive integer"),
        (lambda: gan.sample(-3), "n must be a positive integer"),
        (lambda: gan.sample(2, temperature=0.0), "temperature must be a positive"),
        (lambda: gan.decode(np.zeros((2, 5), np.float32)), r"shape \(2, 5\); this model takes N×4"),
        (lambda: gan.decode(np.zeros((2, 4), np.float64)), "dtype float64; the model takes float32"),
        (lambda: gan.decode(z, np.array([0, 1])), "unconditional; do not pass labels"),
        (lambda: vae.decode(z), "conditional on the class label"),
        (lambda: vae.decode(z, np.array([0, 10])), r"labels must lie in \[0, 10\), got values from 0 to 10"),
        (lambda: vae.decode(z, np.array([-1, 0])), r"labels must lie in \[0, 10\)"),
        (lambda: vae.decode(z, np.array([0.0, 1.0])), "pass integer class indices"),
        (lambda: vae.decode(z, np.array([0, 1, 2])), r"expected one label per item, shape \(2,\)"),
        (lambda: vae.sample(3, labels=12), r"labels must lie in \[0, 10\)"),
        (lambda: vae.encode(np.full((1, *IMAGE_SHAPE), 255, np.float32), [0]), r"must lie in \[0, 1\]"),
        (lambda: vae.encode(np.full((1, *IMAGE_SHAPE), np.nan, np.float32), [0]), r"must lie in \[0, 1\]"),
        (lambda: gan.encode(np.zeros((1, *IMAGE_SHAPE), np.float32)), "not exported: a GAN generator has no"),
        (lambda: vae.interpolate(z[0], z[1], steps=1, labels=0), "steps must be an integer ≥ 2"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_files_that_are_not_exported_models_are_refused(tmp_path: Path, export_dir: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        GenerativeModel(garbage)
    bare = onnx.load(export_dir / "gan_generator.onnx")
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ModelFileError, match="its ONNX metadata has no 'model' entry"):
        GenerativeModel(tmp_path / "bare.onnx")
    bare.metadata_props.add(key="model", value='{"kind": "vae_decoder"}')
    onnx.save(bare, tmp_path / "partial.onnx")
    with pytest.raises(ModelFileError, match="ONNX metadata lacks variant, latent_dim"):
        GenerativeModel(tmp_path / "partial.onnx")
    with pytest.raises(FileNotFoundError, match="run `python -m stages export` first"):
        GenerativeModel(tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="this is a VAE encoder"):
        GenerativeModel(export_dir / "vae_encoder.onnx")
    with pytest.raises(ModelFileError, match="pairs a vae_encoder with a vae_decoder"):
        GenerativeModel(export_dir / "gan_generator.onnx", encoder_path=export_dir / "vae_encoder.onnx")


def test_sampling_in_batches_gives_the_same_images(gan: GenerativeModel) -> None:
    """sample() decodes in bounded batches (memory does not grow with n): the images are those of one big batch."""
    whole = next(gan.sample_batches(300, seed=5, batch_size=300))
    parts = list(gan.sample_batches(300, seed=5, batch_size=64))
    assert [len(p) for p in parts] == [64, 64, 64, 64, 44]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(gan.sample(300, seed=5), whole)


def test_batches_cut_no_stream_of_a_vampprior_vae_or_an_infogan(tmp_path: Path) -> None:
    """With a prior sampler (its component choices) or InfoGAN codes drawn too, the batch size still does not change
    the images: each kind of draw is a stream of its own."""
    torch.manual_seed(0)
    vae_config = config_from_dict(
        {"latent_dim": 4, "vae": {"hidden_sizes": [32], "prior": "vampprior", "pseudo_inputs": 3}}
    )
    gan_config = config_from_dict(
        {"latent_dim": 4, "gan": {"hidden_sizes": [32], "info_categories": 3, "info_continuous": 1}}
    )
    data = DATA | {"num_classes": None}
    models = export_vae(build_vae(vae_config, IMAGE_SHAPE, None), data, vae_config.to_dict(), vae_config.export)
    generator = build_generator(gan_config, IMAGE_SHAPE, None)
    write_exported(models + export_generator(generator, data, gan_config.to_dict(), gan_config.export), tmp_path)
    for name in ("vae_decoder.onnx", "gan_generator.onnx"):
        model = GenerativeModel(tmp_path / name)
        whole = next(model.sample_batches(100, seed=5, batch_size=100))
        np.testing.assert_array_equal(np.concatenate(list(model.sample_batches(100, seed=5, batch_size=16))), whole)


def test_files_of_two_trainings_with_the_same_params_are_not_paired(tmp_path: Path) -> None:
    """A decoder next to another training's prior sampler or encoder (same params, other weights) is refused,
    while each export's own files pair: the metadata's weights_sha256 tells them apart."""
    config = config_from_dict(
        {"latent_dim": 4, "vae": {"hidden_sizes": [32], "prior": "vampprior", "pseudo_inputs": 3}}
    )
    data = DATA | {"num_classes": None}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        vae = build_vae(config, IMAGE_SHAPE, None)
        write_exported(export_vae(vae, data, config.to_dict(), config.export), tmp_path / name)
    own = GenerativeModel(tmp_path / "a" / "vae_decoder.onnx", encoder_path=tmp_path / "a" / "vae_encoder.onnx")
    assert own.metadata.weights_sha256 != GenerativeModel(tmp_path / "b" / "vae_decoder.onnx").metadata.weights_sha256
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(tmp_path / "a" / "vae_decoder.onnx", mixed)
    shutil.copy(tmp_path / "b" / "vae_prior.onnx", mixed)
    with pytest.raises(ModelFileError, match="vae_prior.onnx and .* come from different models"):
        GenerativeModel(mixed / "vae_decoder.onnx")
    with pytest.raises(ModelFileError, match="come from different models"):
        GenerativeModel(tmp_path / "a" / "vae_decoder.onnx", encoder_path=tmp_path / "b" / "vae_encoder.onnx")


def test_a_model_is_checked_against_the_manifest_beside_it(tmp_path: Path, export_dir: Path) -> None:
    """A file left over from another export, or renamed into a folder with a manifest that does not list it, is
    refused: one set of files is used together."""
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    GenerativeModel(copy / "gan_generator.onnx")
    shutil.copy(copy / "vae_decoder.onnx", copy / "gan_generator.onnx")
    with pytest.raises(ModelFileError, match="gan_generator.onnx: its sha256 differs from .*models.json beside it"):
        GenerativeModel(copy / "gan_generator.onnx")
    shutil.copy(copy / "vae_decoder.onnx", copy / "extra.onnx")
    with pytest.raises(ModelFileError, match="extra.onnx: not listed in"):
        GenerativeModel(copy / "extra.onnx")


def test_one_session_shared_by_threads_gives_the_sequential_results(vae: GenerativeModel) -> None:
    seeds = list(range(16))
    sequential = [vae.sample(64, seed=s, temperature=0.8) for s in seeds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda s: vae.sample(64, seed=s, temperature=0.8), seeds))
    for want, got in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(got, want)


NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch is still importable")
import json
from pipeline.runtime import GenerativeModel
model = GenerativeModel(sys.argv[1], encoder_path=sys.argv[2])
images = model.sample(4, seed=0)
mu, _ = model.encode(images, [0, 1, 2, 3])
roots = ("pipeline", "stages", "torch", "onnx")
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in roots)
print(json.dumps({"shape": list(images.shape), "mu": list(mu.shape), "modules": loaded}))
"""


def test_the_cuda_provider_is_asked_for_full_float32() -> None:
    """onnxruntime's CUDA provider would run float32 products in TF32 on Ampere and newer GPUs by default."""
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_providers(both) == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert full_float32(both) == default_providers(both)  # a provider named by the caller runs in float32 too


def test_runtime_works_without_torch(export_dir: Path, vae: GenerativeModel) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(export_dir / "vae_decoder.onnx"), str(export_dir / "vae_encoder.onnx")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report == {"shape": [4, *IMAGE_SHAPE], "mu": [4, 4], "modules": ["pipeline", "pipeline.runtime"]}
