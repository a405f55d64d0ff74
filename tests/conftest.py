"""Shared fixtures: small real data in the processed format, and a quiet, single-threaded torch."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.data.processed import save_processed

REPO = Path(__file__).resolve().parents[1]
# the explorer's npm packages and the offline dvc plots page built from them by `npm ci --prefix web`
NPM_BUILT = ("web/node_modules", "web/plots_template.html")
DVC_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# the pipeline's wiring on the default digits, at sizes that run in seconds
TINY_PARAMS = {
    "latent_dim": 2,
    "device": "cpu",
    "vae": {"hidden_sizes": [16], "epochs": 1, "batch_size": 128},
    "gan": {"hidden_sizes": [16], "epochs": 1, "batch_size": 128, "sample_every_epochs": 1},
    "evaluate": {
        "num_samples": 8,
        "curve_ks": [1, 4],
        "max_points": 16,
        "ais_steps": 2,
        "ais_chains": 2,
        "ais_points": 4,
        "classifier_epochs": 1,
        "num_generated": 40,
    },
}


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s values, nested sections merged key by key."""
    return {k: merge(base[k], v) if isinstance(v, dict) else v for k, v in {**base, **override}.items()}


def stage_args(stage: dict) -> list[str]:
    """The arguments after `python -m stages` of a dvc.yaml stage's command."""
    words = shlex.split(stage["cmd"])
    assert words[:3] == ["python", "-m", "stages"], stage["cmd"]
    return words[3:]


def dvc_env() -> dict[str, str]:
    """The environment for real `git` and `dvc` runs: this virtualenv first on PATH, a git identity, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    identity |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return env | identity | {"DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO)}


def copy_repository(root: Path, params: dict) -> Path:
    """``root`` made a copy of the repository's tracked and new files, ``params`` merged into its params.yaml."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=REPO, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    for built in NPM_BUILT:  # what `npm ci --prefix web` adds (git-ignored), as a user's clone has it
        (root / built).symlink_to(REPO / built)
    merged = merge(yaml.safe_load((REPO / "params.yaml").read_text()), params)
    (root / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return root


@dataclass(frozen=True)
class Workspace:
    """A directory where every stage of dvc.yaml ran once, in order, on tiny params; ``params_read``: the params
    keys each stage read (traced by tests/trace_params.py)."""

    path: Path
    params_read: dict[str, set[str]]


@pytest.fixture(scope="session")
def pipeline_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    work = tmp_path_factory.mktemp("workspace")
    traces = tmp_path_factory.mktemp("traces")
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / "web").symlink_to(REPO / "web", target_is_directory=True)  # the explorer's sources and npm packages
    env = dict(os.environ, PYTHONPATH=str(REPO))
    read = {}
    for name, stage in DVC_STAGES.items():
        out = traces / f"{name}.json"
        command = [sys.executable, str(REPO / "tests" / "trace_params.py"), str(out), *stage_args(stage)]
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
        read[name] = set(json.loads(out.read_text()))
    return Workspace(work, read)


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_processed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 of scikit-learn's 8×8 digits (grey, labelled), split 200/50/50, in the processed format."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images[:300] / 16.0 * 255).astype(np.uint8)[:, None]
    y = digits.target[:300].astype(np.int64)
    cut = {"train": slice(0, 200), "valid": slice(200, 250), "test": slice(250, 300)}
    out = tmp_path_factory.mktemp("processed")
    save_processed(
        out,
        {s: x[c] for s, c in cut.items()},
        {s: y[c] for s, c in cut.items()},
        binarize="dynamic",
        dataset="digits",
        num_classes=10,
        stats={"image_shape": [1, 8, 8]},
    )
    return out


def node(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``node ARGS`` in ``web/`` (the explorer's Node check and headless-Chromium driver live there)."""
    assert (REPO / NPM_BUILT[0]).is_dir(), "the web tests need the npm packages: run `npm ci --prefix web` (README)"
    return subprocess.run(["node", *args], cwd=REPO / "web", capture_output=True, text=True, timeout=timeout)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """``directory`` served by a real HTTP server on 127.0.0.1 (a free port); yields its URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
