"""The evaluate_vae stage as users run it, on a VAE trained for a few steps on real 8×8 digits."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ddp_launch import run_two_ranks

from pipeline.config import config_from_dict
from pipeline.data.processed import ProcessedData, load_processed, save_processed
from pipeline.evaluation import evaluate_vae
from pipeline.io import read_json
from pipeline.vae_trainer import build_vae

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python" if (REPO / ".venv" / "bin" / "python").exists() else Path(sys.executable)
EVALUATE = {
    "num_samples": 64,
    "splits": ["test", "valid"],
    "curve_ks": [1, 8],
    "memory_budget_mb": 16,
    "ais_steps": 30,
    "ais_chains": 4,
    "ais_points": 10,
}
SMALL_VAE = {"hidden_sizes": [32], "epochs": 2, "batch_size": 50}


def write_params(workdir: Path, vae: dict | None = None, evaluate: dict | None = None) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(latent_dim=2, device="cpu")
    params["vae"].update(SMALL_VAE | (vae or {}))
    params["evaluate"].update(EVALUATE | (evaluate or {}))
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def run_stage(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # single-threaded like the in-process tests (shared cores)
    return subprocess.run(
        [str(PYTHON), "-m", "stages", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, digits_processed_dir: Path) -> Path:
    """A working directory holding params.yaml and checkpoints/vae/best.pt from the train_vae stage."""
    workdir = tmp_path_factory.mktemp("evaluate_vae")
    write_params(workdir)
    train = run_stage(workdir, "train_vae", "--data-dir", str(digits_processed_dir))
    assert train.returncode == 0, train.stderr
    assert (workdir / "checkpoints" / "vae" / "best.pt").exists()
    return workdir


def test_stage_writes_consistent_metrics_and_curve(trained: Path, digits_processed_dir: Path) -> None:
    result = run_stage(trained, "evaluate_vae", "--data-dir", str(digits_processed_dir))
    assert result.returncode == 0, result.stderr
    assert "test log p(x)" in result.stdout
    card = read_json(trained / "cards" / "evaluate_vae.json")
    metrics = read_json(trained / "metrics" / "evaluate_vae.json")
    curve = read_json(trained / "plots" / "vae_likelihood_curve.json")
    test, valid, ais = card["test"], card["valid"], card["ais"]
    assert test["points"] == 50 and valid["points"] == 50 and card["num_samples"] == 64
    # the metrics file holds only the numbers people compare, taken from the card
    assert metrics == {"log_px": test["log_px"], "elbo": test["elbo"], "gap": test["gap"],
                       "bpd": test["bits_per_dim"], "ais": ais["log_px"],
                       "ais_is": ais["importance_sampled_log_px"]}  # fmt: skip
    # ELBO below the estimate, the gap its difference, bits/dim its conversion (8×8 = 64 dimensions)
    assert test["elbo"] < test["log_px"] < 0 and test["gap"] == pytest.approx(test["log_px"] - test["elbo"])
    assert test["bits_per_dim"] == pytest.approx(-test["log_px"] / (64 * math.log(2)))
    assert 0 < test["log_px_stderr"] < 5 and 0 < test["sampling_stderr"] < test["log_px_stderr"]
    # the convergence curve rises with K and ends at the reported estimate
    assert [row["k"] for row in curve] == [1, 8, 64]
    bounds = [row["bound"] for row in curve]
    assert bounds == sorted(bounds) and bounds[-1] == pytest.approx(test["log_px"])
    assert bounds[0] == pytest.approx(test["elbo"], abs=3 * test["log_px_stderr"])
    # AIS on the first 10 test points agrees with importance sampling on the same points to within a nat
    assert ais["points"] == 10 and ais["chain_spread"] >= 0 and 0 < ais["acceptance"] <= 1
    assert abs(ais["log_px"] - ais["importance_sampled_log_px"]) < 1.0, ais
    assert "importance sampling on 50 test points" in result.stderr  # timings are logged, not in the metrics

    # DVC metrics and plots of two runs with the same seed are identical byte for byte (no timings, no noise)
    outputs = [trained / "metrics" / "evaluate_vae.json", trained / "plots" / "vae_likelihood_curve.json"]
    first = [path.read_bytes() for path in outputs]
    again = run_stage(trained, "evaluate_vae", "--data-dir", str(digits_processed_dir))
    assert again.returncode == 0, again.stderr
    assert [path.read_bytes() for path in outputs] == first


def test_two_ranks_split_the_importance_sampling_and_match_one_process(
    trained: Path, digits_processed_dir: Path, tmp_path: Path
) -> None:
    single = run_stage(trained, "evaluate_vae", "--data-dir", str(digits_processed_dir))
    assert single.returncode == 0, single.stderr
    workdir = tmp_path / "ddp"
    shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("metrics", "plots", "cards"))
    done = run_two_ranks(
        "from stages.__main__ import cli\ncli()\n", workdir, "evaluate_vae", "--data-dir", str(digits_processed_dir)
    )
    assert done.stdout.count("test log p(x)") == 1  # rank 0 alone reports and writes
    for name in ("metrics/evaluate_vae.json", "plots/vae_likelihood_curve.json"):
        split, whole = _numbers(read_json(workdir / name)), _numbers(read_json(trained / name))
        assert split.keys() == whole.keys() and split == pytest.approx(whole, rel=1e-9)


def _numbers(tree: object, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a JSON tree, by path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{prefix}/{i}").items()}
    return {prefix: tree} if isinstance(tree, (int, float)) else {}


def test_bad_checkpoint_or_data_fail_cleanly_and_write_nothing(trained: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(trained / "params.yaml", workdir / "params.yaml")
    missing = run_stage(workdir, "evaluate_vae", "--checkpoint", "nope.pt", "--data-dir", "data/processed")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no processed data" in missing.stderr or "no checkpoint" in missing.stderr
    # a checkpoint trained on other data: 1×8×8 digits versus 1×4×4 images
    small = np.zeros((5, 1, 4, 4), dtype=np.uint8)
    save_processed(
        workdir / "data" / "processed", {s: small for s in ("train", "valid", "test")}, None,
        binarize="dynamic", dataset="npz", num_classes=None, stats={"image_shape": [1, 4, 4]},
    )  # fmt: skip
    wrong = run_stage(workdir, "evaluate_vae", "--checkpoint", str(trained / "checkpoints" / "vae" / "best.pt"))
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert "retrain it on these data" in wrong.stderr
    assert not list((workdir / "metrics").iterdir()) and not list((workdir / "plots").iterdir())


def test_conditional_gaussian_vae_on_dequantized_grey_data(digits_processed_dir: Path, tmp_path: Path) -> None:
    grey = load_processed(digits_processed_dir)
    save_processed(
        tmp_path, {s: np.round(x * 255).astype(np.uint8) for s, x in grey.x.items()}, grey.y,
        binarize="none", dataset="digits", num_classes=10, stats={"image_shape": [1, 8, 8]},
    )  # fmt: skip
    data = load_processed(tmp_path)
    params = write_params(tmp_path, vae={"likelihood": "gaussian", "conditional": True}, evaluate={"max_points": 20})
    config = config_from_dict(params)
    torch.manual_seed(0)
    model = build_vae(config, data.image_shape, data.num_classes).eval()
    metrics, card, curve = evaluate_vae(model, data, config.evaluate, config.seed, progress=False)
    test = card["test"]
    assert test["points"] == 20 and card["ais"]["points"] == 10
    # a bound on the discrete data: density on [0, 1]^64 minus 64 log 256, so bits/dim is that of 8-bit pixels
    assert test["bits_per_dim"] == pytest.approx(-test["log_px"] / (64 * math.log(2)))
    assert test["log_px"] < -64 * math.log(256) + 64 * 3 and test["bits_per_dim"] > 0
    assert test["elbo"] < test["log_px"] and [row["k"] for row in curve] == [1, 8, 64]
    # log p(x) sums p(y) p(x|y) over the classes, so it is above log p(y) + log p(x|y) with the true labels
    prior = np.bincount(data.y["train"], minlength=10) / len(data.y["train"])
    log_prior_of_labels = np.log(prior[data.y["test"][:20]]).mean()
    assert test["log_px"] > test["given_y"]["log_px"] + log_prior_of_labels
    assert metrics["given_y"]["log_px"] == test["given_y"]["log_px"] and card["class_prior"] == pytest.approx(prior)
    assert metrics["ais"] > card["ais"]["given_y"]["log_px"] + np.log(prior[data.y["test"][:10]]).mean()
    given_is = card["ais"]["given_y"]["importance_sampled_log_px"]  # importance sampling on the AIS points, given y
    assert metrics["ais_is"] > given_is + np.log(prior[data.y["test"][:10]]).mean()
    # other labels change log p(x|y), not log p(x): it does not depend on them
    shuffled = load_processed(tmp_path)
    shuffled.y["test"][:] = (shuffled.y["test"] + 1) % 10
    other, _, _ = evaluate_vae(model, shuffled, config.evaluate, config.seed, progress=False)
    assert other["log_px"] == metrics["log_px"] and other["ais"] == metrics["ais"]
    assert other["given_y"]["log_px"] != metrics["given_y"]["log_px"]


def test_curve_ks_above_num_samples_are_left_out_with_a_note(trained: Path, digits_processed_dir: Path) -> None:
    """evaluate.num_samples below the largest curve k: the estimate is reported with the ks it covers."""
    write_params(trained, evaluate={"num_samples": 10, "curve_ks": [1, 10, 100]})
    result = run_stage(trained, "evaluate_vae", "--data-dir", str(digits_processed_dir))
    write_params(trained)
    assert result.returncode == 0, result.stderr
    assert "evaluate.curve_ks [100] exceed evaluate.num_samples 10: left out" in result.stderr
    assert [row["k"] for row in read_json(trained / "plots" / "vae_likelihood_curve.json")] == [1, 10]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, "conditional on 10 classes but the data have no labels"),
        (3, "conditional on 10 classes but the data have 3"),
    ],
)
def test_a_conditional_vae_on_data_without_its_labels_is_refused(labels: int | None, message: str) -> None:
    """evaluate_vae names what to retrain, rather than failing inside the estimator, when the data lack the
    conditional model's labels or have another number of classes."""
    model = build_vae(config_from_dict({"vae": {"conditional": True, "hidden_sizes": [8]}}), (1, 4, 4), 10)
    x = {split: np.zeros((4, 1, 4, 4), dtype=np.float32) for split in ("train", "valid", "test")}
    y = None if labels is None else {split: np.zeros(4, dtype=np.int64) for split in x}
    data = ProcessedData(x, y, "dynamic", labels, "npz")
    with pytest.raises(ValueError, match=f"{message}.*retrain it on these data"):
        evaluate_vae(model, data, config_from_dict({"evaluate": EVALUATE}).evaluate, seed=0)
