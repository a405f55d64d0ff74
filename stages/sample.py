"""`python -m stages sample`: images from exported ONNX models, with numpy and onnxruntime only (no torch).

python -m stages sample --model export/vae_decoder.onnx -n 64 --seed 0 --out samples.png   # or .npy
python -m stages sample --all                     # the DVC stage: one grid per model in export/models.json
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import click
import numpy as np

from pipeline.images import save_image_grid
from pipeline.io import atomic_path, read_json
from pipeline.runtime import GenerativeModel
from stages.common import fail_cleanly


def parse_labels(text: str | None) -> np.ndarray | int | None:
    """ "3" -> 3 (every sample), "0,1,2" -> array (one per sample), None -> None."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an integer or a comma-separated list of integers") from None
    return values[0] if len(values) == 1 else np.array(values)


def write_images(images: np.ndarray, out: Path) -> None:
    """A PNG grid (each image enlarged to at least 56 pixels high) or the raw float32 N×C×H×W array as .npy."""
    if out.suffix == ".npy":
        with atomic_path(out) as tmp, tmp.open("wb") as f:
            np.save(f, images)
    else:
        save_image_grid(images, out, scale=max(1, 56 // images.shape[2]))


@click.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="a vae_decoder or gan_generator .onnx")
@click.option("-n", "num", default=64, show_default=True, type=int, help="number of samples")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(dir_okay=False), default="samples.png", show_default=True, help=".png or .npy")
@click.option("--labels", help="conditional models: one class for all, or one per sample (comma-separated)")
@click.option("--temperature", default=1.0, show_default=True, type=float, help="z ~ N(0, T² I)")
@click.option("--all", "all_models", is_flag=True, help="one grid per decoder/generator in EXPORT_DIR/models.json")
@click.option("--export-dir", default="export", show_default=True, type=click.Path(file_okay=False))
@click.option("--out-dir", default="outputs/samples", show_default=True, type=click.Path(file_okay=False))
@fail_cleanly(ValueError, FileNotFoundError)
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
    if all_models:
        card_path = Path(export_dir) / "models.json"
        if not card_path.is_file():
            raise click.ClickException(f"{card_path}: no model card; run `python -m stages export` first")
        entries = [e for e in read_json(card_path)["models"] if e["kind"] != "vae_encoder"]
        for entry in entries:
            path = Path(export_dir) / entry["file"]
            if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
                raise click.ClickException(f"{path}: sha256 differs from {card_path}; re-run the export stage")
        for entry in entries:
            model = GenerativeModel(Path(export_dir) / entry["file"])
            target = Path(out_dir) / (Path(entry["file"]).stem + ".png")
            write_images(model.sample(num, seed, temperature=temperature), target)
            click.echo(f"{target}: {num} samples of {entry['file']} ({model.providers[0]})")
        return
    if model_path is None:
        raise click.UsageError("give --model export/<file>.onnx, or --all")
    if Path(out).suffix not in (".png", ".npy"):
        raise click.BadParameter(f"{out!r} must end in .png or .npy", param_hint="--out")
    model = GenerativeModel(model_path)
    images = model.sample(num, seed, parse_labels(labels), temperature)
    write_images(images, Path(out))
    click.echo(f"{out}: {num} samples of {model_path} ({model.providers[0]})")
