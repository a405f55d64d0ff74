"""Atomic writes: all or nothing, also when the process is told to stop mid-write."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import io
from pipeline.io import atomic_directory, atomic_path, read_json, write_json

REPO = Path(__file__).resolve().parents[1]


def test_success_renames_into_place_with_normal_permissions(tmp_path: Path) -> None:
    write_json(tmp_path / "sub/m.json", {"b": 1, "a": [1.5]})
    assert read_json(tmp_path / "sub/m.json") == {"a": [1.5], "b": 1}
    assert (tmp_path / "sub/m.json").stat().st_mode & 0o044 == 0o044
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_set_of_files_is_renamed_only_once_all_are_written(tmp_path: Path) -> None:
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        path.write_text("old")
    with pytest.raises(OSError), io.atomic_paths(paths) as staged:
        staged[0].write_text("new")
        raise OSError("disk full while writing the second")
    assert [p.read_text() for p in paths] == ["old", "old"] and sorted(tmp_path.iterdir()) == paths
    with io.atomic_paths(paths) as staged:
        for tmp in staged:
            tmp.write_text("new")
        assert [p.read_text() for p in paths] == ["old", "old"]
    assert [p.read_text() for p in paths] == ["new", "new"] and sorted(tmp_path.iterdir()) == paths


@pytest.mark.parametrize("unwind", [True, False])
def test_sigterm_mid_write(tmp_path: Path, unwind: bool) -> None:
    """With the stages' SIGTERM handling the temporary file is removed; without it, it would be left behind."""
    script = (
        "import os, signal, time\n"
        "from pipeline.io import atomic_path, unwind_on_sigterm\n"
        f"if {unwind}: unwind_on_sigterm()\n"
        "with atomic_path('out.bin') as tmp:\n"
        "    tmp.write_bytes(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(10)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, timeout=30)
    assert result.returncode != 0
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "out.bin" not in left
    assert (left == []) is unwind


def test_sigterm_at_any_moment_of_repeated_writes_leaves_no_temporary(tmp_path: Path) -> None:
    """SIGTERM lands at random points of a loop of atomic writes, also between creating a temporary and guarding it.

    Before the temporaries were tracked for the exit handler, about one interrupt in five left one behind.
    """
    script = (
        "from pipeline.io import unwind_on_sigterm, write_json\n"
        "unwind_on_sigterm()\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    write_json('out.json', {'a': 1})\n"
    )
    rng = random.Random(0)
    for trial in range(30):
        directory = tmp_path / str(trial)
        directory.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=directory, env={"PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE
        )
        assert process.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0, 0.02))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert [p.name for p in directory.iterdir()] in (["out.json"], []), f"interrupt {trial}"


def test_a_folder_swap_interrupted_between_its_renames_puts_the_old_set_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal after the old folder moved aside but before the new one moved in: the old set comes back whole and
    neither copy is deleted meanwhile."""
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_text("old")
    renames = []

    def replace(source, target):
        renames.append(target)
        if len(renames) == 2:
            raise KeyboardInterrupt
        return original(source, target)

    original = io.os.replace
    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "export") as new:
        (new / "model.onnx").write_text("new")
    monkeypatch.setattr(io.os, "replace", original)
    assert (tmp_path / "export" / "model.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_launcher_is_found_through_the_shells_between() -> None:
    """A process run as `sh -c 'bash -c …'` names this test's process as its launcher, not either shell."""
    script = "from pipeline.io import launcher_pid; print(launcher_pid())"
    command = f"bash -c '{sys.executable} -c \"{script}\"; true'; true"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    printed = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
    assert int(printed) == os.getpid()
