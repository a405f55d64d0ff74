"""The benchmark commands still run end to end, on tiny sizes: a smoke test of the code, never of its speed
(figures belong to `python -m stages bench ...` runs on a real machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import yaml

from benchmarks.common import check_workdir, merge, recipe_overlay
from pipeline.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "likelihood": [
        "--points", "48", "--samples", "64", "--segments", "2", "--baseline-points", "2",
        "--hidden", "16", "--latent", "2", "--side", "8", "--rate-size", "256",
    ],
    "vae": ["--hidden", "16", "--latent", "2", "--batch-size", "32", "--images", "256", "--repeats", "1"],
    "gan": ["--base-channels", "4", "--images", "64", "--batch-size", "32", "--repeats", "1"],
    "onnx": ["--checkpoints", "no-checkpoints", "--large-batch", "16", "--min-time", "0.01"],
}  # fmt: skip
EXPECTED = {
    "likelihood": ["cpu: ", "1 threads", "points 32-47:", "of the highest matmul rate", "decoder evaluations/s"],
    "vae": ["cpu: ", "1 threads", "images/s", "speed-up:"],
    "gan": [
        "cpu: ",
        "1 threads",
        "dcgan 28×28 (base_channels 4, batch 32):",
        "classic DCGAN example's step:",
        "speed-up:",
    ],
    "onnx": ["vae_decoder", "gan_generator", "target ort"],
}


@pytest.mark.parametrize("benchmark", sorted(TINY))
def test_benchmark_command_runs_on_tiny_sizes(benchmark: str, tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "stages", "bench", benchmark, *TINY[benchmark], "--threads", "1"]
    if benchmark == "onnx":
        args += ["--params", str(REPO / "params.yaml")]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for text in EXPECTED[benchmark]:
        assert text in result.stdout, f"{text!r} not in:\n{result.stdout}"


def test_quality_benchmark_trains_a_recipe_and_prints_its_figures(tmp_path: Path) -> None:
    """The quality benchmark end to end on a tiny generated binary .npz (one epoch of budget, K = 4)."""
    rng = np.random.default_rng(0)
    images = {split: (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 255 for split, n in
              (("x_train", 64), ("x_valid", 16), ("x_test", 16))}  # fmt: skip
    np.savez(tmp_path / "tiny.npz", **images)
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "stages", "bench", "quality", "--recipe", "hvae_vampprior", "--data", "tiny.npz"]
    args += ["--max-minutes", "0.001", "--num-samples", "4", "--device", "cpu", "--workdir", "run"]
    result = subprocess.run([*args, "--set", "vae.top_latent_dim=3"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recipe hvae_vampprior --set vae.top_latent_dim=3 on tiny.npz x_test (16 images), cpu: " in result.stdout
    assert yaml.safe_load((tmp_path / "run" / "params.yaml").read_text())["vae"]["top_latent_dim"] == 3
    assert "nats (K = 4)" in result.stdout and "stopped: time budget" in result.stdout
    speed = subprocess.run([*args[:6], "iaf", "--speed"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert speed.returncode == 0 and "recipe iaf:" in speed.stdout and "decoder evaluations/s" in speed.stdout
    unknown = subprocess.run([*args[:6], "nope"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert (
        unknown.returncode == 2 and "no recipe 'nope'; known:" in unknown.stderr and "Traceback" not in unknown.stderr
    )
    for setting, message in (("vae.top_latent_dim=x", "vae.top_latent_dim: 'x' is not an integer"),
                             ("vae.toplatent=3", "vae.toplatent: unknown key (did you mean 'top_latent_dim'?)"),
                             ("vae=3", "vae is a section"), ("vae.lr", "'vae.lr' is not KEY=VALUE")):  # fmt: skip
        refused = subprocess.run([*args, "--workdir", "refused", "--set", setting], cwd=tmp_path, env=env,
                                 capture_output=True, text=True)  # fmt: skip
        assert refused.returncode == 2 and "Invalid value for --set: " + message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()


BAD_OPTIONS = {
    "count of zero": (["vae", "--repeats", "0"], "Invalid value for '--repeats': 0 is not in the range x>=1"),
    "device name": (["vae", "--device", "gpu"], "Invalid value for '--device': 'gpu' is not one of"),
    "device not here": (["likelihood", "--device", "mps"], "Invalid value for --device: device: 'mps' was asked"),
    "gan batch of one": (["gan", "--batch-size", "1"], "Invalid value for '--batch-size': 1 is not in the range"),
    "image shape": (["onnx", "--image-shape", "1,x,28"], "'1,x,28' is not C,H,W, three positive integers"),
    "gan learning rate": (["gan", "--lr", "-1"], "Invalid value for '--lr': -1.0 is not in the range x>0"),
    "gan recipe": (["gan", "--recipe", "dcgna"], "Invalid value for --recipe: no recipe 'dcgna'; known: "),
    "gan dataset": (
        ["gan", "--recipe", "dcgan_fashion", "--dataset", "fashoin"],
        "Invalid value for --recipe/--dataset/--mirror/--minutes/--vae-minutes: data.dataset: 'fashoin' is not allowed",
    ),
    "the benchmark's own budget": (
        ["quality", "--recipe", "vae_mlp", "--set", "vae.max_minutes=5"],
        "Invalid value for --set: vae.max_minutes is set by the benchmark itself; use --max-minutes",
    ),
    "the benchmark's own splits": (
        ["quality", "--recipe", "vae_mlp", "--set", "evaluate.splits=[valid]"],
        "Invalid value for --set: evaluate.splits is set by the benchmark itself; the benchmark fixes it",
    ),
    "a recipe of another folder": (
        ["quality", "--recipe", "gan/dcgan_fashion"],
        "Invalid value for --recipe: no recipe 'gan/dcgan_fashion'; known: ",
    ),
    "a path as the recipe": (["quality", "--recipe", "../params"], "Invalid value for --recipe: no recipe '../params'"),
    "an option's value the params refuse": (
        ["quality", "--recipe", "vae_mlp", "--max-minutes", "2e6"],
        "Invalid value for --device/--data/--max-minutes/--num-samples: vae.max_minutes: 2000000.0 is out of range",
    ),
    "speed elsewhere than the cpu": (
        ["quality", "--recipe", "vae_mlp", "--speed", "--device", "mps"],
        "Invalid value for --device: --speed times importance sampling on the CPU",
    ),
    "key below a value": (
        ["quality", "--recipe", "vae_mlp", "--set", "vae.arch=conv", "--set", "vae.arch.x=1"],
        "Invalid value for --set: vae.arch is set to a value, so vae.arch.x cannot be set",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_a_bad_benchmark_option_is_one_line_naming_it(case: str, tmp_path: Path) -> None:
    args, message = BAD_OPTIONS[case]
    if case == "device not here" and torch.backends.mps.is_available():
        pytest.skip("this machine has Apple MPS")
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "stages", "bench", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_quality_refuses_a_device_that_is_not_here_before_any_stage(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["quality", "--recipe", "vae_mlp", "--device", "cuda", "--workdir", "run"]
    result = subprocess.run([sys.executable, "-m", "stages", "bench", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Invalid value for --device: device: 'cuda' was asked" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_quality_checks_its_data_and_folder_before_writing_anything(tmp_path: Path) -> None:
    """Data the benchmark cannot measure and a folder it must not fill are each one --data or --workdir line,
    and nothing is written: not the user's files, not a params.yaml."""
    rng = np.random.default_rng(0)
    binary = {key: (rng.random((8, 28, 28)) < 0.2).astype(np.uint8) * 255 for key in ("x_train", "x_test")}
    np.savez(tmp_path / "binary.npz", **binary)
    np.savez(tmp_path / "grey.npz", **{key: (rng.random((8, 28, 28)) * 255).astype(np.uint8) for key in binary})
    np.save(tmp_path / "one.npy", binary["x_train"])
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "params.yaml").write_text("my: precious\n")
    cases = [
        ("one.npz", "run", "--data: ", "one.npz: one array (a .npy file), not an .npz archive"),
        ("grey.npz", "run", "--data: ", "grey.npz: x_train holds grey levels, not binary images"),
        ("binary.npz", "afile", "'--workdir': ", "Directory 'afile' is a file"),
        ("binary.npz", "afile/sub", "--workdir: ", "afile/sub: cannot be created"),
        ("binary.npz", "mine", "--workdir: ", "mine: holds files but no earlier benchmark run"),
    ]
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for data, workdir, option, message in cases:
        args = ["quality", "--recipe", "vae_mlp", "--data", data, "--workdir", workdir, "--device", "cpu"]
        result = subprocess.run([sys.executable, "-m", "stages", "bench", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2 and "Invalid value for " + option in result.stderr, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "mine" / "params.yaml").read_text() == "my: precious\n"


def test_an_earlier_run_is_a_workdir_with_or_without_its_mark(tmp_path: Path) -> None:
    """A run from before the .bench-run mark is known by its params.yaml and data beside only what a run writes; a
    folder with anything else, or a params.yaml alone, is refused."""
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    for name in ("checkpoints", "cards", "data"):
        (tmp_path / name).mkdir()
    check_workdir(tmp_path)
    (tmp_path / "data").rmdir()
    with pytest.raises(click.BadParameter, match="holds files but no earlier benchmark run"):
        check_workdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(click.BadParameter, match="holds files but no earlier benchmark run"):
        check_workdir(tmp_path)
    (tmp_path / ".bench-run").touch()
    check_workdir(tmp_path)


def test_a_project_folder_is_refused_as_the_workdir(tmp_path: Path) -> None:
    """`--workdir .` in a project would replace its params.yaml, data and checkpoints."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("seed: 7\n")
    (tmp_path / "data.npz").write_bytes(b"")
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["quality", "--recipe", "vae_mlp", "--data", "data.npz", "--workdir", "."]
    result = subprocess.run([sys.executable, "-m", "stages", "bench", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Invalid value for --workdir: " in result.stderr, result.stderr[-2000:]
    assert "holds dvc.yaml: it is a project" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "params.yaml").read_text() == "seed: 7\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "dvc.yaml", "params.yaml"]


def test_onnx_benchmark_times_what_a_family_exports(tmp_path: Path) -> None:
    """A two-layer VAE exports no encoder (q(z1|x, z2) is not one Gaussian): the benchmark times its decoder and
    the generator, and says nothing of an encoder; an InfoGAN generator is fed codes from their prior."""
    params = merge(
        yaml.safe_load((REPO / "params.yaml").read_text()),
        {"vae": {"family": "hvae", "hidden_sizes": [16]}, "gan": {"info_categories": 3, "info_continuous": 2}},
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "stages", "bench", "onnx", *TINY["onnx"], "--threads", "1"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vae_decoder" in result.stdout and "gan_generator" in result.stdout and "vae_encoder" not in result.stdout


@pytest.mark.parametrize("contents", ["", "vae: [1,\n"], ids=["empty", "bad yaml"])
def test_a_recipe_file_that_is_not_a_mapping_is_one_line(contents: str, tmp_path: Path) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(contents)
    with pytest.raises(click.BadParameter, match=f"{recipe}: (holds no mapping|not valid YAML)"):
        recipe_overlay(tmp_path, "broken")


@pytest.mark.parametrize("recipe", sorted(REPO.glob("recipes/**/*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_recipe_is_a_valid_overlay_of_the_params(recipe: Path) -> None:
    """A recipe's keys and values pass the params schema once merged into the shipped params.yaml, so a typo in a
    recipe fails here rather than an hour into its benchmark."""
    overlay = yaml.safe_load(recipe.read_text())
    config = config_from_dict(merge(yaml.safe_load((REPO / "params.yaml").read_text()), overlay), complete=True)
    for name, value in overlay.items():
        if isinstance(value, dict):
            assert {key: getattr(getattr(config, name), key) for key in value} == value, name
        else:
            assert getattr(config, name) == value, name
