"""Preprocess stage: data/raw/ -> data/processed/{arrays.npz, stats.json, samples.png}."""

from __future__ import annotations

import time

import click

from pipeline.data.preprocess import RUN_DOWNLOAD, preprocess
from pipeline.data.registry import DatasetError, get_dataset
from stages.common import fail_cleanly, load_params, params_option

RAW_DIR, PROCESSED_DIR = "data/raw", "data/processed"


@click.command()
@params_option
@fail_cleanly(DatasetError, OSError)
def main(params_path: str) -> None:
    """Validate, split, scale and (optionally) binarize the downloaded dataset into data/processed/."""
    config = load_params(params_path)
    data = config.data
    started = time.perf_counter()
    try:
        stats = preprocess(
            RAW_DIR,
            PROCESSED_DIR,
            dataset=data.dataset,
            binarize=data.binarize,
            validation_fraction=data.validation_fraction,
            seed=config.seed,
            image_size=data.image_size,
            channels=data.channels,
            log=lambda message: click.echo(message, err=True),
        )
    except DatasetError as error:
        user_data = get_dataset(data.dataset).origin in ("user_file", "user_folder")
        if not user_data or RUN_DOWNLOAD in str(error):
            raise
        # the fix belongs in the user's own data (the error may name download's copy), and DVC does not see it change
        raise DatasetError(
            f"{error} (your data at data.path {data.path}: fix it, then run `dvc repro -f download` and `dvc repro`)"
        ) from None
    counts = ", ".join(f"{split} {count}" for split, count in stats["counts"].items())
    shape = "×".join(map(str, stats["image_shape"]))
    classes = f"{stats['num_classes']} classes" if stats["num_classes"] else "unlabelled"
    click.echo(
        f"preprocess: {stats['dataset']}: {counts}; {shape} {stats['storage']}; {classes}; "
        f"binarize {stats['binarize']}; mean pixel (train) {stats['mean_pixel']['train']:.4f}; "
        f"wrote {PROCESSED_DIR}/ in {time.perf_counter() - started:.1f} s"
    )
