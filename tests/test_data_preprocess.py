"""Parsers on generated IDX/amat/npz/image files, and preprocessing of raw directories into the processed format."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.formats import list_image_folder, read_amat, read_idx, read_image, read_npz
from pipeline.data.preprocess import binarize_statically, preprocess
from pipeline.data.processed import load_processed
from pipeline.data.registry import DatasetError


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def amat_text(bits: np.ndarray) -> str:
    return "".join(" ".join(map(str, row)) + "\n" for row in bits.reshape(len(bits), -1))


def fake_mnist(raw: Path, dataset: str = "mnist", n_train: int = 60, n_test: int = 20) -> None:
    """A raw directory shaped like the download stage's output for an IDX dataset (tiny, random)."""
    rng = np.random.default_rng(1)
    directory = raw / dataset
    directory.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    (raw / "manifest.json").write_text(json.dumps({"dataset": dataset, "files": []}))


def fake_raw(raw: Path, dataset: str) -> Path:
    (raw / dataset).mkdir(parents=True)
    (raw / "manifest.json").write_text(json.dumps({"dataset": dataset, "files": []}))
    return raw / dataset


# --- parsers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_gzipped_or_not(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", images, gz=gz)), images)
    ints = np.array([1, -2, 70000], dtype=">i4")
    assert read_idx(write_idx(tmp_path / "b.idx", ints, gz=gz)).tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (idx_bytes(np.zeros((5, 4, 4), np.uint8))[:-7], r"truncated: shape \(5, 4, 4\) needs 96 bytes, found 89"),
        (idx_bytes(np.zeros((5, 4, 4), np.uint8)) + b"\0", "longer than its header says"),
        (b"\x00\x00\x08\x03\x00\x00", "IDX header is truncated"),
        (b"PK\x03\x04 not idx", "not an IDX file"),
        (gzip.compress(idx_bytes(np.zeros((5, 4, 4), np.uint8)))[:-12], "corrupt or truncated gzip data"),
    ],
)
def test_malformed_idx_is_an_error_naming_the_file(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "broken-idx3-ubyte.gz"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=message) as caught:
        read_idx(path)
    assert str(caught.value).startswith(str(path))


def test_amat_round_trip_and_malformed_lines(tmp_path: Path) -> None:
    bits = np.random.default_rng(0).integers(0, 2, (3, 4, 4), dtype=np.uint8)
    path = tmp_path / "x.amat"
    path.write_text(amat_text(bits))
    np.testing.assert_array_equal(read_amat(path), bits)
    text = amat_text(bits)
    path.write_text(text[: len(text) - 10])
    with pytest.raises(DatasetError, match=r"x.amat: line 3 has 11 values where a square image is expected"):
        read_amat(path)
    path.write_text(text.replace("1", "0.5", 1))
    with pytest.raises(DatasetError, match=r"x.amat: line 1 has a value other than 0 or 1"):
        read_amat(path)
    path.write_text("\n")
    with pytest.raises(DatasetError, match="no images"):
        read_amat(path)


def test_npz_requires_known_keys_and_a_readable_archive(tmp_path: Path) -> None:
    x = np.zeros((2, 4, 4), np.uint8)
    np.savez(tmp_path / "ok.npz", x_train=x, x_test=x, y_train=[0, 1], y_test=[1, 0])
    assert set(read_npz(tmp_path / "ok.npz")) == {"x_train", "x_test", "y_train", "y_test"}
    np.savez(tmp_path / "typo.npz", x_train=x, x_test=x, x_val=x)
    with pytest.raises(DatasetError, match=r"unexpected array 'x_val' \(did you mean 'x_valid'\?\)"):
        read_npz(tmp_path / "typo.npz")
    np.savez(tmp_path / "case.npz", X_train=x, x_test=x)
    with pytest.raises(DatasetError, match=r"unexpected array 'X_train' \(did you mean 'x_train'\?\)"):
        read_npz(tmp_path / "case.npz")
    np.savez(tmp_path / "half.npz", x_train=x)
    with pytest.raises(DatasetError, match="missing array.*x_test"):
        read_npz(tmp_path / "half.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match=r"junk.npz: not an .npz archive \(a zip of .npy arrays\); save your"):
        read_npz(tmp_path / "junk.npz")
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"truncated.npz: not a readable .npz"):
        read_npz(tmp_path / "truncated.npz")
    np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}], dtype=object), x_test=x)
    with pytest.raises(DatasetError, match="objects.npz: not a readable .npz archive of plain arrays"):
        read_npz(tmp_path / "objects.npz")
    np.save(tmp_path / "array.npy", x)
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    with pytest.raises(DatasetError, match=r"array.npz: one array \(a .npy file\), not an .npz archive; save it with"):
        read_npz(tmp_path / "array.npz")


def make_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # not square: centre-cropped
            suffix = ".png" if i % 2 else ".JPG"
            Image.fromarray(pixels).save(root / name / f"{c}_{i}{suffix}")
    (root / ".DS_Store").write_bytes(b"ignored")
    return root


def test_image_folder_labels_from_subfolders_and_layout_errors(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    files, labels, class_names = list_image_folder(root)
    assert class_names == ["cat", "dog"] and labels == [0] * 6 + [1] * 6 and len(files) == 12
    assert read_image(files[0], 8, 1).shape == (8, 8, 1) and read_image(files[0], 16, 3).shape == (16, 16, 3)
    Image.new("L", (5, 5)).save(root / "stray.png")
    with pytest.raises(DatasetError, match="all lie in the folder itself .* or all one level down"):
        list_image_folder(root)
    (root / "stray.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match=r"stray.png: not a readable PNG/JPEG image"):
        read_image(root / "stray.png", 8, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .png/.jpg/.jpeg images"):
        list_image_folder(tmp_path / "empty")


def test_images_are_read_as_a_viewer_shows_them(tmp_path: Path) -> None:
    """16-bit grey scaled to 8 bits (not clipped at 255), transparency over white, the EXIF orientation applied; a
    32-bit image refused in one line naming the file."""
    ramp = np.linspace(0, 65535, 16).round().astype(np.uint16).reshape(4, 4)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png", 4, 1)[..., 0], (ramp / 257).round())
    strokes = np.zeros((4, 4, 4), dtype=np.uint8)  # black everywhere, opaque only on the diagonal
    strokes[np.arange(4), np.arange(4), 3] = 255
    Image.fromarray(strokes, "RGBA").save(tmp_path / "strokes.png")
    np.testing.assert_array_equal(read_image(tmp_path / "strokes.png", 4, 1)[..., 0], 255 * (1 - np.eye(4)))
    tall = np.zeros((6, 4), dtype=np.uint8)
    tall[:, 0] = 255  # a bright left column; EXIF orientation 6 turns it 90° clockwise, onto the top row
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(tall).save(tmp_path / "turned.jpg", exif=exif, quality=100)
    upright = read_image(tmp_path / "turned.jpg", 4, 1)[..., 0]
    assert upright[0].min() > 200 and upright[1:].max() < 60
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DatasetError, match=r"float.tif: a F image \(32-bit\); save it as an 8- or 16-bit PNG"):
        read_image(tmp_path / "float.tif", 4, 1)


# --- preprocessing ---------------------------------------------------------------------------------------------


def test_idx_dataset_is_split_scaled_and_written(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "raw")
    stats = preprocess(tmp_path / "raw", tmp_path / "out", dataset="mnist", validation_fraction=0.25, seed=3)
    assert stats["counts"] == {"train": 45, "valid": 15, "test": 20}
    assert stats["image_shape"] == [1, 28, 28] and stats["storage"] == "uint8" and stats["num_classes"] == 10
    assert sum(stats["class_histogram"]["test"]) == 20 and stats["class_histogram"]["test"][0] == 2
    assert stats["splits"] == {"test": "shipped with the dataset", "valid": "0.25 of train, seed 3"}
    processed = load_processed(tmp_path / "out")
    assert processed.binarize == "dynamic" and processed.num_classes == 10
    assert processed.x["train"].dtype == np.float32 and processed.x["train"].shape == (45, 1, 28, 28)
    assert processed.x["train"].min() >= 0.0 and processed.x["train"].max() <= 1.0
    original = read_idx(tmp_path / "raw" / "mnist" / "train-images-idx3-ubyte.gz")
    original_labels = read_idx(tmp_path / "raw" / "mnist" / "train-labels-idx1-ubyte.gz")
    together = np.concatenate([processed.x["train"], processed.x["valid"]])[:, 0] * 255
    assert sorted(map(bytes, np.round(together).astype(np.uint8))) == sorted(map(bytes, original))
    assert sorted(np.concatenate([processed.y["train"], processed.y["valid"]])) == sorted(original_labels)
    assert Image.open(tmp_path / "out" / "samples.png").size == (2 * (8 * 29 + 1), 2 * (6 * 29 + 1))  # 45 in rows of 8


def test_validation_split_and_static_binarization_follow_the_seed(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "raw")
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        preprocess(tmp_path / "raw", tmp_path / name, dataset="mnist", binarize="static", seed=seed)
        with np.load(tmp_path / name / "arrays.npz") as arrays:
            runs[name] = {key: arrays[key] for key in arrays.files}
    assert set(np.unique(runs["a"]["x_train"])) == {0, 1} and runs["a"]["x_train"].dtype == np.uint8
    assert all(np.array_equal(runs["a"][key], runs["b"][key]) for key in runs["a"])
    assert not np.array_equal(runs["a"]["y_valid"], runs["c"]["y_valid"])
    assert not np.array_equal(runs["a"]["x_test"], runs["c"]["x_test"])
    assert load_processed(tmp_path / "a").binarize == "static"


def test_static_binarization_draws_with_the_grey_value_as_probability() -> None:
    grey = np.full((200, 1, 10, 10), 64, dtype=np.uint8)
    grey[:, :, :5] = 255
    grey[:, :, 5:7] = 0
    bits = binarize_statically(grey, np.random.default_rng(0), chunk=64)
    assert bits[:, :, :5].all() and not bits[:, :, 5:7].any()
    assert abs(bits[:, :, 7:].mean() - 64 / 255) < 0.01


def test_binarized_amat_is_recorded_as_static(tmp_path: Path) -> None:
    directory = fake_raw(tmp_path / "raw", "binarized_mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("valid", 4), ("test", 6)):
        (directory / f"binarized_mnist_{split}.amat").write_text(amat_text(rng.integers(0, 2, (n, 28, 28))))
    messages: list[str] = []
    stats = preprocess(tmp_path / "raw", tmp_path / "out", dataset="binarized_mnist", log=messages.append)
    assert stats["counts"] == {"train": 10, "valid": 4, "test": 6} and stats["binarize"] == "static"
    assert stats["class_histogram"] is None and "already binary" in messages[0]
    processed = load_processed(tmp_path / "out")
    assert set(np.unique(processed.x["test"])) == {0.0, 1.0}


@pytest.mark.parametrize("other", [np.bool_, np.float32])
def test_npz_integer_0_1_split_beside_a_unit_scale_split_is_black_and_white(tmp_path: Path, other: type) -> None:
    """Bool and float splits are on the scale of [0, 1], so a 0/1 integer split beside them is binary images there,
    not the two darkest grey levels."""
    directory = fake_raw(tmp_path / "raw", "npz")
    eye = np.eye(8, dtype=np.uint8)[None]
    np.savez(directory / "data.npz", x_train=eye.repeat(4, 0), x_test=eye.repeat(2, 0).astype(other))
    preprocess(tmp_path / "raw", tmp_path / "out", dataset="npz")
    processed = load_processed(tmp_path / "out")
    for split in ("train", "test"):
        np.testing.assert_array_equal(processed.x[split][0, 0], np.eye(8))


def test_npz_of_channels_last_floats_is_stored_as_uint8_when_exact(tmp_path: Path) -> None:
    directory = fake_raw(tmp_path / "raw", "npz")
    levels = np.random.default_rng(0).integers(0, 256, (30, 6, 5, 3))
    np.savez(directory / "data.npz", x_train=levels / 255.0, x_test=levels[:8] / 255.0)
    stats = preprocess(tmp_path / "raw", tmp_path / "out", dataset="npz")
    assert stats["image_shape"] == [3, 6, 5] and stats["storage"] == "uint8" and stats["num_classes"] is None
    with np.load(tmp_path / "out" / "arrays.npz") as arrays:
        np.testing.assert_array_equal(arrays["x_test"], levels[:8].transpose(0, 3, 1, 2))


def test_npz_with_inexact_floats_stays_float32(tmp_path: Path) -> None:
    directory = fake_raw(tmp_path / "raw", "npz")
    x = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    np.savez(
        directory / "data.npz",
        x_train=x,
        x_test=x[:5],
        x_valid=x[:3],
        y_train=np.arange(20) % 3,
        y_test=np.arange(5) % 3,
        y_valid=np.array([0, 1, 2]),
    )
    stats = preprocess(tmp_path / "raw", tmp_path / "out", dataset="npz")
    assert stats["storage"] == "float32" and stats["counts"] == {"train": 20, "valid": 3, "test": 5}
    assert stats["num_classes"] == 3
    np.testing.assert_array_equal(load_processed(tmp_path / "out").x["valid"][:, 0], x[:3])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 1, 8, 8)), "x_test": np.zeros((2, 1, 8, 8))}, "channels first"),
        ({"x_train": np.full((4, 8, 8), 200.0), "x_test": np.zeros((2, 8, 8))}, r"found \[200, 200\]; divide by 255"),
        ({"x_train": np.full((4, 8, 8), np.nan), "x_test": np.zeros((2, 8, 8))}, "NaN"),
        ({"x_train": np.full((4, 8, 8), 300), "x_test": np.zeros((2, 8, 8), np.uint8)}, "0..255, found 300..300"),
        ({"x_train": np.zeros((4, 8, 8)), "x_test": np.zeros((2, 9, 9))}, "different image shapes"),
        (
            {"x_train": np.eye(8, dtype=np.uint8)[None].repeat(4, 0), "x_test": np.full((2, 8, 8), 200, np.uint8)},
            r"only the integers 0 and 1 \(binary images\) in x_train but grey levels in x_test; store every integer",
        ),
        ({"x_train": np.zeros((4, 8, 8)), "x_test": np.zeros((2, 8, 8)), "y_train": [0, 1, 2, 3]}, "not y_test"),
        (
            {"x_train": np.zeros((4, 8, 8)), "x_test": np.zeros((2, 8, 8)), "y_train": [0, 1], "y_test": [0, 1]},
            r"y_train: expected 4 labels",
        ),
        (
            {"x_train": np.zeros((4, 8, 8)), "x_test": np.zeros((2, 8, 8)), "y_train": [0, 1, 2, -1], "y_test": [0, 1]},
            "non-negative",
        ),
        (
            {"x_train": np.zeros((4, 8, 8)), "x_test": np.zeros((2, 8, 8)), "y_train": [0.5] * 4, "y_test": [0, 1]},
            "labels must be integers",
        ),
    ],
)
def test_bad_npz_contents_are_clear_errors_and_write_nothing(tmp_path: Path, arrays: dict, message: str) -> None:
    directory = fake_raw(tmp_path / "raw", "npz")
    np.savez(directory / "data.npz", **arrays)
    with pytest.raises(DatasetError, match=message) as caught:
        preprocess(tmp_path / "raw", tmp_path / "out", dataset="npz")
    assert "data.npz" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_idx_labels_out_of_range_or_miscounted_are_errors(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "raw")
    labels = tmp_path / "raw" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.full(20, 10, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: labels must be 0..9, found 10..10"):
        preprocess(tmp_path / "raw", tmp_path / "out", dataset="mnist")
    write_idx(labels, np.zeros(19, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"expected 20 labels \(one per image\), found shape \(19,\)"):
        preprocess(tmp_path / "raw", tmp_path / "out", dataset="mnist")
    assert not (tmp_path / "out").exists()


def test_image_folder_is_resized_labelled_and_split(tmp_path: Path) -> None:
    make_image_folder(fake_raw(tmp_path / "raw", "image_folder") / "images", per_class=10)
    stats = preprocess(tmp_path / "raw", tmp_path / "out", dataset="image_folder", image_size=12, channels=3)
    assert stats["image_shape"] == [3, 12, 12] and stats["class_names"] == ["cat", "dog"]
    assert stats["counts"] == {"train": 14, "valid": 2, "test": 4} and stats["num_classes"] == 2
    assert stats["splits"]["test"] == "0.2 of the images, fixed seed 0"
    assert load_processed(tmp_path / "out").describe()["class_names"] == ["cat", "dog"]  # into the checkpoints


def test_held_out_splits_come_in_random_order_from_a_sorted_folder(tmp_path: Path) -> None:
    """An image folder is read class by class; the test and validation splits are not, so their first points (what
    AIS and evaluate.max_points take) are a sample of every class."""
    make_image_folder(fake_raw(tmp_path / "raw", "image_folder") / "images", per_class=25)
    preprocess(tmp_path / "raw", tmp_path / "out", dataset="image_folder", image_size=8, channels=1)
    y = load_processed(tmp_path / "out").y
    for split in ("test", "valid"):
        assert y[split].tolist() != sorted(y[split].tolist()) and set(y[split][:5]) == {0, 1}, split


def test_one_class_is_no_labels(tmp_path: Path) -> None:
    """A folder whose images all sit in one subfolder (or an npz whose labels are all 0) is unlabelled data: one class
    gives nothing to condition on, and a one-logit feature classifier would never learn (its loss is always 0)."""
    make_image_folder(fake_raw(tmp_path / "raw", "image_folder") / "images", classes=("faces",), per_class=12)
    notes: list[str] = []
    stats = preprocess(tmp_path / "raw", tmp_path / "out", dataset="image_folder", image_size=8, log=notes.append)
    assert stats["num_classes"] is None and stats["class_names"] is None and stats["class_histogram"] is None
    assert load_processed(tmp_path / "out").y is None
    assert any("all have one class label; treating them as unlabelled" in note for note in notes), notes
    directory = fake_raw(tmp_path / "raw-npz", "npz")
    x = np.zeros((12, 8, 8), np.uint8)
    np.savez(directory / "data.npz", x_train=x, x_test=x[:4], y_train=np.full(12, 3), y_test=np.full(4, 3))
    stats = preprocess(tmp_path / "raw-npz", tmp_path / "out-npz", dataset="npz", log=notes.append)
    assert stats["num_classes"] is None and load_processed(tmp_path / "out-npz").y is None  # one class, numbered 3


def test_numbered_class_folders_are_numbered_by_value(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", classes=("10", "2", "1"), per_class=1)
    files, labels, class_names = list_image_folder(root)
    assert class_names == ["1", "2", "10"] and [class_names[k] for k in labels] == [p.parent.name for p in files]


def test_raw_directory_must_hold_the_configured_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="manifest.json: missing.*run the download stage first"):
        preprocess(tmp_path / "raw", tmp_path / "out", dataset="mnist")
    fake_mnist(tmp_path / "raw")
    with pytest.raises(DatasetError, match="holds dataset 'mnist' but data.dataset is 'fashion_mnist'"):
        preprocess(tmp_path / "raw", tmp_path / "out", dataset="fashion_mnist")
    (tmp_path / "raw" / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz: missing"):
        preprocess(tmp_path / "raw", tmp_path / "out", dataset="mnist")
    assert not (tmp_path / "out").exists()
