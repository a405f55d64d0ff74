"""`python -m stages sample`: images from exported ONNX models, with numpy and onnxruntime only (no torch).

python -m stages sample --model export/vae_decoder.onnx -n 64 --seed 0 --out samples.png   # or .npy
python -m stages sample --all                     # the DVC stage: one grid per model in export/models.json
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from pipeline.images import save_image_grid
from pipeline.io import atomic_path, atomic_paths, check_writable, read_json
from pipeline.runtime import MANIFEST_NAME, GenerativeModel, check_against_manifest
from stages.common import fail_cleanly


def parse_labels(text: str | None) -> np.ndarray | int | None:
    """ "3" -> 3 (every sample), "0,1,2" -> array (one per sample), None -> None."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an integer or a comma-separated list of integers", param_hint="--labels"
        ) from None
    for value in values:
        if not 0 <= value < 2**31:
            raise click.BadParameter(f"{value} is not a class index (0, 1, ...)", param_hint="--labels")
    return values[0] if len(values) == 1 else np.array(values)


MAX_GRID_IMAGES = 4096  # a PNG grid of more is unreadable; .npy takes any number


def write_samples(
    model: GenerativeModel,
    out: Path,
    n: int,
    seed: int,
    labels: np.ndarray | int | None = None,
    temperature: float = 1.0,
) -> None:
    """A PNG grid (each image enlarged to at least 56 pixels high) or the raw float32 N×C×H×W array as .npy,
    written atomically; the .npy is filled batch by batch, so memory does not grow with ``n``."""
    if out.suffix.lower() == ".npy":
        with atomic_path(out) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *model.image_shape))
            start = 0
            for batch in model.sample_batches(n, seed, labels, temperature):
                array[start : start + len(batch)] = batch
                start += len(batch)
            array.flush()
            del array
    else:
        images = model.sample(n, seed, labels, temperature)
        save_image_grid(images, out, scale=max(1, 56 // images.shape[2]))


@click.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="a vae_decoder or gan_generator .onnx")
@click.option("-n", "num", default=64, show_default=True, type=click.IntRange(min=1), help="number of samples")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--out", type=click.Path(dir_okay=False), default="samples.png", show_default=True, help=".png or .npy")
@click.option("--labels", help="conditional models: one class for all, or one per sample (comma-separated)")
@click.option(
    "--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="z ~ N(0, T² I)"
)
@click.option("--all", "all_models", is_flag=True, help="one grid per decoder/generator in EXPORT_DIR/models.json")
@click.option("--export-dir", default="export", show_default=True, type=click.Path(file_okay=False))
@click.option("--out-dir", default="outputs/samples", show_default=True, type=click.Path(file_okay=False))
@fail_cleanly(ValueError, OSError)
def main(
    model_path: str | None,
    num: int,
    seed: int,
    out: str,
    labels: str | None,
    temperature: float,
    all_models: bool,
    export_dir: str,
    out_dir: str,
) -> None:
    """Sample images from an exported model (conditional models cycle through the classes unless --labels)."""
    given = click.get_current_context().get_parameter_source
    if all_models:
        one_model = "is for one model; --all writes one grid per model of --export-dir to --out-dir"
        for name, hint, message in (
            ("model_path", "--model", "give --model or --all, not both"),
            ("labels", "--labels", one_model),
            ("out", "--out", one_model),
        ):
            if given(name) is ParameterSource.COMMANDLINE:
                raise click.BadParameter(message, param_hint=hint)
        card_path = Path(export_dir) / MANIFEST_NAME
        if not card_path.is_file():
            raise click.ClickException(f"{card_path}: no model card; run `python -m stages export` first")
        try:
            entries = [e for e in read_json(card_path)["models"] if e["kind"] in ("vae_decoder", "gan_generator")]
            files = [Path(export_dir) / entry["file"] for entry in entries]
        except (KeyError, TypeError):
            raise click.ClickException(f"{card_path}: not an export manifest; re-run the export stage") from None
        for path in files:
            if not path.is_file():
                raise click.ClickException(f"{path}: listed in {card_path} but missing; re-run the export stage")
            check_against_manifest(path)
        check_writable(out_dir)
        targets = [Path(out_dir) / (path.stem + ".png") for path in files]
        for target in targets:
            if target.is_dir():
                raise click.ClickException(f"{target}: a folder where a grid goes; move it out of --out-dir")
        count = min(num, MAX_GRID_IMAGES)
        written = []
        with atomic_paths(targets) as staged:  # all grids replaced together, or none
            for path, target, tmp in zip(files, targets, staged, strict=True):
                model = GenerativeModel(path)
                write_samples(model, tmp, count, seed, temperature=temperature)
                written.append(f"{target}: {count} samples of {path.name} ({model.providers[0]})")
        for line in written:
            click.echo(line)
        return
    if model_path is None:
        raise click.UsageError("give --model export/<file>.onnx, or --all")
    for name, hint in (("export_dir", "--export-dir"), ("out_dir", "--out-dir")):
        if given(name) is ParameterSource.COMMANDLINE:
            raise click.BadParameter("is for --all; one --model writes to --out", param_hint=hint)
    parsed = parse_labels(labels)
    if isinstance(parsed, np.ndarray) and len(parsed) != num:
        raise click.BadParameter(
            f"gives {len(parsed)} labels for -n {num} images; give one label for all, or one per image",
            param_hint="--labels",
        )
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".npy"):
        raise click.BadParameter(f"{out!r} must end in .png or .npy", param_hint="--out")
    if suffix == ".png" and num > MAX_GRID_IMAGES:
        raise click.BadParameter(f"{num} images do not make a readable grid; write .npy for more", param_hint="-n")
    check_writable(Path(out).parent)
    model = GenerativeModel(model_path)
    write_samples(model, Path(out), num, seed, parsed, temperature)
    click.echo(f"{out}: {num} samples of {model_path} ({model.providers[0]})")
