"""`python -m stages --help` lists the stages; `python -m stages STAGE --help` documents one."""

from __future__ import annotations

import click

from pipeline.io import unwind_on_sigterm
from stages.common import LazyGroup

# stage name -> module defining a click command called `main` (imported only when run)
STAGES = {
    "check_params": "stages.check_params",
    "download": "stages.download",
    "preprocess": "stages.preprocess",
    "train_vae": "stages.train_vae",
    "evaluate_vae": "stages.evaluate_vae",
    "train_classifier": "stages.train_classifier",
    "train_gan": "stages.train_gan",
    "evaluate_samples": "stages.evaluate_samples",
    "export": "stages.export",
    "sample": "stages.sample",
    "params": "stages.params",
    "bench": "stages.bench",
}


@click.group(cls=LazyGroup, modules=STAGES, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Deep generative models pipeline: the stages dvc.yaml runs, plus `sample`, `params` and `bench`."""
    unwind_on_sigterm()


if __name__ == "__main__":
    cli()
