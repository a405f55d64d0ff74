"""What the benchmarks share: the hardware they ran on, timing on a device, the float32 matmul rate, and a trainer's
epoch throughput."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import torch
import yaml

from pipeline.config import ConfigError, config_from_dict
from pipeline.device import CPUINFO, NATIVE_BF16_FLAGS, cpu_flags, select_device
from pipeline.io import atomic_path

REPO = Path(__file__).resolve().parents[1]

# Option types of the benchmarks: a count of at least one, a thread count (0: torch's default) and a device name.
COUNT = click.IntRange(min=1)
THREADS = click.IntRange(min=0)
DEVICES = click.Choice(["auto", "cpu", "cuda", "mps"])


def bench_device(name: str) -> torch.device:
    """The device of a benchmark's --device; one that is not here is a --device error, not a traceback."""
    try:
        return select_device(name)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None


def hardware(device: torch.device, threads: int | None = None) -> str:
    """What a figure was measured on, for its report: the GPU's name, or the CPU's model, the threads torch uses
    (``threads`` when the run sets them) and whether the cores multiply bf16 natively (``*.bf16`` pays only there)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return device.type
    model = platform.processor() or platform.machine()
    if CPUINFO.is_file():
        names = [
            line.partition(":")[2].strip() for line in CPUINFO.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    native = sorted(cpu_flags() & NATIVE_BF16_FLAGS)
    bf16 = f"native bf16: {', '.join(native)}" if native else "no native bf16"
    return f"cpu: {model}, {threads or torch.get_num_threads()} threads, {bf16}"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def matmul_rate(device: torch.device, repeats: int = 5, size: int = 4096) -> dict[str, float]:
    """Float32 ``torch.mm`` rates (FLOP/s) on a size³ product and a (2 size)×(size/4)² one, each the best of
    ``repeats`` runs."""
    rates = {}
    for m, k, n in ((size, size, size), (2 * size, size // 4, size // 4)):
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        products = {f"torch.mm {m}x{k}x{n}": functools.partial(torch.mm, a, b)}
        for name, product in products.items():
            product()
            best = math.inf
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                product()
                synchronize(device)
                best = min(best, time.perf_counter() - start)
            rates[name] = 2 * m * k * n / best
    return rates


def epoch_images_per_second(trainer: Any, warmup_batches: int = 4) -> float:
    """Images/s of one training epoch of a VaeTrainer or GanTrainer, after a warm-up epoch of a few batches."""
    full = trainer.batches
    trainer.batches = dataclasses.replace(full, size=min(full.size, warmup_batches * full.batch_size))
    trainer.train_epoch(0)
    trainer.batches = full
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_epoch(1)
    synchronize(trainer.device)
    return full.size / (time.perf_counter() - start)


def merge(base: dict, overlay: dict) -> dict:
    """``base`` with ``overlay``'s keys replaced, recursing into sections."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def recipe_names(directory: Path) -> list[str]:
    """The recipes of ``directory``: its YAML files' names."""
    return sorted(path.stem for path in directory.glob("*.yaml"))


def recipe_overlay(directory: Path, name: str) -> dict:
    """The params recipe ``name`` of ``directory`` changes; a name that is not one of its recipes (a path, a recipe
    of another folder) is a --recipe error naming the known ones, and so is a file that is not a YAML mapping."""
    known = recipe_names(directory)
    if name not in known:
        raise click.BadParameter(f"no recipe {name!r}; known: {', '.join(known)}", param_hint="--recipe")
    path = directory / f"{name}.yaml"
    try:
        overlay = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise click.BadParameter(
            f"{path}: not valid YAML ({error})".replace("\n", " "), param_hint="--recipe"
        ) from None
    if not isinstance(overlay, dict):
        raise click.BadParameter(f"{path}: holds no mapping of params to change; fix the file", param_hint="--recipe")
    return overlay


def shipped_params_with(*overlays: dict, param_hint: str) -> dict:
    """The shipped params.yaml with ``overlays`` merged in order, checked against the params schema before anything
    runs: a value it refuses is a ``param_hint`` error (e.g. --recipe, --set)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for overlay in overlays:
        params = merge(params, overlay)
    try:
        config_from_dict(params, complete=True)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint=param_hint) from None
    return params


BENCH_RUN_MARK = ".bench-run"  # the file that tells a benchmark's working folder from any other
# what a run writes: a folder from before the mark that holds its params.yaml, data and nothing else is a run too
BENCH_RUN_ENTRIES = frozenset(
    {"params.yaml", "data", "checkpoints", "cards", "metrics", "outputs", "plots", "dvclive", "export", BENCH_RUN_MARK}
)


def check_workdir(workdir: Path) -> None:
    """Refuse, as a --workdir error, a folder the benchmark must not fill: a project (dvc.yaml, .git), or a
    folder holding files of its own (an earlier benchmark run's is reused). Nothing is written."""
    project = [name for name in ("dvc.yaml", ".git", ".dvc") if (workdir / name).exists()]
    if project:
        raise click.BadParameter(
            f"{workdir} holds {project[0]}: it is a project, whose params.yaml, data and checkpoints the benchmark "
            "would replace; choose another folder (the default is bench-runs/NAME)",
            param_hint="--workdir",
        )
    entries = {path.name for path in workdir.iterdir()} if workdir.is_dir() else set()
    earlier_run = {"params.yaml", "data"} <= entries <= BENCH_RUN_ENTRIES  # a run from before the mark
    if entries and BENCH_RUN_MARK not in entries and not earlier_run:
        raise click.BadParameter(
            f"{workdir}: holds files but no earlier benchmark run, and the run would replace its params.yaml, data "
            "and checkpoints; choose a new or empty folder (the default is bench-runs/NAME)",
            param_hint="--workdir",
        )


def run_stages(workdir: Path, params: dict, stages: tuple[str, ...], threads: int | None) -> dict[str, float]:
    """Run the pipeline's ``stages`` one after another in ``workdir`` (see :func:`check_workdir`) with ``params``
    as its params.yaml (the pipeline itself, as `dvc repro` runs it); returns each stage's seconds. A failing stage
    stops the benchmark."""
    check_workdir(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / BENCH_RUN_MARK).touch()
    except OSError as error:
        raise click.BadParameter(f"{workdir}: cannot be created ({error.strerror})", param_hint="--workdir") from None
    with atomic_path(workdir / "params.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads)}
    seconds = {}
    for stage in stages:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "stages", stage], cwd=workdir, env=env)
        seconds[stage] = time.perf_counter() - start
        if result.returncode != 0:
            raise click.ClickException(f"stage {stage} failed (exit {result.returncode}); its output is above")
    return seconds
