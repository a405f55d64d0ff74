"""Interrupting a stage (SIGINT, SIGTERM) leaves no half-written output, and rerunning recovers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.training import EpochLoop, LiveLog

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_training_leaves_only_complete_files_and_resumes(
    tmp_path: Path, digits_processed_dir: Path, signum: int
) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["vae"] |= {"hidden_sizes": [16], "epochs": 100000, "batch_size": 16}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages", "train_vae", "--data-dir", str(digits_processed_dir)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = tmp_path / "checkpoints/vae/last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert last.exists(), process.communicate()[1].decode()[-2000:]
    time.sleep(0.3)  # interrupt mid-run, most likely during an epoch or a checkpoint write
    process.send_signal(signum)
    assert process.wait(timeout=60) != 0

    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert not (tmp_path / "metrics/vae_train.json").exists()
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] >= 0

    params["vae"] |= {"epochs": saved["epoch"] + 2, "resume": True}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert torch.load(last, weights_only=True)["epoch"] == saved["epoch"] + 1
    assert (tmp_path / "metrics/vae_train.json").exists()
    logged = (tmp_path / "dvclive/vae/plots/metrics/valid/bound.tsv").read_text().splitlines()[1:]
    assert [int(row.split("\t")[0]) for row in logged] == list(range(saved["epoch"] + 2))  # each epoch once


def test_a_summary_write_that_fails_midway_keeps_the_previous_summary(tmp_path: Path) -> None:
    """dvclive's own summary writer truncates metrics.json first; the training log's writes are all or nothing, so
    a resumed run always reads a complete summary back (the interrupted test above once found it empty)."""
    log = LiveLog(tmp_path / "live")
    log(0, {"valid/bound": -1.5})
    summary = tmp_path / "live/metrics.json"
    before = summary.read_text()
    log.live.summary["unserializable"] = object()
    with pytest.raises(TypeError):
        log(1, {"valid/bound": -1.25})
    assert summary.read_text() == before
    assert json.loads(before) == {"step": 0, "valid": {"bound": -1.5}}
    resumed = LiveLog(tmp_path / "live", resume=True)
    assert resumed.live.summary == json.loads(before)


def test_resuming_rewinds_the_log_to_the_checkpoint(tmp_path: Path) -> None:
    """Interrupted after logging epoch 2 but before checkpointing it, the resumed run logs epoch 2 once, not twice."""
    live = LiveLog(tmp_path / "live")
    checkpoints = tmp_path / "checkpoints"

    def loop(log: LiveLog, interrupt_at: int | None) -> EpochLoop:
        def state() -> dict:
            if log.live.step - 1 == interrupt_at:
                raise KeyboardInterrupt
            return {}

        return EpochLoop(
            epochs=4,
            checkpoint_dir=checkpoints,
            monitor="bound",
            train_epoch=lambda epoch: {"loss": float(epoch)},
            validate=lambda epoch: {"bound": -1.0 / (epoch + 1)},
            state=state,
            restore=lambda saved: None,
            log=log,
            live=log,
            progress=False,
        )

    with pytest.raises(KeyboardInterrupt):
        loop(live, interrupt_at=2).run()
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    resumed = LiveLog(tmp_path / "live", resume=True)
    loop(resumed, interrupt_at=None).run(resume=True)
    for name in ("train/loss", "valid/bound"):
        rows = (tmp_path / f"live/plots/metrics/{name}.tsv").read_text().splitlines()
        assert [row.split("\t")[0] for row in rows] == ["step", "0", "1", "2", "3"], rows
    assert json.loads((tmp_path / "live/metrics.json").read_text())["step"] == 3
