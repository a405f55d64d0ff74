"""The download and preprocess stages as users run them: `python -m stages ...` in a fresh directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.data.fetch import MIRROR_ENV
from pipeline.data.processed import load_processed
from pipeline.io import read_json

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python" if (REPO / ".venv" / "bin" / "python").exists() else Path(sys.executable)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def run_stage(workdir: Path, stage: str, data: dict | None = None, **top: object) -> subprocess.CompletedProcess:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data or {})
    params.update(top)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    env = {key: value for key, value in os.environ.items() if key != MIRROR_ENV}
    return subprocess.run(
        [str(PYTHON), "-m", "stages", stage], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )


def contents(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else []


def test_digits_download_then_preprocess(tmp_path: Path) -> None:
    download = run_stage(tmp_path, "download")
    assert download.returncode == 0, download.stderr
    assert "download: digits: 1 file(s)" in download.stdout
    manifest = read_json(tmp_path / "data" / "raw" / "manifest.json")
    assert manifest["dataset"] == "digits" and manifest["files"][0]["path"] == "digits/digits.npz"

    preprocess = run_stage(tmp_path, "preprocess")
    assert preprocess.returncode == 0, preprocess.stderr
    assert "preprocess: digits: train 1294, valid 144, test 359; 1×8×8 uint8; 10 classes" in preprocess.stdout
    assert contents(tmp_path / "data") == [
        "processed",
        "processed/arrays.npz",
        "processed/samples.png",
        "processed/stats.json",
        "raw",
        "raw/digits",
        "raw/digits/digits.npz",
        "raw/manifest.json",
    ]
    processed = load_processed(tmp_path / "data" / "processed")
    assert processed.image_shape == (1, 8, 8) and processed.num_classes == 10 and processed.binarize == "dynamic"
    assert sum(len(x) for x in processed.x.values()) == 1797
    assert len(np.unique(processed.x["train"])) == 17  # digits' 17 grey levels survive the scaling


def test_download_is_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for workdir in (first, second):
        workdir.mkdir()
        assert run_stage(workdir, "download").returncode == 0
    raw = ("data", "raw", "digits", "digits.npz")
    assert first.joinpath(*raw).read_bytes() == second.joinpath(*raw).read_bytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": "npz", "path": "missing.npz"}, "data.path missing.npz: no such file or directory"),
        ({"dataset": "npz", "path": "junk.npz"}, "junk.npz: not a readable .npz archive"),
        ({"dataset": "image_folder", "path": "."}, "no .png/.jpg/.jpeg images found"),
    ],
)
def test_bad_user_data_fails_the_download_and_leaves_data_raw_as_it_was(
    tmp_path: Path, data: dict, message: str
) -> None:
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 and then garbage")
    assert run_stage(tmp_path, "download").returncode == 0
    before = contents(tmp_path / "data")
    result = run_stage(tmp_path, "download", data)
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert contents(tmp_path / "data") == before


def test_invalid_params_exit_2_and_write_nothing(tmp_path: Path) -> None:
    for stage in ("download", "preprocess"):
        result = run_stage(tmp_path, stage, {"dataset": "mnsit"})
        assert (
            result.returncode == 2 and "data.dataset: 'mnsit' is not allowed (did you mean 'mnist'?)" in result.stderr
        )
    assert not (tmp_path / "data").exists()


def test_preprocess_without_download_or_for_another_dataset_fails_cleanly(tmp_path: Path) -> None:
    result = run_stage(tmp_path, "preprocess")
    assert result.returncode == 1 and "run the download stage first" in result.stderr
    assert not (tmp_path / "data" / "processed").exists()
    assert run_stage(tmp_path, "download").returncode == 0
    result = run_stage(tmp_path, "preprocess", {"dataset": "mnist"})
    assert result.returncode == 1 and "holds dataset 'digits' but data.dataset is 'mnist'" in result.stderr
    assert not (tmp_path / "data" / "processed").exists()


def test_remote_dataset_offline_lists_every_source_and_the_manual_route(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    offline = {"dataset": "binarized_mnist", "mirror": "mirror", "timeout_s": 0.001, "retries": 1}
    result = run_stage(tmp_path, "download", offline)
    assert result.returncode == 1
    assert "could not fetch binarized_mnist_train.amat; every source failed:" in result.stderr
    assert "local mirror: no file mirror/binarized_mnist/binarized_mnist_train.amat or mirror/" in result.stderr
    assert "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_train.amat" in (
        result.stderr
    )
    assert "binarized_mnist_valid.amat  sha256 1de3d397" in result.stderr and "set data.mirror" in result.stderr
    assert contents(tmp_path / "data") == []


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_mirror_with_static_binarization(tmp_path: Path) -> None:
    data = {"dataset": "fashion_mnist", "mirror": str(DEBIAN_FASHION_MNIST), "binarize": "static"}
    download = run_stage(tmp_path, "download", data)
    assert download.returncode == 0, download.stderr
    preprocess = run_stage(tmp_path, "preprocess", data, seed=7)
    assert preprocess.returncode == 0, preprocess.stderr
    assert "fashion_mnist: train 54000, valid 6000, test 10000; 1×28×28 uint8; 10 classes; binarize static" in (
        preprocess.stdout
    )
    stats = read_json(tmp_path / "data" / "processed" / "stats.json")
    assert stats["class_histogram"]["test"] == [1000] * 10 and stats["class_names"][0] == "T-shirt/top"
    assert 0.27 < stats["mean_pixel"]["train"] < 0.30  # Fashion-MNIST's mean grey level is 0.286
