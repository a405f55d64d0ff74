"""Download stage: write data/raw/<dataset>/ and data/raw/manifest.json for params' data.dataset, atomically."""

from __future__ import annotations

import time

import click

from pipeline.data.fetch import download_dataset, mirror_directory
from pipeline.data.registry import DatasetError, get_dataset
from stages.common import fail_cleanly, load_params, params_option

RAW_DIR = "data/raw"


@click.command()
@params_option
@fail_cleanly(DatasetError, OSError)
def main(params_path: str) -> None:
    """Fetch and verify the raw files of data.dataset (local mirror first, then remote mirrors) into data/raw/."""
    data = load_params(params_path).data
    started = time.perf_counter()
    manifest = download_dataset(
        get_dataset(data.dataset),
        RAW_DIR,
        path=data.path,
        mirror=mirror_directory(data.mirror),
        timeout_s=data.timeout_s,
        retries=data.retries,
        deadline_s=data.deadline_s,
        log=lambda message: click.echo(message, err=True),
    )
    total = sum(entry["bytes"] for entry in manifest["files"])
    click.echo(
        f"download: {data.dataset}: {len(manifest['files'])} file(s), {total / 2**20:.1f} MiB in {RAW_DIR}/ "
        f"(digests in {RAW_DIR}/manifest.json) in {time.perf_counter() - started:.1f} s"
    )
