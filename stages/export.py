"""`python -m stages export`: checkpoints/{vae,gan}/best.pt -> export/*.onnx, export/models.json and the browser
explorer export/web/.

Every model is checked against torch (onnxruntime, fresh random inputs, several batch sizes) before any file is
written; a failed check exits non-zero and leaves export/ as it was.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from pipeline.checkpoint import CheckpointError
from pipeline.export import ExportError, check_export_folder, export_checkpoints, write_exported
from pipeline.io import check_writable
from pipeline.web import WebBundleError, explorer_for
from stages.common import fail_cleanly, load_params, params_option


@click.command()
@params_option
@click.option(
    "--checkpoints",
    "checkpoint_dir",
    default="checkpoints",
    show_default=True,
    type=click.Path(file_okay=False),
    help="folder holding vae/best.pt and/or gan/best.pt",
)
@click.option("--out", "out_dir", default="export", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--data",
    "processed_dir",
    default="data/processed",
    show_default=True,
    type=click.Path(file_okay=False),
    help="processed data whose first test images the explorer ships",
)
@fail_cleanly(ExportError, CheckpointError, WebBundleError, OSError)
def main(params_path: str, checkpoint_dir: str, out_dir: str, processed_dir: str) -> None:
    """Export the VAE decoder and encoder and the GAN generator (EMA weights) to ONNX, parity-checked."""
    config = load_params(params_path)
    check_export_folder(out_dir)
    check_writable(Path(out_dir).resolve().parent)  # the new set is written beside out_dir, then takes its place
    models = export_checkpoints(checkpoint_dir, config.export, config.seed)
    explorer = None
    if config.export.web:
        explorer = explorer_for(processed_dir, models[0].card["metadata"]["image_shape"])
        explorer.check()
    card = write_exported(models, out_dir, explorer)
    for entry in card["models"]:
        parity = entry["parity"]
        click.echo(
            f"{out_dir}/{entry['file']:<26} {entry['bytes'] / 1024:8.1f} KiB  "
            f"max abs error {parity['max_abs_error']:.2e} vs {parity['reference']}"
        )
    click.echo(f"{out_dir}/models.json lists {len(card['models'])} models ({card['exporter']})")
    if explorer is not None:
        web = shlex.quote(f"{out_dir}/web")
        click.echo(f"{out_dir}/web: the latent explorer; view it with `python -m http.server -d {web}`")
        if explorer.without_images:
            click.echo(f"{out_dir}/web ships no test images to encode: {explorer.without_images}")
