"""`python -m stages sample`: PNG and .npy outputs, labels, the --all DVC mode, clean errors, no torch needed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.export import export_generator, export_vae, write_exported
from pipeline.gan_trainer import build_generator
from pipeline.images import save_image_grid
from pipeline.runtime import GenerativeModel
from pipeline.vae_trainer import build_vae
from stages import sample as sample_stage

REPO = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (1, 8, 8)
DATA = {"image_shape": list(IMAGE_SHAPE), "num_classes": 10, "dataset": "digits", "binarize": "dynamic"}
# the CLI run with torch unimportable: sampling needs numpy, onnxruntime, Pillow and click only
CLI_WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from stages.__main__ import cli; cli()"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unconditional VAE (with an fp16 variant) and a conditional GAN generator."""
    torch.manual_seed(0)
    vae_config = config_from_dict({"latent_dim": 4, "vae": {"hidden_sizes": [32]}, "export": {"quantize": ["fp16"]}})
    gan_config = config_from_dict({"latent_dim": 4, "gan": {"hidden_sizes": [32], "conditional": True}})
    out = tmp_path_factory.mktemp("export")
    models = export_vae(build_vae(vae_config, IMAGE_SHAPE, 10), DATA, vae_config.to_dict(), vae_config.export)
    generator = build_generator(gan_config, IMAGE_SHAPE, 10)
    write_exported(models + export_generator(generator, DATA, gan_config.to_dict(), gan_config.export), out)
    return out


def sample_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", CLI_WITHOUT_TORCH, "sample", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def test_png_grid(export_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    result = sample_cli("--model", str(export_dir / "vae_decoder.onnx"), "-n", "16", "--seed", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    picture = Image.open(out)
    # 4×4 tiles of 8×8 pixels with 1-pixel gaps, enlarged 7× (each image at least 56 pixels high)
    assert picture.size == ((4 * 9 + 1) * 7,) * 2 and picture.mode == "L"
    assert len(set(np.asarray(picture).ravel().tolist())) > 10  # an image, not a blank page


def test_npy_array_equals_the_runtime(export_dir: Path, tmp_path: Path) -> None:
    model = export_dir / "gan_generator.onnx"
    out = tmp_path / "samples.npy"
    args = ["--model", str(model), "-n", "5", "--seed", "3", "--labels", "7", "--temperature", "0.5", "--out", str(out)]
    assert sample_cli(*args).returncode == 0
    want = GenerativeModel(model).sample(5, seed=3, labels=7, temperature=0.5)
    np.testing.assert_array_equal(np.load(out), want)
    labels = ["--labels", "0,1,2,3,4", "--out", str(out)]
    assert sample_cli("--model", str(model), "-n", "5", "--seed", "3", *labels).returncode == 0
    np.testing.assert_array_equal(np.load(out), GenerativeModel(model).sample(5, 3, labels=np.arange(5)))


def test_all_mode_draws_one_grid_per_decoder_and_generator(export_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "outputs" / "samples"
    result = sample_cli("--all", "--export-dir", str(export_dir), "--out-dir", str(out_dir), "-n", "9")
    assert result.returncode == 0, result.stderr
    grids = {"vae_decoder.png", "vae_decoder.fp16.png", "gan_generator.png"}
    assert {p.name for p in out_dir.iterdir()} == grids

    tampered = shutil.copytree(export_dir, tmp_path / "tampered")
    (tampered / "gan_generator.onnx").write_bytes((export_dir / "gan_generator.onnx").read_bytes() + b"\0")
    result = sample_cli("--all", "--export-dir", str(tampered), "--out-dir", str(tmp_path / "again"))
    assert result.returncode == 1 and "gan_generator.onnx: its sha256 differs from" in result.stderr
    assert not (tmp_path / "again").exists()  # every file is checked before any grid is drawn


def test_all_mode_replaces_every_grid_or_none(
    export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills while the second grid is written: the grids of the last run stay as they were, each one,
    with no temporary file left beside them; a folder where a grid goes is named before anything is drawn."""
    out_dir = tmp_path / "samples"
    args = ["--all", "--export-dir", str(export_dir), "--out-dir", str(out_dir), "-n", "4"]
    assert sample_cli(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    calls = []

    def fills_the_disk_second(images: np.ndarray, path: Path, **kwargs) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save_image_grid(images, path, **kwargs)

    monkeypatch.setattr(sample_stage, "save_image_grid", fills_the_disk_second)
    result = CliRunner().invoke(sample_stage.main, [*args[:-1], "9", "--seed", "1"])
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before

    monkeypatch.undo()
    (out_dir / "gan_generator.png").unlink()
    (out_dir / "gan_generator.png").mkdir()
    result = sample_cli(*args[:-1], "9")
    assert result.returncode == 1, result.stderr
    assert f"{out_dir / 'gan_generator.png'}: a folder where a grid goes" in result.stderr
    assert (out_dir / "vae_decoder.png").read_bytes() == before["vae_decoder.png"]


def test_bad_requests_fail_cleanly(export_dir: Path, tmp_path: Path) -> None:
    model = str(export_dir / "gan_generator.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    cases = [
        (["--model", model, "-n", "0"], 2, "Invalid value for '-n': 0 is not in the range x>=1"),
        (["--model", model, "--labels", "10"], 1, r"labels must lie in [0, 10)"),
        (["--model", model, "--labels", "one"], 2, "Invalid value for --labels: 'one' is not an integer or a comma"),
        (["--model", model, "--out", str(tmp_path / "x.jpg")], 2, "must end in .png or .npy"),
        (["--model", str(garbage), "--out", str(tmp_path / "x.png")], 1, "not a loadable ONNX model"),
        (["--model", str(export_dir / "vae_encoder.onnx")], 1, "this is a VAE encoder"),
        (["--all", "--export-dir", str(tmp_path)], 1, "no model card"),
        (["--all", "--labels", "3"], 2, "Invalid value for --labels: is for one model; --all writes one grid"),
        (["--all", "--out", "x.png"], 2, "Invalid value for --out: is for one model"),
        (["--all", "--model", model], 2, "Invalid value for --model: give --model or --all, not both"),
        (["--model", model, "-n", "4", "--labels", "1,2"], 2, "Invalid value for --labels: gives 2 labels for -n 4"),
        (["--model", model, "--out-dir", "grids"], 2, "Invalid value for --out-dir: is for --all"),
        ([], 2, "give --model"),
    ]
    for args, code, message in cases:
        result = sample_cli(*args, cwd=tmp_path)
        assert (result.returncode, message in result.stderr, "Traceback" in result.stderr) == (code, True, False), (
            args,
            result.stderr,
        )
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.jpg"))
