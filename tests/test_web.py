"""The browser explorer and the Node check, with the real clients: headless Chromium (Debian's) driven by
playwright-core, and onnxruntime-node, against models exported here and served from 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import node, serve
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.data.formats import read_image
from pipeline.data.processed import save_processed
from pipeline.export import export_generator, export_vae, write_exported
from pipeline.gan_trainer import build_generator
from pipeline.runtime import (
    PORTABLE_STREAMS,
    GenerativeModel,
    portable_normal,
    portable_stream,
    portable_uniform,
)
from pipeline.vae_trainer import build_vae
from pipeline.web import Explorer, WebBundleError, explorer_for

REPO = Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (1, 8, 8)
DATA = {"image_shape": list(IMAGE_SHAPE), "num_classes": 10, "dataset": "digits", "binarize": "dynamic"}


def export_bundle(
    out: Path, prior: str, conditional: bool, quantize: list[str], codes: tuple[int, int] = (0, 0)
) -> Path:
    vae_params = {"arch": "mlp", "hidden_sizes": [32], "conditional": conditional, "prior": prior}
    if prior == "vampprior":
        vae_params["pseudo_inputs"] = 5
    config = config_from_dict(
        {
            "latent_dim": 4,
            "vae": vae_params,
            "gan": {
                "arch": "dcgan",
                "base_channels": 8,
                "init": "torch",  # outputs that vary: under N(0, 0.02) an untrained generator gives ~0.5 everywhere
                "conditional": conditional,
                "info_categories": codes[0],
                "info_continuous": codes[1],
            },
            "export": {"quantize": quantize},
        }
    )
    torch.manual_seed(0)
    vae, generator = build_vae(config, IMAGE_SHAPE, 10).eval(), build_generator(config, IMAGE_SHAPE, 10).eval()
    models = export_vae(vae, DATA, config.to_dict(), config.export)
    models += export_generator(generator, DATA, config.to_dict(), config.export)
    images = (np.random.default_rng(0).random((8, *IMAGE_SHAPE)) * 255).astype(np.uint8)
    write_exported(models, out, Explorer(images, np.arange(8) % 10, REPO))
    return out / "web"


def manifest_conditional(manifest: dict) -> bool:
    return any(entry["metadata"]["conditional"] for entry in manifest["models"])


def page_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Grey images N×1×H×W tiled as the page draws them: levels round(255 v), one grey (128) pixel between tiles."""
    n, _, h, w = images.shape
    grid = np.full((-(-n // columns) * (h + 1) - 1, columns * (w + 1) - 1), 128.0)
    for k, image in enumerate(images[:, 0]):
        y, x = (k // columns) * (h + 1), (k % columns) * (w + 1)
        grid[y : y + h, x : x + w] = np.round(255 * np.clip(image, 0, 1))
    return grid


BUNDLES = {
    "conditional": ("standard_normal", True, (0, 0)),
    "vampprior": ("vampprior", False, (0, 0)),
    "infogan": ("standard_normal", False, (3, 2)),  # a categorical code over 3 and 2 continuous codes
}


@pytest.fixture(scope="module", params=list(BUNDLES))
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prior, conditional, codes = BUNDLES[request.param]
    return export_bundle(tmp_path_factory.mktemp(request.param), prior, conditional, ["fp16", "int8"], codes)


@pytest.fixture
def served(bundle: Path) -> Iterator[str]:
    with serve(bundle) as url:
        yield url


def test_the_page_renders_in_chromium_and_matches_python(served: str, bundle: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "explorer.png"
    # a wide picture with a transparent, coloured part: the page crops (at an odd offset), composites and greys it
    # as training does
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (IMAGE_SHAPE[1], IMAGE_SHAPE[2] + 3, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random(rgba.shape[:2]) < 0.5, 255, rgba[..., 3])
    picture = tmp_path / "dropped.png"
    Image.fromarray(rgba, "RGBA").save(picture)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"%PDF-1.4 not a picture")
    result = node("browser_check.mjs", served, str(screenshot), "explorer", str(picture), str(not_an_image))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["consoleErrors"] == [] and report["errors"] == [], report
    assert report["outsideRequests"] == [], "the page must load nothing from outside the bundle"
    manifest = json.loads((bundle / "models.json").read_text())
    assert set(report["files"]) == {entry["file"] for entry in manifest["models"]}
    assert report["ok"] and report["maxError"] <= 1e-5 and report["latentError"] <= 1e-5, report
    assert report["sections"] == ["vae_decoder", "gan_generator"]
    side = 8 * (8 + 1) - 1  # eight 8-pixel tiles a row, one pixel between them
    assert report["grid"] == [side, side] and report["litPixels"] > 0.5 * side * side  # the sample grid drew
    # the page's first grids (seed 0, temperature 1) are what Python's runtime samples under seed 0
    for grey, entry in zip(report["grids"], report["sections"], strict=True):
        images = GenerativeModel(bundle.parent / f"{entry}.onnx").sample(64, seed=0)
        assert np.abs(np.array(grey).reshape(side, side) - page_grid(images)).max() <= 1, entry
    assert report["interpolation"] == side  # two shipped images encoded, eight decoded along the line
    if any(entry["file"] == "vae_encoder.onnx" for entry in manifest["models"]):
        expected = read_image(picture, IMAGE_SHAPE[1], IMAGE_SHAPE[0]).reshape(-1).astype(int)
        assert np.abs(np.array(report["dropped"]) - expected).max() <= 2, (report["dropped"], expected.tolist())
        if manifest_conditional(manifest):  # no class for the dropped image while the picker cycles through them
            assert not report["droppedInterpolated"] and "has no class: choose its class" in report["note"], report
        else:
            assert report["droppedInterpolated"] and report["note"] == "", report
        assert "notes.png: not an image this browser can decode" in report["notAnImageNote"], report
    before, after = report["resampledSeeds"]
    assert int(after) == int(before) + 1  # Resample draws the next seed's samples
    gan = next(entry for entry in manifest["models"] if entry["file"] == "gan_generator.onnx")
    if gan["metadata"].get("code_categories"):  # a row over the 3 categories, a row per continuous code; 8 columns
        assert [value["name"] for value in gan["inputs"]] == ["z", "code"]
        assert report["codeSweep"] == [side, 3 * (8 + 1) - 1]
    else:
        assert report["codeSweep"] is None
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("EXPLORER_SCREENSHOT_DIR"):  # to look at the page: a copy of each screenshot
        shutil.copy(screenshot, Path(os.environ["EXPLORER_SCREENSHOT_DIR"]) / f"explorer-{bundle.parent.name}.png")


def test_a_model_missing_from_the_bundle_is_shown_on_the_page(tmp_path: Path) -> None:
    bundle = export_bundle(tmp_path / "bundle", "standard_normal", False, [])
    (bundle / "gan_generator.onnx").unlink()
    with serve(bundle) as url:
        result = node("browser_check.mjs", url, str(tmp_path / "explorer.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] and report["checkLine"].startswith("✗ gan_generator.onnx: HTTP 404"), report
    assert "re-run the export stage" in report["checkLine"]


def test_onnxruntime_node_reproduces_every_model_and_a_wrong_reference_is_caught(bundle: Path, tmp_path: Path) -> None:
    result = node("check.mjs", str(bundle))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout)
    manifest = json.loads((bundle / "models.json").read_text())
    assert {entry["file"] for entry in manifest["models"]} <= set(report["files"]) and report["max_abs_error"] <= 1e-5

    tampered = shutil.copytree(bundle, tmp_path / "tampered")
    reference = json.loads((tampered / "reference.json").read_text())
    image = reference["cases"]["gan_generator.onnx"]["outputs"]["image"]
    image["data"][0] += 1e-3
    (tampered / "reference.json").write_text(json.dumps(reference))
    result = node("check.mjs", str(tampered))
    assert result.returncode == 1 and not json.loads(result.stdout)["ok"]

    (tampered / "gan_generator.onnx").unlink()
    for folder, missing in ((tampered, "gan_generator.onnx"), (tmp_path / "absent", "models.json")):
        result = node("check.mjs", str(folder))
        assert result.returncode == 2 and not result.stdout and len(result.stderr.splitlines()) == 1, result.stderr
        assert f"{folder}: " in result.stderr and missing in result.stderr and "re-run the export" in result.stderr


def test_the_explorer_says_why_it_ships_no_test_images(tmp_path: Path) -> None:
    assert "no processed data" in explorer_for(tmp_path / "absent", IMAGE_SHAPE).without_images
    x = {split: np.zeros((3, 1, 4, 4), np.uint8) for split in ("train", "valid", "test")}
    save_processed(tmp_path / "processed", x, None, binarize="none", dataset="npz", num_classes=None, stats={})
    explorer = explorer_for(tmp_path / "processed", IMAGE_SHAPE)
    assert explorer.images is None and "holds (1, 4, 4) images, the models (1, 8, 8)" in explorer.without_images
    assert explorer_for(tmp_path / "processed", (1, 4, 4)).without_images is None


def test_the_explorer_finds_its_sources_beside_the_code_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    explorer = explorer_for(tmp_path / "absent", IMAGE_SHAPE)
    assert explorer.root == REPO
    explorer.check()


def test_javascript_draws_the_same_seeded_latents_as_python() -> None:
    script = (
        "import { STREAMS, portableNormal, portableStream, portableUniform } from './src/portable.js';"
        "const out = {};"
        "for (const seed of [0, 1, 12345, 4294967295]) out[seed] = [Array.from(portableNormal(seed, 37)),"
        " Array.from(portableUniform(seed, 1000)),"
        " Object.keys(STREAMS).map((name) => [name, portableStream(seed, name)])];"
        "console.log(JSON.stringify(out));"
    )
    result = node("--input-type=module", "-e", script)
    assert result.returncode == 0, result.stderr
    for seed, (normals, uniforms, streams) in json.loads(result.stdout).items():
        assert np.array_equal(np.float32(normals), portable_normal(int(seed), (37,)))
        assert np.array_equal(uniforms, portable_uniform(int(seed), 1000))
        # any stretch of a stream is the same numbers as the whole draw's (odd and even starts)
        for start, count in ((0, 37), (1, 10), (7, 30), (500, 499)):
            assert np.array_equal(portable_uniform(int(seed), count, start), uniforms[start : start + count])
            assert np.array_equal(
                portable_normal(int(seed), (count,), start), portable_normal(int(seed), (1000,))[start : start + count]
            )
        assert streams == [[name, portable_stream(int(seed), name)] for name in PORTABLE_STREAMS]
    # Resample draws the next seed: its streams share no Mulberry32 seed with the last one's
    for seed in (0, 41, 2**29 - 1):
        mine = {portable_stream(seed, name) for name in PORTABLE_STREAMS}
        assert not mine & {portable_stream(seed + 1, name) for name in PORTABLE_STREAMS}
        assert len(mine) == len(PORTABLE_STREAMS)
    draws = portable_normal(7, (20000,))
    assert abs(draws.mean()) < 0.03 and abs(draws.std() - 1) < 0.03


def test_a_missing_runtime_or_page_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WebBundleError, match="the explorer's sources are missing"):
        Explorer(root=tmp_path).check()
    shutil.copytree(REPO / "web" / "src", tmp_path / "web" / "src")
    with pytest.raises(
        WebBundleError, match=r"onnxruntime-web is not installed .*npm ci --prefix web.*export.web: false"
    ):
        Explorer(root=tmp_path).check()
