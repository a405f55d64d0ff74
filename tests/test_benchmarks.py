"""The benchmark commands still run end to end, on tiny sizes: a smoke test of the code, never of its speed
(figures belong to `python -m stages bench ...` runs on a real machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    "likelihood": ["points 32-47:", "of the highest matmul rate", "decoder evaluations/s"],
    "vae": ["images/s", "speed-up:"],
    "gan": ["dcgan 28×28 (base_channels 4, batch 32):"],
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
