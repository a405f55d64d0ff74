"""Image grids as PNG (numpy + Pillow only, so the torch-free runtime can use it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.io import atomic_path


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile N×C×H×W images in [0, 1] into one H'×W'(×C) uint8 array, ``nrow`` images per row."""
    if images.ndim != 4:
        raise ValueError(f"image_grid expects N×C×H×W images, got shape {images.shape}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(np.clip(images, 0.0, 1.0)):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = img
    out = np.round(grid * 255).astype(np.uint8)
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1) -> None:
    """Write ``images`` (N×C×H×W in [0, 1]) as one PNG grid, enlarged ``scale`` times, atomically."""
    picture = Image.fromarray(image_grid(np.asarray(images, dtype=np.float32), nrow))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
