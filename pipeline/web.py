"""The latent explorer: a static page that runs the exported models in the browser with onnxruntime-web.

The export stage writes it into ``export/web/``: the page's sources (``web/src/``), onnxruntime-web's wasm build
(from ``web/node_modules``, installed by ``npm ci --prefix web``; nothing is fetched from a CDN at view time), copies
of ``models.json`` and the ``.onnx`` files, and ``reference.json``: inputs drawn by :func:`portable_normal` and the
outputs Python's onnxruntime computed from them, which the page and ``web/check.mjs`` (onnxruntime-node) reproduce.
Serve it with any static server: ``python -m http.server -d export/web``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pipeline.data.processed import load_processed
from pipeline.io import write_json
from pipeline.runtime import (
    CODE_NAME,
    INPUT_NAMES,
    LABEL_NAME,
    MANIFEST_NAME,
    make_codes,
    portable_normal,
    portable_stream,
    portable_uniform,
)

# the page's sources and onnxruntime-web are part of the project, found beside this package wherever the export runs
PROJECT_ROOT = Path(__file__).resolve().parents[1]
WEB_SOURCES = Path("web/src")
ORT_DIST = Path("web/node_modules/onnxruntime-web/dist")
# the wasm build alone (no WebGPU/WebGL): one module, its loader and its binary
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
REFERENCE_NAME = "reference.json"
REFERENCE_SEED = 0  # the page draws the same latents from this seed and compares them with the shipped ones
REFERENCE_COUNT = 4
SHIPPED_IMAGES = 8  # test images the page can encode and interpolate between


class WebBundleError(RuntimeError):
    """The explorer cannot be built (its sources or onnxruntime-web are missing)."""


def _tensor(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.reshape(-1).tolist()}


def reference_inputs(entry: dict[str, Any], images: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    """The inputs the reference file gives one manifest entry, each from its own portable stream of ``seed``:
    normals for z and noise, uniforms for u, the shipped test images for an encoder (uniform images without them),
    labels cycling through the classes, and InfoGAN codes (categories cycling, continuous codes 2u - 1)."""
    meta, count = entry["metadata"], REFERENCE_COUNT
    feeds: dict[str, np.ndarray] = {}
    for name in INPUT_NAMES[entry["kind"]]:
        if name == "image":
            feeds[name] = (
                images[:count]
                if images is not None
                else portable_uniform(portable_stream(seed, "image"), count * int(np.prod(meta["image_shape"])))
                .astype(np.float32)
                .reshape(count, *meta["image_shape"])
            )
        elif name == "u":
            feeds[name] = portable_uniform(portable_stream(seed, "u"), count).astype(np.float32)
        else:
            feeds[name] = portable_normal(portable_stream(seed, "noise"), (count, meta["latent_dim"]))
    if meta["conditional"] and entry["kind"] != "vae_prior":
        feeds[LABEL_NAME] = np.arange(count, dtype=np.int64) % meta["num_classes"]
    k, c = meta.get("code_categories", 0), meta.get("code_continuous", 0)
    if k + c:
        continuous = portable_uniform(portable_stream(seed, "continuous"), count * c).reshape(count, c) * 2 - 1
        feeds[CODE_NAME] = make_codes(np.arange(count) % k if k else None, continuous, k)
    return feeds


def reference_cases(
    files: dict[str, bytes], manifest: dict[str, Any], images: np.ndarray | None, seed: int = REFERENCE_SEED
) -> dict[str, Any]:
    """For each manifest entry: its reference inputs and the outputs onnxruntime (CPU) computes from them."""
    cases = {}
    for entry in manifest["models"]:
        session = ort.InferenceSession(files[entry["file"]], providers=["CPUExecutionProvider"])
        feeds = reference_inputs(entry, images, seed)
        outputs = session.run(None, feeds)
        cases[entry["file"]] = {
            "inputs": {name: _tensor(value) for name, value in feeds.items()},
            "outputs": {o.name: _tensor(value) for o, value in zip(session.get_outputs(), outputs, strict=True)},
        }
    return {"seed": seed, "count": REFERENCE_COUNT, "tolerance": 1e-5, "cases": cases}


def check_bundle_sources(root: str | Path = PROJECT_ROOT) -> None:
    """Raise :class:`WebBundleError` naming what is missing for the explorer, before anything is exported."""
    root = Path(root)
    if not (root / WEB_SOURCES / "index.html").is_file():
        raise WebBundleError(f"{root / WEB_SOURCES}: the explorer's sources are missing; restore web/src from git")
    missing = [name for name in ORT_FILES if not (root / ORT_DIST / name).is_file()]
    if missing:
        raise WebBundleError(
            f"{root / ORT_DIST}: onnxruntime-web is not installed (missing {', '.join(missing)}); run "
            "`npm ci --prefix web`, or set export.web: false to export without the browser explorer"
        )


@dataclass(frozen=True)
class Explorer:
    """What the page needs besides the models: test images (uint8 N×C×H×W) and labels, and the project root
    holding ``web/src`` and ``web/node_modules``."""

    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    root: Path = PROJECT_ROOT
    without_images: str | None = None  # why no test images are shipped, for the export's report

    def check(self) -> None:
        check_bundle_sources(self.root)

    def write(self, out: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        """Write the explorer into the new folder ``out``: page, runtime, models, manifest and reference file."""
        self.check()
        shutil.copytree(self.root / WEB_SOURCES, out)
        for name in ORT_FILES:
            shutil.copy2(self.root / ORT_DIST / name, out / name)
        for name, data in files.items():
            (out / name).write_bytes(data)
        write_json(out / MANIFEST_NAME, manifest)
        unit = None if self.images is None else self.images.astype(np.float32) / np.float32(255)
        reference = reference_cases(files, manifest, unit)
        if self.images is not None:
            labels = None if self.labels is None else self.labels.astype(int).tolist()
            reference["images"] = {**_tensor(self.images), "labels": labels}
        write_json(out / REFERENCE_NAME, reference)


def explorer_for(processed_dir: str | Path, image_shape: Sequence[int], root: str | Path = PROJECT_ROOT) -> Explorer:
    """The explorer with the first test images of the processed data, or none (saying why) where the data are
    missing, unreadable or of another shape than the exported models'."""
    try:
        data = load_processed(processed_dir)
    except (FileNotFoundError, ValueError) as err:
        return Explorer(root=Path(root), without_images=str(err))
    x = data.x["test"][:SHIPPED_IMAGES]
    if tuple(x.shape[1:]) != tuple(image_shape):
        shape = tuple(x.shape[1:])
        return Explorer(
            root=Path(root), without_images=f"{processed_dir} holds {shape} images, the models {tuple(image_shape)}"
        )
    labels = None if data.y is None else data.y["test"][:SHIPPED_IMAGES]
    return Explorer(np.round(x * 255).astype(np.uint8), labels, Path(root))
