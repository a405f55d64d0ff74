"""The processed-data format every training and evaluation stage reads.

``data/processed/`` holds ``arrays.npz`` with ``x_train``, ``x_valid``, ``x_test`` as
N×C×H×W arrays (uint8 where possible: grey levels 0..255, or 0/1 after static
binarization; float32 in [0, 1] otherwise), optional ``y_*`` int64 labels, and
``stats.json`` with counts, image shape, the binarization mode and the class count.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_path, read_json, write_json

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ProcessedData:
    """Images as float32 N×C×H×W in [0, 1] and optional int64 labels, per split."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray] | None
    binarize: str
    num_classes: int | None
    dataset: str
    class_names: tuple[str, ...] = ()  # one per class where the data name them (e.g. an image folder's subfolders)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x["train"].shape[1:])

    @cached_property
    def binary(self) -> bool:
        """True if the data are binarized afresh at training time, or every stored value is 0 or 1."""
        if self.binarize in ("static", "dynamic"):
            return True
        return all(bool(np.isin(x, (0.0, 1.0)).all()) for x in self.x.values())

    def describe(self) -> dict[str, Any]:
        """What a model trained on these data records in its checkpoint."""
        return {
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "dataset": self.dataset,
            "binarize": self.binarize,
        } | ({"class_names": list(self.class_names)} if self.class_names else {})

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """The sizes of the training and validation splits and a hash of their images and labels: a resume checks
        that it trains on the data its checkpoint was trained on."""
        digest = hashlib.blake2b(digest_size=16)
        for split in ("train", "valid"):
            for arrays in (self.x, self.y or {}):
                if split in arrays:
                    digest.update(np.ascontiguousarray(arrays[split]).data)
        return {"train": len(self.x["train"]), "valid": len(self.x["valid"]), "hash": digest.hexdigest()}


def _to_unit(x: np.ndarray, levels: int) -> np.ndarray:
    return x.astype(np.float32) / levels if x.dtype == np.uint8 else x.astype(np.float32)


def save_processed(
    directory: str | Path,
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray] | None,
    *,
    binarize: str,
    dataset: str,
    num_classes: int | None,
    stats: dict,
) -> None:
    """Write arrays.npz and stats.json atomically (arrays first, so stats.json marks a complete write)."""
    directory = Path(directory)
    arrays = {f"x_{s}": x[s] for s in SPLITS}
    if y is not None:
        arrays.update({f"y_{s}": y[s].astype(np.int64) for s in SPLITS})
    levels = 1 if binarize == "static" else 255
    meta = {"binarize": binarize, "dataset": dataset, "num_classes": num_classes, "levels": levels}
    with atomic_path(directory / "arrays.npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    write_json(directory / "stats.json", {**stats, **meta})


def _check_labels(path: Path, x: dict[str, np.ndarray], y: dict[str, np.ndarray], num_classes: int | None) -> None:
    """A ValueError naming ``path`` and the array unless each y_* holds one integer label per image, in
    0..num_classes-1 where the data have classes."""
    for split in SPLITS:
        labels = y[split]
        if labels.shape != (len(x[split]),) or not np.issubdtype(labels.dtype, np.integer):
            problem = f"is not one integer label per image of x_{split}"
        elif num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            problem = f"holds labels outside 0..{num_classes - 1} (stats.json's num_classes is {num_classes})"
        else:
            continue
        raise ValueError(f"{path}: y_{split} {problem}; re-create it with dvc repro -f preprocess")


def load_processed(directory: str | Path = "data/processed") -> ProcessedData:
    """Read what the preprocess stage wrote; a clear error if it is missing."""
    directory = Path(directory)
    if not (directory / "stats.json").exists() or not (directory / "arrays.npz").exists():
        raise FileNotFoundError(f"{directory}: no processed data; run `dvc repro preprocess` first")
    meta = read_json(directory / "stats.json", ("levels", "binarize", "num_classes", "dataset"))
    levels, num_classes = meta["levels"], meta["num_classes"]
    if not (isinstance(levels, int) and levels > 0 and (num_classes is None or isinstance(num_classes, int))):
        raise ValueError(
            f"{directory / 'stats.json'}: levels {levels!r} or num_classes {num_classes!r} is not what preprocess "
            "writes; re-create it with dvc repro -f preprocess"
        )
    try:
        with np.load(directory / "arrays.npz") as arrays:
            x = {s: _to_unit(arrays[f"x_{s}"], meta["levels"]) for s in SPLITS}
            y = {s: arrays[f"y_{s}"] for s in SPLITS} if "y_train" in arrays else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(
            f"{directory / 'arrays.npz'}: unreadable processed data ({err}); re-create it with dvc repro -f preprocess"
        ) from None
    if y is not None:
        _check_labels(directory / "arrays.npz", x, y, num_classes)
    names = tuple(str(name) for name in meta.get("class_names") or ())
    return ProcessedData(x, y, meta["binarize"], meta["num_classes"], meta["dataset"], names)
