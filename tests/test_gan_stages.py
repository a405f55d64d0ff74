"""The train_classifier, train_gan and evaluate_samples stages as the pipeline runs them: subprocesses in a project
directory, writing their outputs where dvc.yaml expects them; bad input exits non-zero with one clear line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import Config
from pipeline.evaluation import SIGMA_CANDIDATES

REPO = Path(__file__).resolve().parents[1]


def write_params(path: Path, **sections: dict) -> None:
    raw = Config().to_dict()
    for section, values in sections.items():
        raw[section] |= values
    path.write_text(yaml.safe_dump(raw))


def run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "stages", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, digits_processed_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(digits_processed_dir, root / "data" / "processed")
    write_params(
        root / "params.yaml",
        gan={"hidden_sizes": [32], "epochs": 2, "batch_size": 32, "sample_every_epochs": 1, "log_every_steps": 5},
        vae={"hidden_sizes": [32], "epochs": 2},
        evaluate={"classifier_epochs": 3, "num_generated": 40, "ais_points": 4, "ais_steps": 4, "ais_chains": 2},
    )
    return root


def test_stages_run_in_order_and_write_their_outputs(project: Path) -> None:
    for stage in ("train_classifier", "train_gan", "train_vae", "evaluate_vae", "evaluate_samples"):
        result = run_stage(project, stage)
        assert result.returncode == 0, f"{stage}: {result.stderr[-2000:]}"
    assert (project / "checkpoints" / "classifier" / "best.pt").exists()
    classifier = json.loads((project / "metrics" / "train_classifier.json").read_text())
    assert 0 <= classifier["accuracy"] <= 1
    assert json.loads((project / "cards" / "train_classifier.json").read_text())["task"] == "classes"
    for name in ("best.pt", "last.pt"):
        assert (project / "checkpoints" / "gan" / name).exists()
    assert (project / "outputs" / "gan" / "samples.png").exists()
    assert (project / "dvclive" / "gan" / "plots" / "metrics" / "valid" / "frechet_distance.tsv").exists()
    assert not (project / "metrics" / "train_gan.json").exists()  # the GAN's figures are in its card
    gan_train = json.loads((project / "cards" / "train_gan.json").read_text())
    assert gan_train["best_by"] == "valid frechet_distance" and gan_train["best_epoch"] in (1, 2)
    table = json.loads((project / "metrics" / "evaluate_samples.json").read_text())
    card = json.loads((project / "cards" / "evaluate_samples.json").read_text())
    assert set(table) == {"fd_floor", "gan", "vae"} and card["classifier_task"] == "classes"
    assert set(table["gan"]) == {"fd", "prec", "rec", "gaussian_ais"}
    assert set(table["vae"]) == {"fd", "prec", "rec", "gaussian_ais", "ais", "is"}
    for model in ("gan", "vae"):
        row = card[model]  # the full report; the metrics file has its headline numbers
        assert row["num_images"] == 40 and row["frechet_floor"] == table["fd_floor"]
        assert row["frechet_distance"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        headline = {"fd": row["frechet_distance"], "prec": row["precision"], "rec": row["recall"]}
        assert {key: table[model][key] for key in headline} == headline
    likelihood = card["likelihood"]
    assert "comparable with each other" in likelihood["comparison"]  # the caveat travels with the figures
    for model in ("gan", "vae"):
        row = likelihood[model]
        assert row["points"] == 4 and math.isfinite(row["log_px"]) and row["log_px"] < 0
        assert table[model]["gaussian_ais"] == row["log_px"] and row["sigma"] in SIGMA_CANDIDATES
    own = json.loads((project / "metrics" / "evaluate_vae.json").read_text())
    assert (table["vae"]["ais"], table["vae"]["is"]) == (own["ais"], own["log_px"])
    assert likelihood["vae_own_decoder"]["likelihood"] == "bernoulli"


def test_bad_input_exits_with_one_clear_message(project: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    write_params(bad, gan={"loss": "wasserstien"})
    result = run_stage(project, "train_gan", "--params", str(bad))
    assert result.returncode == 2 and "gan.loss: 'wasserstien' is not allowed" in result.stderr
    write_params(bad, gan={"conditional": True})
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    from pipeline.data.processed import load_processed, save_processed

    data = load_processed(project / "data" / "processed")
    save_processed(unlabeled, data.x, None, binarize="none", dataset="npz", num_classes=None, stats={})
    result = run_stage(project, "train_gan", "--params", str(bad), "--data-dir", str(unlabeled))
    assert result.returncode == 1 and "has no labels" in result.stderr and "Traceback" not in result.stderr
    result = run_stage(tmp_path, "evaluate_samples", "--params", str(project / "params.yaml"))
    assert result.returncode == 1 and "run `dvc repro preprocess` first" in result.stderr


def test_data_without_labels_run_through_the_sample_metrics(project: Path, tmp_path: Path) -> None:
    """An npz without y_* or an image folder without class folders: the classifier learns to tell flips and
    rotations apart, and the sample-quality reports have every metric but the classifier score."""
    from pipeline.data.processed import load_processed, save_processed

    data = load_processed(project / "data" / "processed")
    (tmp_path / "data" / "processed").mkdir(parents=True)
    save_processed(
        tmp_path / "data" / "processed", data.x, None, binarize="none", dataset="npz", num_classes=None, stats={}
    )
    shutil.copy(project / "params.yaml", tmp_path / "params.yaml")
    printed = {}
    for stage in ("train_classifier", "train_gan", "train_vae", "evaluate_vae", "evaluate_samples"):
        result = run_stage(tmp_path, stage)
        assert result.returncode == 0, f"{stage}: {result.stderr[-2000:]}"
        printed[stage] = result.stdout
    assert "train_classifier: test accuracy" in printed["train_classifier"]
    classifier = json.loads((tmp_path / "cards" / "train_classifier.json").read_text())
    assert classifier["task"] == "transformations" and classifier["chance_accuracy"] == 0.25
    table = json.loads((tmp_path / "metrics" / "evaluate_samples.json").read_text())
    card = json.loads((tmp_path / "cards" / "evaluate_samples.json").read_text())
    assert card["classifier_task"] == "transformations"
    for model in ("gan", "vae"):
        assert "classifier_score" not in card[model] and math.isfinite(table[model]["fd"])
