"""The dataset registry: what each dataset is made of, where it comes from and how to verify it.

A remote dataset lists its files with sha256 digests and the mirrors (base URLs) that serve them, tried in
order. A gzip file may also declare the digest of its decompressed payload: a file passes if either digest
matches exactly, so a mirror that recompressed the originals (Debian's ``dataset-fashion-mnist`` does) still
verifies. The download stage writes every dataset to ``data/raw/<name>/`` under the names declared here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal


class DatasetError(ValueError):
    """Raw data that cannot be fetched, read or trusted; the message names the file and what to do."""


@dataclass(frozen=True)
class RawFile:
    """One file of a remote dataset and the digests it must match (either one suffices)."""

    name: str
    sha256: str
    content_sha256: str | None = None  # sha256 of the gunzipped payload, for recompressed mirrors


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the download and preprocess stages know.

    ``origin`` says where the raw data come from: ``bundled`` (installed with a dependency), ``remote``
    (``files`` from ``sources``), ``user_file`` or ``user_folder`` (the path in ``data.path``).
    ``splits`` maps each split a remote dataset ships to its (images, labels) file names; splits it lacks
    are carved out of ``train`` by the preprocess stage. ``raw_name`` is the file or folder the download
    stage writes for a bundled or user dataset.
    """

    name: str
    description: str
    origin: Literal["bundled", "remote", "user_file", "user_folder"]
    format: Literal["digits", "idx", "amat", "npz", "image_folder"]
    homepage: str = ""
    files: tuple[RawFile, ...] = ()
    sources: tuple[str, ...] = ()
    splits: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    raw_name: str = ""
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    binary: bool = False


DIGIT_NAMES = tuple(str(digit) for digit in range(10))
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

REGISTRY: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits",
        description="scikit-learn's bundled 8×8 handwritten digits (1797 images, 17 grey levels, labels 0-9)",
        origin="bundled",
        format="digits",
        homepage="https://archive.ics.uci.edu/dataset/80",
        raw_name="digits.npz",
        num_classes=10,
        class_names=DIGIT_NAMES,
    ),
    "mnist": DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits, 28×28 grey, 60000 train / 10000 test, labels 0-9",
        origin="remote",
        format="idx",
        homepage="https://yann.lecun.com/exdb/mnist/",
        files=(
            RawFile(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            RawFile(
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            RawFile(
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            RawFile(
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ),
        sources=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://yann.lecun.com/exdb/mnist/",
        ),
        splits=IDX_SPLITS,
        num_classes=10,
        class_names=DIGIT_NAMES,
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        description="Fashion-MNIST (Zalando), 28×28 grey, 60000 train / 10000 test, 10 clothing classes",
        origin="remote",
        format="idx",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        files=(
            RawFile(
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            RawFile(
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            RawFile(
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            RawFile(
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        sources=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        splits=IDX_SPLITS,
        num_classes=10,
        class_names=FASHION_NAMES,
    ),
    "binarized_mnist": DatasetSpec(
        name="binarized_mnist",
        description="MNIST statically binarized by Larochelle & Murray (2011), 28×28 0/1, 50000/10000/10000",
        origin="remote",
        format="amat",
        homepage="http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
        files=(
            RawFile("binarized_mnist_train.amat", "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
            RawFile("binarized_mnist_valid.amat", "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
            RawFile("binarized_mnist_test.amat", "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
        ),
        sources=("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
        splits={s: (f"binarized_mnist_{s}.amat", None) for s in ("train", "valid", "test")},
        binary=True,
    ),
    "npz": DatasetSpec(
        name="npz",
        description="your .npz at data.path: x_train, x_test, optional y_train/y_test, x_valid/y_valid "
        "(N×H×W or N×H×W×C, uint8 0..255 or float in [0, 1])",
        origin="user_file",
        format="npz",
        raw_name="data.npz",
    ),
    "image_folder": DatasetSpec(
        name="image_folder",
        description="your directory of PNG/JPEG images at data.path, optionally one subfolder per class "
        "(labels), resized to data.image_size with data.channels",
        origin="user_folder",
        format="image_folder",
        raw_name="images",
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    """The registry entry called ``name``; an unknown name is a DatasetError with a suggestion."""
    try:
        return REGISTRY[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(REGISTRY), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise DatasetError(f"unknown dataset {name!r}{did_you_mean}; known: {', '.join(REGISTRY)}") from None
