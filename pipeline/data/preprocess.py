"""Preprocessing: the raw files of ``data/raw/`` -> validated, split, scaled arrays in the processed format.

Images become N×C×H×W with values in [0, 1], stored as uint8 grey levels 0..255 where the data allow it (else
float32). ``binarize`` chooses what the Bernoulli decoder (11.1-11.3) is trained on: ``none`` keeps grey values,
``static`` stores one seeded Bernoulli draw x ~ Bernoulli(grey) as uint8 0/1, ``dynamic`` stores grey values and
lets training draw afresh every epoch. Already-binary data (binarized_mnist) are recorded as ``static``.
A dataset without a validation split gets a seeded one cut from train (``validation_fraction``, ``seed``); one
without a test split gets a fixed one (``HELD_OUT_TEST_FRACTION`` under ``TEST_SPLIT_SEED``, independent of
``seed`` so that every experiment is scored on the same images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.formats import list_image_folder, read_amat, read_digits, read_idx, read_image, read_npz
from pipeline.data.processed import SPLITS, save_processed
from pipeline.data.registry import DatasetError, DatasetSpec, get_dataset
from pipeline.images import save_image_grid
from pipeline.io import read_json

HELD_OUT_TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0
VALIDATION_STREAM, BINARIZE_STREAM = 1, 2  # independent random streams derived from the params' seed
SAMPLE_GRID = 64
RUN_DOWNLOAD = "run the download stage first (`dvc repro download`)"
MIN_SIDE = 4  # the smallest image side every later stage can take (the feature classifier pools twice)


@dataclass
class RawDataset:
    """Images per split as N×C×H×W (uint8 0..255, float32 in [0, 1], or uint8 0/1 if ``binary``), labels."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray] | None
    binary: bool = False
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)


def to_nchw(x: np.ndarray, name: str) -> np.ndarray:
    """N×H×W or N×H×W×C (C = 1 or 3) -> N×C×H×W."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    hint = " (channels first? store images channels last, N×H×W×C)" if x.ndim == 4 and x.shape[1] in (1, 3) else ""
    raise DatasetError(f"{name}: shape {x.shape} is not N×H×W or N×H×W×C with C = 1 or 3{hint}")


def to_unit_storage(x: np.ndarray, name: str) -> np.ndarray:
    """Check the value range and return uint8 grey levels 0..255 if exact, else float32 in [0, 1]."""
    if x.size == 0:
        raise DatasetError(f"{name}: no images")
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{name}: integer values must lie in 0..255, found {lo}..{hi}")
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{name}: dtype {x.dtype} is not an image type; use uint8 or float in [0, 1]")
    if not np.isfinite(x).all():
        raise DatasetError(f"{name}: contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = "; divide by 255 first" if hi <= 255.0 and lo >= 0.0 else ""
        raise DatasetError(f"{name}: float values must lie in [0, 1], found [{lo:g}, {hi:g}]{hint}")
    levels = x.astype(np.float64) * 255.0
    if np.abs(levels - np.round(levels)).max() < 1e-4:
        return np.round(levels).astype(np.uint8)
    return x.astype(np.float32)


def check_labels(y: np.ndarray, count: int, name: str, num_classes: int | None = None) -> np.ndarray:
    """Labels must be one non-negative integer per image (and below ``num_classes`` if given) -> int64."""
    if y.ndim != 1 or y.shape[0] != count:
        raise DatasetError(f"{name}: expected {count} labels (one per image), found shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{name}: labels must be integers, found dtype {y.dtype}")
    if count and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
        raise DatasetError(f"{name}: labels must be {allowed}, found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


def _require(path: Path) -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: missing; {RUN_DOWNLOAD}")
    return path


def load_raw(spec: DatasetSpec, directory: Path, *, image_size: int = 28, channels: int = 1) -> RawDataset:
    """Parse and validate ``data/raw/<dataset>/`` into images per split (and labels, if the dataset has them)."""
    directory = Path(directory)
    if spec.format == "idx":
        x, y = {}, {}
        for split, (images_name, labels_name) in spec.splits.items():
            images_path, labels_path = _require(directory / images_name), _require(directory / labels_name)
            images = read_idx(images_path)
            if images.ndim != 3 or images.dtype != np.uint8:
                raise DatasetError(f"{images_path}: expected N×H×W uint8 images, found {images.dtype} {images.shape}")
            x[split] = images[:, None]
            y[split] = check_labels(read_idx(labels_path), len(images), str(labels_path), spec.num_classes)
        return RawDataset(x, y, num_classes=spec.num_classes, class_names=list(spec.class_names))
    if spec.format == "amat":
        x = {split: read_amat(_require(directory / name))[:, None] for split, (name, _) in spec.splits.items()}
        return RawDataset(x, None, binary=True)
    if spec.format == "digits":
        path = _require(directory / spec.raw_name)
        images, target = read_digits(path)
        if images.ndim != 3 or images.size == 0 or images.min() < 0 or images.max() > 16:
            raise DatasetError(f"{path}: expected N×8×8 digits with values 0..16")
        grey = np.round(images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
        labels = check_labels(target, len(images), str(path), spec.num_classes)
        return RawDataset(
            {"train": grey[:, None]},
            {"train": labels},
            num_classes=spec.num_classes,
            class_names=list(spec.class_names),
        )
    if spec.format == "npz":
        return load_npz(_require(directory / spec.raw_name))
    files, labels, class_names = list_image_folder(_require(directory / spec.raw_name))
    images = np.stack([read_image(file, image_size, channels) for file in files])
    y = None if labels is None else {"train": np.asarray(labels, dtype=np.int64)}
    x = {"train": to_nchw(images, str(directory))}
    return RawDataset(x, y, num_classes=len(class_names) or None, class_names=class_names)


def load_npz(path: Path) -> RawDataset:
    """A user's .npz (see :func:`pipeline.data.formats.read_npz`) as checked N×C×H×W splits and labels."""
    arrays = read_npz(path)
    x = {split: arrays[f"x_{split}"] for split in SPLITS if f"x_{split}" in arrays}
    labelled = [split for split in x if f"y_{split}" in arrays]
    if labelled and labelled != list(x):
        missing = ", ".join(f"y_{split}" for split in x if split not in labelled)
        raise DatasetError(f"{path}: labels for some splits but not {missing}; give labels for every split or none")
    if "y_valid" in arrays and "x_valid" not in arrays:
        raise DatasetError(f"{path}: y_valid without x_valid")
    x = {split: to_nchw(images, f"{path}: x_{split}") for split, images in x.items()}
    # integer images holding only 0 and 1 are binary images, not the two darkest of 256 grey levels
    zero_one = [split for split, images in x.items() if _zero_one(images)]
    if len(zero_one) == len(x):
        x = {split: images.astype(np.uint8) for split, images in x.items()}
        return _with_labels(RawDataset(x, None, binary=True), arrays, labelled, path)
    binary = [f"x_{split}" for split in zero_one if x[split].max() == 1]  # all-zero images fit either scale
    levels = [f"x_{split}" for split in x if split not in zero_one and np.issubdtype(x[split].dtype, np.integer)]
    if binary and levels:
        raise DatasetError(
            f"{path}: only the integers 0 and 1 (binary images) in {', '.join(binary)} but grey levels in "
            f"{', '.join(levels)}; store every integer split on one scale: all 0/1, or all grey levels 0..255"
        )
    # beside float or bool splits, the scale of [0, 1], a 0/1 split is read as black and white on it
    x = {
        split: images.astype(np.uint8) * 255 if split in zero_one else to_unit_storage(images, f"{path}: x_{split}")
        for split, images in x.items()
    }
    if len({images.shape[1:] for images in x.values()}) == 1 and len({images.dtype for images in x.values()}) != 1:
        x = {split: unit_float(images, binary=False) for split, images in x.items()}
    return _with_labels(RawDataset(x, None), arrays, labelled, path)


def _zero_one(x: np.ndarray) -> bool:
    """True if ``x`` holds integers, at least one, all 0 or 1."""
    return bool(np.issubdtype(x.dtype, np.integer) and x.size and x.min() >= 0 and x.max() <= 1)


def _with_labels(data: RawDataset, arrays: dict[str, np.ndarray], labelled: list[str], path: Path) -> RawDataset:
    """``data`` with the npz's labels checked and attached (when it has them)."""
    x = data.x
    shapes = {split: images.shape[1:] for split, images in x.items()}
    if len(set(shapes.values())) != 1:
        raise DatasetError(f"{path}: splits have different image shapes {shapes}")
    if not labelled:
        return data
    data.y = {split: check_labels(arrays[f"y_{split}"], len(x[split]), f"{path}: y_{split}") for split in x}
    data.num_classes = int(max(labels.max() for labels in data.y.values())) + 1
    images = sum(len(labels) for labels in data.y.values())
    if data.num_classes > images:
        raise DatasetError(
            f"{path}: labels run to {data.num_classes - 1}, more classes than the {images} images; labels must be "
            "class indices 0..C-1"
        )
    return data


def _split_off(data: RawDataset, source: str, target: str, fraction: float, rng: np.random.Generator) -> None:
    """Move a random ``fraction`` of ``source``'s images (at least one, never all) into a new split ``target``, in
    random order: evaluations that take a split's first points (AIS, ``evaluate.max_points``) then see a random
    sample of it, even where the source is sorted (an image folder's classes)."""
    count = len(data.x[source])
    held = min(max(1, round(fraction * count)), count - 1)
    if held < 1:
        raise DatasetError(f"{data.x[source].shape[0]} {source} image(s) are too few to hold out a {target} split")
    chosen = rng.permutation(count)[:held]
    rest = np.setdiff1d(np.arange(count), chosen)
    data.x[target], data.x[source] = data.x[source][chosen], data.x[source][rest]
    if data.y is not None:
        data.y[target], data.y[source] = data.y[source][chosen], data.y[source][rest]


def binarize_statically(x: np.ndarray, rng: np.random.Generator, chunk: int = 8192) -> np.ndarray:
    """One Bernoulli draw per pixel with probability equal to its grey value in [0, 1] -> uint8 0/1."""
    out = np.empty(x.shape, dtype=np.uint8)
    scale = np.float32(1.0 / 255.0) if x.dtype == np.uint8 else np.float32(1.0)
    for start in range(0, len(x), chunk):
        grey = x[start : start + chunk].astype(np.float32) * scale
        out[start : start + chunk] = rng.random(grey.shape, dtype=np.float32) < grey
    return out


def unit_float(x: np.ndarray, binary: bool) -> np.ndarray:
    """Stored images as float32 in [0, 1]."""
    if x.dtype != np.uint8:
        return x.astype(np.float32)
    return x.astype(np.float32) if binary else x.astype(np.float32) / 255.0


def preprocess(
    raw_dir: str | Path = "data/raw",
    out_dir: str | Path = "data/processed",
    *,
    dataset: str,
    binarize: str = "dynamic",
    validation_fraction: float = 0.1,
    seed: int = 0,
    image_size: int = 28,
    channels: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """Turn ``raw_dir`` (what the download stage wrote) into ``out_dir``/{arrays.npz, stats.json, samples.png};
    return the stats. Everything is validated before anything is written."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    spec = get_dataset(dataset)
    manifest_path = raw_dir / "manifest.json"
    if not manifest_path.exists():
        raise DatasetError(f"{manifest_path}: missing, so {raw_dir} holds no downloaded dataset; {RUN_DOWNLOAD}")
    try:
        downloaded = read_json(manifest_path, ("dataset",))["dataset"]
    except ValueError as err:
        raise DatasetError(str(err)) from None
    if downloaded != dataset:
        raise DatasetError(f"{raw_dir} holds dataset {downloaded!r} but data.dataset is {dataset!r}; {RUN_DOWNLOAD}")
    data = load_raw(spec, raw_dir / dataset, image_size=image_size, channels=channels)
    if data.y is not None and len(np.unique(np.concatenate(list(data.y.values())))) < 2:
        # one class carries nothing to condition on, and a one-class feature classifier would never learn
        log(f"note: {dataset}'s images all have one class label; treating them as unlabelled")
        data.y, data.num_classes, data.class_names = None, None, []

    splits_note = {split: "shipped with the dataset" for split in ("valid", "test") if split in data.x}
    if "test" not in data.x:
        _split_off(data, "train", "test", HELD_OUT_TEST_FRACTION, np.random.default_rng(TEST_SPLIT_SEED))
        splits_note["test"] = f"{HELD_OUT_TEST_FRACTION} of the images, fixed seed {TEST_SPLIT_SEED}"
    if "valid" not in data.x:
        _split_off(data, "train", "valid", validation_fraction, np.random.default_rng((seed, VALIDATION_STREAM)))
        splits_note["valid"] = f"{validation_fraction} of train, seed {seed}"

    _, height, width = data.x["train"].shape[1:]
    if min(height, width) < MIN_SIDE:
        raise DatasetError(
            f"{dataset}: images of {height}×{width} pixels are too small for the train_classifier stage (the sample "
            f"metrics' feature classifier), which needs at least {MIN_SIDE}×{MIN_SIDE}; use larger images"
        )
    mode = binarize
    if data.binary:
        if binarize != "static":
            log(f"note: {dataset}'s images are already binary (0/1 values); recording binarize=static")
        mode = "static"
    elif binarize == "static":
        rng = np.random.default_rng((seed, BINARIZE_STREAM))
        data.x = {split: binarize_statically(data.x[split], rng) for split in SPLITS}
    binary = mode == "static"

    x = {split: data.x[split] for split in SPLITS}
    y = None if data.y is None else {split: data.y[split] for split in SPLITS}
    channels_, height, width = x["train"].shape[1:]
    stats = {
        "counts": {split: len(x[split]) for split in SPLITS},
        "image_shape": [int(channels_), int(height), int(width)],
        "channels": int(channels_),
        "storage": str(x["train"].dtype),
        "mean_pixel": {split: round(float(unit_float(x[split], binary).mean()), 6) for split in SPLITS},
        "class_histogram": None
        if y is None
        else {split: np.bincount(y[split], minlength=data.num_classes).tolist() for split in SPLITS},
        "class_names": data.class_names or None,
        "splits": splits_note,
        "binarize_requested": binarize,
    }
    save_image_grid(
        unit_float(x["train"][:SAMPLE_GRID], binary), out_dir / "samples.png", nrow=8, scale=max(1, 64 // width)
    )
    save_processed(out_dir, x, y, binarize=mode, dataset=dataset, num_classes=data.num_classes, stats=stats)
    return {**stats, "binarize": mode, "num_classes": data.num_classes, "dataset": dataset}
