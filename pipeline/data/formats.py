"""Parsers of the raw formats: IDX (gzipped or not), Larochelle's .amat, .npz, image folders, the digits file.

Each parser checks the structure of what it reads and raises a DatasetError naming the file and the problem
(truncated, wrong header, bad values); arrays come back in the file's own layout (N×H×W or N×H×W×C), and the
preprocess stage validates and normalizes them.
"""

from __future__ import annotations

import difflib
import gzip
import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.data.registry import DatasetError

REDOWNLOAD = "delete it and run the download stage again (`dvc repro -f download`)"

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

NPZ_KEYS = ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, decompressed if it starts with the gzip magic number (whatever its name)."""
    data = Path(path).read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({err}); {REDOWNLOAD}") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (MNIST's format): magic 0 0 TYPE NDIM, NDIM big-endian uint32 sizes, then the values."""
    data = read_maybe_gzip(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}); {REDOWNLOAD}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header is truncated ({len(data)} bytes); {REDOWNLOAD}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetError(
            f"{path}: IDX file is {problem}: shape {dims} needs {expected} bytes, found {len(data)}; {REDOWNLOAD}"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_amat(path: Path) -> np.ndarray:
    """A binarized-MNIST ``.amat`` file: one image per line, 0/1 values separated by spaces -> N×S×S uint8."""
    raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    is_bit = (raw == ord("0")) | (raw == ord("1"))
    is_separator = np.isin(raw, np.frombuffer(b" \t\r\n", dtype=np.uint8))
    two_digits = np.append(is_bit[:-1] & is_bit[1:], False)
    bad = np.flatnonzero(~(is_bit | is_separator) | two_digits)
    if bad.size:
        line = int(np.count_nonzero(raw[: bad[0]] == ord("\n"))) + 1
        raise DatasetError(f"{path}: line {line} has a value other than 0 or 1; {REDOWNLOAD}")
    starts = np.append(0, np.flatnonzero(raw == ord("\n")) + 1)
    starts = starts[starts < raw.size]
    per_line = np.add.reduceat(is_bit, starts, dtype=np.int64) if raw.size else np.zeros(0, np.int64)
    if not per_line.any():
        raise DatasetError(f"{path}: no images in the file; {REDOWNLOAD}")
    width = int(per_line[per_line > 0][0])
    side = math.isqrt(width)
    odd = np.flatnonzero((per_line > 0) & (per_line != width))
    if odd.size or side * side != width:
        line = int(odd[0]) + 1 if odd.size else int(np.flatnonzero(per_line)[0]) + 1
        raise DatasetError(
            f"{path}: line {line} has {int(per_line[line - 1])} values where a square image is expected "
            f"(the first image has {width}); the file is truncated or malformed; {REDOWNLOAD}"
        )
    return (raw[is_bit] - ord("0")).reshape(-1, side, side)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a user's .npz: x_train and x_test required, y_train/y_test, x_valid/y_valid optional."""
    try:
        with open(path, "rb") as file:
            magic = file.read(6)
        if not magic.startswith((b"PK", b"\x93NUMPY")):  # np.load takes anything else for a pickle
            raise DatasetError(f"{path}: not an .npz archive (a zip of .npy arrays); save your arrays with np.savez")
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.load reads a .npy whatever the file's name
            raise DatasetError(f"{path}: one array (a .npy file), not an .npz archive; save it with np.savez")
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; set data.path to your .npz") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DatasetError(f"{path}: not a readable .npz archive of plain arrays ({err})") from None
    for key in arrays:
        if key not in NPZ_KEYS:
            hint = [key.lower()] if key.lower() in NPZ_KEYS else difflib.get_close_matches(key, NPZ_KEYS, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise DatasetError(f"{path}: unexpected array {key!r}{did_you_mean}; allowed: {', '.join(NPZ_KEYS)}")
    missing = [key for key in ("x_train", "x_test") if key not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing array(s) {', '.join(missing)}; the file needs x_train and x_test")
    return arrays


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The digits file the download stage writes: ``images`` N×8×8 uint8 in 0..16 and ``target`` labels."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive["images"], archive["target"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DatasetError(f"{path}: not a readable digits file ({err}); {REDOWNLOAD}") from None


def list_image_folder(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """The PNG/JPEG files under ``root`` (sorted) with labels from class subfolders, if that is the layout.

    Either all images lie directly in ``root`` (unlabelled) or all lie one level down, one folder per class. Classes
    are numbered in the folders' order: by value when every folder name is a number (2 before 10), else by name.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory; set data.path to a folder of PNG/JPEG images")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DatasetError(f"{root}: no .png/.jpg/.jpeg images found")
    depths = {len(p.relative_to(root).parts) for p in files}
    if depths == {1}:
        return files, None, []
    if depths == {2}:
        names = {p.parent.name for p in files}
        class_names = sorted(names, key=int if all(name.isdigit() for name in names) else None)
        index = {name: i for i, name in enumerate(class_names)}
        return files, [index[p.parent.name] for p in files], class_names
    raise DatasetError(
        f"{root}: images must all lie in the folder itself (no labels) or all one level down in class folders; "
        f"found images at depths {sorted(depths)}"
    )


def image_error(path: Path) -> str | None:
    """Why the image file at ``path`` cannot be decoded, or None if it can."""
    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"{path}: not a readable PNG/JPEG image ({err})"
    return None


def _eight_bit(picture: Image.Image, path: Path, channels: int) -> Image.Image:
    """``picture`` as a viewer shows it, in 8-bit grey or RGB: turned upright by its EXIF orientation, transparent
    parts over white, 16-bit grey scaled to 8 bits (a plain conversion would clip it at 255)."""
    picture = ImageOps.exif_transpose(picture)
    if picture.mode.startswith("I;16"):
        picture = Image.fromarray((np.asarray(picture, dtype=np.float64) / 257.0).round().astype(np.uint8))
    elif picture.mode in ("I", "F"):
        raise DatasetError(f"{path}: a {picture.mode} image (32-bit); save it as an 8- or 16-bit PNG")
    if "A" in picture.getbands() or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return picture.convert("L" if channels == 1 else "RGB")


def read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image as uint8 H×W×C: converted to grey or RGB as a viewer shows it (upright, transparency over white,
    16-bit scaled to 8), centre-cropped to a square, resized."""
    try:
        with Image.open(path) as picture:
            picture = _eight_bit(picture, path, channels)
    except DatasetError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: not a readable PNG/JPEG image ({err})") from None
    side = min(picture.size)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    picture = picture.crop((left, top, left + side, top + side))
    if side != image_size:
        picture = picture.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.uint8).reshape(image_size, image_size, channels)
