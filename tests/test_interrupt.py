"""Interrupting a stage (SIGINT, SIGTERM) leaves no half-written output, and rerunning with vae.resume recovers:
the same weights as an uninterrupted run, and a dvclive log holding each epoch exactly once."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.config import Config, load_config
from pipeline.data.processed import load_processed
from pipeline.training import LiveLog, TrainingOutputs
from pipeline.vae_trainer import VaeTrainer, train_vae

REPO = Path(__file__).resolve().parents[1]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["models"]["model"]["weights"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _logged_steps(live_dir: Path, name: str) -> list[int]:
    rows = (live_dir / f"plots/metrics/{name}.tsv").read_text().splitlines()
    assert rows[0].split("\t")[0] == "step", rows
    return [int(row.split("\t")[0]) for row in rows[1:]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_training_leaves_only_complete_files_and_resumes(
    tmp_path: Path, digits_processed_dir: Path, signum: int
) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    params["vae"] |= {"hidden_sizes": [16], "epochs": 100000, "batch_size": 16}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages", "train_vae", "--data-dir", str(digits_processed_dir)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    # as from a terminal: a launcher run in the background of a shell (`.ci/run &`) ignores SIGINT, and its children
    # would inherit that
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
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
    assert not (tmp_path / "metrics/train_vae.json").exists()
    assert not (tmp_path / "cards/train_vae.json").exists()
    finished = load_checkpoint(last)["training"]["epoch"]  # epochs done, counted from 1
    assert finished >= 1

    params["vae"] |= {"epochs": finished + 1, "resume": True}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert load_checkpoint(last)["training"]["epoch"] == finished + 1
    assert (tmp_path / "metrics/train_vae.json").exists() and (tmp_path / "cards/train_vae.json").exists()
    expected_steps = list(range(1, finished + 2))  # each epoch once
    for name in ("train/bound", "valid/bound"):
        assert _logged_steps(tmp_path / "dvclive/vae", name) == expected_steps

    # the same params run uninterrupted (resume has nothing to resume from there) end with the same weights
    straight = TrainingOutputs.for_model("vae", tmp_path / "straight")
    train_vae(load_config(tmp_path / "params.yaml"), load_processed(digits_processed_dir), straight, progress=False)
    assert _same_weights(straight.last_path, last)


def _config(**vae) -> Config:
    vae = {"hidden_sizes": [16], "batch_size": 32, "epochs": 4, "kl_warmup_epochs": 2} | vae
    return Config(latent_dim=3, device="cpu", vae=dataclasses.replace(Config().vae, **vae))


def test_resuming_after_an_interrupt_between_logging_and_checkpointing_logs_each_epoch_once(
    tmp_path: Path, digits_processed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted after logging epoch 3 but before checkpointing it (and with dvclive's summary left half
    written), the resumed run logs epoch 3 once, not twice, and ends with an uninterrupted run's weights."""
    data = load_processed(digits_processed_dir)
    straight = TrainingOutputs.for_model("vae", tmp_path / "straight")
    train_vae(_config(), data, straight, progress=False)

    outputs = TrainingOutputs.for_model("vae", tmp_path / "interrupted")
    state, calls = VaeTrainer.state, []

    def interrupted_state(self: VaeTrainer) -> dict:
        calls.append(1)
        if len(calls) == 3:  # the checkpoint of epoch 3, after its metrics were logged
            raise KeyboardInterrupt
        return state(self)

    with monkeypatch.context() as patch:
        patch.setattr(VaeTrainer, "state", interrupted_state)
        with pytest.raises(KeyboardInterrupt):
            train_vae(_config(), data, outputs, progress=False)
    assert load_checkpoint(outputs.last_path)["training"]["epoch"] == 2
    assert _logged_steps(outputs.live_dir, "valid/bound") == [1, 2, 3]
    (outputs.live_dir / "metrics.json").write_text("")  # as an interrupt in the middle of dvclive's summary write
    assert not outputs.metrics_path.exists()

    train_vae(_config(resume=True), data, outputs, progress=False)
    for name in ("train/bound", "train/kl", "valid/bound", "valid/elbo"):
        assert _logged_steps(outputs.live_dir, name) == [1, 2, 3, 4], name
    assert json.loads((outputs.live_dir / "metrics.json").read_text())["step"] == 4
    for path in ("plots/metrics/valid/bound.tsv", "metrics.json"):
        assert (outputs.live_dir / path).read_text() == (straight.live_dir / path).read_text()
    assert _same_weights(straight.last_path, outputs.last_path)
    assert json.loads(outputs.metrics_path.read_text()) == json.loads(straight.metrics_path.read_text())
    assert (
        load_checkpoint(outputs.last_path)["training"]["history"]
        == load_checkpoint(straight.last_path)["training"]["history"]
    )


def test_a_resumed_log_holds_exactly_the_checkpoints_history_whatever_the_interrupt_left(tmp_path: Path) -> None:
    """LiveLog starts the dvclive directory afresh and replays the history it is given: a truncated summary and rows
    of epochs the checkpoint never saw, left by an interrupted run, are gone."""
    history = [[1, {"valid/bound": -1.5, "train/loss": 2.0}], [2, {"valid/bound": -1.25, "train/loss": 1.5}]]
    first = LiveLog(tmp_path / "live", history=history)
    first.log(3, {"valid/bound": -1.0, "train/loss": 1.0})  # logged, then interrupted before its checkpoint
    (tmp_path / "live/metrics.json").write_text('{"valid": {"bo')

    resumed = LiveLog(tmp_path / "live", history=history)
    assert resumed.history == history
    for name in ("valid/bound", "train/loss"):
        assert _logged_steps(tmp_path / "live", name) == [1, 2]
    assert json.loads((tmp_path / "live/metrics.json").read_text()) == {
        "step": 2,
        "valid": {"bound": -1.25},
        "train": {"loss": 1.5},
    }
    resumed.log(3, {"valid/bound": -0.75, "train/loss": 0.5})
    resumed.end()
    assert _logged_steps(tmp_path / "live", "valid/bound") == [1, 2, 3]
    assert resumed.history[-1] == [3, {"valid/bound": -0.75, "train/loss": 0.5}]
