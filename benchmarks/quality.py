"""`python -m stages bench quality --recipe NAME`: train one recipe on statically binarized MNIST and print the
literature's figure, test -log p(x) by importance sampling with K = 5000, beside the ELBO, the gap, the epochs and
the training time.

A recipe is ``recipes/NAME.yaml``: the params it changes from the shipped ``params.yaml``. The run is the pipeline
itself: the download, preprocess, train_vae and evaluate_vae stages, run one after another in a working folder
(``bench-runs/NAME`` by default) with those params, the dataset set to ``--data`` (``npz``, no binarization: the
file holds one static draw) and evaluation set to K = 5000 on the test split. ``--max-minutes`` is the training
budget (vae.max_minutes): the literature trains for days; say here what a CPU user can afford.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
import yaml

from benchmarks.common import (
    REPO,
    bench_device,
    check_workdir,
    hardware,
    merge,
    recipe_names,
    recipe_overlay,
    run_stages,
    shipped_params_with,
)
from pipeline.checkpoint import load_checkpoint
from pipeline.config import Config, config_from_dict
from pipeline.data.preprocess import load_npz
from pipeline.data.registry import DatasetError
from pipeline.estimators import importance_sampled_log_likelihood
from pipeline.vae_trainer import build_vae

RECIPES = REPO / "recipes"
DEV_DATA = REPO.parent / "shared" / "data" / "binarized_mnist_dev.npz"
STAGES = ("download", "preprocess", "train_vae", "evaluate_vae")


def parse_settings(settings: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` pairs (``vae.ema_decay=0``, as `dvc exp run -S` takes them) as a params overlay; each value is
    read as YAML, so numbers, booleans, null and lists keep their types."""
    overlay: dict = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key or any(not part for part in key.split(".")):
            raise click.BadParameter(f"{setting!r} is not KEY=VALUE (e.g. vae.ema_decay=0)", param_hint="--set")
        *sections, name = key.split(".")
        section = overlay
        for depth, part in enumerate(sections, 1):
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                prefix = ".".join(sections[:depth])
                raise click.BadParameter(f"{prefix} is set to a value, so {key} cannot be set", param_hint="--set")
        try:
            section[name] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise click.BadParameter(f"{key}: {value!r} is not a YAML value", param_hint="--set") from None
    return overlay


def recipe_params(
    name: str, data: Path, max_minutes: float | None, num_samples: int, device: str, settings: tuple[str, ...] = ()
) -> dict:
    """The shipped params with recipe ``name``, then the ``--set`` settings, then the benchmark's own (data, device,
    budget, evaluation) merged in; a setting the params schema refuses is a --set error before anything runs."""
    overlay = recipe_overlay(RECIPES, name)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overlay)
    changes = parse_settings(settings)
    for key, value in changes.items():
        if isinstance(params.get(key), dict) and not isinstance(value, dict):
            raise click.BadParameter(f"{key} is a section; set its keys, e.g. {key}.KEY=VALUE", param_hint="--set")
    benchmark = {
        "device": device,
        "data": {"dataset": "npz", "path": str(data), "binarize": "none"},
        "vae": {"max_minutes": max_minutes},
        "evaluate": {"num_samples": num_samples, "splits": ["test"], "curve_ks": [1, 100, 1000]},
    }
    owned = _dotted_keys(benchmark)  # what the benchmark sets after --set would silently win
    for key in _dotted_keys(changes):
        clash = next((k for k in owned if key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.")), None)
        if clash:
            instead = f"use {OPTION_FOR[clash]}" if clash in OPTION_FOR else "the benchmark fixes it"
            raise click.BadParameter(f"{key} is set by the benchmark itself; {instead}", param_hint="--set")
    shipped_params_with(overlay, param_hint="--recipe")
    shipped_params_with(overlay, benchmark, param_hint="/".join(OPTION_FOR.values()))  # the options' own values
    return shipped_params_with(overlay, changes, benchmark, param_hint="--set")


# the options that set the benchmark's own params
OPTION_FOR = {
    "device": "--device",
    "data.path": "--data",
    "vae.max_minutes": "--max-minutes",
    "evaluate.num_samples": "--num-samples",
}


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    """The leaf keys of a nested dict as dotted paths."""
    keys = []
    for key, value in tree.items():
        keys += _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]
    return keys


def check_binary_images(path: Path) -> None:
    """Refuse, as a --data error, a file the pipeline cannot read or whose images are not binary (0/1 or 0/255):
    the figure is the literature's only for a static binarization."""
    try:
        raw = load_npz(path)
    except DatasetError as error:
        raise click.BadParameter(str(error), param_hint="--data") from None
    top = 1 if raw.binary else 255
    for split, images in raw.x.items():
        if images.dtype != np.uint8 or not np.isin(images, (0, top)).all():
            raise click.BadParameter(
                f"{path}: x_{split} holds grey levels, not binary images; binarize them once (e.g. x > 127) and save "
                "the result, as the benchmark's figure is a likelihood of fixed binary images",
                param_hint="--data",
            )


def importance_sampling_rate(config: Config, points: int = 320, num_samples: int = 500) -> float:
    """Decoder evaluations/s of importance sampling (the family's full proposal and prior) for the recipe's model at
    its initial weights on random binary 28×28 images, on the CPU. Trained weights can run at another rate (the
    README gives the full estimate's rate for the best recipe)."""
    torch.manual_seed(0)
    model = build_vae(config, (1, 28, 28), None).eval()
    x = (torch.rand(points, 1, 28, 28) < 0.15).float()
    importance_sampled_log_likelihood(model, model, x[:16], num_samples=64)  # warm-up
    start = time.perf_counter()
    importance_sampled_log_likelihood(model, model, x, num_samples=num_samples)
    return points * num_samples / (time.perf_counter() - start)


@click.command()
@click.option(
    "--recipe", required=True, help=f"a recipe of recipes/ (or 'list'); e.g. {', '.join(recipe_names(RECIPES))}"
)
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path), default=DEV_DATA,
              show_default=True, help="an .npz of binary images with x_train, x_valid, x_test")  # fmt: skip
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="training budget in minutes")  # fmt: skip
@click.option("--num-samples", type=click.IntRange(min=1), default=5000, show_default=True, help="K of the estimate")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="change one of the recipe's params, e.g. --set vae.ema_decay=0 (repeatable)")  # fmt: skip
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the run's files go (default bench-runs/RECIPE)")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: all cores)")
@click.option("--speed", is_flag=True, help="only time importance sampling of the recipe's (untrained) model")
def main(
    recipe: str,
    data_path: Path,
    max_minutes: float,
    num_samples: int,
    settings: tuple[str, ...],
    device: str,
    workdir: Path | None,
    threads: int | None,
    speed: bool,
) -> None:
    """Train RECIPE within --max-minutes and print its test -log p(x) (K importance samples)."""
    if recipe == "list":
        click.echo("\n".join(recipe_names(RECIPES)))
        return
    if speed:
        if device not in ("auto", "cpu"):
            raise click.BadParameter(
                "--speed times importance sampling on the CPU; leave --device out", param_hint="--device"
            )
        if threads:
            torch.set_num_threads(threads)
        params = recipe_params(recipe, data_path, max_minutes, num_samples, device, settings)
        click.echo(f"recipe {recipe}: {importance_sampling_rate(config_from_dict(params)):,.0f} decoder evaluations/s")
        return
    # everything is checked before anything is written: the recipe and settings, the device, the folder, the data
    params = recipe_params(recipe, data_path.resolve(), max_minutes, num_samples, device, settings)
    bench_device(device)
    workdir = (workdir or Path("bench-runs") / recipe).resolve()
    check_workdir(workdir)
    if not data_path.is_file():
        raise click.BadParameter(f"{data_path}: no such file", param_hint="--data")
    check_binary_images(data_path)
    seconds = run_stages(workdir, params, STAGES, threads)
    train = json.loads((workdir / "cards" / "train_vae.json").read_text())
    training_seconds = load_checkpoint(workdir / "checkpoints" / "vae" / "last.pt")["training"]["seconds"]
    evaluation = json.loads((workdir / "cards" / "evaluate_vae.json").read_text())
    test = evaluation["test"]
    changed = "".join(f" --set {setting}" for setting in settings)
    click.echo(
        f"recipe {recipe}{changed} on {data_path.name} x_test ({test['points']} images), "
        f"{hardware(torch.device(train['device']), threads)}:\n"
        f"  -log p(x) {-test['log_px']:.2f} ± {test['log_px_stderr']:.2f} nats (K = {evaluation['num_samples']}), "
        f"ELBO {-test['elbo']:.2f}, gap {test['gap']:.2f}, AIS on {evaluation['ais']['points']} points "
        f"{-evaluation['ais']['log_px']:.2f}\n"
        f"  training {training_seconds / 60:.1f} min (budget {max_minutes:g}), best epoch "
        f"{train['best_epoch']}, stopped: {train['stopped']}; evaluation {seconds['evaluate_vae'] / 60:.1f} min"
    )
