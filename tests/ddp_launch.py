"""Shared by the data-parallel tests: run a script as two Gloo ranks under torchrun on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_two_ranks(script: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Write ``script`` to ``workdir/rank.py`` and run it in ``workdir`` as 2 single-threaded ranks; asserts success."""
    (workdir / "rank.py").write_text(script)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "rank.py", *args]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
