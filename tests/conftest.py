"""Shared fixtures: small real data in the processed format, and a quiet, single-threaded torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.processed import save_processed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_processed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 of scikit-learn's 8×8 digits (grey, labelled), split 200/50/50, in the processed format."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images[:300] / 16.0 * 255).astype(np.uint8)[:, None]
    y = digits.target[:300].astype(np.int64)
    cut = {"train": slice(0, 200), "valid": slice(200, 250), "test": slice(250, 300)}
    out = tmp_path_factory.mktemp("processed")
    save_processed(
        out,
        {s: x[c] for s, c in cut.items()},
        {s: y[c] for s, c in cut.items()},
        binarize="dynamic",
        dataset="digits",
        num_classes=10,
        stats={"image_shape": [1, 8, 8]},
    )
    return out
