"""A stage never outlives the dvc process that started it, and two trainers never write one checkpoint folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_PARAMS, Workspace, copy_repository, dvc_env, merge

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
LONG_TRAINING = {"vae": {"epochs": 100000, "batch_size": 32}}


def _alive(pid: int) -> bool:
    """Running (a zombie left for a parent that never reaps counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def long_run(pipeline_workspace: Workspace, tmp_path: Path) -> Path:
    root = tmp_path / "work"
    shutil.copytree(pipeline_workspace.path, root, symlinks=True)
    params = merge(yaml.safe_load((root / "params.yaml").read_text()), LONG_TRAINING)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the launcher is watched through a Linux pidfd")
@pytest.mark.parametrize("shell", [None, "/bin/bash"], ids=["sh-stays-between", "bash-execs"])
def test_a_stage_ends_when_the_dvc_that_started_it_dies(tmp_path: Path, shell: str | None) -> None:
    """`dvc repro` killed while train_vae runs (SIGKILL: dvc gets no chance to pass anything on): the stage ends
    too, instead of training on as an orphan that a second `dvc repro` would race. Without SHELL, dvc runs the
    command through /bin/sh, which (Debian's dash) stays alive between dvc and the stage; bash execs it."""
    project = copy_repository(tmp_path, merge(TINY_PARAMS, LONG_TRAINING))
    env = {name: value for name, value in dvc_env().items() if name != "SHELL"}
    if shell is not None:
        env["SHELL"] = shell
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    dvc = subprocess.Popen(
        ["dvc", "repro", "train_vae"], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    lock = project / "checkpoints" / ".vae.lock"
    try:
        assert _wait_for(lambda: lock.exists() and lock.read_text().isdigit(), 120), "the trainer never started"
        trainer = int(lock.read_text())
        assert trainer != dvc.pid and _alive(trainer)
        dvc.send_signal(signal.SIGKILL)
        dvc.wait()
        assert _wait_for(lambda: not _alive(trainer), 30), "the stage trains on as an orphan"
    finally:
        if dvc.poll() is None:
            dvc.kill()
        if lock.exists() and lock.read_text().isdigit() and _alive(int(lock.read_text())):
            os.kill(int(lock.read_text()), signal.SIGKILL)


def test_a_second_trainer_is_refused_while_the_first_writes(long_run: Path) -> None:
    first = subprocess.Popen([sys.executable, "-m", "stages", "train_vae"], cwd=long_run, env=ENV)
    lock = long_run / "checkpoints" / ".vae.lock"
    try:
        assert _wait_for(lambda: lock.exists() and lock.read_text() == str(first.pid), 60)
        second = subprocess.run(
            [sys.executable, "-m", "stages", "train_vae"], cwd=long_run, env=ENV, capture_output=True, text=True
        )
        assert second.returncode == 1, second.stderr
        assert f"another trainer (pid {first.pid}) is writing here" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
